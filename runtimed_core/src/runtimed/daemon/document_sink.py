"""The daemon's own output sink: kernel outputs into the runtime-state document.

Streams follow terminal semantics (:class:`runtimed.outputs.StreamChunks`):
consecutive chunks of one stream merge into one output; their text is written
to the document once per sync (just before the room flushes), however many
messages the kernel sent meanwhile. ``clear_output`` (with ``wait``) and
``update_display_data`` rewrite earlier outputs. Other outputs are written at
once; the room coalesces the network sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runtimed.daemon.executor import PROGRESS_DELAY
from runtimed.outputs import StreamChunks, output_from_message
from runtimed.sinks import ExecutionContext, OutputSink


@dataclass
class _ExecutionOutputs:
    kinds: list[str] = field(default_factory=list)  # "stream:stdout", "display_data"...
    stream: StreamChunks | None = None  # the last output's stream state, if it is a stream
    clear_pending: bool = False


class DocumentSink(OutputSink):
    """Writes every output of every execution into its room's runtime-state document."""

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._executions: dict[str, _ExecutionOutputs] = {}
        # (notebook_id, display_id) -> [(execution_id, index, output)] for update_display_data
        self._displays: dict[tuple[str, str], list[tuple[str, int, dict[str, Any]]]] = {}

    def on_execution_started(self, ctx: ExecutionContext, execution_count: int | None) -> None:
        self._executions.setdefault(ctx.execution_id, _ExecutionOutputs())

    def on_output(self, ctx: ExecutionContext, msg_type: str, content: dict[str, Any]) -> None:
        writer = ctx.room.writer
        state = self._executions.setdefault(ctx.execution_id, _ExecutionOutputs())
        eid = ctx.execution_id
        if msg_type == "clear_output":
            if content.get("wait"):
                state.clear_pending = True
            else:
                self._clear(writer, eid, state)
            ctx.room.schedule_flush(PROGRESS_DELAY)
            return
        if msg_type == "update_display_data":
            self._update_display(writer, ctx.notebook_id, content)
            ctx.room.schedule_flush(PROGRESS_DELAY)
            return
        if state.clear_pending:
            self._clear(writer, eid, state)
        output = output_from_message(msg_type, content)
        if msg_type == "stream":
            kind = f"stream:{output['name']}"
            if not (state.kinds and state.kinds[-1] == kind and state.stream is not None):
                self._commit(writer, eid, state)
                state.stream = StreamChunks()
                writer.append_output(eid, len(state.kinds), output)
                state.kinds.append(kind)
            stream = state.stream
            assert stream is not None
            if not stream.dirty:
                index = len(state.kinds) - 1
                ctx.room.before_flush.append(lambda: self._write(writer, eid, index, stream))
            stream.append(output["text"])
        else:
            self._commit(writer, eid, state)
            state.stream = None
            index = len(state.kinds)
            writer.append_output(eid, index, output)
            state.kinds.append(msg_type)
            display_id = (output.get("transient") or {}).get("display_id")
            if display_id:
                self._displays.setdefault((ctx.notebook_id, display_id), []).append((eid, index, output))
        ctx.room.schedule_flush(PROGRESS_DELAY)

    @staticmethod
    def _write(writer: Any, eid: str, index: int, stream: StreamChunks) -> None:
        if stream.dirty:
            writer.write_stream(eid, index, stream.commit())

    def _commit(self, writer: Any, eid: str, state: _ExecutionOutputs) -> None:
        """Write the current stream's pending text now (before anything follows it)."""
        if state.stream is not None:
            self._write(writer, eid, len(state.kinds) - 1, state.stream)

    def _clear(self, writer: Any, eid: str, state: _ExecutionOutputs) -> None:
        if state.stream is not None:
            state.stream.commit()  # whatever was pending is moot: it is being cleared
        writer.clear_outputs(eid)
        state.kinds.clear()
        state.stream = None
        state.clear_pending = False
        self.forget({eid})

    def _update_display(self, writer: Any, notebook_id: str, content: dict[str, Any]) -> None:
        key = (notebook_id, (content.get("transient") or {}).get("display_id"))
        places = self._displays.get(key, [])
        for i, (eid, index, old) in enumerate(places):
            new = {**old, "data": content.get("data", {}), "metadata": content.get("metadata", {})}
            places[i] = (eid, index, new)
            writer.replace_output(eid, index, new)

    def on_execution_finished(self, ctx: ExecutionContext, success: bool) -> None:
        self._executions.pop(ctx.execution_id, None)

    def forget(self, execution_ids: set[str]) -> None:
        """The room dropped these executions from its document; drop their display entries."""
        for key, places in list(self._displays.items()):
            kept = [p for p in places if p[0] not in execution_ids]
            if kept:
                self._displays[key] = kept
            else:
                del self._displays[key]
