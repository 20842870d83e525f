"""A daemon left running from another version (an older install, say) is noticed: replaced when
it has no running kernels, else left serving with a warning that says how to restart it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import runtimed
from runtimed.client import connection
from runtimed.pytest_plugin import DaemonProcess

pytestmark = pytest.mark.slow

#: `runtimed run` as an older install of runtimed would run it (it reports version 0.0.1).
OLD_DAEMON = ("import sys, runtimed.version; runtimed.version.__version__ = '0.0.1'; "
              "from runtimed.cli import main; sys.exit(main(sys.argv[1:]))")


def old_daemon(tmp_path, monkeypatch) -> DaemonProcess:
    daemon = DaemonProcess(tmp_path / "old", pool_sizes={"uv": 1}, hot_kernels=0)
    daemon.command = [sys.executable, "-c", OLD_DAEMON]
    daemon.start()
    for name, value in daemon.environ().items():  # an auto-started successor stays isolated
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(connection, "_version_checked", set())  # a fresh client process
    return daemon


def test_a_daemon_of_another_version_without_kernels_is_replaced(tmp_path, monkeypatch):
    daemon = old_daemon(tmp_path, monkeypatch)
    client = runtimed.DaemonClient()
    try:
        assert client.info() == {"version": "0.0.1", "pid": daemon.process.pid}
        status = subprocess.run([sys.executable, "-m", "runtimed", "status"], capture_output=True,
                                text=True, check=True, timeout=60).stdout
        assert f"daemon: runtimed 0.0.1, pid {daemon.process.pid} (this client is runtimed " \
               f"{runtimed.__version__}: `runtimed shutdown`" in status
        with runtimed.Session() as session:
            session.connect()  # finds 0.0.1 with nothing running: stops it, starts its own
        assert daemon.process.wait(30) == 0, "the old daemon was shut down cleanly"
        assert client.info()["version"] == runtimed.__version__
        assert client.info()["pid"] != daemon.process.pid
    finally:
        if client.ping():
            client.shutdown()
        daemon.stop()


def test_a_daemon_of_another_version_with_kernels_keeps_serving_and_says_so(tmp_path, monkeypatch):
    daemon = old_daemon(tmp_path, monkeypatch)
    try:
        # someone's kernel runs there (a client that may not start daemons does not replace it)
        subprocess.run([sys.executable, "-m", "runtimed", "exec", "--notebook-id", "busy", "x = 1"],
                       check=True, timeout=180, env={**os.environ, "RUNTIMED_NO_AUTOSTART": "1"})
        with pytest.warns(runtimed.RuntimedWarning) as warned:
            session = runtimed.Session()
            session.connect()
        [warning] = warned.list
        message = str(warning.message)
        assert f"is runtimed 0.0.1; this client is runtimed {runtimed.__version__}" in message
        assert f"`runtimed shutdown --socket {daemon.socket_path}`" in message
        assert "1 running kernel(s)" in message
        session.close()
        second = runtimed.Session()
        second.connect()  # warned once per process, not at every connection
        second.close()
        assert daemon.process.poll() is None and runtimed.DaemonClient().info()["version"] == "0.0.1"
    finally:
        daemon.stop()
