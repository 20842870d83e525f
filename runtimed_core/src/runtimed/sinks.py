"""The output-sink contract: a plugin that sees every kernel output (to log, export, mirror).

The daemon itself writes outputs into the runtime-state document, so every
peer sees them; sinks are extra destinations. Every output of every execution
is handed to each sink, in plugin registration order, on the daemon's event
loop, right after the daemon recorded it. A sink sees only what is declared
here: the execution (:class:`ExecutionContext`) and the Jupyter message. Methods
are synchronous and must be cheap: a sink that does I/O schedules it itself.

Sinks are isolated from each other and from the cell: an exception in a sink
is logged (once per execution, naming the plugin) and the other sinks, the
document and the cell go on as if it had not happened.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from runtimed.config import DaemonConfig


@dataclass(frozen=True)
class ExecutionContext:
    """The execution an output belongs to."""

    notebook_id: str
    execution_id: str
    cell_id: str
    #: The code the kernel runs (the cell's source when it was queued).
    source: str
    #: The kernel running it, e.g. ``"python"``.
    kernel_type: str


class OutputSink(ABC):
    """Base class of output sinks. Required: :meth:`on_output`."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config

    def on_execution_started(self, ctx: ExecutionContext, execution_count: int | None) -> None:
        """Optional. The kernel began running the cell."""

    @abstractmethod
    def on_output(self, ctx: ExecutionContext, msg_type: str, content: dict[str, Any]) -> None:
        """Required. One IOPub output message: ``stream``, ``display_data``,
        ``execute_result``, ``error``, ``clear_output`` or ``update_display_data``,
        with its Jupyter ``content``."""

    def on_execution_finished(self, ctx: ExecutionContext, success: bool) -> None:
        """Optional. The cell finished (the kernel is idle and every output was delivered),
        or it ended without running (cancelled, interrupted, the kernel died)."""
