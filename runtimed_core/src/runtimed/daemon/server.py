"""The daemon process: socket, single-instance lock, plugins, pools, rooms, and request dispatch."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

from runtimed import paths, version
from runtimed.config import DaemonConfig
from runtimed.daemon import runtime_dir
from runtimed.daemon.plugin_sinks import PluginSinks
from runtimed.daemon.provisioning import Provisioner
from runtimed.daemon.room import Peer, Room
from runtimed.document import notebook
from runtimed.errors import DaemonUnavailable, InvalidRequest, ProtocolError, RuntimedError, error_to_wire
from runtimed.plugins import Registry, get_plugin_manager
from runtimed.protocol.messages import (
    DOC_SYNC, NOTEBOOK_CHANNELS, REQUEST, RESPONSE, STATE_SYNC, dumps, fail, loads, ok,
    parse_handshake, split_typed, typed,
)
from runtimed.protocol.transport import FramedProtocol

log = logging.getLogger("runtimed.daemon")


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
        self.rooms: dict[str, Room] = {}
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

    async def _shutdown(self) -> None:
        log.info("runtimed shutting down")
        if self._server is not None:
            self._server.close()
        await asyncio.gather(*(room.close() for room in list(self.rooms.values())),
                             return_exceptions=True)
        self.rooms.clear()
        await self.provisioner.stop()
        with contextlib.suppress(FileNotFoundError):
            self.config.socket_path.unlink()
        self._kernels_dir.release()
        if self._lock_fd is not None:
            os.close(self._lock_fd)

    # rooms ------------------------------------------------------------------------------------------
    def room(self, notebook_id: str) -> Room:
        room = self.rooms.get(notebook_id)
        if room is None or room.closed:
            room = self.rooms[notebook_id] = Room(
                notebook_id, config=self.config, provisioner=self.provisioner, sinks=self.sinks,
                on_idle=self.evict)
        return room

    async def evict(self, room: Room) -> None:
        if room.peers or room.closed:
            return
        log.info("Evicting idle room %s", room.notebook_id)
        if self.rooms.get(room.notebook_id) is room:
            del self.rooms[room.notebook_id]
        await room.close()

    # pool channel --------------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Which daemon this is: ``version`` (of runtimed), ``pid``."""
        return {"version": version.__version__, "pid": os.getpid()}

    def list_rooms(self) -> list[dict[str, Any]]:
        return [
            {"notebook_id": room.notebook_id, "active_peers": len(room.peers), **room.kernel.info()}
            for room in self.rooms.values() if not room.closed
        ]

    async def pool_request(self, req: dict[str, Any]) -> Any:
        kind = req.get("type")
        if kind == "ping":
            return {"pong": True, **self.identity()}
        if kind == "status":
            return {**self.provisioner.status(), **self.identity()}
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
        raise ProtocolError(f"Unknown pool request {kind!r}")

    def _new_connection(self) -> FramedProtocol:
        return Connection(self).proto


def _dump_tasks() -> None:
    """SIGUSR1: log every task's stack (what is the daemon waiting for?)."""
    import io

    for task in asyncio.all_tasks():
        out = io.StringIO()
        task.print_stack(file=out)
        log.warning("Task %s:\n%s", task.get_name(), out.getvalue())


class Connection:
    """The daemon's side of one client connection: handshake, then a channel's frames."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.proto = FramedProtocol(self._on_frame, self._on_close, expect_preamble=True)
        self.proto.error_payload = self._error_payload
        self.channel: str | None = None
        self.room: Room | None = None
        self.peer: Peer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

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
            else:
                self._notebook_frame(payload)
        except ProtocolError as exc:
            self.proto.abort(exc)

    def _handshake(self, payload: bytes) -> None:
        hs = parse_handshake(payload)
        if hs.channel not in ("pool", "notebook_sync"):
            raise ProtocolError(f"Channel {hs.channel!r} is not supported by this daemon yet")
        self.channel = hs.channel
        if hs.channel in NOTEBOOK_CHANNELS:
            assert hs.notebook_id is not None
            self.room = self.daemon.room(hs.notebook_id)
            self.peer = self.room.add_peer(self.proto)

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
            await room.kernel.shutdown()
            return _heads(room)
        if kind == "ping":
            return {"pong": True}
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
        ex = runner.queue_cell(cell_id, cell.source)
        if req.get("wait", True):
            await asyncio.shield(ex.done)
        return {"execution_id": ex.id, "status": ex.status, **_heads(room)}


def _heads(room: Room) -> dict[str, list[str]]:
    """The documents' heads after a flush: the client waits until its replicas hold them."""
    room.flush()
    return {"state_heads": [h.hex() for h in room.state.heads],
            "notebook_heads": [h.hex() for h in room.doc.heads]}
