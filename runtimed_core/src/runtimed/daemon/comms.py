"""Where comms go: a kernel's comm channels (widget models), kept in the room's runtime-state
document, so every session and page, one that joins late included, sees each model's state.

The Jupyter widget protocol in brief: the kernel opens a comm per model (``comm_open``:
``data.state`` is its state, ``data.buffer_paths`` says where binary buffers go in it),
changes it (``comm_msg`` with ``method: "update"``; ipywidgets 8 also echoes a frontend's
change back with ``"echo_update"``), sends custom messages (``"custom"``) and closes it
(``comm_close``). A frontend sends the same ``comm_msg`` to the kernel's shell channel.

:class:`CommRecorder` is the room's frontend of record:

- each comm's state is kept whole in memory and written to the document once per sync
  (just before the room flushes): whole in one text the first time, then only the keys
  that changed since: ten thousand updates a second cost a few document operations per
  sync, not one each;
- buffers go to the blob store; the document keeps references;
- custom messages are not stored: they reach every session with the next sync, in one
  broadcast;
- a client's update (:meth:`CommRecorder.send`) shows at once, as a frontend's own model does,
  and the kernel's echoes of that client's earlier updates of the same key are skipped (as
  JupyterLab's widget manager does: a slider dragged fast does not jump back);
- an Output widget captures the outputs whose parent is its ``msg_id`` (``with out:``): they
  go into its ``outputs`` state, which goes back to the kernel too, instead of the cell.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtimed.daemon.host import RoomHost
from runtimed.daemon.outputs import PROGRESS_DELAY
from runtimed.document.runtime_state import CommWrite, to_json
from runtimed.errors import CommNotFound
from runtimed.outputs import output_from_message

log = logging.getLogger(__name__)

#: The output messages an Output widget can capture.
CAPTURED_TYPES = frozenset(("stream", "display_data", "execute_result", "error", "clear_output"))
#: Custom messages waiting for the next sync; past this, the oldest are dropped (logged).
MAX_PENDING_CUSTOM = 1000
#: Buffers of one custom message beyond this many bytes are not forwarded (logged).
MAX_CUSTOM_BYTES = 16 * 2**20
#: How many distinct problems are logged (a kernel that misbehaves in a loop logs once).
MAX_WARNINGS = 200
_MEDIA = {"ImageModel": "image", "VideoModel": "video", "AudioModel": "audio"}

#: Sends a ``comm_msg`` with this content to the kernel's shell channel; returns its msg_id.
SendToKernel = Callable[[dict[str, Any]], str]


def _valid_path(path: Any) -> bool:
    return (isinstance(path, list) and bool(path) and isinstance(path[0], str)
            and all(isinstance(p, (str, int)) for p in path))


@dataclass
class _Comm:
    comm_id: str
    #: target_name, model_module, model_name, model_module_version, seq.
    fields: dict[str, Any]
    state: dict[str, Any] = field(default_factory=dict)
    buffers: dict[tuple[Any, ...], dict[str, Any]] = field(default_factory=dict)
    #: State keys and buffer paths changed since the document was last written.
    dirty: set[str] = field(default_factory=set)
    dirty_buffers: set[tuple[Any, ...]] = field(default_factory=set)
    written: bool = False
    #: State key -> msg_id of the latest update of it the daemon sent (its echo is awaited).
    expected: dict[str, str] = field(default_factory=dict)
    #: Output widgets: the msg_id whose outputs it captures, and its pending state.
    capturing: str = ""
    clear_pending: bool = False
    send_outputs: bool = False

    @property
    def is_output(self) -> bool:
        return self.fields.get("model_name") == "OutputModel"


class CommRecorder:
    """The comms of a room's kernel (see the module docstring). ``send_to_kernel`` delivers
    a frontend's ``comm_msg``."""

    def __init__(self, host: RoomHost, send_to_kernel: SendToKernel) -> None:
        self.host = host
        self._send_to_kernel = send_to_kernel
        self._comms: dict[str, _Comm] = {}
        self._dirty: set[str] = set()  # comm ids to write
        self._closed: set[str] = set()  # closed since the last write; the document holds them
        self._seq = 0
        self._captures: dict[str, list[str]] = {}  # msg_id -> Output widgets capturing it
        self._custom: list[dict[str, Any]] = []
        self._scheduled = False
        self._warned: set[str] = set()

    def __contains__(self, comm_id: object) -> bool:
        return comm_id in self._comms

    # from the kernel ----------------------------------------------------------------------------
    def on_message(self, msg: dict[str, Any]) -> None:
        """A comm message the kernel published on IOPub."""
        msg_type = msg["header"].get("msg_type")
        content = msg.get("content") or {}
        comm_id = content.get("comm_id")
        data = content.get("data") or {}
        if not isinstance(comm_id, str) or not isinstance(data, dict):
            self._warn(f"bad:{msg_type}", "dropped a malformed %s (no comm_id, or data that is "
                       "not a mapping)", msg_type)
            return
        buffers = msg.get("buffers") or []
        if msg_type == "comm_open":
            self._open(comm_id, content.get("target_name"), data, buffers)
        elif msg_type == "comm_close":
            self._close(comm_id)
        else:
            comm = self._comms.get(comm_id)
            if comm is None:
                self._warn(f"unknown:{comm_id}", "dropped a comm_msg for comm %s, which is not "
                           "open", comm_id)
                return
            method = data.get("method")
            if method in ("update", "echo_update"):
                parent = (msg.get("parent_header") or {}).get("msg_id")
                self._update(comm, data, buffers, echo_of=parent if method == "echo_update" else None)
            else:
                self._queue_custom(comm_id, data, buffers)

    def _open(self, comm_id: str, target: Any, data: dict[str, Any], buffers: list[bytes]) -> None:
        if comm_id in self._comms:  # opened again: the new one replaces it
            self._close(comm_id)
        state = data.get("state")
        state = state if isinstance(state, dict) else {}

        def text(key: str) -> str | None:
            value = state.get(key)
            return value if isinstance(value, str) else None

        self._seq += 1
        comm = self._comms[comm_id] = _Comm(comm_id, {
            "target_name": target if isinstance(target, str) else "", "seq": self._seq,
            "model_module": text("_model_module"), "model_name": text("_model_name"),
            "model_module_version": text("_model_module_version")})
        self._apply(comm, state, data.get("buffer_paths"), buffers)

    def _close(self, comm_id: str) -> None:
        comm = self._comms.pop(comm_id, None)
        if comm is None:
            return
        if comm.capturing:
            self._capture(comm, "")
        if comm.written:
            self._closed.add(comm_id)
        self._dirty.discard(comm_id)
        self._schedule()

    def _update(self, comm: _Comm, data: dict[str, Any], buffers: list[bytes], *,
                echo_of: str | None) -> None:
        state = data.get("state")
        if not isinstance(state, dict):
            self._warn(f"state:{comm.comm_id}", "dropped an update of comm %s whose state is not "
                       "a mapping", comm.comm_id)
            return
        paths = data.get("buffer_paths") or []
        if echo_of is not None and comm.expected:
            # An echo of the daemon's own update confirms it; an echo of an earlier one (or
            # another frontend's) of a key the daemon changed since is stale: skipped.
            keys = set(state) | {p[0] for p in paths if _valid_path(p)}
            stale = {k for k in keys if k in comm.expected and comm.expected[k] != echo_of}
            for key in keys & comm.expected.keys() - stale:
                del comm.expected[key]
            if stale:
                state = {k: v for k, v in state.items() if k not in stale}
                pairs = [(p, b) for p, b in zip(paths, buffers)
                         if _valid_path(p) and p[0] not in stale]
                paths, buffers = [p for p, _ in pairs], [b for _, b in pairs]
        self._apply(comm, state, paths, buffers)

    def _apply(self, comm: _Comm, state: dict[str, Any], paths: Any, buffers: list[bytes]) -> None:
        """Merge ``state`` (and its buffers) into the comm's; written at the next sync."""
        for key, value in state.items():
            comm.state[key] = value
            comm.dirty.add(key)
            for path in [p for p in comm.buffers if p[0] == key]:  # the key's old buffers go
                del comm.buffers[path]
                comm.dirty_buffers.add(path)
        if paths and (not isinstance(paths, list) or not all(_valid_path(p) for p in paths)):
            self._warn(f"paths:{comm.comm_id}", "ignored the buffers of comm %s: buffer_paths "
                       "is not a list of paths", comm.comm_id)
            paths = []
        for path, raw in zip(paths or [], buffers):
            key = tuple(path)
            raw = bytes(raw)
            sha = self.host.put_blob(raw, self._content_type(comm, key))
            if sha is None:
                log.warning("%s: comm %s: the buffer at %s (%d bytes) is larger than the blob cap: "
                            "not kept", self.host.notebook_id, comm.comm_id, path, len(raw))
                continue
            comm.buffers[key] = {"sha256": sha, "size": len(raw)}
            comm.dirty_buffers.add(key)
        if comm.is_output and "msg_id" in state:
            self._capture(comm, state["msg_id"])
        self._dirty.add(comm.comm_id)
        self._schedule()

    @staticmethod
    def _content_type(comm: _Comm, path: tuple[Any, ...]) -> str:
        """What a page needs to show a media widget's bytes (``Image(value=png)``)."""
        kind = _MEDIA.get(comm.fields.get("model_name") or "")
        fmt = comm.state.get("format")
        if kind and path == ("value",) and isinstance(fmt, str) and fmt.isalnum() and fmt != "url":
            return f"{kind}/{'svg+xml' if fmt == 'svg' else fmt}"
        return "application/octet-stream"

    def _queue_custom(self, comm_id: str, data: dict[str, Any], buffers: list[bytes]) -> None:
        if sum(len(b) for b in buffers) > MAX_CUSTOM_BYTES:
            self._warn(f"custom:{comm_id}", "dropped a custom message of comm %s: its buffers are "
                       "over %d bytes", comm_id, MAX_CUSTOM_BYTES)
            return
        if len(self._custom) >= MAX_PENDING_CUSTOM:
            self._warn("custom-backlog", "more than %d custom comm messages within one sync: the "
                       "oldest are dropped", MAX_PENDING_CUSTOM)
            del self._custom[0]
        self._custom.append({"comm_id": comm_id, "data": data,
                             "buffers": [base64.b64encode(b).decode() for b in buffers]})
        self._schedule()

    # Output widgets --------------------------------------------------------------------------
    def _capture(self, comm: _Comm, msg_id: Any) -> None:
        """An Output widget starts (or stops, with "") capturing the outputs of ``msg_id``."""
        if comm.capturing:
            stack = self._captures.get(comm.capturing, [])
            if comm.comm_id in stack:
                stack.remove(comm.comm_id)
            if not stack:
                self._captures.pop(comm.capturing, None)
        comm.capturing = msg_id if isinstance(msg_id, str) else ""
        if comm.capturing:
            self._captures.setdefault(comm.capturing, []).append(comm.comm_id)

    def capture(self, msg: dict[str, Any]) -> bool:
        """Whether an Output widget takes this output message (it captures its parent's
        outputs: the innermost ``with out:``); if so it is the widget's, not the cell's."""
        if not self._captures:
            return False
        stack = self._captures.get((msg.get("parent_header") or {}).get("msg_id"))
        msg_type = msg["header"].get("msg_type")
        if not stack or msg_type not in CAPTURED_TYPES:
            return False
        comm = self._comms[stack[-1]]
        content = msg.get("content") or {}
        if msg_type == "clear_output":
            if content.get("wait"):
                comm.clear_pending = True
            else:
                self._set_outputs(comm, [])
            return True
        outputs = [] if comm.clear_pending else list(comm.state.get("outputs") or [])
        comm.clear_pending = False
        output = {k: v for k, v in output_from_message(msg_type, content).items() if k != "transient"}
        last = outputs[-1] if outputs else None
        if (output["output_type"] == "stream" and isinstance(last, dict)
                and last.get("output_type") == "stream" and last.get("name") == output["name"]):
            text = last.get("text", "")
            outputs[-1] = {**last, "text": ("".join(text) if isinstance(text, list) else str(text))
                           + output["text"]}
        else:
            outputs.append(output)
        self._set_outputs(comm, outputs)
        return True

    def _set_outputs(self, comm: _Comm, outputs: list[dict[str, Any]]) -> None:
        comm.send_outputs = True  # the kernel's side learns them at the next sync
        self._apply(comm, {"outputs": outputs}, [], [])

    # from clients ------------------------------------------------------------------------------
    def send(self, comm_id: str, data: dict[str, Any]) -> None:
        """Deliver a frontend's ``comm_msg`` with ``data`` to the kernel. An ``update`` shows
        in the document at once (the kernel's echo confirms it). Raises :class:`CommNotFound`."""
        comm = self._comms.get(comm_id)
        if comm is None:
            raise CommNotFound(f"The kernel has no open comm {comm_id} (never opened, closed, or "
                               "gone with a restart)", comm_id=comm_id,
                               notebook_id=self.host.notebook_id)
        msg_id = self._send_to_kernel({"comm_id": comm_id, "data": data})
        state = data.get("state")
        if data.get("method") == "update" and isinstance(state, dict):
            self._apply(comm, state, [], [])
            comm.expected.update(dict.fromkeys(state, msg_id))

    # writing -------------------------------------------------------------------------------------
    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self.host.before_flush(self._write)
        self.host.schedule_flush(PROGRESS_DELAY)

    def _write(self) -> None:
        """Write what changed into the document (one change), send Output widgets' new outputs
        to the kernel, and the custom messages to the sessions."""
        self._scheduled = False
        writes = [CommWrite(comm_id, closed=True) for comm_id in self._closed]
        self._closed.clear()
        for comm_id in self._dirty:
            comm = self._comms.get(comm_id)
            if comm is None:
                continue
            write = CommWrite(comm_id)
            if comm.written:
                keys, paths = comm.dirty, comm.dirty_buffers
            else:  # its whole state in one text
                write.opened = to_json({**comm.fields, "state": comm.state})
                keys, paths = (), comm.buffers.keys()
                comm.written = True
            write.state = {k: to_json(comm.state[k]) if k in comm.state else None for k in keys}
            write.buffers = {json.dumps(list(p)): json.dumps(comm.buffers[p]) if p in comm.buffers
                             else None for p in paths}
            comm.dirty, comm.dirty_buffers = set(), set()
            writes.append(write)
            if comm.send_outputs:
                comm.send_outputs = False
                state = {"outputs": comm.state.get("outputs") or []}
                comm.expected["outputs"] = self._send_to_kernel(
                    {"comm_id": comm_id, "data": {"method": "update", "state": state,
                                                  "buffer_paths": []}})
        self._dirty.clear()
        if writes:
            self.host.writer.write_comms(writes)
        if self._custom:
            messages, self._custom = self._custom, []
            self.host.broadcast({"event": "comm_msgs", "messages": messages})

    def clear(self) -> None:
        """The kernel is gone (restart, shutdown, death), and its comms with it; the widgets'
        last state stays in the notebook's metadata (see :meth:`RoomHost.keep_widgets`)."""
        if any(comm.fields["model_name"] for comm in self._comms.values()):
            self._write()
            self.host.keep_widgets()
        self._comms.clear()
        self._dirty.clear()
        self._closed.clear()
        self._captures.clear()
        self._custom.clear()
        self.host.writer.clear_comms()
        self.host.schedule_flush()

    def _warn(self, key: str, message: str, *args: Any) -> None:
        """Log a problem once (a kernel that repeats it in a loop does not flood the log)."""
        if key in self._warned or len(self._warned) >= MAX_WARNINGS:
            return
        self._warned.add(key)
        log.warning("%s: " + message, self.host.notebook_id, *args)
