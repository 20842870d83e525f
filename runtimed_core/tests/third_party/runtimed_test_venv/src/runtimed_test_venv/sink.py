"""An output sink that always fails: the daemon must isolate it from the cell and the document."""

from __future__ import annotations

from typing import Any

from runtimed.sinks import ExecutionContext, OutputSink


class FailingSink(OutputSink):
    """Raises on every output."""

    def on_output(self, ctx: ExecutionContext, msg_type: str, content: dict[str, Any]) -> None:
        raise RuntimeError("this sink always fails")
