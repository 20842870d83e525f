"""The daemon process: socket, single-instance lock, plugins, pools, rooms, and request dispatch."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtimed import paths, version
from runtimed.blobs import BlobStore
from runtimed.config import DaemonConfig
from runtimed.daemon import agent_requests, runtime_dir
from runtimed.daemon.execution_store import ExecutionStore
from runtimed.daemon.nbformat_worker import NbformatWorker
from runtimed.daemon.notebook_file import resolve as resolve_notebook
from runtimed.daemon.plugin_sinks import PluginSinks
from runtimed.daemon.provisioning import Provisioner
from runtimed.daemon.room import Peer, Room
from runtimed.daemon.viewer import Viewer
from runtimed.document import notebook
from runtimed.errors import (
    DaemonUnavailable, InvalidRequest, NotebookFileError, ProtocolError, RuntimedError, error_to_wire,
)
from runtimed.plugins import Registry, get_plugin_manager
from runtimed.protocol.messages import (
    DOC_SYNC, REQUEST, RESPONSE, STATE_SYNC, dumps, fail, loads, ok,
    parse_handshake, split_typed, typed,
)
from runtimed.protocol.transport import FramedProtocol

log = logging.getLogger("runtimed.daemon")

#: How often unreferenced output blobs are collected (seconds).
BLOB_GC_SECS = 1800.0


class Daemon:
    """Everything one daemon owns. ``await Daemon(config).serve()`` runs until shutdown."""

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.pm = get_plugin_manager()
        self.registry = Registry.load(self.pm)
        #: Where this daemon's kernels' connection files go (claimed in :meth:`serve`).
        self.runtime_dir = runtime_dir.directory_for(config.runtime_dir, config.socket_path)
        self._kernels_dir = runtime_dir.RuntimeDir(self.runtime_dir)
        self.provisioner = Provisioner(config, self.registry, self.runtime_dir)
        self.sinks = PluginSinks([(plugin, cls(config)) for plugin, cls in self.registry.sinks])
        self.files = NbformatWorker()
        self.blobs = BlobStore(paths.private_dir(config.blob_store_dir), cap=config.blob_cap)
        self.viewer = Viewer(self.blobs, self._room_for_page, lambda: {"rooms": self.list_rooms()})
        #: What sessions need of the web server (its URL and secret), in every welcome.
        self.http: dict[str, str] = {}
        self._blob_gc: asyncio.Task[None] | None = None
        #: Finished executions, kept on disk for get_result(execution_id).
        self.results = ExecutionStore(config.state_dir / "executions")
        self.rooms: dict[str, Room] = {}
        #: File-backed rooms by their file (a room saved under another name moves here).
        self.file_rooms: dict[Path, Room] = {}
        self._opening: dict[Path, asyncio.Task[Room]] = {}
        self._stopping: asyncio.Event | None = None
        self._lock_fd: int | None = None
        self._server: asyncio.AbstractServer | None = None

    # lifecycle ----------------------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        sock = self.config.socket_path
        lock_path = sock.with_name(sock.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DaemonUnavailable(
                f"Another runtimed daemon (pid {other}) is already running on {sock}"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    async def serve(self, ready: asyncio.Event | None = None,
                    on_ready: Callable[[], None] | None = None) -> None:
        """Run until :meth:`stop` (a ``shutdown`` request, SIGTERM or SIGINT).

        ``ready`` is set and ``on_ready`` called once the socket accepts connections.
        """
        config = self.config
        sock = paths.check_socket_path(config.socket_path)
        if not sock.parent.exists() or sock.parent == paths.cache_dir():
            paths.private_dir(sock.parent)
        self._acquire_lock()
        # kernels and files a killed daemon left
        await asyncio.to_thread(self._kernels_dir.claim)
        await self.results.start()
        self._stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopping.set)
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signal.SIGUSR1, _dump_tasks)
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()  # stale: we hold the lock, so no live daemon owns it
        old_umask = os.umask(0o177)
        try:
            self._server = await loop.create_unix_server(self._new_connection, path=str(sock))
        finally:
            os.umask(old_umask)
        os.chmod(sock, 0o600)
        log.info("runtimed listening on %s (pid %d)", sock, os.getpid())
        await self.provisioner.start()
        await self.viewer.start(config.http_port)
        self.http.update(url=self.viewer.server.url, token=self.viewer.server.secret)
        self._blob_gc = asyncio.create_task(self._collect_blobs(), name="runtimed-blob-gc")
        if ready is not None:
            ready.set()
        if on_ready is not None:
            on_ready()
        try:
            await self._stopping.wait()
        finally:
            await self._shutdown()

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    async def _collect_blobs(self) -> None:
        """Now and then, delete blobs that no open room and no kept result refers to (and
        unused for an hour): a closed room's outputs are gone, a saved file holds its own."""
        while True:
            await asyncio.sleep(BLOB_GC_SECS)
            live = set().union(*(room.blob_shas() for room in self.rooms.values()))
            live |= await asyncio.to_thread(self.results.blob_shas)
            removed = await asyncio.to_thread(self.blobs.collect, live)
            if removed:
                log.info("Removed %d output blobs nothing refers to", removed)

    async def _shutdown(self) -> None:
        log.info("runtimed shutting down")
        if self._blob_gc is not None:
            self._blob_gc.cancel()
        await self.viewer.stop()
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(room.close() for room in list(self.rooms.values())),
                             return_exceptions=True)
        self.rooms.clear()
        self.file_rooms.clear()
        await self.results.close()
        await self.provisioner.stop()
        await self.files.close()
        with contextlib.suppress(FileNotFoundError):
            self.config.socket_path.unlink()
        self._kernels_dir.release()
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    # rooms ------------------------------------------------------------------------------------------
    def room(self, notebook_id: str) -> Room:
        """The room of ``notebook_id`` (an untitled one is created when there is none)."""
        room = self.rooms.get(notebook_id)
        if room is None or room.closed:
            room = self.rooms[notebook_id] = Room(
                notebook_id, config=self.config, provisioner=self.provisioner, sinks=self.sinks,
                on_idle=self.evict, files=self.files, blobs=self.blobs, http=self.http,
                results=self.results)
        return room

    async def file_room(self, path: Path, *, create: bool = False) -> Room:
        """The room of the notebook at ``path`` (resolved), opening the file if no room has it.

        With ``create`` the file must not exist yet (it is created empty).
        """
        room = self.file_rooms.get(path)
        if room is not None and not room.closed:
            if create:
                raise NotebookFileError(f"{path} already exists", path=str(path), kind="exists")
            return room
        if create and path.exists():
            raise NotebookFileError(f"{path} already exists", path=str(path), kind="exists")
        opening = self._opening.get(path)
        if opening is None:  # one open per file, however many sessions ask at once
            opening = self._opening[path] = asyncio.create_task(self._open_file(path))
            opening.add_done_callback(lambda _: self._opening.pop(path, None))
        return await asyncio.shield(opening)

    async def _open_file(self, path: Path) -> Room:
        room = self.room(str(path))
        try:
            await room.open_file(path)
        except BaseException:
            self.rooms.pop(room.notebook_id, None)
            await room.close()
            raise
        self.file_rooms[path] = room
        return room

    async def _room_for_page(self, kind: str, ref: str) -> Room:
        """The room a live page asks for: by file path, or by notebook id."""
        if kind == "path":
            return await self.file_room(resolve_notebook(ref))
        path = _as_notebook_path(ref)
        if path is not None:
            return self.file_rooms.get(path) or await self.file_room(path)
        return self.room(ref)

    def moved(self, room: Room, old: Path | None) -> None:
        """``room`` is now backed by another file (save as)."""
        if old is not None and self.file_rooms.get(old) is room:
            del self.file_rooms[old]
        if room.file is not None:
            self.file_rooms[room.file.path] = room

    async def evict(self, room: Room) -> None:
        if room.in_use or room.closed:
            return
        log.info("Evicting idle room %s", room.notebook_id)
        if self.rooms.get(room.notebook_id) is room:
            del self.rooms[room.notebook_id]
        if room.file is not None and self.file_rooms.get(room.file.path) is room:
            del self.file_rooms[room.file.path]
        await room.close()

    # pool channel --------------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Which daemon this is: ``version`` (of runtimed), ``pid``."""
        return {"version": version.__version__, "pid": os.getpid()}

    def list_rooms(self) -> list[dict[str, Any]]:
        return [
            {"notebook_id": room.notebook_id, "active_peers": len(room.peers),
             "path": str(room.file.path) if room.file is not None else None, **room.kernel.info()}
            for room in self.rooms.values() if not room.closed
        ]

    async def pool_request(self, req: dict[str, Any]) -> Any:
        kind = req.get("type")
        if kind == "ping":
            return {"pong": True, **self.identity()}
        if kind == "status":
            return {**self.provisioner.status(), **self.identity(), "http_url": self.http.get("url")}
        if kind == "viewer_link":
            path = req.get("path")
            return self.viewer.link(notebook_id=req.get("notebook_id"),
                                    path=str(resolve_notebook(path)) if path else None)
        if kind == "list_rooms":
            return self.list_rooms()
        if kind == "flush_pool":
            await self.provisioner.flush()
            return None
        if kind == "shutdown":
            asyncio.get_running_loop().call_soon(self.stop)
            return None
        if kind == "plugins":
            from runtimed.plugins import describe_plugins

            return describe_plugins(self.pm)
        if kind == "get_result":  # with where its blob parts are, for the client to read
            record = await agent_requests.get_result(list(self.rooms.values()), self.results,
                                                     req.get("execution_id"))
            return {**record, "blob_store_dir": str(self.blobs.root), "http": self.http}
        raise ProtocolError(f"Unknown pool request {kind!r}")

    def _new_connection(self) -> FramedProtocol:
        return Connection(self).proto


def _dump_tasks() -> None:
    """SIGUSR1: log every task's await chain (what is the daemon waiting for?)."""
    for task in asyncio.all_tasks():
        lines, coro = [], task.get_coro()
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        log.warning("Task %s:\n%s", task.get_name(), "\n".join(lines))


class Connection:
    """The daemon's side of one client connection: handshake, then a channel's frames."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.proto = FramedProtocol(self._on_frame, self._on_close, expect_preamble=True)
        self.proto.error_payload = self._error_payload
        self.channel: str | None = None
        self.room: Room | None = None
        self.peer: Peer | None = None
        self._early: list[bytes] = []
        self._snapshot = False
        self._tasks: set[asyncio.Task[None]] = set()
        #: The executions this client follows (stream events, stdin).
        self.links = agent_requests.Links(self.proto)

    def _error_payload(self, exc: ProtocolError) -> bytes:
        body = dumps(fail(None, error_to_wire(exc)))
        return typed(RESPONSE, body) if self.peer is not None else body

    def _on_close(self, exc: BaseException | None) -> None:
        if exc is not None:
            log.info("Closed a connection: %s", exc)
        else:
            log.debug("A %s connection closed", self.channel)
        if self.room is not None and self.peer is not None:
            self.room.remove_peer(self.peer)
        self.links.closed()
        for task in self._tasks:
            task.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _on_frame(self, payload: bytes) -> None:
        try:
            if self.channel is None:
                self._handshake(payload)
            elif self.channel == "pool":
                req = loads(payload, "request")
                self._spawn(self._answer(req, self.daemon.pool_request(req), raw=True))
            elif self.room is None:  # the room's file is being opened
                self._early.append(payload)
            else:
                self._notebook_frame(payload)
        except ProtocolError as exc:
            self.proto.abort(exc)

    def _handshake(self, payload: bytes) -> None:
        hs = parse_handshake(payload)
        if hs.channel == "blob":
            raise ProtocolError("Channel 'blob' is not supported by this daemon yet")
        self.channel = hs.channel
        self._snapshot = hs.snapshot
        if hs.channel == "notebook_sync":
            assert hs.notebook_id is not None
            path = _as_notebook_path(hs.notebook_id)
            if path is None or path in self.daemon.file_rooms:
                self._join(self.daemon.room(hs.notebook_id) if path is None
                           else self.daemon.file_rooms[path])
            else:  # the id of a notebook file not open yet: open it
                self._spawn(self._join_file(path))
        elif hs.channel in ("open_notebook", "create_notebook"):
            if hs.path is None:  # create_notebook without a path: a new untitled notebook
                self._join(self.daemon.room(f"agent-session-{uuid.uuid4()}"))
            else:
                self._spawn(self._join_file(resolve_notebook(hs.path),
                                            create=hs.channel == "create_notebook"))

    def _join(self, room: Room) -> None:
        self.room = room
        self.peer = room.add_peer(self.proto, snapshot=self._snapshot)
        for frame in self._early:  # what the client sent while the room was being opened
            self._notebook_frame(frame)
        self._early.clear()

    async def _join_file(self, path: Path, *, create: bool = False) -> None:
        try:
            room = await self.daemon.file_room(path, create=create)
        except RuntimedError as exc:
            log.info("Could not open %s: %s", path, exc.message)
            if not self.proto.closed:
                self.proto.send(dumps(fail(None, error_to_wire(exc))))
                self.proto.close()
            return
        if not self.proto.closed:
            try:
                self._join(room)
            except ProtocolError as exc:
                self.proto.abort(exc)

    def _notebook_frame(self, payload: bytes) -> None:
        assert self.room is not None and self.peer is not None
        kind, body = split_typed(payload)
        if kind == DOC_SYNC:
            self.room.on_doc_sync(self.peer, body)
        elif kind == STATE_SYNC:
            self.room.on_state_sync(self.peer, body)
        elif kind == REQUEST:
            req = loads(body, "request")
            self._spawn(self._answer(req, self._notebook_request(req)))
        # unknown frame types are skipped (forward compatibility)

    async def _answer(self, req: dict[str, Any], work: Any, raw: bool = False) -> None:
        req_id = req.get("id")
        try:
            reply = ok(req_id, await work)
        except ProtocolError as exc:
            self.proto.abort(exc)
            return
        except RuntimedError as exc:
            reply = fail(req_id, error_to_wire(exc))
        except Exception as exc:  # a bug: report it, keep serving
            log.exception("Request %r failed", req.get("type"))
            reply = fail(req_id, error_to_wire(exc))
        if not self.proto.closed:
            self.proto.send(dumps(reply) if raw else typed(RESPONSE, dumps(reply)))

    async def _notebook_request(self, req: dict[str, Any]) -> Any:
        room = self.room
        assert room is not None
        kind = req.get("type")
        if req.get("required_heads"):
            await room.wait_for_heads(req["required_heads"])
        if kind == "execute_cell":
            return await self._execute(room, req)
        if kind == "start_kernel":
            info = await room.kernel.start(
                req.get("kernel_type"), req.get("env_source"), req.get("notebook_path"), req.get("cwd"))
            return {**info, **_heads(room)}
        if kind == "interrupt":
            runner = await room.kernel.runner_for(auto_start=False)
            await runner.interrupt()
            return _heads(room)
        if kind == "restart_kernel":
            runner = await room.kernel.runner_for(auto_start=False)
            await runner.restart()
            return _heads(room)
        if kind == "shutdown_kernel":
            await room.kernel.shutdown(wait=req.get("wait", True) is not False)
            return _heads(room)
        if kind == "connection_info":
            return {"connection_info": room.kernel.connection_info()}
        if kind == "save":
            old = room.file.path if room.file is not None else None
            target = req.get("path")
            if target is not None and not isinstance(target, str):
                raise InvalidRequest("save: path must be a string")
            path = resolve_notebook(target) if target else None
            other = self.daemon.file_rooms.get(path) if path is not None else None
            if other is not None and other is not room and not other.closed:
                if other.in_use:
                    raise InvalidRequest(f"{path} is open in another session's room; save to "
                                         "another path, or open it with Session(path=...)",
                                         notebook_id=room.notebook_id)
                await self.daemon.evict(other)  # nobody uses it: it gives the file up
            written = await room.save(path)
            self.daemon.moved(room, old)
            return {"path": str(written), **_heads(room)}
        if kind == "import_notebook":
            if not isinstance(req.get("path"), str):
                raise InvalidRequest("import_notebook needs a path")
            await room.import_file(resolve_notebook(req["path"]))
            return _heads(room)
        if kind == "clear_outputs":
            cell_ids = req.get("cell_ids")
            if cell_ids is not None and not (isinstance(cell_ids, list)
                                             and all(isinstance(c, str) for c in cell_ids)):
                raise InvalidRequest("clear_outputs: cell_ids must be a list of cell ids")
            room.clear_outputs(cell_ids)
            return _heads(room)
        if kind == "send_comm":
            await room.send_comm(req.get("comm_id"), req.get("data"))
            return _heads(room)
        if kind == "ping":
            return {"pong": True}
        if kind in agent_requests.NOTEBOOK_KINDS:
            return await agent_requests.notebook_request(
                kind, req, room=room, links=self.links, provisioner=self.daemon.provisioner,
                rooms=list(self.daemon.rooms.values()), store=self.daemon.results)
        raise ProtocolError(f"Unknown request {kind!r}")

    async def _execute(self, room: Room, req: dict[str, Any]) -> dict[str, Any]:
        cell_id = req.get("cell_id")
        if not isinstance(cell_id, str):
            raise InvalidRequest("execute_cell needs a cell_id")
        cell = notebook.read_cell(room.doc, cell_id)
        if cell.cell_type != "code":
            raise InvalidRequest(
                f"Cell {cell_id} is a {cell.cell_type} cell; only code cells can be executed",
                cell_id=cell_id,
            )
        runner = await room.kernel.runner_for(auto_start=bool(req.get("auto_start", True)))
        link = self.links.link_for(req)  # a client that follows it: events, stdin
        try:
            ex = runner.queue_cell(cell_id, cell.source, observer=link,
                                   stdin=link.stdin if link is not None and req.get("stdin") else None)
        except BaseException:
            if link is not None:
                self.links.done(link)
            raise
        if link is not None:
            link.queued(ex.id, ex.status)
            ex.done.add_done_callback(lambda _: self.links.done(link))
        if req.get("wait", True):
            await asyncio.shield(ex.done)
        return {"execution_id": ex.id, "status": ex.status, **_heads(room)}


def _as_notebook_path(notebook_id: str) -> Path | None:
    """A notebook id that names a notebook file (an absolute path to a ``.ipynb``), resolved."""
    if not notebook_id.startswith("/") or not notebook_id.endswith(".ipynb"):
        return None
    path = resolve_notebook(notebook_id)
    return path if path.is_file() else None


def _heads(room: Room) -> dict[str, list[str]]:
    """The documents' heads after a flush: the client waits until its replicas hold them."""
    room.flush()
    return {"state_heads": [h.hex() for h in room.state.heads],
            "notebook_heads": [h.hex() for h in room.doc.heads]}
