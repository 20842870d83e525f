"""A room: one notebook's documents, its connected peers, and its kernel.

Every peer holds replicas of both documents. A peer's sync message is applied
at once (inside the socket callback) and the room answers on the next tick
with one message per peer per document, which is also how changes are
re-broadcast to the other peers. Requests that act on the document first wait
for its ``required_heads``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtimed import envsource
from runtimed.daemon.executor import KernelRunner
from runtimed.daemon.persistence import DocStore
from runtimed.document import notebook
from runtimed.document.replica import Replica, SyncState
from runtimed.document.runtime_state import LIFECYCLES, RuntimeStateWriter, read_kernel
from runtimed.errors import InvalidRequest, NoKernel, ProtocolError, RuntimedError
from runtimed.pools import EnvRequest
from runtimed.protocol.messages import BROADCAST, DOC_SYNC, STATE_SYNC, dumps, typed
from runtimed.protocol.transport import FramedProtocol

if TYPE_CHECKING:
    from runtimed.daemon.server import Daemon

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
    def __init__(self, daemon: Daemon, notebook_id: str) -> None:
        self.daemon = daemon
        self.notebook_id = notebook_id
        self.store = DocStore(daemon.config.state_dir / "notebooks", notebook_id)
        self.doc = self.store.load()
        notebook.set_notebook_id(self.doc, notebook_id)
        self.store.record(self.doc)
        self.writer = RuntimeStateWriter(Replica())
        self.peers: list[Peer] = []
        self.runner: KernelRunner | None = None
        self._starting: asyncio.Task[dict[str, Any]] | None = None
        self._shut_down = False
        self._flush_handle: asyncio.Handle | None = None
        self._flush_due = 0.0
        #: Callbacks run once at the start of the next flush (batched document writes).
        self.before_flush: list[Callable[[], None]] = []
        self._doc_dirty = False
        # Whether a flush has anything to do: a peer joined, drained or sent a sync message
        # (it may need a reply), or a document changed since the last flush.
        self._sync_wanted = False
        self._synced_versions: tuple[int, int] = (-1, -1)
        self._doc_moved: asyncio.Future[None] | None = None
        self._evict_timer: asyncio.TimerHandle | None = None
        self.closed = False

    @property
    def state(self) -> Replica:
        """The runtime-state document (replaced by :meth:`_renew_state` now and then)."""
        return self.writer.replica

    # peers and sync -----------------------------------------------------------------------------
    def add_peer(self, proto: FramedProtocol) -> Peer:
        if self._evict_timer is not None:
            self._evict_timer.cancel()
            self._evict_timer = None
        peer = Peer(proto)
        proto.on_drain = self._sync_soon  # a peer that fell behind gets one catch-up message
        self.peers.append(peer)
        welcome = {
            "event": "welcome", "notebook_id": self.notebook_id,
            "notebook_heads": [h.hex() for h in self.doc.heads],
            "state_heads": [h.hex() for h in self.state.heads],
        }
        peer.send(BROADCAST, dumps(welcome))
        self._sync_soon()
        return peer

    def remove_peer(self, peer: Peer) -> None:
        if peer in self.peers:
            self.peers.remove(peer)
        if not self.peers and not self.closed:
            delay = self.daemon.config.keep_alive_secs
            loop = asyncio.get_running_loop()
            self._evict_timer = loop.call_later(delay, lambda: loop.create_task(self.daemon.evict(self)))

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
        pending, self.before_flush = self.before_flush, []
        for write in pending:
            write()
        if self._doc_dirty:  # persisted before any peer (or response) can acknowledge it
            self._doc_dirty = False
            self.store.record(self.doc)
        if self.state.version > self.daemon.config.state_history_limit:
            self._renew_state()
        versions = (self.doc.version, self.state.version)
        if not self._sync_wanted and versions == self._synced_versions:
            return  # nothing changed and nobody asked: every peer is as synced as it can be
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
        self.writer = self.writer.renewed()
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

    # kernel ---------------------------------------------------------------------------------------
    def kernel_info(self) -> dict[str, Any]:
        """The room's kernel as ``list_rooms`` reports it."""
        runner = self.runner
        alive = runner is not None and runner.alive
        if runner is not None and alive:
            status = "busy" if runner.running is not None or runner.queue else "idle"
        else:
            status = read_kernel(self.state).get("lifecycle", "not_started")
        return {
            "has_kernel": alive,
            "kernel_type": runner.kernel_type if runner else None,
            "kernel_status": status,
            "env_source": runner.env_source if runner else None,
        }

    def _progress(self, phase: str, message: str) -> None:
        fields: dict[str, Any] = {"progress": message}
        if phase in LIFECYCLES:
            fields["lifecycle"] = phase
        self.writer.set_kernel(**fields)
        self.schedule_flush()
        log.info("%s: %s", self.notebook_id, message)

    async def start_kernel(self, kernel_type: str | None = None, env_source: str | None = None,
                           notebook_path: str | None = None, cwd: str | None = None) -> dict[str, Any]:
        """Start the room's kernel, or return the running one (``reused``)."""
        if self.runner is not None and self.runner.alive:
            return {**self._started_info(), "reused": True}
        if self._starting is None:
            self._starting = asyncio.create_task(
                self._start_kernel(kernel_type, env_source, notebook_path, cwd))
            self._starting.add_done_callback(lambda _: setattr(self, "_starting", None))
        return await asyncio.shield(self._starting)

    def _started_info(self) -> dict[str, Any]:
        assert self.runner is not None
        return {"kernel_type": self.runner.kernel_type, "env_source": self.runner.env_source}

    async def _start_kernel(self, kernel_type: str | None, env_source: str | None,
                            notebook_path: str | None, cwd: str | None) -> dict[str, Any]:
        daemon = self.daemon
        metadata = notebook.get_metadata(self.doc)
        self.writer.set_kernel(lifecycle="resolving", error=None, progress=None, activity=None)
        self.schedule_flush()
        prepared = pool = None
        try:
            launcher = daemon.launcher_for(kernel_type, metadata)
            self.writer.set_kernel(kernel_type=launcher.kernel_type)
            if self.runner is not None:  # a dead or shut-down kernel: hand its env back first
                old, self.runner = self.runner, None
                await old.shutdown()
            path = Path(notebook_path).expanduser() if notebook_path else None
            work_dir = path.parent if path else Path(cwd) if cwd and os.path.isdir(cwd) else Path.home()
            hot = None
            if launcher.needs_env:
                sources = [c.source for c in notebook.read_cells(self.doc) if c.cell_type == "code"]
                resolved = envsource.resolve(env_source, notebook_path=path, metadata=metadata,
                                             cell_sources=sources, default_family=daemon.default_family)
                pool = daemon.pool_for(resolved.env_source)
                self.writer.set_kernel(lifecycle="preparing_env", env_source=resolved.env_source)
                self.schedule_flush()
                hot = daemon.hot.claim(launcher.kernel_type, resolved.env_source)
            if hot is not None:
                prepared, pool = hot.env, hot.pool
            elif launcher.needs_env:
                prepared = await pool.acquire(
                    EnvRequest(env_source=resolved.env_source, notebook_id=self.notebook_id,
                               notebook_path=path, metadata=metadata, cell_sources=sources,
                               project_file=resolved.project_file),
                    self._progress,
                )
            elif env_source not in (None, "", "auto", "prewarmed", launcher.kernel_type):
                log.warning("%s: env_source %r ignored for the %s kernel (it needs no environment)",
                            self.notebook_id, env_source, launcher.kernel_type)
            self.writer.set_kernel(env_source=prepared.env_source if prepared else launcher.kernel_type)
            runner = KernelRunner(self, launcher, prepared, pool, work_dir)
            await runner.start(hot.process if hot is not None else None)
        except BaseException as exc:
            if prepared is not None and pool is not None:
                await pool.release(prepared)
            message = exc.message if isinstance(exc, RuntimedError) else f"{type(exc).__name__}: {exc}"
            self.writer.set_kernel(lifecycle="error", error=message, activity=None, progress=None)
            self.schedule_flush()
            raise
        self.runner = runner
        self._shut_down = False
        if "kernelspec" not in metadata and launcher.kernelspec:
            notebook.set_metadata_value(self.doc, "kernelspec", dict(launcher.kernelspec))
            self.doc_changed_locally()
        self.flush()
        return {**self._started_info(), "reused": False}

    async def running_kernel(self, auto_start: bool) -> KernelRunner:
        """The runner to execute on, starting one if none was ever started here."""
        if self._starting is not None:
            await asyncio.shield(self._starting)
        if self.runner is not None and (self.runner.alive or self.runner.dead_reason):
            return self.runner
        if self._shut_down:
            raise NoKernel("No kernel is running: it was shut down. Call start_kernel() to start one.",
                           notebook_id=self.notebook_id)
        if not auto_start:
            raise NoKernel("No kernel is running. Call start_kernel() first.", notebook_id=self.notebook_id)
        await self.start_kernel()
        assert self.runner is not None
        return self.runner

    async def shutdown_kernel(self) -> None:
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._starting)
        runner, self.runner = self.runner, None
        if runner is not None:
            await runner.shutdown()
            self._shut_down = True
            self.writer.set_kernel(lifecycle="shutdown", activity=None, progress=None)
            self.flush()

    def forget_executions(self, execution_ids: set[str]) -> None:
        for eid in execution_ids:
            self.writer.forget_execution(eid)
        for sink in self.daemon.sinks:
            forget = getattr(sink, "forget", None)
            if forget is not None:
                forget(execution_ids)

    async def close(self) -> None:
        """Shut the kernel down and persist the document (eviction or daemon shutdown)."""
        if self.closed:
            return
        self.closed = True
        if self._evict_timer is not None:
            self._evict_timer.cancel()
        await self.shutdown_kernel()
        self.store.close(self.doc)
        for peer in list(self.peers):
            peer.proto.close()
