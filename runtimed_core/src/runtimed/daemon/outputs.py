"""Where outputs go: a room's kernel outputs, written into its runtime-state document.

Images and long texts go to the blob store first (:mod:`runtimed.blobs`); the
document keeps references.

Streams follow terminal semantics (:class:`runtimed.outputs.StreamChunks`):
consecutive chunks of one stream merge into one output; their text is written
to the document once per sync (just before the room flushes), however many
messages the kernel sent meanwhile. ``clear_output`` (with ``wait``) and
``update_display_data`` rewrite earlier outputs. Other outputs are written at
once; the room coalesces the network sync.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from runtimed.blobs import BLOBS_KEY
from runtimed.daemon.host import RoomHost
from runtimed.outputs import StreamChunks, output_from_message

#: How long progress (queued, running, outputs) may wait to be synced: a short execution
#: reaches peers as one message, a chatty one as a few per display frame.
PROGRESS_DELAY = 0.004


@dataclass
class _ExecutionOutputs:
    kinds: list[str] = field(default_factory=list)  # "stream:stdout", "display_data"...
    stream: StreamChunks | None = None  # the last output's stream state, if it is a stream
    clear_pending: bool = False


class OutputRecorder:
    """Writes every output of a room's executions into its runtime-state document."""

    def __init__(self, host: RoomHost) -> None:
        self.host = host
        self._executions: dict[str, _ExecutionOutputs] = {}
        # display_id -> [(execution_id, index, output)] for update_display_data
        self._displays: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}

    def output(self, eid: str, msg_type: str, content: dict[str, Any]) -> None:
        """One IOPub output message of execution ``eid``."""
        host = self.host
        state = self._executions.setdefault(eid, _ExecutionOutputs())
        if msg_type == "clear_output":
            if content.get("wait"):
                state.clear_pending = True
            else:
                self._clear(eid, state)
            host.schedule_flush(PROGRESS_DELAY)
            return
        if msg_type == "update_display_data":
            self._update_display(content)
            host.schedule_flush(PROGRESS_DELAY)
            return
        if state.clear_pending:
            self._clear(eid, state)
        output = output_from_message(msg_type, content)
        writer = host.writer
        if msg_type == "stream":
            kind = f"stream:{output['name']}"
            if not (state.kinds and state.kinds[-1] == kind and state.stream is not None):
                self._commit(eid, state)
                state.stream = StreamChunks()
                writer.append_output(eid, len(state.kinds), output)
                state.kinds.append(kind)
            stream = state.stream
            assert stream is not None
            if not stream.dirty:
                index = len(state.kinds) - 1
                host.before_flush(lambda: self._write(eid, index, stream))
            stream.append(output["text"])
        else:
            self._commit(eid, state)
            state.stream = None
            index = len(state.kinds)
            output = host.offload_output(output)  # images and long texts to the blob store
            writer.append_output(eid, index, output)
            state.kinds.append(msg_type)
            display_id = (output.get("transient") or {}).get("display_id")
            if display_id:
                self._displays.setdefault(display_id, []).append((eid, index, output))
        host.schedule_flush(PROGRESS_DELAY)

    def finished(self, eid: str) -> None:
        """Execution ``eid`` ended: nothing more comes for it (its display ids stay updatable;
        stream text still pending is written at the next flush)."""
        self._executions.pop(eid, None)

    def forget(self, execution_ids: Iterable[str]) -> None:
        """The room dropped these executions from its document; drop what refers to them."""
        ids = set(execution_ids)
        for key, places in list(self._displays.items()):
            kept = [p for p in places if p[0] not in ids]
            if kept:
                self._displays[key] = kept
            else:
                del self._displays[key]

    def _write(self, eid: str, index: int, stream: StreamChunks) -> None:
        if stream.dirty:
            self.host.writer.write_stream(eid, index, stream.commit())

    def _commit(self, eid: str, state: _ExecutionOutputs) -> None:
        """Write the current stream's pending text now (before anything follows it)."""
        if state.stream is not None:
            self._write(eid, len(state.kinds) - 1, state.stream)

    def _clear(self, eid: str, state: _ExecutionOutputs) -> None:
        if state.stream is not None:
            state.stream.commit()  # whatever was pending is moot: it is being cleared
        self.host.writer.clear_outputs(eid)
        state.kinds.clear()
        state.stream = None
        state.clear_pending = False
        self.forget({eid})

    def _update_display(self, content: dict[str, Any]) -> None:
        places = self._displays.get((content.get("transient") or {}).get("display_id"), [])
        writer = self.host.writer
        for i, (eid, index, old) in enumerate(places):
            new = {k: v for k, v in old.items() if k != BLOBS_KEY}
            new = self.host.offload_output(
                {**new, "data": content.get("data", {}), "metadata": content.get("metadata", {})})
            places[i] = (eid, index, new)
            writer.replace_output(eid, index, new)
