"""The synchronous API: :class:`Session` and :class:`DaemonClient` drive the async client
on one background event-loop thread, so they work where a loop already runs (Jupyter, IPython)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from runtimed.client.async_session import AsyncDaemonClient, AsyncSession, CommListener
from runtimed.client.events import ExecutionEvent
from runtimed.client.results import Cell, ExecutionResult
from runtimed.errors import RuntimedError

T = TypeVar("T")


class _LoopThread:
    """One daemon thread running an event loop for every sync object in the process."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    _pid: int | None = None

    @classmethod
    def loop(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._pid != os.getpid():  # a fork has no thread: make one
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="runtimed-loop", daemon=True).start()
                cls._loop, cls._pid = loop, os.getpid()
            return cls._loop

    @classmethod
    def run(cls, coro: Coroutine[Any, Any, T]) -> T:
        loop = cls.loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise RuntimedError("The sync runtimed API was called from its own loop thread; use AsyncSession")
        return asyncio.run_coroutine_threadsafe(coro, loop).result()


class Session:
    """Synchronous twin of :class:`runtimed.AsyncSession`; same methods, blocking.

    ``with runtimed.Session() as session:`` shuts the kernel down on exit.
    """

    def __init__(self, notebook_id: str | None = None, *, path: str | os.PathLike[str] | None = None,
                 socket_path: str | os.PathLike[str] | None = None) -> None:
        self._async = AsyncSession(notebook_id, path=path, socket_path=socket_path)

    # properties ---------------------------------------------------------------------------------
    @property
    def notebook_id(self) -> str:
        return self._async.notebook_id

    @property
    def path(self) -> str | None:
        """The notebook file backing this room (absolute), or None for an untitled notebook."""
        return self._async.path

    @property
    def is_connected(self) -> bool:
        return _LoopThread.run(self._async.is_connected())

    @property
    def kernel_started(self) -> bool:
        return _LoopThread.run(self._async.kernel_started())

    @property
    def env_source(self) -> str | None:
        return _LoopThread.run(self._async.env_source())

    def kernel_status(self) -> dict[str, Any]:
        return _LoopThread.run(self._async.kernel_status())

    @property
    def connection_file(self) -> str | None:
        """See :meth:`AsyncSession.connection_file`."""
        return _LoopThread.run(self._async.connection_file())

    def __repr__(self) -> str:
        async def summary() -> str:
            return self._async._summary("Session")

        try:
            return _LoopThread.run(summary())
        except RuntimedError:  # called on the loop thread itself (a callback)
            return f"<Session notebook_id={self.notebook_id!r}>"

    # lifecycle -----------------------------------------------------------------------------------
    def connect(self) -> None:
        _LoopThread.run(self._async.connect())

    def start_kernel(self, kernel_type: str = "auto", env_source: str = "auto",
                     notebook_path: str | None = None, *,
                     on_progress: Callable[[dict[str, Any]], None] | None = None,
                     cwd: str | os.PathLike[str] | None = None) -> None:
        """See :meth:`AsyncSession.start_kernel` (``on_progress`` runs on the loop thread)."""
        _LoopThread.run(self._async.start_kernel(kernel_type, env_source, notebook_path,
                                                 on_progress=on_progress, cwd=cwd))

    def connection_info(self) -> dict[str, Any]:
        """See :meth:`AsyncSession.connection_info`."""
        return _LoopThread.run(self._async.connection_info())

    def interrupt(self) -> None:
        _LoopThread.run(self._async.interrupt())

    def shutdown_kernel(self, *, wait: bool = True) -> None:
        """See :meth:`AsyncSession.shutdown_kernel`."""
        _LoopThread.run(self._async.shutdown_kernel(wait=wait))

    def restart_kernel(self) -> None:
        _LoopThread.run(self._async.restart_kernel())

    def close(self) -> None:
        _LoopThread.run(self._async.close())

    # cells --------------------------------------------------------------------------------------------
    def create_cell(self, source: str = "", cell_type: str = "code", index: int | None = None) -> str:
        return _LoopThread.run(self._async.create_cell(source, cell_type, index))

    def set_source(self, cell_id: str, source: str) -> None:
        _LoopThread.run(self._async.set_source(cell_id, source))

    def delete_cell(self, cell_id: str) -> None:
        _LoopThread.run(self._async.delete_cell(cell_id))

    def move_cell(self, cell_id: str, index: int) -> None:
        _LoopThread.run(self._async.move_cell(cell_id, index))

    def set_cell_metadata(self, cell_id: str, key: str, value_json: str) -> None:
        _LoopThread.run(self._async.set_cell_metadata(cell_id, key, value_json))

    def clear_outputs(self, cell_id: str | None = None) -> None:
        _LoopThread.run(self._async.clear_outputs(cell_id))

    def save(self, path: str | os.PathLike[str] | None = None) -> str:
        """See :meth:`AsyncSession.save`."""
        return _LoopThread.run(self._async.save(path))

    def get_cell(self, cell_id: str) -> Cell:
        return _LoopThread.run(self._async.get_cell(cell_id))

    def get_cells(self) -> list[Cell]:
        return _LoopThread.run(self._async.get_cells())

    def set_metadata(self, key: str, value_json: str) -> None:
        _LoopThread.run(self._async.set_metadata(key, value_json))

    def get_metadata(self, key: str) -> str | None:
        return _LoopThread.run(self._async.get_metadata(key))

    # execution ------------------------------------------------------------------------------------------
    def execute_cell(self, cell_id: str, timeout_secs: float | None = 60,
                     stdin: Callable[[str, bool], str] | None = None) -> ExecutionResult:
        """See :meth:`AsyncSession.execute_cell` (``stdin`` runs on a worker thread)."""
        return _LoopThread.run(self._async.execute_cell(cell_id, timeout_secs, stdin=stdin))

    def stream(self, cell_id: str, timeout_secs: float | None = 60,
               stdin: Callable[[str, bool], str] | None = None) -> Iterator[ExecutionEvent]:
        """See :meth:`AsyncSession.stream`: ``for event in session.stream(cell_id):``."""
        events = self._async.stream(cell_id, timeout_secs, stdin=stdin)
        try:
            while True:
                try:
                    yield _LoopThread.run(events.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            _LoopThread.run(events.aclose())

    def queue_cell(self, cell_id: str) -> str:
        return _LoopThread.run(self._async.queue_cell(cell_id))

    def show(self, open_browser: bool = True) -> str:
        """See :meth:`AsyncSession.show`."""
        return _LoopThread.run(self._async.show(open_browser))

    def widget_state(self) -> dict[str, dict[str, Any]]:
        """See :meth:`AsyncSession.widget_state`."""
        return _LoopThread.run(self._async.widget_state())

    def send_comm_message(self, comm_id: str, data: dict[str, Any]) -> None:
        """See :meth:`AsyncSession.send_comm_message`."""
        _LoopThread.run(self._async.send_comm_message(comm_id, data))

    def on_comm_message(self, callback: CommListener | None) -> None:
        """See :meth:`AsyncSession.on_comm_message` (``callback`` runs on the loop thread)."""
        _LoopThread.run(self._async.on_comm_message(callback))

    def _import_notebook(self, path: str | os.PathLike[str]) -> None:
        _LoopThread.run(self._async._import_notebook(path))

    def run_all(self, timeout_secs: float | None = 60, allow_errors: bool = False,
                interrupt_on_timeout: bool = False, *,
                on_cell: Callable[[int, int, Cell, ExecutionResult | None], None] | None = None,
                ) -> list[ExecutionResult]:
        """See :meth:`AsyncSession.run_all` (``on_cell`` runs on the loop thread)."""
        return _LoopThread.run(self._async.run_all(timeout_secs, allow_errors, interrupt_on_timeout,
                                                   on_cell=on_cell))

    def run(self, code: str, timeout_secs: float = 60,
            stdin: Callable[[str, bool], str] | None = None) -> ExecutionResult:
        return _LoopThread.run(self._async.run(code, timeout_secs, stdin=stdin))

    def get_result(self, execution_id: str) -> ExecutionResult:
        """See :meth:`AsyncSession.get_result`."""
        return _LoopThread.run(self._async.get_result(execution_id))

    def complete(self, code: str, cursor_pos: int | None = None) -> dict[str, Any]:
        """See :meth:`AsyncSession.complete`."""
        return _LoopThread.run(self._async.complete(code, cursor_pos))

    def inspect(self, code: str, cursor_pos: int | None = None,
                detail_level: int = 0) -> dict[str, Any] | None:
        """See :meth:`AsyncSession.inspect`."""
        return _LoopThread.run(self._async.inspect(code, cursor_pos, detail_level))

    def get_dependencies(self) -> list[str]:
        return _LoopThread.run(self._async.get_dependencies())

    def add_dependency(self, spec: str) -> list[str]:
        """See :meth:`AsyncSession.add_dependency`."""
        return _LoopThread.run(self._async.add_dependency(spec))

    def remove_dependency(self, name: str) -> list[str]:
        return _LoopThread.run(self._async.remove_dependency(name))

    def sync_environment(self, *, on_progress: Callable[[dict[str, Any]], None] | None = None
                         ) -> dict[str, Any]:
        """See :meth:`AsyncSession.sync_environment` (``on_progress`` runs on the loop thread)."""
        return _LoopThread.run(self._async.sync_environment(on_progress=on_progress))

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        _LoopThread.run(self._async.__aexit__(*exc))


class DaemonClient:
    """Synchronous twin of :class:`runtimed.AsyncDaemonClient`."""

    def __init__(self, *, socket_path: str | os.PathLike[str] | None = None) -> None:
        self._async = AsyncDaemonClient(socket_path=socket_path)

    def ping(self) -> bool:
        return _LoopThread.run(self._async.ping())

    def is_running(self) -> bool:
        return _LoopThread.run(self._async.is_running())

    def info(self) -> dict[str, Any]:
        return _LoopThread.run(self._async.info())

    def status(self) -> dict[str, Any]:
        return _LoopThread.run(self._async.status())

    def list_rooms(self) -> list[dict[str, Any]]:
        return _LoopThread.run(self._async.list_rooms())

    def flush_pool(self) -> None:
        _LoopThread.run(self._async.flush_pool())

    def shutdown(self, timeout: float = 30.0) -> None:
        _LoopThread.run(self._async.shutdown(timeout))

    def plugins(self) -> list[dict[str, Any]]:
        return _LoopThread.run(self._async.plugins())

    def get_result(self, execution_id: str) -> ExecutionResult:
        """See :meth:`AsyncSession.get_result`."""
        return _LoopThread.run(self._async.get_result(execution_id))
