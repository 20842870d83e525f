"""Client connections to the daemon: connect (auto-starting it), correlate requests and replies."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtimed import paths
from runtimed.errors import DaemonUnavailable, NotConnected, ProtocolError, error_from_wire
from runtimed.protocol.messages import RESPONSE, dumps, encode_handshake, loads, typed
from runtimed.protocol.transport import FramedProtocol

AUTOSTART_TIMEOUT = 60.0
_ids = itertools.count(1)


def autostart_enabled() -> bool:
    return os.environ.get("RUNTIMED_NO_AUTOSTART", "").lower() not in ("1", "true", "yes")


async def _open(socket_path: Path, on_frame: Callable[[bytes], None],
                on_close: Callable[[BaseException | None], None]) -> FramedProtocol:
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_unix_connection(
        lambda: FramedProtocol(on_frame, on_close, expect_preamble=False), str(socket_path))
    proto.send_preamble()
    return proto


def start_daemon(socket_path: Path) -> None:
    """Start ``runtimed run --detach`` (logging to the log dir); return once it listens."""
    log_dir = paths.private_dir(paths.log_dir())
    log_path = log_dir / "runtimed.log"
    with open(log_path, "ab") as log_file:
        result = subprocess.run(
            [sys.executable, "-m", "runtimed", "run", "--detach", "--socket", str(socket_path)],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, close_fds=True,
            timeout=AUTOSTART_TIMEOUT,
        )
    if result.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] if log_path.exists() else []
        # a concurrent client may have won the race: its daemon holds the lock and serves us
        if not any("already running" in line for line in tail):
            raise DaemonUnavailable(
                f"The runtimed daemon could not start: {' '.join(tail) or 'no output'} (log: {log_path})")


async def connect(socket_path: Path, on_frame: Callable[[bytes], None],
                  on_close: Callable[[BaseException | None], None], *, autostart: bool = True
                  ) -> FramedProtocol:
    """Connect to the daemon at ``socket_path``, starting one if there is none (and allowed)."""
    try:
        return await _open(socket_path, on_frame, on_close)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        first_error: OSError = exc
    if not autostart or not autostart_enabled():
        hint = " (auto-start is off: RUNTIMED_NO_AUTOSTART=1)" if autostart else ""
        raise DaemonUnavailable(
            f"No runtimed daemon is running at {socket_path}{hint}. "
            f"Start one with `runtimed run --socket {socket_path}`."
        ) from first_error
    await asyncio.get_running_loop().run_in_executor(None, start_daemon, socket_path)
    for _ in range(100):  # normally at once; longer only if another client's daemon is starting
        try:
            return await _open(socket_path, on_frame, on_close)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            first_error = exc
        await asyncio.sleep(0.1)
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
