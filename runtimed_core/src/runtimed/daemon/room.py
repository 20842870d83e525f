"""A room: one notebook's documents and its connected peers (and, beside them, its kernel).

Every peer holds replicas of both documents. A peer's sync message is applied
at once (inside the socket callback) and the room answers on the next tick
with one message per peer per document, which is also how changes are
re-broadcast to the other peers. Requests that act on the document first wait
for its ``required_heads``. The notebook document is persisted as it changes
(:mod:`~runtimed.daemon.persistence`). The room's kernel is a
:class:`~runtimed.daemon.room_kernel.RoomKernel`, which sees the room only as
a :class:`~runtimed.daemon.host.RoomHost`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from runtimed.blobs import BlobStore, offload_output
from runtimed.config import DaemonConfig
from runtimed.daemon.execution_store import ExecutionStore
from runtimed.daemon.nbformat_worker import NbformatWorker
from runtimed.daemon.notebook_file import NotebookFile
from runtimed.daemon.persistence import DocStore
from runtimed.daemon.plugin_sinks import PluginSinks
from runtimed.daemon.provisioning import Provisioner
from runtimed.daemon.room_kernel import RoomKernel
from runtimed.document import notebook
from runtimed.document.replica import ROOT, Replica, SyncState
from runtimed.document.runtime_state import RuntimeStateWriter, read_execution
from runtimed.errors import InvalidRequest, ProtocolError, RuntimedError
from runtimed.formats import ipynb
from runtimed.protocol.messages import BROADCAST, DOC_SYNC, STATE_SYNC, dumps, typed
from runtimed.protocol.transport import FramedProtocol

log = logging.getLogger(__name__)

REQUIRED_HEADS_TIMEOUT = 10.0
#: How long the acknowledgement of a peer's edit may wait for a daemon change to ride along
#: (an execution's changes come within a few ms; a plain edit is acknowledged this late).
ACK_DELAY = 0.05


class Peer:
    """One client connection in a room, with a sync state per document."""

    def __init__(self, proto: FramedProtocol) -> None:
        self.proto = proto
        self.doc_sync = SyncState()
        self.state_sync = SyncState()
        #: Set when this peer's own edit is all that is new in the document: its
        #: acknowledgement may wait (until ``ack_due``) to ride with the next change.
        self.ack_version: int | None = None
        self.ack_due = 0.0

    def send(self, kind: int, body: bytes) -> None:
        if not self.proto.closed:
            self.proto.send(typed(kind, body))

    def sync_frames(self, doc: Replica, state: Replica, now: float) -> list[bytes]:
        """The sync messages this peer needs now, as frame payloads."""
        frames = []
        if self.ack_version != doc.version or now >= self.ack_due:
            self.ack_version = None
            msg = doc.generate(self.doc_sync)
            if msg is not None:
                frames.append(typed(DOC_SYNC, msg))
        msg = state.generate(self.state_sync)
        if msg is not None:
            frames.append(typed(STATE_SYNC, msg))
        return frames


class Room:
    """One notebook's documents, peers and kernel. ``on_idle(room)`` is awaited once the
    last peer has been gone for ``config.keep_alive_secs``."""

    def __init__(self, notebook_id: str, *, config: DaemonConfig, provisioner: Provisioner,
                 sinks: PluginSinks, on_idle: Callable[[Room], Awaitable[None]],
                 files: NbformatWorker, blobs: BlobStore, http: dict[str, str] | None = None,
                 results: ExecutionStore | None = None) -> None:
        self._notebook_id = notebook_id
        self.config = config
        self.blobs = blobs
        self._http = http if http is not None else {}
        self._on_idle = on_idle
        self._files = files
        self._results = results
        #: The notebook file backing this room, if it is file-backed.
        self.file: NotebookFile | None = None
        self.store = DocStore(config.state_dir / "notebooks", notebook_id)
        self.doc = self.store.load()
        notebook.set_notebook_id(self.doc, notebook_id)
        self.store.record(self.doc)
        self._writer = RuntimeStateWriter(Replica())
        self.peers: list[Peer] = []
        self.watchers: list[Any] = []
        self.kernel = RoomKernel(self, provisioner, sinks)
        self._flush_handle: asyncio.Handle | None = None
        self._flush_due = 0.0
        #: Callbacks run once at the start of the next flush (batched document writes).
        self._before_flush: list[Callable[[], None]] = []
        self._doc_dirty = False
        # Whether a flush has anything to do: a peer joined, drained or sent a sync message
        # (it may need a reply), or a document changed since the last flush.
        self._sync_wanted = False
        self._synced_versions: tuple[int, int] = (-1, -1)
        self._doc_moved: asyncio.Future[None] | None = None
        self._evict_timer: asyncio.TimerHandle | None = None
        self.closed = False

    @property
    def notebook_id(self) -> str:
        return self._notebook_id

    @property
    def writer(self) -> RuntimeStateWriter:
        return self._writer

    @property
    def state(self) -> Replica:
        """The runtime-state document (replaced by :meth:`_renew_state` now and then)."""
        return self._writer.replica

    # peers and sync -----------------------------------------------------------------------------
    def add_peer(self, proto: FramedProtocol, *, snapshot: bool = False) -> Peer:
        """A new peer. With ``snapshot`` (it holds nothing yet) its welcome carries both
        documents whole: loading them is far cheaper than applying their history by sync."""
        if self._evict_timer is not None:
            self._evict_timer.cancel()
            self._evict_timer = None
        peer = Peer(proto)
        proto.on_drain = self._sync_soon  # a peer that fell behind gets one catch-up message
        self.peers.append(peer)
        welcome = {
            "event": "welcome", "notebook_id": self.notebook_id,
            "path": str(self.file.path) if self.file is not None else None,
            "blob_store_dir": str(self.blobs.root),
            "http": self._http,
            "notebook_heads": [h.hex() for h in self.doc.heads],
            "state_heads": [h.hex() for h in self.state.heads],
        }
        if snapshot:
            welcome["doc"], welcome["state"] = self._snapshot(self.doc), self._snapshot(self.state)
        peer.send(BROADCAST, dumps(welcome))
        self._sync_soon()
        return peer

    @staticmethod
    def _snapshot(replica: Replica) -> str:
        """A document saved whole (base64), kept while it does not change: peers that join
        together (a notebook opened by many) cost one save."""
        cached = replica.cache.get("snapshot")
        if cached is None or cached[0] != replica.version:
            cached = replica.cache["snapshot"] = (replica.version,
                                                  base64.b64encode(replica.save()).decode())
        return cached[1]

    def remove_peer(self, peer: Peer) -> None:
        if peer in self.peers:
            self.peers.remove(peer)
        self._idle_soon()

    def _idle_soon(self) -> None:
        """Nobody uses the room any more: it is evicted after ``keep_alive_secs``."""
        if not self.peers and not self.watchers and not self.closed:
            delay = self.config.keep_alive_secs
            loop = asyncio.get_running_loop()
            self._evict_timer = loop.call_later(delay, lambda: loop.create_task(self._on_idle(self)))

    def watch(self, watcher: Any) -> None:
        """``watcher.changed(room)`` is called whenever the room's documents change (a live
        page); the room stays open while watched."""
        if self._evict_timer is not None:
            self._evict_timer.cancel()
            self._evict_timer = None
        self.watchers.append(watcher)

    def unwatch(self, watcher: Any) -> None:
        if watcher in self.watchers:
            self.watchers.remove(watcher)
        self._idle_soon()

    @property
    def in_use(self) -> bool:
        return bool(self.peers or self.watchers)

    def on_doc_sync(self, peer: Peer, body: memoryview) -> None:
        try:
            changed = self.doc.receive(peer.doc_sync, body)
        except Exception as exc:
            raise ProtocolError(f"Malformed notebook sync message: {exc}") from None
        if changed:
            self._doc_dirty = True
            if self._doc_moved is not None and not self._doc_moved.done():
                self._doc_moved.set_result(None)
            # The others get the edit now; the sender's acknowledgement can wait a little
            # for a change of the daemon's own (e.g. the cell's execution) to ride along.
            peer.ack_version = self.doc.version
            peer.ack_due = asyncio.get_running_loop().time() + ACK_DELAY
        self._sync_soon()

    def on_state_sync(self, peer: Peer, body: memoryview) -> None:
        try:
            self.state.receive(peer.state_sync, body)
        except Exception as exc:
            raise ProtocolError(f"Malformed runtime-state sync message: {exc}") from None
        self._sync_soon()

    def _sync_soon(self) -> None:
        self._sync_wanted = True
        self.schedule_flush()

    def doc_changed_locally(self, delay: float = 0.0) -> None:
        """The daemon edited the notebook document itself."""
        self._doc_dirty = True
        self.schedule_flush(delay)

    def schedule_flush(self, delay: float = 0.0) -> None:
        """Sync peers within ``delay`` seconds (0: on the next loop iteration); calls coalesce."""
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        if self._flush_handle is not None:
            if self._flush_due <= due:
                return
            self._flush_handle.cancel()
        self._flush_due = due
        self._flush_handle = (loop.call_soon(self.flush) if delay <= 0
                              else loop.call_later(delay, self.flush))

    def flush(self) -> None:
        """Send every peer what it lacks of either document, now."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        pending, self._before_flush = self._before_flush, []
        for write in pending:
            write()
        if self._doc_dirty:  # persisted before any peer (or response) can acknowledge it
            self._doc_dirty = False
            self.store.record(self.doc)
        if self.state.version > self.config.state_history_limit:
            self._renew_state()
        versions = (self.doc.version, self.state.version)
        if not self._sync_wanted and versions == self._synced_versions:
            return  # nothing changed and nobody asked: every peer is as synced as it can be
        if versions != self._synced_versions:
            if self.file is not None:
                self.file.changed()
            for watcher in self.watchers:
                watcher.changed(self)
        self._sync_wanted, self._synced_versions = False, versions
        now = asyncio.get_running_loop().time()
        owed: list[float] = []  # when the acknowledgements still owed are due
        for peer in list(self.peers):
            if peer.proto.closed or peer.proto.writing_paused:
                continue  # a peer behind reading gets what it lacks when it drains, not a backlog
            try:
                frames = peer.sync_frames(self.doc, self.state, now)
                if peer.ack_version is not None:
                    owed.append(peer.ack_due)
                if frames:
                    peer.proto.send(*frames)
            except ProtocolError as exc:
                log.warning("%s: dropping a peer: %s", self.notebook_id, exc)
                peer.proto.abort(exc)
        if owed:
            self._sync_wanted = True
            self.schedule_flush(min(owed) - now)

    def _renew_state(self) -> None:
        """Start the runtime-state document afresh (same content, no history); every peer
        gets it whole, then syncs from there."""
        self._writer = self._writer.renewed()
        snapshot = base64.b64encode(self.state.save()).decode()
        reset = dumps({"event": "state_reset", "state": snapshot})
        for peer in self.peers:
            peer.state_sync = SyncState()
            peer.send(BROADCAST, reset)
        self._sync_wanted = True
        log.debug("%s: runtime-state document renewed (%d bytes)", self.notebook_id, len(snapshot))

    async def wait_for_heads(self, hex_heads: list[str]) -> None:
        """Wait (bounded) until the notebook document contains ``hex_heads``."""
        try:
            heads = [bytes.fromhex(h) for h in hex_heads]
        except (TypeError, ValueError):
            raise InvalidRequest("required_heads must be a list of hex strings") from None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REQUIRED_HEADS_TIMEOUT
        while not self.doc.has_heads(heads):
            if self._doc_moved is None or self._doc_moved.done():
                self._doc_moved = loop.create_future()
            remaining = deadline - loop.time()
            try:
                await asyncio.wait_for(asyncio.shield(self._doc_moved), max(remaining, 0))
            except asyncio.TimeoutError:
                raise RuntimedError(
                    f"Timed out after {REQUIRED_HEADS_TIMEOUT:.0f} s waiting for the client's "
                    "latest edits to reach the daemon", notebook_id=self.notebook_id,
                ) from None

    # what the kernel side may do (RoomHost) -------------------------------------------------------
    def before_flush(self, write: Callable[[], None]) -> None:
        self._before_flush.append(write)

    def annotate_cell(self, cell_id: str, execution_id: str, execution_count: int | None,
                      delay: float = 0.0) -> None:
        notebook.set_execution(self.doc, cell_id, execution_id=execution_id,
                               execution_count=execution_count)
        self._writer.drop_saved_outputs([cell_id])  # its own run's outputs show from now on
        self.doc_changed_locally(delay)

    def notebook_path(self) -> Path | None:
        return self.file.path if self.file is not None else None

    def current_executions(self) -> set[str]:
        cells = self.doc.get_obj(ROOT, "cells")
        found = set()
        for cid in notebook.cell_ids(self.doc):
            eid = self.doc.get(self.doc.get_obj(cells, cid), "execution_id")
            if eid:
                found.add(eid)
        return found

    def offload_output(self, output: dict[str, Any]) -> dict[str, Any]:
        return offload_output(output, self.blobs.put, text_threshold=self.config.blob_text_threshold)

    def read_blob(self, sha256: str) -> bytes | None:
        return self.blobs.read(sha256)

    def put_blob(self, raw: bytes, content_type: str) -> str | None:
        return self.blobs.put(raw, content_type)

    def blob_shas(self) -> set[str]:
        """Every blob this room's runtime state refers to (the garbage collector keeps them)."""
        return self._writer.blob_shas()

    def execution_finished(self, execution_id: str) -> None:
        """Keep the finished execution's result: read (complete) once the next flush has
        written its last stream text, and handed to the store after that flush's frames
        are out (the execution's response goes first)."""
        if self._results is None:
            return
        loop = asyncio.get_running_loop()
        self.before_flush(lambda: loop.call_soon(self._keep_result, execution_id))
        self.schedule_flush()

    def _keep_result(self, execution_id: str) -> None:
        record = read_execution(self.state, execution_id)
        if record is not None and self._results is not None:
            self._results.keep(self.notebook_id, record)

    def broadcast(self, event: dict[str, Any]) -> None:
        body = dumps(event)
        for peer in self.peers:
            peer.send(BROADCAST, body)

    # the notebook file ---------------------------------------------------------------------------
    def _file_options(self) -> dict[str, Any]:
        return {"record_path": self.store.snapshot_path.with_suffix(".file.json"),
                "conflicts_dir": self.config.state_dir / "conflicts",
                "autosave_secs": self.config.autosave_secs}

    async def open_file(self, path: Path) -> None:
        """Back this (new) room by the notebook at ``path``, read into its documents."""
        self.file = await NotebookFile.open(path, self, self._files, **self._file_options())
        self.flush()

    async def save(self, path: Path | None = None) -> Path:
        """Write the notebook to its file, or to ``path`` (save as); the path written."""
        if self.file is None:
            if path is None:
                raise InvalidRequest("This notebook has no file yet: save(path) names one",
                                     notebook_id=self.notebook_id)
            self.file = NotebookFile.attach(path, self, self._files, **self._file_options())
            path = None
        return await self.file.save(path)

    async def import_file(self, path: Path) -> None:
        """Fill this empty, untitled notebook with a copy of the one at ``path`` (not backed by it)."""
        if notebook.cell_ids(self.doc):
            raise InvalidRequest("import_notebook needs an empty notebook", notebook_id=self.notebook_id)
        loaded = await self._files.read(path)
        ipynb.fill_documents(self.doc, self._writer, loaded["nb"], self.offload_output)
        self.doc_changed_locally()

    async def send_comm(self, comm_id: Any, data: Any) -> None:
        """A frontend's comm message (a slider moved) to the kernel (see
        :meth:`~runtimed.daemon.comms.CommRecorder.send`)."""
        if not isinstance(comm_id, str) or not isinstance(data, dict):
            raise InvalidRequest("send_comm needs a comm_id (a string) and data (a JSON object)",
                                 notebook_id=self.notebook_id)
        runner = await self.kernel.runner_for(auto_start=False)
        runner.send_comm(comm_id, data)

    def clear_outputs(self, cell_ids: list[str] | None) -> None:
        """Clear the outputs and counts of ``cell_ids`` (None: every cell)."""
        ids = notebook.cell_ids(self.doc) if cell_ids is None else cell_ids
        for cid in ids:
            notebook.check_cell(self.doc, cid)
        notebook.clear_execution(self.doc, ids)
        self._writer.drop_saved_outputs(ids)
        self.doc_changed_locally()

    def notebook_metadata(self) -> dict[str, Any]:
        return notebook.get_metadata(self.doc)

    def keep_widgets(self) -> None:
        widgets = ipynb.widgets_metadata(self.state, self.read_blob)
        if widgets is not None and notebook.get_metadata(self.doc).get("widgets") != widgets:
            notebook.set_metadata_value(self.doc, "widgets", widgets)
            self.doc_changed_locally()

    def code_sources(self) -> list[str]:
        return [c.source for c in notebook.read_cells(self.doc) if c.cell_type == "code"]

    def set_default_kernelspec(self, kernelspec: dict[str, Any]) -> None:
        if "kernelspec" not in notebook.get_metadata(self.doc):
            notebook.set_metadata_value(self.doc, "kernelspec", dict(kernelspec))
            self.doc_changed_locally()

    async def close(self) -> None:
        """Shut the kernel down and persist the document (eviction or daemon shutdown)."""
        if self.closed:
            return
        self.closed = True
        if self._evict_timer is not None:
            self._evict_timer.cancel()
        await self.kernel.shutdown()
        if self.file is not None:
            await self.file.close()
        self.store.close(self.doc)
        for peer in list(self.peers):
            peer.proto.close()
