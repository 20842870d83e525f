"""What ``session.stream(cell_id)`` yields: :class:`ExecutionEvent`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from runtimed.client.results import ExecutionResult, Output


@dataclass(frozen=True)
class ExecutionEvent:
    """One thing that happened to a streamed execution, as it happened.

    ``kind`` is ``"queued"`` (the daemon accepted it; ``execution_id`` is set),
    ``"started"`` (the kernel began it; ``execution_count`` is set), ``"output"``
    (one output message as the kernel published it: ``output`` is a stream chunk, a
    display, a result or an error; streams are not merged nor ``\\r``-processed here) or
    ``"done"`` (the last event: ``result`` is the :class:`ExecutionResult`, outputs
    merged as ``execute_cell`` returns them).
    """

    kind: Literal["queued", "started", "output", "done"]
    output: Output | None = None
    result: ExecutionResult | None = None
    execution_id: str | None = None
    execution_count: int | None = None
