"""Dependencies without hand-editing metadata: add_dependency / remove_dependency /
sync_environment on a real daemon, real kernels, real installs from PyPI."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import runtimed
from runtimed.pytest_plugin import DaemonProcess

pytestmark = [pytest.mark.slow, pytest.mark.network]

MISSING = "runtimed-no-such-package-xyz"


def test_added_dependency_is_installed_into_the_running_kernel(
    runtimed_daemon_factory: Callable[..., DaemonProcess],
    seed_pool: Callable[[Path], Path],
    tmp_path: Path,
) -> None:
    root = tmp_path / "d"
    for _ in range(2):
        seed_pool(root / "cache" / "envs")
    daemon = runtimed_daemon_factory(root, pool_sizes={"uv": 2}, hot_kernels=0)
    daemon.wait_for_pool(2)
    with daemon.session() as s:
        s.start_kernel()
        assert s.env_source == "uv:prewarmed" and s.get_dependencies() == []
        s.run("kept = 'my variable'")
        assert s.run("import six").error.ename == "ModuleNotFoundError"
        assert s.add_dependency("six") == ["six"]
        assert json.loads(s.get_metadata("runt")) == {"uv": {"dependencies": ["six"]}}
        seen: list[dict[str, Any]] = []
        done = s.sync_environment(on_progress=seen.append)
        assert done == {"action": "installed", "env_source": "uv:inline", "dependencies": ["six"]}
        assert any("Installing 1 package (six) into the running kernel" in (k.get("progress") or "")
                   for k in seen)
        assert s.run("import six; print(kept, six.__name__)").stdout == "my variable six\n"
        assert s.env_source == "uv:inline" and s.kernel_status()["progress"] is None
        assert s.sync_environment()["action"] == "unchanged"
        # a spec naming a listed package replaces it; a broken one fails, quoting uv
        assert s.add_dependency("SIX>=1.0") == ["SIX>=1.0"]
        s.add_dependency(MISSING)
        with pytest.raises(runtimed.EnvironmentFailed, match=MISSING):
            s.sync_environment()
        assert s.run("print(kept)").stdout == "my variable\n", "a failed install leaves the kernel"
        assert s.remove_dependency(MISSING) == ["SIX>=1.0"]
        # a removal restarts into an env without it
        assert s.remove_dependency("six") == []
        done = s.sync_environment()
        assert done["action"] == "restarted" and done["env_source"] == "uv:prewarmed"
        assert s.run("import six").error.ename == "ModuleNotFoundError"
        with pytest.raises(runtimed.InvalidRequest, match="'pandas' is not one of this notebook's"):
            s.remove_dependency("pandas")
        for bad, message in (("", "non-empty"), ("a\nb", "one requirement"), ("==1", "package name")):
            with pytest.raises(runtimed.InvalidRequest, match=message):
                s.add_dependency(bad)


def test_a_cached_env_is_shared_so_the_kernel_restarts_into_a_new_one(
    runtimed_daemon_factory: Callable[..., DaemonProcess],
    seed_pool: Callable[[Path], Path],
    tmp_path: Path,
) -> None:
    root = tmp_path / "d"
    seed_pool(root / "cache" / "envs")
    daemon = runtimed_daemon_factory(root, pool_sizes={"uv": 1}, hot_kernels=0)
    daemon.wait_for_pool(1)
    with daemon.session() as s:
        s.add_dependency("six")
        s.start_kernel()  # auto: uv:inline, a cached env any notebook listing six shares
        assert s.env_source == "uv:inline"
        s.add_dependency("idna")
        done = s.sync_environment()
        assert done["action"] == "restarted" and done["env_source"] == "uv:inline"
        assert s.run("import six, idna; print('both')").stdout == "both\n"


def test_dependencies_declared_elsewhere_are_refused(
    runtimed_daemon_factory: Callable[..., DaemonProcess], tmp_path: Path
) -> None:
    daemon = runtimed_daemon_factory(tmp_path / "d", pool_sizes={"uv": 0}, hot_kernels=0)
    project = tmp_path / "project"
    project.mkdir()
    (project / "pyproject.toml").write_text('[project]\nname = "p"\nversion = "0"\n')
    nb = project / "analysis.ipynb"
    with runtimed.Session(path=nb, socket_path=daemon.socket_path) as s:
        s.connect()
        with pytest.raises(runtimed.InvalidRequest, match="pyproject.toml: add dependencies there"):
            s.add_dependency("six")
    with daemon.session() as s:
        s.connect()
        s.create_cell("# /// script\n# dependencies = ['six']\n# ///\nimport six")
        with pytest.raises(runtimed.InvalidRequest, match="in a `# /// script` block"):
            s.add_dependency("idna")
        assert s.get_dependencies() == [] and s.sync_environment()["action"] == "none"
