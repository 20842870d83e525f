"""The asyncio shell around :mod:`.framing`: a Protocol that turns bytes into frame callbacks.

Callbacks run synchronously inside ``data_received``, so a frame is handled
with no task switch; handlers that need to wait spawn their own tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from runtimed.errors import ProtocolError
from runtimed.protocol.framing import PREAMBLE, FrameDecoder, encode_frame

log = logging.getLogger(__name__)


class FramedProtocol(asyncio.Protocol):
    """One connection. ``on_frame(payload)`` per frame; ``on_close(error_or_None)`` once."""

    def __init__(
        self,
        on_frame: Callable[[bytes], None],
        on_close: Callable[[BaseException | None], None],
        *,
        expect_preamble: bool,
    ) -> None:
        self._decoder = FrameDecoder(expect_preamble=expect_preamble)
        self._on_frame = on_frame
        self._on_close = on_close
        self.transport: asyncio.Transport | None = None
        self._closed = False
        #: Set by a server: the payload of a last frame that explains a protocol error.
        self.error_payload: Callable[[ProtocolError], bytes] | None = None
        #: True while the peer is behind reading (asyncio's write buffer above its high-water
        #: mark); ``on_drain()`` runs when it has caught up.
        self.writing_paused = False
        self.on_drain: Callable[[], None] | None = None

    # asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            self.abort(exc)
            return
        for frame in frames:
            if self._closed:
                return
            self._on_frame(frame)

    def eof_received(self) -> bool:
        try:
            self._decoder.eof()
        except ProtocolError as exc:
            self._finish(exc)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(exc)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.on_drain is not None and not self._closed:
            self.on_drain()

    # API ------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def send_preamble(self) -> None:
        assert self.transport is not None
        self.transport.write(PREAMBLE)

    def send(self, *payloads: bytes) -> None:
        """Queue frames (one write); raises :class:`ProtocolError` if the connection is closed."""
        if self._closed or self.transport is None or self.transport.is_closing():
            raise ProtocolError("Connection is closed")
        if len(payloads) == 1:
            self.transport.write(encode_frame(payloads[0]))
        else:
            self.transport.write(b"".join(encode_frame(p) for p in payloads))

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self, exc: BaseException) -> None:
        """Close because of ``exc`` (reported through ``on_close``), explaining it to the peer first."""
        transport = self.transport
        if transport is not None and not transport.is_closing():
            if isinstance(exc, ProtocolError) and self.error_payload is not None:
                transport.write(encode_frame(self.error_payload(exc)))
            transport.close()
        self._finish(exc)

    def _finish(self, exc: BaseException | None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._on_close(exc)
        except Exception:  # pragma: no cover - a bug in a close handler must not propagate
            log.exception("on_close handler failed")
