"""The configuration file: the same settings as the environment variables, flags > env > file >
defaults, `runtimed config` shows each value and where it came from, bad values are one line.
And CONDUCTOR_WORKSPACE_PATH: a daemon of its own per worktree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import runtimed
from runtimed import configfile, paths
from runtimed.config import CORE_SETTINGS, DaemonConfig, effective
from runtimed.errors import ConfigError
from runtimed.plugins import Registry


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "runtimed.toml"
    monkeypatch.setenv("RUNTIMED_CONFIG_FILE", str(path))
    for setting in CORE_SETTINGS:  # the developer's own variables must not decide these tests
        monkeypatch.delenv(setting.env_var(""), raising=False)
    monkeypatch.delenv("RUNTIMED_UV_POOL_SIZE", raising=False)
    return path


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtimed", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


def _rows(*args: str, env: dict[str, str] | None = None) -> dict[str, dict]:
    out = _cli("config", "--json", *args, env=env)
    assert out.returncode == 0, out.stderr
    return {row["key"]: row for row in json.loads(out.stdout)["settings"]}


def test_the_default_location_is_the_user_config_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("RUNTIMED_CONFIG_FILE")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert configfile.path() == tmp_path / "xdg" / "runt" / "runtimed.toml"


def test_precedence_flags_env_file_defaults(config_file, monkeypatch):
    config_file.write_text('hot_kernels = 3\nlog_level = "debug"\ndefault_packages = ["six", "attrs"]\n'
                           "[uv]\npool_size = 5\n")
    monkeypatch.setenv("RUNTIMED_LOG_LEVEL", "warning")
    config = DaemonConfig()
    assert (config.hot_kernels, config.log_level, config.default_packages) == (3, "warning", ["six", "attrs"])
    assert config.keep_alive_secs == 30.0  # the default
    assert DaemonConfig(hot_kernels=7).hot_kernels == 7  # a flag wins
    uv = next(s for ns, s, _ in Registry.load().declared_settings() if (ns, s.name) == ("uv", "pool_size"))
    assert DaemonConfig().resolve_setting("uv", uv) == 5

    rows = _rows("--hot-kernels", "9", env={"RUNTIMED_UV_POOL_SIZE": "4"})
    assert (rows["hot_kernels"]["value"], rows["hot_kernels"]["source"]) == (9, "flag")
    assert (rows["uv.pool_size"]["value"], rows["uv.pool_size"]["source"]) == (4, "env RUNTIMED_UV_POOL_SIZE")
    assert (rows["log_level"]["value"], rows["log_level"]["source"]) == ("warning", "env RUNTIMED_LOG_LEVEL")
    assert (rows["default_packages"]["value"], rows["default_packages"]["source"]) == (
        ["six", "attrs"], f"file {config_file}")
    assert (rows["keep_alive_secs"]["value"], rows["keep_alive_secs"]["source"]) == (30.0, "default")
    assert rows["conda.channels"]["value"] == ["conda-forge"], "every plugin's settings are listed"
    assert rows["uv.pool_size"]["env"] == "RUNTIMED_UV_POOL_SIZE"
    assert set(rows) >= {s.name for s in CORE_SETTINGS}
    assert rows["uv.pool_size"]["plugin"] == "UvPool"
    assert _rows("--uv-pool-size", "8")["uv.pool_size"]["source"] == "flag"

    text = _cli("config").stdout.splitlines()
    assert text[0] == f"config file: {config_file}"
    assert any(line.split() == ["hot_kernels", "3", "file"] for line in text)
    assert any(line.split() == ["keep_alive_secs", "30.0", "default"] for line in text)


def test_the_file_is_read_again_when_it_changes(config_file):
    config_file.write_text("hot_kernels = 2\n")
    assert DaemonConfig().hot_kernels == 2
    config_file.write_text("hot_kernels = 12\n")
    assert DaemonConfig().hot_kernels == 12


def test_clients_take_the_socket_from_the_file(config_file, tmp_path):
    config_file.write_text(f'socket_path = "{tmp_path / "elsewhere.sock"}"\n')
    assert paths.socket_path() == tmp_path / "elsewhere.sock"
    assert runtimed.Session().notebook_id.startswith("agent-session-")
    assert runtimed.DaemonClient()._async.socket_path == tmp_path / "elsewhere.sock"
    config_file.write_text(f'cache_dir = "{tmp_path / "c"}"\n')
    assert paths.socket_path() == tmp_path / "c" / "runtimed.sock", "derived from cache_dir"


@pytest.mark.parametrize(("text", "message"), [
    ("hot_kernels = 'many'\n", "hot_kernels = 'many' is not a valid value for hot_kernels"),
    ("[uv]\npool_size = 'two'\n", "uv.pool_size = 'two' is not a valid value for uv.pool_size"),
    ("log_level = 'loud'\n", "log_level = 'loud' is not a valid value for log_level: expected debug"),
    ("[conda]\nchannels = [1, 2]\n", "conda.channels = [1, 2] is not a valid value"),
    ("hot_kernel = 1\n", "unknown setting hot_kernel"),
    ("[uv]\npool_sizes = 1\n", "unknown setting uv.pool_sizes"),
    ("hot_kernels = \n", "not valid TOML"),
    ("cache_dir = 'relative/dir'\n", "expected an absolute path"),
])
def test_a_bad_value_is_one_line_naming_the_key(config_file, tmp_path, text, message):
    config_file.write_text(text)
    isolated = {f"XDG_{d}_HOME": str(tmp_path / d.lower()) for d in ("CACHE", "STATE")}
    for args in (["config"], ["run", "--socket", str(tmp_path / "d.sock")]):
        result = _cli(*args, env=isolated)
        assert result.returncode == 1, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"runtimed: error: {config_file}: ") and message in lines[0], lines
    assert not (tmp_path / "d.sock").exists()


def test_a_socket_path_too_long_for_a_unix_socket_says_so(tmp_path):
    long = tmp_path / ("s" * 120 + ".sock")
    result = _cli("run", "--socket", str(long))
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "more than a Unix socket allows (103); set RUNTIMED_SOCKET_PATH" in result.stderr
    with pytest.raises(ConfigError, match="more than a Unix socket allows"):
        runtimed.Session(socket_path=long).connect()


def test_a_table_no_installed_plugin_declares_is_reported_not_fatal(config_file):
    config_file.write_text("[someplugin]\nknob = 1\n")
    out = _cli("config")
    assert out.returncode == 0
    assert "[someplugin] in the file is not used: no installed plugin declares it" in out.stdout
    with pytest.raises(ConfigError, match="unknown setting nonsense"):
        config_file.write_text("nonsense = 1\n")
        from runtimed.config import check_file

        check_file([])


def test_effective_lists_core_then_plugin_settings(config_file):
    rows = effective(Registry.load().declared_settings())
    keys = [r["key"] for r in rows]
    assert keys[: len(CORE_SETTINGS)] == [s.name for s in CORE_SETTINGS]
    assert all("." in key for key in keys[len(CORE_SETTINGS):])


# -- CONDUCTOR_WORKSPACE_PATH ----------------------------------------------------------------------


@pytest.fixture
def fresh_user(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A user with nothing set: platformdirs' defaults, under a short temporary directory
    (a socket's path must stay short)."""
    tmp_path = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    for var in ("SOCKET_PATH", "CACHE_DIR", "STATE_DIR", "BLOB_STORE_DIR", "LOG_DIR", "RUNTIME_DIR",
                "NO_AUTOSTART"):
        monkeypatch.delenv(f"RUNTIMED_{var}", raising=False)
    for xdg in ("CACHE", "STATE", "CONFIG", "RUNTIME"):
        monkeypatch.setenv(f"XDG_{xdg}_HOME" if xdg != "RUNTIME" else "XDG_RUNTIME_DIR",
                           str(tmp_path / xdg.lower()))
    monkeypatch.setenv("RUNTIMED_UV_POOL_SIZE", "0")
    monkeypatch.setenv("RUNTIMED_HOT_KERNELS", "0")
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_each_conductor_workspace_has_its_own_directories(fresh_user, monkeypatch):
    plain = paths.socket_path()
    assert plain == fresh_user / "cache" / "runt" / "runtimed.sock"
    monkeypatch.setenv("CONDUCTOR_WORKSPACE_PATH", "/work/trees/feature-x")
    key = paths.workspace_key()
    assert key is not None and key.startswith("feature-x-") and len(key) == len("feature-x-") + 12
    monkeypatch.setenv("CONDUCTOR_WORKSPACE_PATH", "/work/trees/" + "n" * 100)
    assert len(paths.workspace_key()) == 16 + 1 + 12, "short: it is part of the socket's path"
    monkeypatch.setenv("CONDUCTOR_WORKSPACE_PATH", "/work/trees/feature-x")
    assert paths.socket_path() == fresh_user / "cache" / "runt" / "worktrees" / key / "runtimed.sock"
    assert paths.state_dir() == fresh_user / "state" / "runt" / "worktrees" / key
    assert paths.runtime_dir() == fresh_user / "runtime" / "runt" / "worktrees" / key
    monkeypatch.setenv("CONDUCTOR_WORKSPACE_PATH", "/work/trees/feature-y")
    assert paths.workspace_key() != key
    monkeypatch.setenv("RUNTIMED_SOCKET_PATH", "/tmp/explicit.sock")
    assert paths.socket_path() == Path("/tmp/explicit.sock"), "an explicit setting wins"


@pytest.mark.slow
def test_a_conductor_worktree_gets_a_daemon_of_its_own(fresh_user, monkeypatch):
    clients = {}
    try:
        for name in ("tree-a", "tree-b"):
            monkeypatch.setenv("CONDUCTOR_WORKSPACE_PATH", str(fresh_user / name))
            assert paths.workspace_key() in str(paths.socket_path())
            # bound to this worktree's socket now (the variable changes below)
            clients[name] = runtimed.DaemonClient(socket_path=paths.socket_path())
            with runtimed.Session() as session:
                session.connect()  # starts this worktree's daemon
        a, b = clients["tree-a"], clients["tree-b"]
        assert a.ping() and b.ping()
        assert a.info()["pid"] != b.info()["pid"]
    finally:
        for client in clients.values():
            if client.is_running():
                client.shutdown()  # returns once it is gone
