"""Jupyter messages as a gateway's ``/api/kernels/{id}/channels`` WebSocket carries them
(sans-IO: no sockets here).

This is jupyter_server's default ("legacy") kernel WebSocket protocol, which
Kernel Gateway and Enterprise Gateway both serve: one socket for the shell,
iopub, stdin and control channels; each message is a JSON text frame with the
usual ``header``, ``parent_header``, ``metadata``, ``content`` and a ``channel``
field. A message with binary buffers comes as one binary frame: a count ``n``
(big-endian uint32), ``n`` offsets (uint32, from the frame's start), then the
JSON message and the ``n - 1`` buffers at those offsets. The gateway signs and
routes the messages onto the kernel's ZMQ channels itself.
"""

from __future__ import annotations

import datetime as _dt
import json
import struct
import uuid
from typing import Any

#: The Jupyter messaging protocol version of the messages the daemon sends.
PROTOCOL_VERSION = "5.3"
CHANNELS = ("shell", "iopub", "stdin", "control")


class FrameError(ValueError):
    """A frame that is not a Jupyter message (the text says why)."""


def new_message(channel: str, msg_type: str, content: dict[str, Any], *, session: str,
                username: str) -> tuple[str, str]:
    """A request for the kernel: its ``msg_id`` and the text frame to send."""
    if channel not in CHANNELS:
        raise ValueError(f"unknown channel {channel!r}")
    msg_id = uuid.uuid4().hex
    header = {
        "msg_id": msg_id, "msg_type": msg_type, "session": session, "username": username,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(), "version": PROTOCOL_VERSION,
    }
    frame = {"header": header, "parent_header": {}, "metadata": {}, "content": content,
             "channel": channel, "buffers": []}
    return msg_id, json.dumps(frame, separators=(",", ":"))


def parse_frame(frame: str | bytes) -> tuple[str, dict[str, Any]]:
    """``(channel, message)`` of one frame from the gateway; the message has ``header``,
    ``parent_header``, ``metadata``, ``content``, ``msg_type`` and ``buffers``.
    Raises :class:`FrameError`."""
    if isinstance(frame, str):
        msg, buffers = _loads(frame), []
    else:
        msg, buffers = _parse_binary(bytes(frame))
    channel = msg.get("channel")
    header = msg.get("header")
    if channel not in CHANNELS:
        raise FrameError(f"no known channel ({channel!r})")
    if not isinstance(header, dict) or not isinstance(header.get("msg_type"), str):
        raise FrameError("no header with a msg_type")
    parent = msg.get("parent_header")
    return channel, {
        "header": header,
        "parent_header": parent if isinstance(parent, dict) else {},
        "metadata": msg.get("metadata") if isinstance(msg.get("metadata"), dict) else {},
        "content": msg.get("content") if isinstance(msg.get("content"), dict) else {},
        "msg_type": header["msg_type"],
        "buffers": buffers,
    }


def _loads(text: str | bytes) -> dict[str, Any]:
    try:
        msg = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FrameError(f"not JSON ({exc})") from None
    if not isinstance(msg, dict):
        raise FrameError("not a JSON object")
    return msg


def _parse_binary(data: bytes) -> tuple[dict[str, Any], list[bytes]]:
    if len(data) < 8:
        raise FrameError(f"a binary frame of {len(data)} bytes")
    (count,) = struct.unpack_from("!I", data)
    if count < 1 or 4 * (count + 1) > len(data):
        raise FrameError(f"a binary frame announcing {count} parts in {len(data)} bytes")
    offsets = list(struct.unpack_from(f"!{count}I", data, 4)) + [len(data)]
    if offsets != sorted(offsets) or offsets[0] < 4 * (count + 1):
        raise FrameError("a binary frame with offsets out of order")
    parts = [data[offsets[i]:offsets[i + 1]] for i in range(count)]
    return _loads(parts[0]), parts[1:]


def binary_frame(msg: dict[str, Any], buffers: list[bytes]) -> bytes:
    """The binary frame of ``msg`` with ``buffers`` (as jupyter_server writes one; for tests)."""
    parts = [json.dumps(msg).encode(), *buffers]
    offsets = [4 * (len(parts) + 1)]
    for part in parts[:-1]:
        offsets.append(offsets[-1] + len(part))
    return struct.pack(f"!{len(parts) + 1}I", len(parts), *offsets) + b"".join(parts)
