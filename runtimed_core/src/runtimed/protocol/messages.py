"""Sans-IO message layer: handshakes, typed notebook frames, requests and responses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runtimed.errors import ProtocolError

# First payload byte of every frame on a notebook connection.
DOC_SYNC = 0x00
REQUEST = 0x01
RESPONSE = 0x02
BROADCAST = 0x03
STATE_SYNC = 0x05

CHANNELS = ("pool", "notebook_sync", "open_notebook", "create_notebook", "blob")
NOTEBOOK_CHANNELS = ("notebook_sync", "open_notebook", "create_notebook")


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def loads(payload: bytes | memoryview, what: str = "message") -> dict[str, Any]:
    try:
        obj = json.loads(bytes(payload))  # json.loads rejects memoryview (split_typed's body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"Malformed {what}: not JSON ({exc})") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"Malformed {what}: expected a JSON object")
    return obj


@dataclass(frozen=True)
class Handshake:
    channel: str
    notebook_id: str | None = None
    path: str | None = None
    #: The client has nothing of the documents yet: send them whole in the welcome.
    snapshot: bool = False


def encode_handshake(channel: str, **fields: Any) -> bytes:
    return dumps({"channel": channel, **{k: v for k, v in fields.items() if v is not None}})


def parse_handshake(payload: bytes) -> Handshake:
    """Validate the first frame of a connection."""
    obj = loads(payload, "handshake")
    channel = obj.get("channel")
    if channel not in CHANNELS:
        raise ProtocolError(f"Unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}")
    notebook_id = obj.get("notebook_id")
    if channel == "notebook_sync" and (not isinstance(notebook_id, str) or not notebook_id):
        raise ProtocolError("notebook_sync handshake needs a non-empty string notebook_id")
    path = obj.get("path")
    if channel == "open_notebook" and not isinstance(path, str):
        raise ProtocolError("open_notebook handshake needs a path")
    return Handshake(channel=channel, notebook_id=notebook_id, path=path,
                     snapshot=obj.get("snapshot") is True)


def typed(kind: int, body: bytes) -> bytes:
    """A notebook-connection frame payload: type byte then body."""
    return bytes((kind,)) + body


def split_typed(payload: bytes) -> tuple[int, memoryview]:
    view = memoryview(payload)
    return view[0], view[1:]


def request(req_id: int, kind: str, **fields: Any) -> dict[str, Any]:
    return {"id": req_id, "type": kind, **fields}


def ok(req_id: Any, result: Any = None) -> dict[str, Any]:
    return {"id": req_id, "result": result}


def fail(req_id: Any, error: dict[str, Any]) -> dict[str, Any]:
    return {"id": req_id, "error": error}
