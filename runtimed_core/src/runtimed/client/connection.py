"""Client connections to the daemon: connect (auto-starting it), correlate requests and replies.

A client that may start a daemon first checks, once per process and socket, that
the daemon there is of its own version: one of another version (left running
from an older install, say) is stopped and replaced when it has no running
kernels; otherwise it keeps serving and a :class:`~runtimed.errors.RuntimedWarning`
says how to restart it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtimed import paths, version
from runtimed.errors import (
    DaemonNotRunning, DaemonUnavailable, NotConnected, ProtocolError, RuntimedError, RuntimedWarning,
    error_from_wire,
)
from runtimed.protocol.messages import RESPONSE, dumps, encode_handshake, loads, typed
from runtimed.protocol.transport import FramedProtocol

log = logging.getLogger(__name__)

AUTOSTART_TIMEOUT = 60.0
#: Longest a replaced daemon of another version may take to stop, in seconds.
REPLACE_TIMEOUT = 30.0
_ids = itertools.count(1)
#: Sockets whose daemon's version this process has checked.
_version_checked: set[str] = set()


def autostart_enabled() -> bool:
    """False with ``RUNTIMED_NO_AUTOSTART=1`` (or ``no_autostart = true`` in the config file)."""
    from runtimed.config import core

    return not core("no_autostart")


async def _open(socket_path: Path, on_frame: Callable[[bytes], None],
                on_close: Callable[[BaseException | None], None]) -> FramedProtocol:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_unix_connection(
        lambda: FramedProtocol(on_frame, on_close, expect_preamble=False), str(socket_path))
    proto.send_preamble()
    return proto


def start_daemon(socket_path: Path) -> None:
    """Start ``runtimed run --detach`` (it logs to ``<log dir>/runtimed.log``); return once it
    listens."""
    log_path = paths.log_dir() / "runtimed.log"
    result = subprocess.run(
        [sys.executable, "-m", "runtimed", "run", "--detach", "--socket", str(socket_path)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, close_fds=True,
        timeout=AUTOSTART_TIMEOUT,
    )
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-1:]
        # a concurrent client may have won the race: its daemon holds the lock and serves us
        if not any("already running" in line for line in tail):
            message = " ".join(tail).removeprefix("runtimed: error: ") or "no output"
            raise DaemonUnavailable(f"The runtimed daemon could not start: {message} (log: {log_path})")


async def check_version(socket_path: Path) -> None:
    """Once per process and socket: replace a daemon of another version that has no running
    kernels (else warn, once, how to restart it). Nothing happens if none runs there."""
    if str(socket_path) in _version_checked:
        return
    _version_checked.add(str(socket_path))
    try:
        info = await pool_request(socket_path, "ping", autostart=False)
        ours, theirs = version.__version__, info.get("version")
        if theirs == ours:
            return
        rooms = await pool_request(socket_path, "list_rooms", autostart=False)
    except RuntimedError:
        return  # nobody there (or gone meanwhile): the caller starts a daemon
    described = f"runtimed {theirs}" if theirs else "an older runtimed (it does not say its version)"
    running = [room["notebook_id"] for room in rooms if room.get("has_kernel")]
    if running:
        warnings.warn(
            f"The runtimed daemon at {socket_path} (pid {info.get('pid')}) is {described}; this "
            f"client is runtimed {ours}. It has {len(running)} running kernel(s), so it keeps "
            f"serving. Restart it once they are done: `runtimed shutdown --socket {socket_path}` "
            "(the next client starts the new version).", RuntimedWarning, stacklevel=2)
        return
    log.warning("Replacing the daemon at %s (pid %s, %s; no running kernels) with runtimed %s",
                socket_path, info.get("pid"), described, ours)
    try:
        await pool_request(socket_path, "shutdown", autostart=False)
    except RuntimedError:
        pass
    deadline = asyncio.get_running_loop().time() + REPLACE_TIMEOUT
    while daemon_lock_held(socket_path):
        if asyncio.get_running_loop().time() > deadline:
            raise DaemonUnavailable(f"The runtimed daemon at {socket_path} ({described}) was asked "
                                    f"to stop for runtimed {ours} but is still running")
        await asyncio.sleep(0.05)


def daemon_lock_held(socket_path: Path) -> bool:
    """Whether a daemon process holds ``socket_path``'s lock (is running, or still stopping)."""
    import fcntl

    lock = socket_path.with_name(socket_path.name + ".lock")
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


async def connect(socket_path: Path, on_frame: Callable[[bytes], None],
                  on_close: Callable[[BaseException | None], None], *, autostart: bool = True
                  ) -> FramedProtocol:
    """Connect to the daemon at ``socket_path``, starting one if there is none (and allowed:
    else :class:`DaemonNotRunning`)."""
    paths.check_socket_path(socket_path)
    may_start = autostart and autostart_enabled()
    if may_start:
        await check_version(socket_path)
    try:
        return await _open(socket_path, on_frame, on_close)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        first_error: OSError = exc
    if not may_start:
        hint = " (auto-start is off: RUNTIMED_NO_AUTOSTART=1)" if autostart else ""
        raise DaemonNotRunning(
            f"No runtimed daemon is running at {socket_path}{hint}. "
            f"Start one with `runtimed run --socket {socket_path}`.", socket_path=str(socket_path),
        ) from first_error
    loop = asyncio.get_running_loop()
    deadline = loop.time() + AUTOSTART_TIMEOUT
    starts = 0
    while True:
        if not daemon_lock_held(socket_path):
            if starts == 3:
                break
            starts += 1
            await loop.run_in_executor(None, start_daemon, socket_path)
        # else a daemon holds the lock without listening: starting (soon there) or stopping
        # (a `shutdown` just now; once it is gone, start ours)
        try:
            return await _open(socket_path, on_frame, on_close)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            first_error = exc
        if loop.time() > deadline:
            break
        await asyncio.sleep(0.05)
    raise DaemonUnavailable(
        f"Started a runtimed daemon but cannot connect to {socket_path}: {first_error}") from first_error


class Channel:
    """One connection with request/response correlation.

    ``typed`` connections (notebook channels) prefix payloads with a frame type
    byte; pool connections send bare JSON. Frames that are not responses go to
    ``on_frame``.
    """

    def __init__(self, *, typed_frames: bool, on_frame: Callable[[int, memoryview], None] | None = None,
                 on_close: Callable[[BaseException | None], None] | None = None) -> None:
        self.typed_frames = typed_frames
        self._on_other = on_frame
        self._on_closed = on_close
        self.proto: FramedProtocol | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self.close_reason: BaseException | None = None

    async def open(self, socket_path: Path, handshake: dict[str, Any], *, autostart: bool = True) -> None:
        self.close_reason = None
        self.proto = await connect(socket_path, self._frame, self._closed, autostart=autostart)
        self.proto.send(encode_handshake(**handshake))

    @property
    def connected(self) -> bool:
        return self.proto is not None and not self.proto.closed

    def send(self, *payloads: bytes) -> None:
        if not self.connected:
            raise NotConnected("Not connected to the runtimed daemon")
        assert self.proto is not None
        self.proto.send(*payloads)

    def request_nowait(self, kind: str, _before: list[bytes] | None = None, **fields: Any
                       ) -> asyncio.Future[Any]:
        """Send a request (after the frames in ``_before``, in the same write); its future."""
        req_id = next(_ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        body = dumps({"id": req_id, "type": kind, **fields})
        self.send(*(_before or ()), typed(1, body) if self.typed_frames else body)
        self._pending[req_id] = fut
        return fut

    async def request(self, kind: str, _before: list[bytes] | None = None, **fields: Any) -> Any:
        fut = self.request_nowait(kind, _before, **fields)
        try:
            return await fut
        finally:
            if not fut.done():
                fut.cancel()

    def _frame(self, payload: bytes) -> None:
        if self.typed_frames and payload[:1] != b"{":
            kind, body = payload[0], memoryview(payload)[1:]
            if kind != RESPONSE:
                if self._on_other is not None:
                    self._on_other(kind, body)
                return
        else:
            body = memoryview(payload)
        msg = loads(body, "response")
        req_id = msg.get("id")
        if req_id is None and "error" in msg:  # the daemon is closing this connection
            self.close_reason = error_from_wire(msg["error"])
            return
        fut = self._pending.pop(req_id, None)
        if fut is None or fut.done():
            return
        if "error" in msg:
            fut.set_exception(error_from_wire(msg["error"]))
        else:
            fut.set_result(msg.get("result"))

    def _closed(self, exc: BaseException | None) -> None:
        reason = self.close_reason or exc
        error = reason if isinstance(reason, ProtocolError) else DaemonUnavailable(
            "Lost the connection to the runtimed daemon" + (f": {reason}" if reason else ""))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
        self._pending.clear()
        if self._on_closed is not None:
            self._on_closed(exc)

    def close(self) -> None:
        if self.proto is not None:
            self.proto.close()


async def pool_request(socket_path: Path, kind: str, *, autostart: bool = True, **fields: Any) -> Any:
    """One request on a fresh pool-channel connection."""
    channel = Channel(typed_frames=False)
    await channel.open(socket_path, {"channel": "pool"}, autostart=autostart)
    try:
        return await channel.request(kind, **fields)
    finally:
        channel.close()
