"""Sans-IO codec for the Jupyter messaging protocol (version 5.3) and connection files.

The daemon speaks to kernels with this instead of importing ``jupyter_client``:
the codec is small (sign, frame, verify, parse) and importing jupyter_client's
stack (traitlets and friends) would cost the long-lived daemon ~15 MB of RSS.
The wire format is the one jupyter_client's ``Session`` produces: identities,
``<IDS|MSG>``, an HMAC-SHA256 signature, then header, parent header, metadata
and content as JSON.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from runtimed.errors import ProtocolError

DELIM = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.3"
_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode


class JupyterCodec:
    """Builds and parses signed Jupyter messages for one kernel (one key, one session id)."""

    def __init__(self, key: bytes, username: str = "runtimed") -> None:
        self.key = key
        self.session = uuid.uuid4().hex
        self.username = username
        self._counter = 0

    def _sign(self, parts: list[bytes]) -> bytes:
        if not self.key:
            return b""
        mac = hmac.new(self.key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode()

    def message(self, msg_type: str, content: dict[str, Any], parent: dict[str, Any] | None = None
                ) -> tuple[str, list[bytes]]:
        """A new message: its msg_id and its frames (from the delimiter on: what a DEALER
        sends; a publisher puts a topic in front). ``parent``: the header it answers (an
        ``input_request``'s, say) or descends from."""
        self._counter += 1
        msg_id = f"{self.session}_{os.getpid()}_{self._counter}"
        header = {
            "msg_id": msg_id, "msg_type": msg_type, "session": self.session,
            "username": self.username, "date": datetime.now(timezone.utc).isoformat(),
            "version": PROTOCOL_VERSION,
        }
        parts = [_dumps(header).encode(), _dumps(parent).encode() if parent else b"{}", b"{}",
                 _dumps(content).encode()]
        return msg_id, [DELIM, self._sign(parts), *parts]

    def parse(self, frames: list[bytes]) -> dict[str, Any]:
        """Verify and decode one received multipart message (identities are skipped)."""
        try:
            start = frames.index(DELIM) + 1
        except ValueError:
            raise ProtocolError("Jupyter message without the <IDS|MSG> delimiter") from None
        if len(frames) < start + 5:
            raise ProtocolError("Truncated Jupyter message")
        signature, parts = frames[start], frames[start + 1 : start + 5]
        if self.key and not hmac.compare_digest(signature, self._sign(parts)):
            raise ProtocolError("Jupyter message with a bad signature")
        header, parent, metadata, content = (json.loads(p) for p in parts)
        return {"header": header, "parent_header": parent, "metadata": metadata, "content": content,
                "msg_type": header.get("msg_type"), "buffers": frames[start + 5 :]}


def _free_ports(ip: str, count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((ip, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def write_connection_file(path: Path, key: bytes, kernel_name: str, ip: str = "127.0.0.1") -> dict[str, Any]:
    """Pick free TCP ports and write a Jupyter connection file (mode 0600); return its content."""
    names = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
    info: dict[str, Any] = dict(zip(names, _free_ports(ip, len(names))))
    info.update(ip=ip, key=key.decode(), transport="tcp", signature_scheme="hmac-sha256",
                kernel_name=kernel_name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=2)
    return info
