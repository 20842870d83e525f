"""End to end: a real daemon (conda pool on the local test channel), real kernels in conda envs."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtimed.errors import EnvironmentFailed
from runtimed.pytest_plugin import DaemonProcess
from runtimed.testing import wait_until
from runtimed_conda_pool.testing import (
    ACTIVATED_VAR,
    ACTIVATION,
    ENV_VARS_VALUE,
    ENV_VARS_VAR,
    LocalChannel,
    make_wheel,
)

REPORT = "import sys, runtimed_test_hello as h; print(sys.prefix); print(h.__version__)"
ENVIRON = "import json, os, sys; print(json.dumps([sys.prefix, dict(os.environ)]))"


def kernel_report(session: Any, code: str = REPORT) -> list[str]:
    result = session.run(code)
    assert result.success, result.error
    return result.stdout.split()


def test_a_daemon_that_uses_no_conda_env_never_loads_rattler(
    runtimed_daemon_factory: Callable[..., DaemonProcess],
) -> None:
    """rattler costs a process ~7 MB for good: the conda pool asks it nothing until an env
    is built or used (the platform comes from the standard library)."""
    daemon = runtimed_daemon_factory(pool_sizes={"uv": 0})
    status = daemon.client().status()
    assert "conda_available" in status  # the conda pool is there, just empty
    assert "rattler" not in Path(f"/proc/{daemon.process.pid}/maps").read_text()


@pytest.mark.slow
def test_conda_kernels_through_a_real_daemon(
    runtimed_daemon_factory: Callable[..., DaemonProcess],
    conda_env: dict[str, str],
    conda_channel: LocalChannel,
    tmp_path: Path,
) -> None:
    daemon = runtimed_daemon_factory(
        pool_sizes={"uv": 0}, env=conda_env, extra_args=["--conda-pool-size", "1"]
    )
    try:
        envs = daemon.cache_dir / "conda-envs"
        daemon.wait_for_pool(1, family="conda", timeout=120)
        assert daemon.client().status()["conda_available"] == 1
        assert "Conda pool: 1/1 available" in daemon.log()
        # The env's conda-lock.yml was written without conda-lock (its pydantic would show here).
        assert (next(envs.glob("conda-prewarmed-*")) / "conda-lock.yml").is_file()
        assert "pydantic_core" not in Path(f"/proc/{daemon.process.pid}/maps").read_text()

        # conda:prewarmed: a ready env from the pool.
        with daemon.session("prewarmed") as session:
            session.start_kernel(env_source="conda:prewarmed")
            assert session.env_source == "conda:prewarmed"
            [prefix] = kernel_report(
                session, "import sys, ipykernel, ipywidgets; print(sys.prefix)"
            )
            assert Path(prefix).parent == envs and Path(prefix).name.startswith("conda-prewarmed-")
            assert (Path(prefix) / "conda-meta").is_dir()
            _, environ = json.loads(session.run(ENVIRON).stdout)
            assert environ["CONDA_PREFIX"] == prefix and "VIRTUAL_ENV" not in environ

        # conda:inline through auto:conda, with the build's progress reaching the client.
        metadata = json.dumps({"conda": {"dependencies": ["runtimed-test-hello 1.*"]}})
        progress: list[str] = []
        with daemon.session("inline-1") as session:
            session.connect()
            session.set_metadata("runt", metadata)
            session.start_kernel(
                env_source="auto:conda",
                on_progress=lambda kernel: progress.append(kernel.get("progress") or ""),
            )
            assert session.env_source == "conda:inline"
            inline_prefix, version = kernel_report(session)
            assert version == "1.0.0"
            assert Path(inline_prefix).name.startswith("conda-inline-")
        # Progress is a field of the runtime state: the client sees the latest step of each sync,
        # so a quick step may be passed over; every step is in the daemon's log.
        assert any(p.startswith("Linking packages") for p in progress), progress
        assert "inline-1: Solving metadata.runt.conda" in daemon.log()

        # The same spec in another notebook reuses the cached env.
        with daemon.session("inline-2") as session:
            session.connect()
            session.set_metadata("runt", metadata)
            started = time.monotonic()
            session.start_kernel(env_source="conda:inline")
            reused_in = time.monotonic() - started
            assert kernel_report(session) == [inline_prefix, "1.0.0"]
        assert reused_in < 10, f"the second start took {reused_in:.1f} s"
        assert "conda:inline reuses" in daemon.log()

        # auto finds environment.yml (with a pip: section) and pixi.toml next to the notebook.
        wheel = make_wheel(
            tmp_path / "wheels",
            "runtimed-test-pip-extra",
            "0.3.0",
            {"runtimed_test_pip_extra/__init__.py": "VALUE = 42\n"},
        )
        yml_project = tmp_path / "yml-project"
        (yml_project / ".git").mkdir(parents=True)
        (yml_project / "environment.yml").write_text(
            f"channels: [{conda_channel.url}]\n"
            f"dependencies:\n  - runtimed-test-hello=2\n  - pip:\n      - {wheel.as_uri()}\n"
        )
        pixi_project = tmp_path / "pixi-project"
        (pixi_project / ".git").mkdir(parents=True)
        (pixi_project / "pixi.toml").write_text(
            f'[workspace]\nchannels = ["{conda_channel.url}"]\n'
            '[dependencies]\nruntimed-test-hello = "1.*"\n'
        )
        for project, source, version in (
            (yml_project, "conda:env_yml", "2.0.0"),
            (pixi_project, "conda:pixi", "1.0.0"),
        ):
            with daemon.session(source.replace(":", "-")) as session:
                session.start_kernel(notebook_path=str(project / "analysis.ipynb"))
                assert session.env_source == source
                prefix, got = kernel_report(session)
                assert (Path(prefix).parent, got) == (envs, version)
                assert Path(prefix).name.startswith(f"conda-{source.split(':')[1]}-")
                if source == "conda:env_yml":
                    assert kernel_report(
                        session, "import runtimed_test_pip_extra as m; print(m.VALUE)"
                    ) == ["42"]

        # An unsatisfiable spec fails that start, quoting the solver; other notebooks carry on.
        with daemon.session("unsatisfiable") as session:
            session.connect()
            session.set_metadata(
                "runt", json.dumps({"conda": {"dependencies": ["runtimed-test-hello >=99"]}})
            )
            with pytest.raises(
                EnvironmentFailed, match="No candidates were found for runtimed-test-hello >=99"
            ):
                session.start_kernel(env_source="conda:inline")
        with daemon.session("after-failure") as session:
            session.start_kernel(env_source="conda:prewarmed")
            assert session.run("print(6 * 7)").stdout == "42\n"
    except BaseException:
        print(daemon.log()[-30000:])  # pytest shows it with the failure
        raise


@pytest.mark.slow
def test_a_conda_kernel_runs_with_its_envs_activation(
    runtimed_daemon_factory: Callable[..., DaemonProcess], conda_env: dict[str, str]
) -> None:
    daemon = runtimed_daemon_factory(
        pool_sizes={"uv": 0}, env=conda_env, extra_args=["--conda-pool-size", "0"]
    )
    try:
        with daemon.session("activation") as session:
            session.connect()
            session.set_metadata("runt", json.dumps({"conda": {"dependencies": [ACTIVATION]}}))
            session.start_kernel(env_source="conda:inline")
            result = session.run(ENVIRON)
            assert result.success, result.error
            prefix, environ = json.loads(result.stdout)
    except BaseException:
        print(daemon.log()[-30000:])  # pytest shows it with the failure
        raise
    assert Path(prefix).name.startswith("conda-inline-")
    assert environ["CONDA_PREFIX"] == prefix
    assert environ["CONDA_DEFAULT_ENV"] == prefix and environ["CONDA_SHLVL"] == "1"
    assert environ[ACTIVATED_VAR] == f"{prefix}/share/{ACTIVATION}", "from its activate.d script"
    assert environ[ENV_VARS_VAR] == ENV_VARS_VALUE, "from its env_vars.d file"
    assert "VIRTUAL_ENV" not in environ, "a conda env is no venv (and the daemon's must not leak)"
    path = environ["PATH"].split(":")
    assert path[:2] == [f"{prefix}/bin", f"{prefix}/share/{ACTIVATION}/bin"]
    assert path.count(f"{prefix}/bin") == 1
    assert path[2:] == daemon.env["PATH"].split(":"), "then the daemon's PATH"


@pytest.mark.slow
def test_an_unreachable_channel_is_reported_by_status_and_list_rooms(
    runtimed_daemon_factory: Callable[..., DaemonProcess], rattler_cache: Path
) -> None:
    """conda-forge out of reach: `runtimed status` says so (with the next retry), instead of
    "1 warming" forever; a notebook that asked for a conda env shows the error in list-rooms."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        channel = f"http://127.0.0.1:{sock.getsockname()[1]}/conda-forge"
    daemon = runtimed_daemon_factory(
        pool_sizes={"uv": 0, "conda": 1}, hot_kernels=0,
        env={"RUNTIMED_CONDA_CHANNELS": channel, "RATTLER_CACHE_DIR": str(rattler_cache)})
    client = daemon.client()
    wait_until(lambda: client.status()["conda_error"] is not None, "the conda build's error", 30)
    status = client.status()
    assert (status["conda_available"], status["conda_warming"]) == (0, 0)
    assert status["conda_error"].startswith(f"conda channel '{channel}' cannot be reached")
    assert 0 < status["conda_retry_in"] <= 5
    text = subprocess.run([sys.executable, "-m", "runtimed", "status", "--socket",
                           str(daemon.socket_path)], capture_output=True, text=True, check=True,
                          timeout=60).stdout
    [line] = [line for line in text.splitlines() if line.startswith("conda:")]
    assert line.startswith(f"conda: 0 available, 0 warming; error: conda channel '{channel}' "
                           "cannot be reached") and line.endswith(" s)") and "(retry in " in line

    with daemon.session("wants-conda") as session:
        with pytest.raises(EnvironmentFailed, match="cannot be reached"):
            session.start_kernel(env_source="conda:prewarmed")
        [room] = [r for r in client.list_rooms() if r["notebook_id"] == "wants-conda"]
        assert room["kernel_status"] == "error" and "cannot be reached" in room["kernel_error"]
        table = subprocess.run([sys.executable, "-m", "runtimed", "list-rooms", "--socket",
                                str(daemon.socket_path)], capture_output=True, text=True,
                               check=True, timeout=60).stdout
        assert "    error: The conda pool could not build an environment" in table
