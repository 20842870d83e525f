"""Result types returned to users: :class:`ExecutionResult`, :class:`Output`, :class:`Cell`.

Plain frozen dataclasses built from the documents (no I/O), shared by the sync
and async APIs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtimed.blobs import blob_refs, inline_output

#: ``read_blob(sha256) -> bytes``: how a session reads the daemon's blob store.
ReadBlob = Callable[[str], "bytes | None"]
#: ``blob_url(sha256) -> str``: the daemon's HTTP address of a blob.
BlobUrl = Callable[[str], str]


@dataclass(frozen=True)
class Output:
    """One Jupyter output."""

    #: ``"stream"``, ``"display_data"``, ``"execute_result"`` or ``"error"``.
    output_type: str
    #: Streams: ``"stdout"`` or ``"stderr"``.
    name: str | None = None
    #: Streams: the text (carriage returns already applied, chunks merged).
    text: str | None = None
    #: display_data / execute_result: MIME type -> content.
    data: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    execution_count: int | None = None
    #: Errors: exception class name, message, and traceback lines.
    ename: str | None = None
    evalue: str | None = None
    traceback: list[str] | None = None
    #: display_data / execute_result: MIME type -> the daemon's URL of the parts it keeps as
    #: blobs (images, long texts); ``data`` holds their content all the same.
    blob_urls: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_nbformat(cls, out: dict[str, Any], *, read_blob: ReadBlob | None = None,
                      blob_url: BlobUrl | None = None) -> Output:
        """An output from its nbformat dict (as the runtime state holds it: blob references
        are read with ``read_blob``)."""
        refs = blob_refs(out)
        if refs and read_blob is not None:
            out = inline_output(out, read_blob)
        urls = {mime: blob_url(ref["sha256"]) for mime, ref in refs.items()} if blob_url else {}
        kind = out.get("output_type", "")
        if kind == "stream":
            return cls(kind, name=out.get("name"), text=out.get("text", ""))
        if kind == "error":
            return cls(kind, ename=out.get("ename"), evalue=out.get("evalue"),
                       traceback=list(out.get("traceback") or []))
        return cls(kind, data=dict(out.get("data") or {}), metadata=dict(out.get("metadata") or {}),
                   execution_count=out.get("execution_count"), blob_urls=urls)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """How Jupyter and IPython show it: its MIME bundle, or its text."""
        if self.output_type == "stream":
            return {"text/plain": self.text or ""}
        if self.output_type == "error":
            return {"text/plain": "\n".join(self.traceback or []) or f"{self.ename}: {self.evalue}"}
        return dict(self.data or {})


@dataclass(frozen=True)
class ExecutionResult:
    """The outcome of ``execute_cell``."""

    cell_id: str
    #: True if the cell ran to completion without an error.
    success: bool
    execution_count: int | None
    outputs: list[Output]
    execution_id: str | None = None
    #: Why the run did not complete, when it did not: cancelled, interrupted, restarted, shutdown.
    failure: str | None = None
    #: ``"done"`` or ``"error"`` once it ended; ``"queued"`` or ``"running"`` for a result
    #: fetched by id (``get_result``) before it ended.
    status: str | None = None

    @property
    def stdout(self) -> str:
        return "".join(o.text or "" for o in self.outputs if o.output_type == "stream" and o.name == "stdout")

    @property
    def stderr(self) -> str:
        return "".join(o.text or "" for o in self.outputs if o.output_type == "stream" and o.name == "stderr")

    @property
    def display_data(self) -> list[Output]:
        return [o for o in self.outputs if o.output_type in ("display_data", "execute_result")]

    @property
    def error(self) -> Output | None:
        return next((o for o in self.outputs if o.output_type == "error"), None)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """How Jupyter and IPython show it: the last rich output's bundle, its text after
        the streams' and the error's."""
        texts = [o._repr_mimebundle_()["text/plain"] for o in self.outputs
                 if o.output_type in ("stream", "error")]
        rich = self.display_data[-1] if self.display_data else None
        bundle = dict(rich.data or {}) if rich is not None else {}
        if rich is not None and "text/plain" in bundle:
            texts.append(str(bundle["text/plain"]))
        bundle["text/plain"] = "".join(texts)
        return bundle

    @classmethod
    def from_record(cls, record: dict[str, Any], *, read_blob: ReadBlob | None = None,
                    blob_url: BlobUrl | None = None) -> ExecutionResult:
        return cls(
            cell_id=record["cell_id"],
            success=bool(record.get("success")) and record.get("status") == "done",
            execution_count=record.get("execution_count"),
            outputs=[Output.from_nbformat(o, read_blob=read_blob, blob_url=blob_url)
                     for o in record.get("outputs", [])],
            execution_id=record.get("execution_id"),
            failure=record.get("failure"),
            status=record.get("status"),
        )


@dataclass(frozen=True)
class Cell:
    """A cell as the local replica of the notebook document has it."""

    id: str
    #: ``"code"``, ``"markdown"`` or ``"raw"``.
    cell_type: str
    source: str
    execution_count: int | None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Outputs of the cell's latest execution, while the daemon keeps them.
    outputs: list[Output] = field(default_factory=list)
    execution_id: str | None = None
