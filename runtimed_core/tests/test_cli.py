"""The `runtimed` command against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runtimed.testing import wait_until

pytestmark = pytest.mark.slow


def _cli(daemon, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtimed", *args, "--socket", str(daemon.socket_path)],
                          capture_output=True, text=True, check=check, timeout=120)


def test_data_commands_text_and_json(runtimed_daemon, runtimed_session):
    runtimed_session.start_kernel()
    assert _cli(runtimed_daemon, "ping").stdout.strip() == "pong"
    status = json.loads(_cli(runtimed_daemon, "status", "--json").stdout)
    assert {"uv_available", "uv_warming", "conda_available", "conda_warming"} <= set(status)
    assert "uv:" in _cli(runtimed_daemon, "status").stdout
    rooms = json.loads(_cli(runtimed_daemon, "list-rooms", "--json").stdout)
    [room] = [r for r in rooms if r["notebook_id"] == runtimed_session.notebook_id]
    assert room["active_peers"] == 1 and room["has_kernel"] and room["env_source"] == "uv:prewarmed"
    table = _cli(runtimed_daemon, "list-rooms").stdout
    assert runtimed_session.notebook_id[:40] in table and "uv:prewarmed" in table


def test_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNTIMED_NO_AUTOSTART", "1")
    result = subprocess.run([sys.executable, "-m", "runtimed", "status", "--socket", str(tmp_path / "none.sock")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("runtimed: error: No runtimed daemon is running")
    ping = subprocess.run([sys.executable, "-m", "runtimed", "ping", "--socket", str(tmp_path / "none.sock")],
                          capture_output=True, text=True, timeout=60)
    assert ping.returncode == 1 and ping.stdout.strip() == "no daemon"


def test_flush_and_shutdown(runtimed_daemon_factory, tmp_path):
    daemon = runtimed_daemon_factory(tmp_path / "d", pool_sizes={"uv": 1})

    def envs() -> set[str]:
        return {p.name for p in (daemon.cache_dir / "envs").iterdir() if p.name.startswith("uv-prewarmed-")}

    def settled(old: set[str]) -> bool:
        status = daemon.client().status()
        return status["uv_available"] == 1 and status["hot_available"] == 1 and not envs() & old

    wait_until(lambda: settled(set()), "the pool and the hot kernel", timeout=240)
    before = envs()  # the ready env and the hot kernel's env
    assert len(before) == 2
    _cli(daemon, "flush")
    # both rebuilt: the idle hot kernel was retired with its env
    wait_until(lambda: settled(before), "fresh envs for the pool and the hot kernel", timeout=240)
    assert len(envs()) == 2
    assert "UV pool: 1/1 available" in daemon.log()
    _cli(daemon, "shutdown")
    assert daemon.process.wait(30) == 0
    assert not daemon.socket_path.exists()


def test_exec_prints_outputs_and_exit_status(runtimed_daemon):
    ok = _cli(runtimed_daemon, "exec", "import sys; print('out'); print('err', file=sys.stderr); 6 * 7")
    assert ok.stdout == "out\n42\n" and ok.stderr == "err\n"
    bad = _cli(runtimed_daemon, "exec", "1/0", check=False)
    assert bad.returncode == 1 and "ZeroDivisionError" in bad.stderr
    as_json = json.loads(_cli(runtimed_daemon, "exec", "print(1)", "--json").stdout)
    assert as_json["success"] and as_json["env_source"] == "uv:prewarmed"
    assert as_json["outputs"][0]["text"] == "1\n"


def test_plugin_settings_are_flags_and_bad_values_one_line(tmp_path):
    run_help = subprocess.run([sys.executable, "-m", "runtimed", "run", "--help"],
                              capture_output=True, text=True, check=True, timeout=60).stdout
    for flag, var in (("--uv-pool-size", "RUNTIMED_UV_POOL_SIZE"),
                      ("--conda-pool-size", "RUNTIMED_CONDA_POOL_SIZE"),
                      ("--conda-channels", "RUNTIMED_CONDA_CHANNELS")):
        assert flag in run_help and var in run_help
    base = [sys.executable, "-m", "runtimed", "run", "--socket", str(tmp_path / "d.sock"),
            "--cache-dir", str(tmp_path / "cache"), "--state-dir", str(tmp_path / "state")]
    for args, env, name in ((["--uv-pool-size", "two"], {}, "--uv-pool-size"),
                            ([], {"RUNTIMED_CONDA_POOL_SIZE": "many"}, "RUNTIMED_CONDA_POOL_SIZE")):
        result = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60,
                                env={**os.environ, **env})
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"runtimed: error: {name}=") and "not a valid value" in lines[0]
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "d.sock").exists()
