"""Where a notebook file is opened and saved: a file-backed room's ``.ipynb``.

The file is the source of truth. Opening reads it (nbformat, in a child
process: :mod:`~runtimed.daemon.nbformat_worker`) into the room's documents;
:meth:`NotebookFile.save` writes nbformat 4.5 atomically; the room autosaves
``autosave_secs`` after the last change (edits or outputs).

The daemon watches the file (watchfiles). A change that is not the daemon's
own write (an editor, ``git checkout``) is merged into the document as edits,
the way Automerge merges two collaborators: the file's changes since the
daemon last read or wrote it are applied to a fork of the document taken at
that point, and the fork is merged back, so the room's own edits made meanwhile
stay (sources merge by character). If the room had unsaved changes, their
version is first written to ``<state dir>/conflicts/`` and every session is
told where. Outputs the file changed replace the room's; a deleted file stops
autosave until the next explicit save.

The room's Automerge document is persisted as for every room; a small record
beside it (the file's fingerprint and the document's heads when they last
matched) lets a restarted daemon reuse it when the file did not change, or
merge what changed while it was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any

from runtimed.daemon.host import FileHost
from runtimed.daemon.nbformat_worker import NbformatWorker
from runtimed.document import notebook
from runtimed.errors import NotebookFileError
from runtimed.formats import ipynb

log = logging.getLogger(__name__)

#: Autosave waits for this many quiet seconds, but never longer than this many times that.
AUTOSAVE_MAX_FACTOR = 5
#: How long watchfiles waits for a burst of changes to settle (ms).
WATCH_DEBOUNCE_MS = 150


def _digest(value: Any) -> str:
    """A short fingerprint of a JSON value (comparing notebooks without keeping copies)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def resolve(path: str | os.PathLike[str]) -> Path:
    """A notebook path as rooms are keyed: absolute, user expanded, symlinks resolved."""
    return Path(path).expanduser().resolve()


class NotebookFile:
    """A room's ``.ipynb``: see the module docstring. Create with :meth:`open` or :meth:`attach`."""

    def __init__(self, path: Path, host: FileHost, worker: NbformatWorker, *, record_path: Path,
                 conflicts_dir: Path, autosave_secs: float) -> None:
        self.path = path
        self.host = host
        self.worker = worker
        self.record_path = record_path
        self.conflicts_dir = conflicts_dir
        self.autosave_secs = autosave_secs
        #: What the file holds as far as the daemon knows: its fingerprint, the document's heads
        #: when they matched it, its outputs and cells (for merging the next outside change).
        self.fingerprint: dict[str, Any] = {}
        self.base_heads: list[bytes] = []
        self.base_outputs: dict[str, str] = {}  # cell id -> digest of its outputs in the file
        self.base_cells: list[dict[str, Any]] = []
        self._saved_digest = ""  # of the notebook as the file holds it
        #: The file was deleted (or renamed away): no autosave until an explicit save.
        self.deleted = False
        self._lock = asyncio.Lock()
        self._autosave: asyncio.TimerHandle | None = None
        self._dirty_since: float | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stop_watching = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # opening ------------------------------------------------------------------------------------
    @classmethod
    async def open(cls, path: Path, host: FileHost, worker: NbformatWorker, **options: Any
                   ) -> NotebookFile:
        """Open ``path`` into the room's documents (creating an empty notebook if it is missing)."""
        self = cls(path, host, worker, **options)
        if path.is_dir():
            raise NotebookFileError(f"{path} is a directory, not a notebook file", path=str(path),
                                    kind="directory")
        if not path.exists():
            if not path.parent.is_dir():
                raise NotebookFileError(f"{path}: the directory {path.parent} does not exist",
                                        path=str(path), kind="missing")
            nb = ipynb.new_notebook()
            loaded = {"nb": nb, "had_ids": True, "fingerprint": await worker.write(path, nb)}
            log.info("Created %s", path)
        else:
            loaded = await worker.read(path)
            for stale in path.parent.glob(f".{path.name}.*.tmp"):  # a write cut short by a crash
                with contextlib.suppress(OSError):
                    stale.unlink()
        nb = loaded["nb"]
        doc = host.doc
        record = self._read_record()
        base = [bytes.fromhex(h) for h in record.get("base_heads", [])] if record else []
        if record and base and doc.has_heads(base):  # the room's document, persisted: reuse it
            heads = self.base_heads = base
            self.base_cells = record.get("base_cells", [])
            if record.get("fingerprint", {}).get("sha256") != loaded["fingerprint"]["sha256"]:
                log.info("%s changed while the daemon was away: merging it", path)
                heads = self._merge_into_doc(loaded)
            host.writer.set_saved_outputs(ipynb.saved_outputs(nb, host.offload_output))
        elif notebook.cell_ids(doc):  # a document of this id, never matched to the file
            ipynb.apply_notebook(doc, nb)
            host.writer.set_saved_outputs(ipynb.saved_outputs(nb, host.offload_output))
            heads = doc.heads
        else:
            ipynb.fill_documents(doc, host.writer, nb, host.offload_output)
            heads = doc.heads
        self._matched(loaded, nb, heads)
        host.doc_changed_locally()
        self._start_watching()
        return self

    @classmethod
    def attach(cls, path: Path, host: FileHost, worker: NbformatWorker, **options: Any
               ) -> NotebookFile:
        """Back a room that has no file yet by ``path`` (save as); :meth:`save` writes it."""
        self = cls(path, host, worker, **options)
        self._start_watching()
        return self

    def _matched(self, loaded: dict[str, Any], nb: dict[str, Any], heads: list[bytes]) -> None:
        """The file at ``loaded["fingerprint"]`` holds ``nb``, as the document did at ``heads``."""
        self.fingerprint = loaded["fingerprint"]
        self.base_heads = list(heads)
        self.base_outputs = {c["id"]: _digest(c.get("outputs", [])) for c in nb.get("cells", [])
                             if c.get("cell_type") == "code"}
        self.base_cells = [{"id": c["id"], "cell_type": c.get("cell_type"),
                            "source": ipynb.source_text(c.get("source"))} for c in nb.get("cells", [])]
        self._saved_digest = _digest(nb)
        self.deleted = False
        self._write_record()

    # the record beside the persisted document -------------------------------------------------------
    def _read_record(self) -> dict[str, Any] | None:
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) and record.get("path") == str(self.path) else None

    def _write_record(self) -> None:
        record = {"path": str(self.path), "fingerprint": self.fingerprint,
                  "base_heads": [h.hex() for h in self.base_heads], "base_cells": self.base_cells}
        tmp = self.record_path.with_suffix(f".tmp{uuid.uuid4().hex[:6]}")
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.record_path)
        except OSError:
            log.warning("Could not write %s", self.record_path, exc_info=True)

    # saving -------------------------------------------------------------------------------------------
    async def save(self, path: Path | None = None) -> Path:
        """Write the notebook (to ``path``: save as); the path written. Raises NotebookFileError."""
        async with self._lock:
            return await self._save(path)

    async def _save(self, path: Path | None = None) -> Path:
        self._cancel_autosave()
        target = path or self.path
        host = self.host
        nb = self._notebook()
        heads = host.doc.heads
        if (target == self.path and not self.deleted and self.fingerprint
                and _digest(nb) == self._saved_digest):
            return target  # the file holds this already
        fingerprint = await self.worker.write(target, nb)
        if target != self.path:
            log.info("%s: saved as %s", self.path, target)
            self.path = target
            self._restart_watching()
        self._matched({"fingerprint": fingerprint}, nb, heads)
        return target

    def _notebook(self) -> dict[str, Any]:
        """What the room holds, as the file should (outputs inlined)."""
        return ipynb.to_notebook(self.host.doc, self.host.writer.replica, self.host.read_blob)

    def changed(self) -> None:
        """The room's documents changed: autosave after ``autosave_secs`` of quiet."""
        if self.autosave_secs <= 0 or self.deleted:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._dirty_since is None:
            self._dirty_since = now
        delay = min(self.autosave_secs,
                    max(0.0, self._dirty_since + self.autosave_secs * AUTOSAVE_MAX_FACTOR - now))
        if self._autosave is not None:
            self._autosave.cancel()
        self._autosave = loop.call_later(delay, self._spawn, self._autosave_now)

    def _cancel_autosave(self) -> None:
        if self._autosave is not None:
            self._autosave.cancel()
            self._autosave = None
        self._dirty_since = None

    async def _autosave_now(self) -> None:
        self._autosave = None
        try:
            await self.save()
        except NotebookFileError as exc:
            log.warning("Autosave failed: %s", exc.message)
            self.host.broadcast({"event": "save_failed", "path": str(self.path), "error": exc.message})

    def _spawn(self, make: Any) -> None:
        task = asyncio.get_running_loop().create_task(make())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # outside changes ------------------------------------------------------------------------------------
    def _start_watching(self) -> None:
        self._stop_watching = asyncio.Event()
        self._watcher = asyncio.create_task(self._watch(self.path, self._stop_watching),
                                            name=f"runtimed-watch-{self.path.name}")

    def _restart_watching(self) -> None:
        self._stop_watching.set()
        self._start_watching()

    async def _watch(self, path: Path, stop: asyncio.Event) -> None:
        from watchfiles import awatch  # the Rust watcher thread starts only for open files

        try:
            async for _ in awatch(path.parent, watch_filter=lambda _c, p: Path(p) == path,
                                  recursive=False, debounce=WATCH_DEBOUNCE_MS, step=25,
                                  stop_event=stop):
                await self.on_disk_change()
        except Exception:  # the directory went away, the watcher failed: say so, keep serving
            log.warning("Stopped watching %s", path, exc_info=True)

    async def on_disk_change(self) -> None:
        """The file changed on disk: merge what is new, unless it is the daemon's own write."""
        async with self._lock:
            if not self.path.exists():
                if not self.deleted:
                    self.deleted = True
                    self._cancel_autosave()
                    log.warning("%s was deleted or renamed; autosave is off until save()", self.path)
                    self.host.broadcast({"event": "file_deleted", "path": str(self.path)})
                return
            try:
                loaded = await self.worker.read(self.path)
            except NotebookFileError as exc:  # half written by an editor, or broken: keep ours
                self.host.broadcast({"event": "file_unreadable", "path": str(self.path),
                                     "error": exc.message})
                return
            if loaded["fingerprint"]["sha256"] == self.fingerprint.get("sha256"):
                self.deleted = False
                return  # our own write, or a touch
            unsaved = _digest(self._notebook()) != self._saved_digest
            conflict = await self._conflict_copy() if unsaved else None
            self._matched(loaded, loaded["nb"], self._merge_into_doc(loaded))
            if unsaved:
                self.changed()  # the merge of both is what the file should hold now
            self.host.doc_changed_locally()
            log.info("%s changed on disk: merged%s", self.path,
                     f" (the unsaved version is in {conflict})" if conflict else "")
            self.host.broadcast({"event": "file_changed", "path": str(self.path),
                                 "conflict_copy": str(conflict) if conflict else None})

    def _merge_into_doc(self, loaded: dict[str, Any]) -> list[bytes]:
        """Apply the file's changes since :attr:`base_heads` to a fork, merge it into the doc,
        and take the file's outputs where the file changed them; the fork's heads (the
        document as the file now holds it)."""
        nb = loaded["nb"]
        if not loaded.get("had_ids", True):
            ipynb.align_ids(self.base_cells, nb["cells"])
        host = self.host
        doc = host.doc
        fork = doc.fork_at(self.base_heads)
        ipynb.apply_notebook(fork, nb)
        doc.merge(fork)
        outputs = {c["id"]: c.get("outputs", []) for c in nb["cells"] if c.get("cell_type") == "code"}
        changed = [cid for cid, outs in outputs.items() if _digest(outs) != self.base_outputs.get(cid)]
        host.writer.set_saved_outputs({cid: [host.offload_output(o) for o in outputs[cid]]
                                       for cid in changed if outputs[cid]})
        host.writer.drop_saved_outputs([cid for cid in changed if not outputs[cid]])
        if changed:  # the file's outputs win over the room's for those cells
            notebook.clear_execution(doc, changed, counts=False)
        return fork.heads

    async def _conflict_copy(self) -> Path | None:
        """Write the room's version, as it is before a merge, where the user can find it."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.conflicts_dir / f"{self.path.stem}-{stamp}-{uuid.uuid4().hex[:4]}.ipynb"
        try:
            self.conflicts_dir.mkdir(parents=True, exist_ok=True)
            await self.worker.write(target, self._notebook())
        except (OSError, NotebookFileError):
            log.warning("Could not write the conflict copy %s", target, exc_info=True)
            return None
        return target

    # closing ----------------------------------------------------------------------------------------
    async def close(self) -> None:
        """Save what autosave has pending, stop watching."""
        pending = self._autosave is not None
        self._cancel_autosave()
        if pending and not self.deleted:
            with contextlib.suppress(NotebookFileError):
                await self.save()
        self._stop_watching.set()
        for task in (self._watcher, *self._tasks):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._watcher, *self._tasks) if t), return_exceptions=True)
