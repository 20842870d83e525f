"""What a room's kernel side may do to the room: the narrow interface between them.

:class:`runtimed.daemon.room.Room` implements it; the kernel side
(:mod:`~runtimed.daemon.room_kernel`, :mod:`~runtimed.daemon.executor`,
:mod:`~runtimed.daemon.outputs`) sees only this, never the room itself, so
tests can drive it with a small fake and no module imports its caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from runtimed.document.runtime_state import RuntimeStateWriter


class RoomHost(Protocol):
    """A room as the kernel side sees it."""

    @property
    def notebook_id(self) -> str: ...

    @property
    def writer(self) -> RuntimeStateWriter:
        """The runtime-state document's writer (the room may replace it between flushes)."""
        ...

    def schedule_flush(self, delay: float = 0.0) -> None:
        """Sync the peers within ``delay`` seconds (calls coalesce)."""
        ...

    def flush(self) -> None:
        """Sync the peers now."""
        ...

    def before_flush(self, write: Callable[[], None]) -> None:
        """Run ``write`` once, at the start of the next flush (batched document writes)."""
        ...

    def annotate_cell(self, cell_id: str, execution_id: str, execution_count: int | None,
                      delay: float = 0.0) -> None:
        """Point the notebook's cell at its latest execution and count (one document change)."""
        ...

    def notebook_metadata(self) -> dict[str, Any]: ...

    def code_sources(self) -> list[str]:
        """The sources of the notebook's code cells, in order."""
        ...

    def set_default_kernelspec(self, kernelspec: dict[str, Any]) -> None:
        """Record ``kernelspec`` in the notebook metadata unless it has one."""
        ...
