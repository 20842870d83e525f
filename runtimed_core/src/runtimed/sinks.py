"""The output-sink contract: where kernel outputs go.

Every output a kernel produces is handed to every sink, in order, on the
daemon's event loop. The daemon's own handling (writing outputs into the
runtime-state document so every peer sees them) is one such sink; plugins can
add others (logging, exporting, mirroring). Methods are synchronous and must be
cheap: a sink that does I/O schedules it itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from runtimed.config import DaemonConfig


@dataclass
class ExecutionContext:
    """The execution an output belongs to."""

    notebook_id: str
    execution_id: str
    cell_id: str
    #: The daemon's room object (used by the built-in document sink; opaque to plugins).
    room: Any = None


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
        """Optional. The cell finished (the kernel is idle and every output was delivered)."""
