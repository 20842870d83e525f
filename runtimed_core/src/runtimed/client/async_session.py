"""The async client: :class:`AsyncSession` (a notebook room) and :class:`AsyncDaemonClient`."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from runtimed import paths
from runtimed.blobs import BlobReader
from runtimed.client.connection import Channel, daemon_lock_held, pool_request
from runtimed.client.events import ExecutionEvent
from runtimed.client.follow import Follower, StdinHandler, follow
from runtimed.client.results import Cell, ExecutionResult, Output
from runtimed.document import notebook
from runtimed.document.replica import Replica, SyncState
from runtimed.document.runtime_state import (
    model_state, read_comms, read_execution, read_kernel, read_saved_outputs, saved_outputs_obj,
)
from runtimed.errors import (
    DaemonUnavailable,
    ExecutionTimeout,
    InvalidRequest,
    KernelDied,
    NotConnected,
    ProtocolError,
    RuntimedError,
)
from runtimed.protocol.messages import BROADCAST, DOC_SYNC, STATE_SYNC, loads, typed
from runtimed.web import open_in_browser

CONNECT_TIMEOUT = 10.0


log = logging.getLogger("runtimed.client")

#: ``callback(comm_id, data, buffers)``: a custom message a comm of the kernel sent.
CommListener = Callable[[str, dict[str, Any], list[bytes]], None]


def _log_notice(notebook_id: str, event: dict[str, Any]) -> None:
    """What the daemon tells every session of a room (its file changed, a save failed...)."""
    kind = event.get("event")
    if kind == "file_changed":
        copy = event.get("conflict_copy")
        if copy:
            log.warning("%s changed on disk while this notebook had unsaved changes: both are "
                        "merged, and the unsaved version is in %s", event.get("path"), copy)
        else:
            log.info("%s changed on disk; its changes are merged", event.get("path"))
    elif kind == "file_deleted":
        log.warning("%s was deleted or renamed: autosave is off until save()", event.get("path"))
    elif kind in ("save_failed", "file_unreadable"):
        log.warning("%s: %s", notebook_id, event.get("error"))


def _hex(heads: list[bytes]) -> list[str]:
    return [h.hex() for h in heads]


class AsyncSession:
    """A connection to one notebook room: a local replica of its document, and its kernel.

    Two sessions with the same ``notebook_id`` share the document and the kernel.
    Use as ``async with AsyncSession() as session:``; the kernel is shut down on exit.
    """

    def __init__(self, notebook_id: str | None = None, *, path: str | os.PathLike[str] | None = None,
                 socket_path: str | os.PathLike[str] | None = None) -> None:
        #: The notebook file (resolved), for file-backed rooms.
        self._path = str(Path(path).expanduser().resolve()) if path is not None else None
        self._notebook_id = notebook_id or self._path or f"agent-session-{uuid.uuid4()}"
        self._socket_path = Path(socket_path) if socket_path else None
        self.doc: Replica = notebook.new_replica()
        self.state: Replica = Replica()
        #: Runtime-state replicas the daemon's last ``state_reset`` broadcasts replaced: heads
        #: it reported before a reset are found there (their content is in the new document).
        self._retired_states: deque[Replica] = deque(maxlen=4)
        self._channel: Channel | None = None
        self._doc_sync = SyncState()
        self._state_sync = SyncState()
        self._moved: asyncio.Future[None] | None = None
        self._ever_connected = False
        self._reply_scheduled = False
        self._progress_listener: Callable[[dict[str, Any]], None] | None = None
        self._progress_seen: tuple[Any, Any] = (None, None)
        self._closed = False
        self._connect_lock: asyncio.Lock | None = None
        self._blobs: BlobReader | None = None  # the daemon's blob store, read directly
        self._http: dict[str, str] = {}  # the daemon's HTTP server: url, token
        self._comm_listener: CommListener | None = None
        #: Executions this session follows (stream events, stdin), by the token it chose.
        self._followers: dict[str, Follower] = {}

    # properties ----------------------------------------------------------------------------------
    @property
    def notebook_id(self) -> str:
        return self._notebook_id

    @property
    def path(self) -> str | None:
        """The notebook file backing this room (absolute), or None for an untitled notebook."""
        return self._path

    @property
    def socket_path(self) -> Path:
        return self._socket_path or paths.socket_path()

    async def is_connected(self) -> bool:
        return self._connected()

    def _connected(self) -> bool:
        return self._channel is not None and self._channel.connected

    async def kernel_started(self) -> bool:
        return self._kernel_started()

    def _kernel_started(self) -> bool:
        return self._connected() and read_kernel(self.state).get("lifecycle") == "running"

    async def env_source(self) -> str | None:
        return self._env_source()

    def _env_source(self) -> str | None:
        kernel = read_kernel(self.state)
        return kernel.get("env_source") if kernel.get("lifecycle") == "running" else None

    async def kernel_status(self) -> dict[str, Any]:
        """The runtime-state document's kernel record (lifecycle, activity, error, progress...)."""
        return read_kernel(self.state)

    async def connection_file(self) -> str | None:
        """The running kernel's Jupyter connection file (``jupyter console --existing <it>``
        attaches; what it runs shows in the runtime state), or None."""
        kernel = read_kernel(self.state) if self._connected() else {}
        return kernel.get("connection_file") if kernel.get("lifecycle") == "running" else None

    def __repr__(self) -> str:
        return self._summary(type(self).__name__)

    def _summary(self, name: str) -> str:
        """``<name notebook_id='x' connected kernel=python idle>`` (or ``disconnected``)."""
        if not self._connected():
            return f"<{name} notebook_id={self._notebook_id!r} disconnected>"
        kernel = read_kernel(self.state)
        lifecycle = kernel.get("lifecycle")
        if lifecycle == "running":
            about = f" kernel={kernel.get('kernel_type')} {kernel.get('activity') or 'idle'}"
        elif lifecycle in (None, "not_started", "shutdown"):
            about = ""
        else:
            about = f" kernel={kernel.get('kernel_type') or '?'} {lifecycle}"
        return f"<{name} notebook_id={self._notebook_id!r} connected{about}>"

    # connection -----------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect to the daemon (starting one if needed) and sync the notebook document."""
        if self._closed:
            raise RuntimedError("This session is closed; create a new one")
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self._connected():
                return
            await self._open()

    async def _open(self) -> None:
        self._doc_sync = SyncState()
        self._state_sync = SyncState()
        self.state = Replica()  # the daemon's runtime state is authoritative; start clean
        self._retired_states.clear()
        welcome: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._welcome = welcome
        channel = Channel(typed_frames=True, on_frame=self._on_frame, on_close=self._on_close)
        handshake = ({"channel": "open_notebook", "path": self._path} if self._path else
                     {"channel": "notebook_sync", "notebook_id": self._notebook_id})
        if not self._ever_connected:  # nothing of ours to merge yet: take the documents whole
            handshake["snapshot"] = True
        await channel.open(self.socket_path, handshake)
        self._channel = channel
        try:
            hello = await asyncio.wait_for(asyncio.shield(welcome), CONNECT_TIMEOUT)
            self._path = hello.get("path") or self._path
            if hello.get("blob_store_dir"):
                self._blobs = BlobReader(Path(hello["blob_store_dir"]))
            self._http = hello.get("http") or {}
            self._reply_scheduled = True  # start the sync (our edits made while offline included)
            self._send_sync()
            deadline = asyncio.get_running_loop().time() + CONNECT_TIMEOUT
            await self._wait_heads(self.doc.has_heads, hello["notebook_heads"], deadline)
            await self._wait_heads(self._state_has, hello["state_heads"], deadline)
        except asyncio.TimeoutError:
            channel.close()
            raise DaemonUnavailable("The runtimed daemon did not complete the handshake") from None
        except BaseException:
            channel.close()
            raise
        self._ever_connected = True

    async def _ensure(self) -> Channel:
        """The live channel; reconnects if an earlier connection was lost."""
        if not self._connected():
            if not self._ever_connected:
                raise NotConnected("Not connected to the runtimed daemon; call connect() or start_kernel()")
            await self.connect()
        assert self._channel is not None
        return self._channel

    def _on_frame(self, kind: int, body: memoryview) -> None:
        if kind == DOC_SYNC:
            moved = self.doc.receive(self._doc_sync, body)
        elif kind == STATE_SYNC:
            moved = self.state.receive(self._state_sync, body)
        elif kind == BROADCAST:
            event = loads(body, "broadcast")
            if event.get("event") == "welcome" and not self._welcome.done():
                if "doc" in event and not self._ever_connected:
                    self.doc = Replica.load(base64.b64decode(event["doc"]))
                    self.doc.doc.set_actor(uuid.uuid4().bytes)
                    self.state = Replica.load(base64.b64decode(event["state"]))
                self._welcome.set_result(event)
                return
            if event.get("event") == "comm_msgs":
                self._comm_messages(event.get("messages") or [])
                return
            if event.get("event") in ("execution", "input_request"):
                self._follower_event(event)
                return
            if event.get("event") != "state_reset":
                _log_notice(self._notebook_id, event)
                return
            # The daemon started the runtime-state document afresh: take it whole.
            self._retired_states.append(self.state)
            self.state = Replica.load(base64.b64decode(event["state"]))
            self._state_sync = SyncState()
            moved = True
        else:
            return
        if not self._reply_scheduled:  # one reply per loop iteration, however many messages came
            self._reply_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_sync)
        if moved and self._moved is not None and not self._moved.done():
            self._moved.set_result(None)
        if moved and kind == STATE_SYNC and self._progress_listener is not None:
            kernel = read_kernel(self.state)
            seen = (kernel.get("lifecycle"), kernel.get("progress"))
            if seen != self._progress_seen:
                self._progress_seen = seen
                self._progress_listener(kernel)

    def _comm_messages(self, messages: list[dict[str, Any]]) -> None:
        listener = self._comm_listener
        if listener is None:
            return
        for message in messages:
            try:
                listener(message["comm_id"], message.get("data") or {},
                         [base64.b64decode(b) for b in message.get("buffers") or []])
            except Exception:  # the callback's bug must not break the connection
                log.exception("The on_comm_message callback failed")

    def _follower_event(self, event: dict[str, Any]) -> None:
        follower = self._followers.get(event.get("token"))  # type: ignore[arg-type]
        if follower is not None:
            follower.on_event(event)
        elif event.get("event") == "input_request":  # its caller stopped following: end the wait
            self._send_input_reply(event.get("request_id"), error="nobody follows this execution")

    def _send_input_reply(self, request_id: Any, **answer: Any) -> None:
        """Answer an input request (fire and forget: the cell's result tells what came of it)."""
        if not self._connected():
            return
        fut = self._channel.request_nowait("input_reply", request_id=request_id, **answer)  # type: ignore[union-attr]
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # errors: the cell ended

    def _on_close(self, exc: BaseException | None) -> None:
        if self._moved is not None and not self._moved.done():
            self._moved.set_result(None)
        welcome = getattr(self, "_welcome", None)
        if welcome is not None and not welcome.done():
            reason = self._channel.close_reason if self._channel else None
            welcome.set_exception(reason or DaemonUnavailable("The daemon closed the connection"))

    def _sync_frames(self) -> list[bytes]:
        frames = []
        msg = self.doc.generate(self._doc_sync)
        if msg is not None:
            frames.append(typed(DOC_SYNC, msg))
        msg = self.state.generate(self._state_sync)
        if msg is not None:
            frames.append(typed(STATE_SYNC, msg))
        return frames

    def _send_sync(self) -> None:
        """Send the daemon whatever sync messages are due (edits, replies), in one write."""
        if not self._reply_scheduled:
            return  # already sent together with a request
        self._reply_scheduled = False
        channel = self._channel
        if channel is None or not channel.connected:
            return
        frames = self._sync_frames()
        if frames:
            channel.send(*frames)

    def _state_has(self, heads: list[bytes]) -> bool:
        return any(r.has_heads(heads) for r in (self.state, *self._retired_states))

    async def _wait_heads(self, has: Callable[[list[bytes]], bool], hex_heads: list[str],
                          deadline: float) -> None:
        """Wait until ``has(heads)``: a replica holds ``hex_heads``."""
        heads = [bytes.fromhex(h) for h in hex_heads]
        loop = asyncio.get_running_loop()
        while not has(heads):
            if not self._connected():
                raise DaemonUnavailable("Lost the connection to the runtimed daemon while syncing")
            if self._moved is None or self._moved.done():
                self._moved = loop.create_future()
            await asyncio.wait_for(asyncio.shield(self._moved), max(deadline - loop.time(), 0))

    async def _request(self, kind: str, *, timeout: float | None = None, **fields: Any) -> Any:
        """A request on the notebook connection, sent at once, in one write with any pending
        edits; its result (asyncio.TimeoutError after ``timeout`` seconds)."""
        channel = await self._ensure()
        self._reply_scheduled = False
        fut = channel.request_nowait(kind, _before=self._sync_frames(),
                                     required_heads=_hex(self.doc.heads), **fields)
        try:  # wait_for on a future (not a coroutine) runs no extra task: no loop iteration lost
            return await (fut if timeout is None else asyncio.wait_for(fut, timeout))
        finally:
            if not fut.done():
                fut.cancel()

    def _edited(self) -> None:
        """A local edit: sent at the end of this loop iteration (with a request, if one follows;
        edits made while disconnected reach the daemon on reconnect)."""
        if not self._reply_scheduled:
            self._reply_scheduled = True
            asyncio.get_running_loop().call_soon(self._send_sync)

    # kernel ------------------------------------------------------------------------------------------
    async def start_kernel(self, kernel_type: str = "auto", env_source: str = "auto",
                           notebook_path: str | None = None, *,
                           on_progress: Callable[[dict[str, Any]], None] | None = None,
                           cwd: str | os.PathLike[str] | None = None) -> None:
        """Start the room's kernel, or join the one already running. Connects if needed.

        ``kernel_type="auto"`` (the default) starts what the notebook's kernelspec
        names, Python when it names none; ``env_source="auto"`` finds the
        environment from the notebook's directory (its file's, or ``notebook_path``),
        its metadata and its cells.

        Building an environment can take a while; ``on_progress(kernel)`` is called
        with the runtime-state kernel record (``lifecycle``, ``progress``...) each time
        it changes meanwhile.

        A notebook with no file runs in ``cwd`` (default: this process's working directory).
        """
        if not self._connected():
            await self.connect()
        self._progress_listener, self._progress_seen = on_progress, (None, None)
        try:
            result = await self._request("start_kernel", kernel_type=kernel_type, env_source=env_source,
                                         notebook_path=notebook_path,
                                         cwd=os.fspath(cwd) if cwd is not None else os.getcwd())
            await self._sync_state(result)
        finally:
            self._progress_listener = None

    async def _sync_state(self, result: dict[str, Any], deadline: float | None = None) -> None:
        """Make sure the replicas hold what the daemon had when it answered (by ``deadline``,
        a loop time, if given; else within ``CONNECT_TIMEOUT``: asyncio.TimeoutError)."""
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + CONNECT_TIMEOUT
        await self._wait_heads(self._state_has, result.get("state_heads", []), deadline)
        await self._wait_heads(self.doc.has_heads, result.get("notebook_heads", []), deadline)

    async def interrupt(self) -> None:
        """Interrupt the running cell and cancel the queued ones; returns once the cell ended.

        Raises :class:`KernelError` if the kernel could not stop it (``restart_kernel`` can).
        """
        await self._sync_state(await self._request("interrupt"))

    async def shutdown_kernel(self, *, wait: bool = True) -> None:
        """Stop the room's kernel. ``wait=False`` returns once no kernel runs for the room (the
        process ends, and its environment goes back, in the background)."""
        await self._sync_state(await self._request("shutdown_kernel", wait=wait))

    async def connection_info(self) -> dict[str, Any]:
        """The running kernel's Jupyter connection info (``transport``, ``ip``, the ports,
        ``key``, ``signature_scheme``), for another Jupyter client to talk to the kernel
        directly. :class:`NoKernel` if none runs; :class:`InvalidRequest` for a kernel that
        is not reached over ZMQ (a gateway's)."""
        return (await self._request("connection_info"))["connection_info"]

    async def restart_kernel(self) -> None:
        """Replace the kernel process; queued and running cells fail as restarted."""
        await self._sync_state(await self._request("restart_kernel"))

    # cells -------------------------------------------------------------------------------------------------
    async def create_cell(self, source: str = "", cell_type: str = "code", index: int | None = None) -> str:
        """Add a cell (at the end, or at ``index``) and return its id."""
        if not self._ever_connected:
            raise NotConnected("Not connected to the runtimed daemon; call connect() or start_kernel()")
        cell_id = notebook.add_cell(self.doc, source, cell_type, index=index)
        self._edited()
        return cell_id

    async def set_source(self, cell_id: str, source: str) -> None:
        self._require_replica()
        notebook.set_source(self.doc, cell_id, source)
        self._edited()

    async def delete_cell(self, cell_id: str) -> None:
        self._require_replica()
        notebook.delete_cell(self.doc, cell_id)
        self._edited()

    async def move_cell(self, cell_id: str, index: int) -> None:
        """Move a cell to position ``index`` (0 is the top; past the end is the end)."""
        self._require_replica()
        notebook.move_cell(self.doc, cell_id, index)
        self._edited()

    async def set_cell_metadata(self, cell_id: str, key: str, value_json: str) -> None:
        """Set ``key`` of a cell's metadata to a JSON value (``"tags"``, ``'["parameters"]'``)."""
        self._require_replica()
        notebook.set_cell_metadata(self.doc, cell_id, key, notebook.parse_metadata_json(key, value_json))
        self._edited()

    async def clear_outputs(self, cell_id: str | None = None) -> None:
        """Clear a cell's outputs and execution count (None: every cell's)."""
        if cell_id is not None:
            notebook.check_cell(self.doc, cell_id)
        await self._sync_state(await self._request(
            "clear_outputs", cell_ids=None if cell_id is None else [cell_id]))

    async def save(self, path: str | os.PathLike[str] | None = None) -> str:
        """Write the notebook as nbformat 4.5 to its file (or, with ``path``, save as: the
        room is then backed by that file); return the path written.

        An untitled notebook needs a ``path``. Raises :class:`NotebookFileError`.
        """
        target = str(Path(path).expanduser().resolve()) if path is not None else None
        result = await self._request("save", path=target)
        self._path = result["path"]
        await self._sync_state(result)
        return self._path

    async def get_cell(self, cell_id: str) -> Cell:
        self._require_replica()
        return self._cell(notebook.read_cell(self.doc, cell_id), saved_outputs_obj(self.state))

    async def get_cells(self) -> list[Cell]:
        self._require_replica()
        saved = saved_outputs_obj(self.state)
        return [self._cell(c, saved) for c in notebook.read_cells(self.doc)]

    def _result(self, record: dict[str, Any]) -> ExecutionResult:
        return ExecutionResult.from_record(record, **self._blob_access())

    def _blob_access(self) -> dict[str, Any]:
        """How outputs read from the documents get their blob parts and URLs."""
        return blob_access(self._blobs, self._http)

    def _cell(self, data: notebook.CellData, saved: bytes | None) -> Cell:
        """A :class:`Cell` with its outputs (``saved``: what :func:`saved_outputs_obj` gives)."""
        record = read_execution(self.state, data.execution_id) if data.execution_id else None
        if record is not None:
            outputs = self._result(record).outputs
        elif saved is None:
            outputs = []
        else:  # not run since its file was read: the file's outputs
            access = self._blob_access()
            found = read_saved_outputs(self.state, data.id, saved)
            outputs = [Output.from_nbformat(o, **access) for o in found or []]
        return Cell(id=data.id, cell_type=data.cell_type, source=data.source,
                    execution_count=data.execution_count, metadata=data.metadata,
                    outputs=outputs, execution_id=data.execution_id)

    def _require_replica(self) -> None:
        if not self._ever_connected:
            raise NotConnected("Not connected to the runtimed daemon; call connect() or start_kernel()")

    # metadata ----------------------------------------------------------------------------------------------
    async def set_metadata(self, key: str, value_json: str) -> None:
        """Set notebook metadata ``key`` to a JSON value (``notebook_metadata``: the whole mapping)."""
        self._require_replica()
        value = notebook.parse_metadata_json(key, value_json)
        notebook.set_metadata_value(self.doc, key, value)
        self._edited()

    async def get_metadata(self, key: str) -> str | None:
        """The JSON value of notebook metadata ``key`` (``notebook_metadata``: the whole mapping)."""
        self._require_replica()
        return notebook.get_metadata_json(self.doc, key)

    # execution ------------------------------------------------------------------------------------------
    async def queue_cell(self, cell_id: str) -> str:
        """Queue a cell without waiting; returns the execution id. Read results with ``get_cell``."""
        result = await self._execute_request(cell_id, wait=False)
        return result["execution_id"]

    async def execute_cell(self, cell_id: str, timeout_secs: float | None = 60,
                           stdin: StdinHandler | None = None) -> ExecutionResult:
        """Run a cell (as the document has it now) and return its result.

        Starts a kernel if none was started yet. Raises :class:`ExecutionTimeout`
        after ``timeout_secs`` (the cell keeps running), :class:`CellNotFound`,
        and :class:`KernelDied` if the kernel died while running it.

        ``stdin(prompt, password) -> str`` answers the cell's ``input()`` and
        ``getpass()`` calls (a coroutine function is awaited; a plain function runs
        in a worker thread). Without it, ``input()`` raises StdinNotImplementedError
        in the cell. A handler that raises, or has not answered when ``timeout_secs``
        is up, ends the cell: ``input()`` raises EOFError, and a note in the cell's
        stderr says why.
        """
        if stdin is not None:
            async for event in self._follow(cell_id, timeout_secs, stdin, events=False):
                if event.kind == "done":
                    assert event.result is not None
                    return event.result
            raise ProtocolError("The execution ended without a result")  # pragma: no cover
        try:
            result = await self._execute_request(cell_id, wait=True, timeout=timeout_secs)
        except asyncio.TimeoutError:
            raise ExecutionTimeout(f"Execution timed out after {timeout_secs:g} seconds",
                                   cell_id=cell_id, notebook_id=self._notebook_id) from None
        return self._result_of(cell_id, result["execution_id"])

    async def _execute_request(self, cell_id: str, *, wait: bool, timeout: float | None = None,
                               **follow: Any) -> dict[str, Any]:
        if self._ever_connected or self._connected():
            notebook.check_cell(self.doc, cell_id)  # CellNotFound early, without a round trip
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        result = await self._request("execute_cell", timeout=timeout, cell_id=cell_id, wait=wait,
                                     auto_start=True, **follow)
        await self._sync_state(result, deadline)
        return result

    def _result_of(self, cell_id: str, execution_id: str) -> ExecutionResult:
        """A finished execution's result as the replicas have it (KernelDied if it died)."""
        record = read_execution(self.state, execution_id)
        if record is None:
            raise ProtocolError(f"The daemon reported execution {execution_id} but did not sync it")
        if record.get("failure") == "kernel_died":
            raise KernelDied(record.get("error") or "The kernel died", cell_id=cell_id,
                             notebook_id=self._notebook_id)
        return self._result(record)

    async def stream(self, cell_id: str, timeout_secs: float | None = 60,
                     stdin: StdinHandler | None = None) -> AsyncIterator[ExecutionEvent]:
        """Queue a cell and yield :class:`ExecutionEvent` objects as they happen: ``queued``,
        ``started``, one ``output`` per output message as the kernel publishes it, and
        ``done`` with the result (as :meth:`execute_cell` returns it). Nothing is polled:
        the daemon sends each event to this session alone as it happens.

        ``timeout_secs`` and ``stdin`` are :meth:`execute_cell`'s. Leaving the loop early
        stops the following, not the cell.
        """
        async for event in self._follow(cell_id, timeout_secs, stdin, events=True):
            yield event

    def _follow(self, cell_id: str, timeout_secs: float | None, stdin: StdinHandler | None,
                *, events: bool) -> AsyncIterator[ExecutionEvent]:
        return follow(self, cell_id, timeout_secs, stdin, events=events)

    # widgets ---------------------------------------------------------------------------------------
    async def widget_state(self) -> dict[str, dict[str, Any]]:
        """Every widget model the kernel holds (ipywidgets, anywidget, ``tqdm.notebook``): model
        id -> its state (``value``, ``description``, ``_model_name``...; binary buffers as
        bytes), as the kernel last sent it. A model id is what a widget output's
        ``application/vnd.jupyter.widget-view+json`` names."""
        self._require_replica()
        read = self._blobs.read if self._blobs is not None else (lambda sha: None)
        return {comm_id: model_state(comm, read) for comm_id, comm in read_comms(self.state).items()
                if comm["model_name"]}

    async def send_comm_message(self, comm_id: str, data: dict[str, Any]) -> None:
        """Send the kernel a message on comm ``comm_id``, as a frontend does when a user moves
        a slider: ``{"method": "update", "state": {"value": 7}}`` sets a widget's ``value``
        (every session sees it at once; the kernel's echo confirms it), ``{"method": "custom",
        "content": {"event": "click"}}`` clicks a Button. Raises :class:`CommNotFound` if the
        kernel holds no such comm (closed, or gone with a restart), :class:`NoKernel` without
        a kernel, :class:`InvalidRequest` if ``data`` is not a JSON object."""
        if not isinstance(data, dict):
            raise InvalidRequest("send_comm_message: data must be a dict (a JSON object)")
        try:
            json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"send_comm_message: data must be JSON-serialisable ({exc})",
                                 notebook_id=self._notebook_id) from None
        await self._sync_state(await self._request("send_comm", comm_id=comm_id, data=data))

    async def on_comm_message(self, callback: CommListener | None) -> None:
        """Call ``callback(comm_id, data, buffers)`` (on the session's event loop) for each
        custom message a comm of the kernel sends (a widget's ``send()``: ``data`` is
        ``{"method": "custom", "content": ...}``); None stops. Custom messages are not kept:
        only those sent while a callback is set arrive."""
        self._comm_listener = callback

    async def _import_notebook(self, path: str | os.PathLike[str]) -> None:
        """Fill this empty, untitled notebook with a copy of the file at ``path`` (which stays
        untouched; ``save(path)`` later writes the copy where it should go)."""
        result = await self._request("import_notebook", path=str(Path(path).expanduser().resolve()))
        await self._sync_state(result)

    async def show(self, open_browser: bool = True) -> str:
        """The address of this notebook's live page (cells and outputs, updated as they change);
        opens it in a browser unless ``open_browser`` is false or ``RUNTIMED_NO_BROWSER=1``."""
        if not self._connected():
            await self.connect()
        url = await pool_request(self.socket_path, "viewer_link", notebook_id=self._notebook_id,
                                 path=self._path)
        if open_browser:
            await asyncio.get_running_loop().run_in_executor(None, open_in_browser, url)
        return url

    async def run_all(self, timeout_secs: float | None = 60, allow_errors: bool = False,
                      interrupt_on_timeout: bool = False, *,
                      on_cell: Callable[[int, int, Cell, ExecutionResult | None], None] | None = None,
                      ) -> list[ExecutionResult]:
        """Run the code cells top to bottom; one result per cell run.

        As nbclient does: empty code cells and cells tagged ``skip-execution`` are
        not run; the first failing cell stops the run (its result is the last)
        unless ``allow_errors`` or the cell is tagged ``raises-exception``. A cell
        that exceeds ``timeout_secs`` (None: no limit) raises :class:`ExecutionTimeout`,
        or, with ``interrupt_on_timeout``, is interrupted (its result shows the
        KeyboardInterrupt) and counts as failed. ``on_cell(i, n, cell, result)`` is
        called as the i-th of n cells to run starts (``result`` None) and ends.
        """
        if not self._connected():
            await self.connect()
        todo = [c for c in await self.get_cells()
                if c.cell_type == "code" and c.source.strip()
                and "skip-execution" not in (c.metadata.get("tags") or [])]
        results = []
        for i, cell in enumerate(todo, 1):
            if on_cell is not None:
                on_cell(i, len(todo), cell, None)
            try:
                result = await self.execute_cell(cell.id, timeout_secs=timeout_secs)
            except ExecutionTimeout:
                if not interrupt_on_timeout:
                    raise
                await self.interrupt()
                result = await self._latest_result(cell.id)
            results.append(result)
            if on_cell is not None:
                on_cell(i, len(todo), cell, result)
            allowed = allow_errors or "raises-exception" in (cell.metadata.get("tags") or [])
            if not result.success and not allowed:
                break
        return results

    async def _latest_result(self, cell_id: str) -> ExecutionResult:
        """The result of a cell's latest execution, as the local replicas have it."""
        data = notebook.read_cell(self.doc, cell_id)
        record = read_execution(self.state, data.execution_id) if data.execution_id else None
        if record is None:
            raise ProtocolError(f"Cell {cell_id} has no execution the daemon synced")
        return self._result(record)

    async def run(self, code: str, timeout_secs: float = 60,
                  stdin: StdinHandler | None = None) -> ExecutionResult:
        """Create a code cell with ``code`` and execute it (``stdin``: see :meth:`execute_cell`)."""
        if not self._connected():
            await self.connect()
        cell_id = await self.create_cell(code)
        return await self.execute_cell(cell_id, timeout_secs=timeout_secs, stdin=stdin)

    async def get_result(self, execution_id: str) -> ExecutionResult:
        """The result of an execution by its id (``queue_cell``'s, ``ExecutionResult.execution_id``),
        in any notebook; also after its room was evicted or the daemon restarted (finished
        results are kept for 7 days). One still running comes with ``status`` ``"running"``
        and its outputs so far. Raises :class:`ExecutionNotFound`."""
        return kept_result(await pool_request(self.socket_path, "get_result",
                                              execution_id=execution_id))

    # the kernel's help ----------------------------------------------------------------------------
    async def complete(self, code: str, cursor_pos: int | None = None) -> dict[str, Any]:
        """Completions from the kernel for ``code`` at ``cursor_pos`` (default: its end):
        ``matches``, ``cursor_start``, ``cursor_end`` (the span the matches replace) and
        ``metadata``. Starts a kernel if none runs."""
        if not self._connected():
            await self.connect()
        return await self._request("complete", code=code, cursor_pos=cursor_pos)

    async def inspect(self, code: str, cursor_pos: int | None = None,
                      detail_level: int = 0) -> dict[str, Any] | None:
        """What the kernel knows of the name at ``cursor_pos`` (default: the end of ``code``),
        as a MIME bundle (``text/plain``...; ``detail_level=1``: with the source), or None
        if it knows nothing. Starts a kernel if none runs."""
        if not self._connected():
            await self.connect()
        return await self._request("inspect", code=code, cursor_pos=cursor_pos,
                                   detail_level=detail_level)

    # dependencies -----------------------------------------------------------------------------------
    async def get_dependencies(self) -> list[str]:
        """The notebook's inline dependencies (for its environment family, e.g. the metadata
        key ``runt.<family>.dependencies``)."""
        if not self._connected():
            await self.connect()
        return (await self._request("get_dependencies"))["dependencies"]

    async def add_dependency(self, spec: str) -> list[str]:
        """Add a requirement (``"pandas"``, ``"numpy>=2"``; one naming a listed package
        replaces it) to the notebook's dependencies; returns them. The running kernel
        sees it after :meth:`sync_environment`; a kernel started later gets it."""
        return await self._edit_dependencies("add_dependency", spec=spec)

    async def remove_dependency(self, name: str) -> list[str]:
        """Remove the requirement naming package ``name``; returns the dependencies left."""
        return await self._edit_dependencies("remove_dependency", name=name)

    async def _edit_dependencies(self, kind: str, **fields: Any) -> list[str]:
        if not self._connected():
            await self.connect()
        result = await self._request(kind, **fields)
        await self._sync_state(result)
        return result["dependencies"]

    async def sync_environment(self, *, on_progress: Callable[[dict[str, Any]], None] | None = None
                               ) -> dict[str, Any]:
        """Make the running kernel see the notebook's dependencies: installed into its
        environment in place when possible (its variables stay), else the kernel restarts
        in an environment that has them.

        Returns ``action`` (``"installed"``, ``"restarted"``, ``"unchanged"``, or ``"none"``
        when no kernel runs: the next start gets them), ``env_source`` and
        ``dependencies``. ``on_progress(kernel)`` is called as the install goes, as for
        :meth:`start_kernel`. Raises :class:`EnvironmentFailed` (quoting the installer)
        if a dependency cannot be installed.
        """
        if not self._connected():
            await self.connect()
        self._progress_listener, self._progress_seen = on_progress, (None, None)
        try:
            result = await self._request("sync_environment")
            await self._sync_state(result)
        finally:
            self._progress_listener = None
        return {k: result.get(k) for k in ("action", "env_source", "dependencies")}

    # teardown ----------------------------------------------------------------------------------------------
    async def close(self) -> None:
        """Disconnect (the kernel stays for other peers until the room's keep-alive ends)."""
        self._closed = True
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        try:
            if self._kernel_started():
                await self.shutdown_kernel()
        except RuntimedError:
            pass
        finally:
            await self.close()


class AsyncDaemonClient:
    """Daemon-level operations: health, pool status, rooms, flush, shutdown."""

    def __init__(self, *, socket_path: str | os.PathLike[str] | None = None) -> None:
        self._socket_path = Path(socket_path) if socket_path else None

    @property
    def path(self) -> str | None:
        """The notebook file backing this room (absolute), or None for an untitled notebook."""
        return self._path

    @property
    def socket_path(self) -> Path:
        return self._socket_path or paths.socket_path()

    async def ping(self) -> bool:
        """True if a daemon answers at the socket (never starts one)."""
        try:
            result = await pool_request(self.socket_path, "ping", autostart=False)
        except RuntimedError:
            return False
        return bool(result and result.get("pong"))

    async def is_running(self) -> bool:
        """True if a daemon process holds this socket's lock."""
        return daemon_lock_held(self.socket_path)

    async def info(self) -> dict[str, Any]:
        """Which daemon answers: its ``version`` (of runtimed) and ``pid``. Never starts one
        (:class:`DaemonNotRunning`)."""
        result = await pool_request(self.socket_path, "ping", autostart=False)
        return {"version": result.get("version"), "pid": result.get("pid")}

    async def status(self) -> dict[str, Any]:
        """Pool counts: ``uv_available``, ``uv_warming``, ``conda_available``, ``conda_warming``
        (always present), ``<family>_available`` / ``_warming`` / ``_error`` / ``_retry_in``
        for every installed pool, ``hot_available`` (idle hot kernels), and the daemon's
        ``version`` and ``pid``. Never starts a daemon (:class:`DaemonNotRunning`)."""
        return await pool_request(self.socket_path, "status", autostart=False)

    async def list_rooms(self) -> list[dict[str, Any]]:
        """Open rooms: peers, kernel (type, status, env_source, error, connection file)."""
        return await pool_request(self.socket_path, "list_rooms", autostart=False)

    async def flush_pool(self) -> None:
        await pool_request(self.socket_path, "flush_pool", autostart=False)

    async def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the daemon (its kernels are shut down, its documents saved); returns once it
        is gone (or after ``timeout`` seconds, still stopping)."""
        await pool_request(self.socket_path, "shutdown", autostart=False)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while daemon_lock_held(self.socket_path) and loop.time() < deadline:
            await asyncio.sleep(0.05)

    async def plugins(self) -> list[dict[str, Any]]:
        return await pool_request(self.socket_path, "plugins", autostart=False)

    async def get_result(self, execution_id: str) -> ExecutionResult:
        """See :meth:`AsyncSession.get_result`."""
        return kept_result(await pool_request(self.socket_path, "get_result",
                                              execution_id=execution_id))


def blob_access(reader: BlobReader | None, http: dict[str, str]) -> dict[str, Any]:
    """``read_blob`` and ``blob_url`` for outputs (see :meth:`Output.from_nbformat`), from the
    daemon's blob store and its web server (``{"url", "token"}``)."""
    url, token = http.get("url"), http.get("token")
    return {"read_blob": reader.read if reader is not None else None,
            "blob_url": (lambda sha: f"{url}/blob/{sha}?token={token}") if url else None}


def kept_result(response: dict[str, Any]) -> ExecutionResult:
    """A ``get_result`` answer as a result, its blob parts read from the daemon's store."""
    store = response.get("blob_store_dir")
    reader = BlobReader(Path(store), cache_bytes=0) if store else None
    return ExecutionResult.from_record(response, **blob_access(reader, response.get("http") or {}))

