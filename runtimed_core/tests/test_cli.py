"""The `runtimed` command against a real daemon."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import runtimed
from runtimed.testing import wait_until

pytestmark = pytest.mark.slow


def _cli(daemon, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtimed", *args, "--socket", str(daemon.socket_path)],
                          capture_output=True, text=True, check=check, timeout=120)


def test_data_commands_text_and_json(runtimed_daemon, runtimed_session):
    runtimed_session.start_kernel()
    pid = runtimed_daemon.process.pid
    assert _cli(runtimed_daemon, "ping").stdout.strip() == f"pong (runtimed {runtimed.__version__}, pid {pid})"
    assert json.loads(_cli(runtimed_daemon, "ping", "--json").stdout) == {
        "ok": True, "version": runtimed.__version__, "pid": pid}
    status = json.loads(_cli(runtimed_daemon, "status", "--json").stdout)
    assert {"uv_available", "uv_warming", "conda_available", "conda_warming"} <= set(status)
    assert (status["version"], status["pid"]) == (runtimed.__version__, pid)
    assert status["uv_error"] is None and status["uv_retry_in"] is None
    text = _cli(runtimed_daemon, "status").stdout
    assert f"daemon: runtimed {runtimed.__version__}, pid {pid}" in text and "uv:" in text
    rooms = json.loads(_cli(runtimed_daemon, "list-rooms", "--json").stdout)
    [room] = [r for r in rooms if r["notebook_id"] == runtimed_session.notebook_id]
    assert room["active_peers"] == 1 and room["has_kernel"] and room["env_source"] == "uv:prewarmed"
    assert room["kernel_error"] is None and room["connection_file"] == runtimed_session.connection_file
    table = _cli(runtimed_daemon, "list-rooms").stdout
    assert runtimed_session.notebook_id[:40] in table and "uv:prewarmed" in table


def test_version():
    out = subprocess.run([sys.executable, "-m", "runtimed", "--version"], capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.strip() == f"runtimed {runtimed.__version__}"


def test_read_only_commands_never_start_a_daemon(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNTIMED_NO_AUTOSTART", raising=False)  # they could start one: they do not
    sock = tmp_path / "none.sock"
    env = {**os.environ, "RUNTIMED_SOCKET_PATH": str(sock), "RUNTIMED_CACHE_DIR": str(tmp_path / "c"),
           "RUNTIMED_LOG_DIR": str(tmp_path / "logs")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runtimed", *args], capture_output=True,
                              text=True, timeout=60, env=env)

    for command in ("status", "list-rooms", "ping"):
        result = cli(command)
        assert result.returncode == 3, (command, result.stderr)
        assert result.stdout == f"not running (no daemon at {sock})\n" and result.stderr == ""
        as_json = json.loads(cli(command, "--json").stdout)
        assert as_json["running"] is False and as_json["socket_path"] == str(sock)
        assert as_json["error"]["type"] == "DaemonNotRunning"
    assert cli("plugins").returncode == 0  # needs no daemon at all
    flush = cli("flush")  # not read-only, but nothing to flush without a daemon
    assert flush.returncode == 3 and flush.stderr.startswith("runtimed: error: No runtimed daemon")
    assert len(flush.stderr.strip().splitlines()) == 1
    assert not sock.exists() and not (tmp_path / "logs").exists(), "no daemon was started"


def test_cli_hygiene(tmp_path):
    sock = str(tmp_path / "none.sock")
    # -v after the subcommand: accepted, and it means a traceback
    verbose = subprocess.run([sys.executable, "-m", "runtimed", "status", "--socket", sock, "-v"],
                             capture_output=True, text=True, timeout=60)
    assert verbose.returncode != 0 and "Traceback" in verbose.stderr
    assert "unrecognized arguments" not in verbose.stderr
    # errors as JSON with --json (a bad configuration file here), nothing on stderr
    config = tmp_path / "runtimed.toml"
    config.write_text("hot_kernels = 'many'\n")
    bad = subprocess.run([sys.executable, "-m", "runtimed", "config", "--json"], capture_output=True,
                         text=True, timeout=60, env={**os.environ, "RUNTIMED_CONFIG_FILE": str(config)})
    assert bad.returncode == 1 and bad.stderr == ""
    error = json.loads(bad.stdout)["error"]
    assert error["type"] == "ConfigError" and "hot_kernels = 'many'" in error["message"]
    # a reader that went away (`runtimed plugins --json | head -1`): no traceback
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        closed = subprocess.run([sys.executable, "-m", "runtimed", "plugins", "--json"],
                                stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert closed.returncode == 141 and closed.stderr == ""
    piped = subprocess.run(f"{sys.executable} -m runtimed plugins --json | head -1", shell=True,
                           capture_output=True, text=True, timeout=60)
    assert piped.stdout == "[\n" and piped.stderr == ""


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
