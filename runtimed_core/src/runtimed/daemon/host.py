"""What a room's kernel side may do to the room: the narrow interface between them.

:class:`runtimed.daemon.room.Room` implements it; the kernel side
(:mod:`~runtimed.daemon.room_kernel`, :mod:`~runtimed.daemon.executor`,
:mod:`~runtimed.daemon.outputs`, :mod:`~runtimed.daemon.comms`) sees only this, never the room itself, so
tests can drive it with a small fake and no module imports its caller.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from runtimed.document.replica import Replica
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

    def offload_output(self, output: dict[str, Any]) -> dict[str, Any]:
        """``output`` with its images and long texts moved to the blob store."""
        ...

    def put_blob(self, raw: bytes, content_type: str) -> str | None:
        """Keep ``raw`` in the blob store; its SHA-256, or None if it is over the cap."""
        ...

    def broadcast(self, event: dict[str, Any]) -> None:
        """Tell every peer (``event["event"]`` names what happened)."""
        ...

    def before_flush(self, write: Callable[[], None]) -> None:
        """Run ``write`` once, at the start of the next flush (batched document writes)."""
        ...

    def annotate_cell(self, cell_id: str, execution_id: str, execution_count: int | None,
                      delay: float = 0.0) -> None:
        """Point the notebook's cell at its latest execution and count (one document change)."""
        ...

    def notebook_metadata(self) -> dict[str, Any]: ...

    def keep_widgets(self) -> None:
        """The kernel's widget models are about to go (with the kernel): keep their last state
        as the notebook's ``metadata.widgets``, what its saved file shows them with."""
        ...

    def code_sources(self) -> list[str]:
        """The sources of the notebook's code cells, in order."""
        ...

    def set_default_kernelspec(self, kernelspec: dict[str, Any]) -> None:
        """Record ``kernelspec`` in the notebook metadata unless it has one."""
        ...

    def notebook_path(self) -> Path | None:
        """The notebook's file, for file-backed rooms (kernels start next to it)."""
        ...

    def current_executions(self) -> set[str]:
        """The executions the notebook's cells point at (their outputs are what they show)."""
        ...

    def execution_finished(self, execution_id: str) -> None:
        """An execution ended (its record is complete once the next flush has written its
        last stream text): the room keeps its result (see :mod:`~runtimed.daemon.execution_store`)."""
        ...


class FileHost(Protocol):
    """A room as its notebook file (:mod:`~runtimed.daemon.notebook_file`) sees it."""

    @property
    def doc(self) -> Replica:
        """The notebook document."""
        ...

    @property
    def writer(self) -> RuntimeStateWriter: ...

    def doc_changed_locally(self, delay: float = 0.0) -> None:
        """The daemon edited the notebook document: persist it and sync the peers."""
        ...

    def broadcast(self, event: dict[str, Any]) -> None:
        """Tell every peer (``event["event"]`` names what happened)."""
        ...

    def offload_output(self, output: dict[str, Any]) -> dict[str, Any]:
        """``output`` with its images and long texts moved to the blob store."""
        ...

    def read_blob(self, sha256: str) -> bytes | None:
        """A blob's bytes (None if it is missing or corrupt)."""
        ...
