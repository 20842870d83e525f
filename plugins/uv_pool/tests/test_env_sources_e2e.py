"""The uv family end to end: a real daemon, real kernels, real installs from PyPI.

Each daemon starts on a cache seeded with ready pool envs (``seed_pool``), so
the tests wait for what they are about, not for the pool to warm.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import runtimed
from runtimed.pytest_plugin import DaemonProcess

pytestmark = [pytest.mark.slow, pytest.mark.network]

MISSING = "runtimed-no-such-package-xyz"
PEP723_CELL = (
    '# /// script\n# requires-python = ">=3.10"\n# dependencies = ["idna"]\n# ///\nimport idna\n'
)


def start_daemon(
    factory: Callable[..., DaemonProcess],
    root: Path,
    seed_pool: Callable[[Path], Path],
    ready: int,
) -> DaemonProcess:
    for _ in range(ready):
        seed_pool(root / "cache" / "envs")
    daemon = factory(root, pool_sizes={"uv": ready}, hot_kernels=0)
    daemon.wait_for_pool(ready)
    return daemon


def deps(*names: str) -> str:
    return json.dumps({"uv": {"dependencies": list(names)}})


def printed(session: runtimed.Session, code: str) -> list[str]:
    result = session.run(code)
    assert result.success, result.error
    return result.stdout.split()


def test_inline_kernel_imports_its_dependency_and_a_second_notebook_reuses_the_env(
    runtimed_daemon_factory: Callable[..., DaemonProcess],
    seed_pool: Callable[[Path], Path],
    tmp_path: Path,
) -> None:
    daemon = start_daemon(runtimed_daemon_factory, tmp_path / "d", seed_pool, ready=1)
    envs = daemon.cache_dir / "envs"
    plain = tmp_path / "plain"
    (plain / ".git").mkdir(parents=True)  # no project file above the notebooks
    events: list[dict[str, Any]] = []

    with daemon.session("inline-1") as first:
        first.connect()
        first.set_metadata("runt", deps("six"))
        first.start_kernel(env_source="uv:inline", on_progress=events.append)
        assert first.env_source == "uv:inline"
        [prefix] = printed(first, "import six, sys; print(sys.prefix)")
        env = Path(prefix)
        assert env.parent == envs and env.name.startswith("uv-inline-")
        assert "preparing_env" in [e.get("lifecycle") for e in events]
        assert "inline-1: Installing 1 package (six) into a prewarmed environment" in daemon.log()
        built = (env / ".runtimed-env.json").read_text()

        # A second notebook with the same dependencies, started with `auto`.
        with daemon.session("inline-2") as second:
            second.connect()
            second.set_metadata("runt", deps("six"))
            started = time.monotonic()
            second.start_kernel(notebook_path=str(plain / "nb.ipynb"))
            elapsed = time.monotonic() - started
            assert second.env_source == "uv:inline"
            assert printed(second, "import six, sys; print(sys.prefix)") == [prefix]
            assert "inline-2: Reusing the cached environment for six" in daemon.log()
            assert "inline-2: Installing" not in daemon.log()
            assert (env / ".runtimed-env.json").read_text() == built, "not rebuilt"
            rooms = {r["notebook_id"]: r for r in daemon.client().list_rooms()}
            assert rooms["inline-1"]["env_source"] == rooms["inline-2"]["env_source"] == "uv:inline"
        print(f"\nsecond notebook's start_kernel (env reused, kernel launched): {elapsed:.2f} s")

        # A dependency that does not exist: a clear error; nobody else is affected.
        daemon.wait_for_pool(1)  # the pool replaced the env the first build started from
        with daemon.session("inline-bad") as bad:
            bad.connect()
            bad.set_metadata("runt", deps("six", MISSING))
            with pytest.raises(runtimed.EnvironmentFailed) as excinfo:
                bad.start_kernel(env_source="uv:inline")
            assert excinfo.value.message.startswith(f"Could not install {MISSING}")
            assert "not found in the package registry" in excinfo.value.message
            assert bad.kernel_status()["lifecycle"] == "error"
            assert printed(first, "print(six.__name__)") == ["six"]
            # The build borrowed the pool env, and handed it back untouched.
            assert daemon.client().status()["uv_available"] == 1, "the pool is unaffected"

            bad.set_metadata("runt", deps("six"))  # fixed: retrying works (and reuses the env)
            bad.start_kernel(env_source="uv:inline")
            assert printed(bad, "import six, sys; print(sys.prefix)") == [prefix]


def test_auto_picks_pep723_pyproject_and_prewarmed_from_the_notebook(
    runtimed_daemon_factory: Callable[..., DaemonProcess],
    seed_pool: Callable[[Path], Path],
    tmp_path: Path,
    tiny_project: Path,
) -> None:
    daemon = start_daemon(runtimed_daemon_factory, tmp_path / "d", seed_pool, ready=3)
    envs = daemon.cache_dir / "envs"
    plain = tmp_path / "plain"
    (plain / ".git").mkdir(parents=True)

    with daemon.session("pep723") as script:
        script.connect()
        script.create_cell(PEP723_CELL)
        script.start_kernel(notebook_path=str(plain / "script.ipynb"))
        assert script.env_source == "uv:pep723"
        code = "import sys, idna; print(sys.prefix, idna.encode('bücher').decode())"
        prefix, encoded = printed(script, code)
        assert Path(prefix).parent == envs and Path(prefix).name.startswith("uv-inline-")
        assert encoded == "xn--bcher-kva"

    with daemon.session("project") as proj:
        proj.connect()
        proj.start_kernel(notebook_path=str(tiny_project / "nb.ipynb"))
        assert proj.env_source == "uv:pyproject"
        code = "import os, sys, six, tinyproj; print(tinyproj.VALUE, sys.prefix, os.getcwd())"
        value, prefix, cwd = printed(proj, code)
        assert value == "42"
        assert Path(prefix).parent == envs and Path(prefix).name.startswith("uv-project-")
        assert Path(cwd) == tiny_project

    with daemon.session("plain") as nb:
        nb.connect()
        nb.start_kernel(notebook_path=str(plain / "nb.ipynb"))
        assert nb.env_source == "uv:prewarmed"
        [prefix] = printed(nb, "import sys; print(sys.prefix)")
        assert Path(prefix).name.startswith("uv-prewarmed-")
