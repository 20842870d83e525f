"""Sans-IO framing: preamble, then 4-byte big-endian length-prefixed frames.

Every connection starts with :data:`PREAMBLE` (magic ``C0 DE 01 AC`` and one
protocol-version byte). The first frame is the handshake, capped at
:data:`HANDSHAKE_CAP`; later frames are capped at :data:`FRAME_CAP`. Empty
frames are an error.
"""

from __future__ import annotations

import struct

from runtimed.errors import ProtocolError

MAGIC = b"\xc0\xde\x01\xac"
PROTOCOL_VERSION = 1
PREAMBLE = MAGIC + bytes([PROTOCOL_VERSION])
HANDSHAKE_CAP = 64 * 1024
FRAME_CAP = 256 * 1024 * 1024
_LEN = struct.Struct(">I")


def encode_frame(payload: bytes) -> bytes:
    """One frame: length prefix and payload."""
    if not payload:
        raise ProtocolError("Refusing to send an empty frame")
    if len(payload) > FRAME_CAP:
        raise ProtocolError(f"Frame of {len(payload)} bytes exceeds the {FRAME_CAP}-byte cap")
    return _LEN.pack(len(payload)) + payload


class FrameDecoder:
    """Feed bytes in, get complete frame payloads out.

    ``expect_preamble`` is true on the accepting side; the connecting side sends
    the preamble and never receives one. Errors raise :class:`ProtocolError`;
    after an error the decoder is unusable (the connection should be closed).
    """

    def __init__(self, *, expect_preamble: bool, frame_cap: int = FRAME_CAP) -> None:
        self._buf = bytearray()
        self._need_preamble = expect_preamble
        # Only the accepting side receives a handshake; the connecting side's first
        # incoming frame is an ordinary one (it may be a large document sync).
        self._frames_seen = 0 if expect_preamble else 1
        self._frame_cap = frame_cap

    def _cap(self) -> int:
        return HANDSHAKE_CAP if self._frames_seen == 0 else self._frame_cap

    def feed(self, data: bytes) -> list[bytes]:
        """Consume ``data``; return the payloads of all frames it completed."""
        buf = self._buf
        buf += data
        if self._need_preamble:
            if len(buf) < len(PREAMBLE):
                if not PREAMBLE.startswith(bytes(buf)):
                    raise ProtocolError("Bad preamble: this is not a runtimed client")
                return []
            if buf[:4] != MAGIC:
                raise ProtocolError("Bad preamble: this is not a runtimed client")
            if buf[4] != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"Unsupported protocol version {buf[4]} (this daemon speaks {PROTOCOL_VERSION})"
                )
            del buf[: len(PREAMBLE)]
            self._need_preamble = False
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        while end - pos >= 4:
            (length,) = _LEN.unpack_from(buf, pos)
            if length == 0:
                raise ProtocolError("Empty frame")
            cap = self._cap()
            if length > cap:
                raise ProtocolError(f"Frame of {length} bytes exceeds the {cap}-byte cap")
            if end - pos - 4 < length:
                break
            frames.append(bytes(buf[pos + 4 : pos + 4 + length]))
            pos += 4 + length
            self._frames_seen += 1
        if pos:
            del buf[:pos]
        return frames

    def eof(self) -> None:
        """The peer closed; raise if a frame (or the preamble) was cut short."""
        if self._buf:
            raise ProtocolError(f"Connection closed inside a frame ({len(self._buf)} bytes pending)")
