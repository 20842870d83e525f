"""The daemon as a process: bad input, single instance, persistence, restarts, eviction, auto-start."""

from __future__ import annotations

import fcntl
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import time

import pytest

import runtimed
from runtimed.document.replica import Replica, SyncState
from runtimed.document.runtime_state import read_execution, read_kernel
from runtimed.protocol.framing import PREAMBLE, FrameDecoder
from runtimed.protocol.messages import STATE_SYNC, encode_handshake
from runtimed.testing import wait_until

pytestmark = pytest.mark.slow


def _raw(daemon, data: bytes, *, read: bool = True) -> bytes:
    """Send raw bytes on a fresh connection; return whatever the daemon answers before closing."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(daemon.socket_path))
        sock.sendall(data)
        chunks = []
        while read:
            try:
                chunk = sock.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", None),  # garbage: just closed
        (b"\xc0\xde\x01\xac\x09", None),  # wrong protocol version
        (PREAMBLE + struct.pack(">I", 0), b"Empty frame"),
        (PREAMBLE + struct.pack(">I", 10_000_000) + b"{", b"exceeds"),  # oversized handshake
        (PREAMBLE + _frame(b"not json"), b"not JSON"),
        (PREAMBLE + _frame(encode_handshake("teleport")), b"Unknown channel"),
        (PREAMBLE + _frame(encode_handshake("pool")) + _frame(b'{"id": 1, "type": "explode"}'),
         b"Unknown pool request"),
    ],
)
def test_bad_input_gets_an_error_and_others_keep_working(runtimed_daemon, runtimed_session, data, expected):
    runtimed_session.start_kernel()
    reply = _raw(runtimed_daemon, data)
    if expected is not None:
        assert expected in reply
    # the daemon and the other client are unaffected
    assert runtimed_daemon.client().ping()
    assert runtimed_session.run("print('still here')").stdout == "still here\n"


def test_truncated_frame_and_bad_sync_messages(runtimed_daemon, runtimed_session):
    _raw(runtimed_daemon, PREAMBLE + struct.pack(">I", 100) + b"{partial", read=False)
    hs = _frame(encode_handshake("notebook_sync", notebook_id="victim"))
    reply = _raw(runtimed_daemon, PREAMBLE + hs + _frame(b"\x00garbage-sync-message"))
    assert b"Malformed notebook sync message" in reply
    reply = _raw(runtimed_daemon, PREAMBLE + hs + _frame(b"\x01{\"id\": 7, \"type\": \"warp\"}"))
    assert b"Unknown request" in reply
    assert runtimed_session.run("print(1)").stdout == "1\n"


def test_socket_permissions_and_single_instance(runtimed_daemon):
    mode = stat.S_IMODE(os.stat(runtimed_daemon.socket_path).st_mode)
    assert mode == 0o600
    second = subprocess.run(
        [sys.executable, "-m", "runtimed", "run", *runtimed_daemon.args],
        capture_output=True, text=True, timeout=60, env=runtimed_daemon.env,
    )
    assert second.returncode != 0
    assert "already running" in second.stderr
    assert runtimed_daemon.client().ping()


def test_sigkill_loses_no_edit_and_sessions_reconnect(runtimed_daemon_factory, tmp_path):
    daemon = runtimed_daemon_factory(tmp_path / "d", pool_sizes={"uv": 1})
    s = daemon.session("survivor")
    s.connect()
    ids = [s.create_cell(f"x = {i}") for i in range(3)]
    s.set_source(ids[0], "x = 'edited'")
    s.start_kernel()  # a round trip: every edit above is acknowledged by the daemon
    daemon.kill()
    daemon.start()
    # a brand-new client sees the cells the daemon persisted
    fresh = daemon.session("survivor")
    fresh.connect()
    assert [c.id for c in fresh.get_cells()] == ids
    assert fresh.get_cell(ids[0]).source == "x = 'edited'"
    # the old session reconnects by itself and keeps working
    assert s.run("print('back')").stdout == "back\n"
    assert [c.id for c in s.get_cells()][:3] == ids
    fresh.close()
    s.__exit__(None, None, None)


def test_corrupt_document_is_moved_aside(runtimed_daemon_factory, tmp_path):
    daemon = runtimed_daemon_factory(tmp_path / "d", pool_sizes={"uv": 0})
    s = daemon.session("fragile")
    s.connect()
    s.create_cell("precious = 1")
    s.close()
    daemon.client().shutdown()
    daemon.process.wait(30)
    [snapshot] = list((daemon.state_dir / "notebooks").glob("*.automerge"))
    snapshot.write_bytes(b"this is not automerge")
    daemon.start()
    s2 = daemon.session("fragile")
    s2.connect()
    assert s2.get_cells() == []  # a fresh document...
    aside = list((daemon.state_dir / "notebooks").glob("*.corrupt-*"))
    assert b"this is not automerge" in [p.read_bytes() for p in aside]  # ...and nothing dropped
    assert "moved it to" in daemon.log()
    s2.close()


class _RawStateClient:
    """A minimal protocol client that syncs only the runtime-state document, when told to."""

    def __init__(self, daemon, notebook_id: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # falls behind quickly
        self.sock.connect(str(daemon.socket_path))
        self.sock.sendall(PREAMBLE + _frame(encode_handshake("notebook_sync", notebook_id=notebook_id)))
        self.decoder, self.state, self.sync = FrameDecoder(expect_preamble=False), Replica(), SyncState()
        self.sock.settimeout(5)

    def pump(self, until) -> None:
        """Read and answer the daemon's state sync messages until ``until(state)`` holds."""
        while not until(self.state):
            for payload in self.decoder.feed(self.sock.recv(1 << 20)):
                if payload[:1] == bytes([STATE_SYNC]):
                    self.state.receive(self.sync, payload[1:])
            if (reply := self.state.generate(self.sync)) is not None:
                self.sock.sendall(_frame(bytes([STATE_SYNC]) + reply))


def test_a_peer_that_stops_reading_holds_up_no_one_and_catches_up(runtimed_daemon_factory, tmp_path):
    daemon = runtimed_daemon_factory(tmp_path / "d", pool_sizes={"uv": 1})
    s = daemon.session("shared")
    s.start_kernel()
    slow = _RawStateClient(daemon, "shared")
    slow.pump(lambda state: read_kernel(state).get("lifecycle") == "running")  # in sync; now it stops reading
    result = s.run("for i in range(50_000): print(f'{i:08d}' * 12)")  # ~5 MB of output
    assert result.success and result.stdout.count("\n") == 50_000
    assert s.run("6 * 7").outputs[0].data["text/plain"] == "42"
    [room] = [r for r in daemon.client().list_rooms() if r["notebook_id"] == "shared"]
    assert room["active_peers"] == 2  # not dropped: it gets what it lacks once it reads again

    def done(state) -> bool:
        ex = read_execution(state, result.execution_id)
        return ex is not None and ex["status"] == "done"

    slow.pump(done)
    ex = read_execution(slow.state, result.execution_id)
    assert "".join(o.get("text", "") for o in ex["outputs"]).count("\n") == 50_000
    slow.sock.close()


def test_idle_room_is_evicted_after_keep_alive(runtimed_daemon_factory, tmp_path):
    daemon = runtimed_daemon_factory(tmp_path / "d", pool_sizes={"uv": 1}, keep_alive_secs=1.0)
    s = daemon.session("short-lived")
    s.start_kernel()
    s.run("1")
    s.close()  # disconnect without shutting the kernel down
    assert any(r["notebook_id"] == "short-lived" for r in daemon.client().list_rooms())
    deadline = time.monotonic() + 10
    while any(r["notebook_id"] == "short-lived" for r in daemon.client().list_rooms()):
        assert time.monotonic() < deadline, "room was not evicted"
        time.sleep(0.1)
    assert "Evicting idle room short-lived" in daemon.log()


def test_autostart_and_no_autostart(tmp_path, monkeypatch):
    root = tmp_path / "auto"
    root.mkdir(mode=0o700)
    sock = root / "runtimed.sock"
    monkeypatch.setenv("RUNTIMED_SOCKET_PATH", str(sock))
    monkeypatch.setenv("RUNTIMED_CACHE_DIR", str(root / "cache"))
    monkeypatch.setenv("RUNTIMED_STATE_DIR", str(root / "state"))
    monkeypatch.setenv("RUNTIMED_LOG_DIR", str(root / "logs"))
    monkeypatch.setenv("RUNTIMED_UV_POOL_SIZE", "0")
    monkeypatch.setenv("RUNTIMED_NO_AUTOSTART", "1")
    with pytest.raises(runtimed.DaemonUnavailable, match="runtimed run"):
        runtimed.Session().connect()
    monkeypatch.delenv("RUNTIMED_NO_AUTOSTART")
    session = runtimed.Session()
    try:
        session.connect()  # starts a daemon in the background
        client = runtimed.DaemonClient()
        assert client.ping() and client.is_running()
        assert (root / "logs" / "runtimed.log").exists()
        first = client.info()["pid"]
        session.close()
        client.shutdown()
        assert not client.is_running(), "shutdown() returns once the daemon is gone"
        # A daemon that still holds the lock without listening (one stopping, say): the next
        # client waits for it to go, then starts its own (instead of "cannot connect").
        lock = os.open(sock.with_name(sock.name + ".lock"), os.O_RDWR)
        fcntl.flock(lock, fcntl.LOCK_EX)
        threading.Timer(0.5, os.close, [lock]).start()
        session = runtimed.Session()
        session.connect()
        assert client.info()["pid"] != first
    finally:
        session.close()
        runtimed.DaemonClient().shutdown()
    deadline = time.monotonic() + 20
    while runtimed.DaemonClient().is_running():
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_kernel_launch_failure_quotes_stderr(runtimed_daemon_factory, tmp_path):
    # no hot kernel: it would take the env (and start) before the test breaks it
    daemon = runtimed_daemon_factory(tmp_path / "d", pool_sizes={"uv": 1}, hot_kernels=0)
    daemon.wait_for_pool(1)
    [env] = [p for p in (daemon.cache_dir / "envs").iterdir() if p.name.startswith("uv-prewarmed-")]
    # break ipykernel inside the ready env: the kernel process dies at import. (Replace the
    # file, never write into it: uv hard-links it from its cache.)
    launcher = (env / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
                / "ipykernel_launcher.py")
    launcher.unlink()
    launcher.write_text("raise SystemExit('ipykernel is broken here')\n")
    s = daemon.session()
    with pytest.raises(runtimed.KernelLaunchFailed, match="ipykernel is broken here"):
        s.start_kernel()
    assert s.kernel_status()["lifecycle"] == "error"
    s.close()


def test_the_background_daemon_log_is_rotated(tmp_path):
    """`runtimed run --detach` (what auto-start runs) logs to <log dir>/runtimed.log, capped in
    size, with a few older files kept."""
    root = tmp_path / "rot"
    root.mkdir(mode=0o700)
    sock, logs = root / "d.sock", root / "logs"
    env = {**os.environ, "RUNTIMED_LOG_DIR": str(logs), "RUNTIMED_CACHE_DIR": str(root / "cache"),
           "RUNTIMED_STATE_DIR": str(root / "state"), "RUNTIMED_RUNTIME_DIR": str(root / "run"),
           "RUNTIMED_UV_POOL_SIZE": "0", "RUNTIMED_CONDA_POOL_SIZE": "0", "RUNTIMED_HOT_KERNELS": "0",
           "RUNTIMED_LOG_MAX_BYTES": "4000", "RUNTIMED_LOG_BACKUPS": "2"}
    started = subprocess.run([sys.executable, "-m", "runtimed", "run", "--detach", "--socket", str(sock),
                              "--log-level", "debug"], env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    assert started.stdout == started.stderr == "", "the detached daemon writes only to its log"
    client = runtimed.DaemonClient(socket_path=sock)
    try:
        for _ in range(200):  # every connection logs a line at debug level
            assert client.ping()
        wait_until(lambda: (logs / "runtimed.log.2").exists(), "two rotations")
    finally:
        client.shutdown()
        wait_until(lambda: not client.is_running(), "the daemon to stop", 20)
    names = sorted(p.name for p in logs.iterdir())
    assert names == ["runtimed.log", "runtimed.log.1", "runtimed.log.2"], names
    for name in names:
        assert (logs / name).stat().st_size <= 4000 + 500, name  # the cap, give or take a line
    assert "runtimed shutting down" in (logs / "runtimed.log").read_text()
    assert "runtimed listening on" not in (logs / "runtimed.log").read_text(), "rotated away"
