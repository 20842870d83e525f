"""A room's kernel and its execution queue.

One execution at a time, FIFO. Queueing a cell that is already queued or
running returns the existing execution. An error stops the queue (the cells
still queued fail as cancelled). Interrupt clears the queue and interrupts the
running cell. A kernel that dies fails its running and queued cells.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtimed.daemon.kernel import KernelProcess
from runtimed.document import notebook
from runtimed.errors import KernelDied, KernelError
from runtimed.launchers import KernelLauncher, LaunchContext
from runtimed.pools import EnvPool, PreparedEnv
from runtimed.sinks import ExecutionContext

if TYPE_CHECKING:
    from runtimed.daemon.room import Room

log = logging.getLogger(__name__)

OUTPUT_MSG_TYPES = frozenset(
    ("stream", "display_data", "execute_result", "error", "clear_output", "update_display_data")
)
#: How long progress (queued, running, outputs) may wait to be synced: a short execution
#: reaches peers as one message, a chatty one as a few per display frame.
PROGRESS_DELAY = 0.004
#: How long an interrupted cell may take to end before interrupt() reports it could not.
INTERRUPT_GRACE = 5.0
#: Finished executions kept in the runtime-state document per room (older ones are dropped).
KEEP_FINISHED = 64


@dataclass
class Execution:
    id: str
    cell_id: str
    source: str
    done: asyncio.Future[None]
    status: str = "queued"
    success: bool | None = None
    error: str | None = None
    failure: str | None = None
    execution_count: int | None = None
    ctx: ExecutionContext = field(init=False)
    #: Whether the runtime-state document has this execution yet.
    recorded: bool = False
    #: Whether (and with which count) the notebook's cell already points at this execution.
    annotated: bool = False
    annotated_count: int | None = None


class KernelRunner:
    """The kernel of one room, the queue in front of it, and the task that drains the queue."""

    def __init__(
        self, room: Room, launcher: KernelLauncher, env: PreparedEnv | None, pool: EnvPool | None,
        cwd: Path,
    ) -> None:
        self.room = room
        self.launcher = launcher
        self.env = env
        self.pool = pool
        self.cwd = cwd
        self.kernel_type = launcher.kernel_type
        self.env_source = env.env_source if env is not None else launcher.kernel_type
        self.process: KernelProcess | None = None
        self.queue: deque[Execution] = deque()
        self.running: Execution | None = None
        self._active: dict[str, Execution] = {}  # cell_id -> queued or running execution
        self._finished: deque[str] = deque()
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.dead_reason: str | None = None

    # lifecycle ----------------------------------------------------------------------------------
    async def start(self, hot: KernelProcess | None = None) -> None:
        """Launch the kernel process (or adopt the already running ``hot`` one) and begin
        draining the queue."""
        room = self.room
        started = asyncio.get_running_loop().time()
        if hot is not None:
            process = hot
            ctx = LaunchContext(notebook_id=room.notebook_id, connection_file=hot.connection_file,
                                cwd=self.cwd, env={}, prepared_env=self.env)
            code = self.launcher.claim_code(ctx, hot.cwd or self.cwd)
            try:
                if code:
                    await process.run_silently(code)
            except BaseException:
                await process.kill()
                raise
        else:
            room.writer.set_kernel(lifecycle="launching", progress=f"Starting {self.kernel_type} kernel")
            room.schedule_flush()
            process = KernelProcess(self.launcher, room.daemon.runtime_dir)
            room.writer.set_kernel(lifecycle="connecting")
            await process.start(notebook_id=room.notebook_id, cwd=self.cwd, env=self.env)
        self.process = process
        log.info("%s: %s kernel %s in %.3f s (pid %s, %s)", room.notebook_id, self.kernel_type,
                 "claimed" if hot is not None else "ready", asyncio.get_running_loop().time() - started,
                 process.pid, self.env_source)
        self.dead_reason = None
        room.writer.set_kernel(lifecycle="running", activity="idle", error=None, progress=None)
        room.schedule_flush()
        self._watcher = asyncio.create_task(self._watch(process))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._drain())

    async def restart(self) -> None:
        """Replace the kernel process; queued and running cells fail.

        The old process is killed at once (its state is being thrown away). The new
        one is a hot kernel of the same kind when one is ready (prewarmed envs are
        interchangeable), else a fresh process in the same environment.
        """
        self._fail_all("Kernel restarted", "restarted")
        await self._stop_process(graceful=False)
        hot = self.room.daemon.hot.claim(self.kernel_type, self.env_source)
        if hot is not None:
            if self.env is not None and self.pool is not None:
                await self.pool.release(self.env)
            self.env, self.pool = hot.env, hot.pool
        await self.start(hot.process if hot is not None else None)

    async def shutdown(self) -> None:
        """Stop the kernel for good and hand the environment back."""
        self._fail_all("Kernel shut down", "shutdown")
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        await self._stop_process()
        if self.env is not None and self.pool is not None:
            await self.pool.release(self.env)
            self.env = None

    async def _stop_process(self, graceful: bool = True) -> None:
        process, self.process = self.process, None
        if self._watcher is not None:
            self._watcher.cancel()
        if process is not None:
            await (process.shutdown() if graceful else process.kill())

    async def _watch(self, process: KernelProcess) -> None:
        assert process.exited is not None
        await asyncio.shield(process.exited)  # cancelling this watcher must not cancel the future
        if process.closing or process is not self.process:
            return
        reason = process.death_message()
        log.warning("%s: %s", self.room.notebook_id, reason)
        self.dead_reason = reason
        self.process = None
        await process.kill()
        self._fail_all(reason, "kernel_died")
        self.room.writer.set_kernel(lifecycle="error", activity=None, error=reason)
        self.room.schedule_flush()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.alive

    # queue ----------------------------------------------------------------------------------------
    def queue_cell(self, cell_id: str, source: str) -> Execution:
        existing = self._active.get(cell_id)
        if existing is not None:
            return existing
        if not self.alive:
            raise KernelDied(self.dead_reason or "The kernel is not running", cell_id=cell_id)
        room = self.room
        ex = Execution(
            id=f"exec-{uuid.uuid4()}", cell_id=cell_id, source=source,
            done=asyncio.get_running_loop().create_future(),
        )
        ex.ctx = ExecutionContext(room.notebook_id, ex.id, cell_id, room)
        if self.running is None and not self.queue:
            # The kernel is free: the cell runs next, and is recorded (as running) only once
            # its request is on the way to the kernel.
            ex.status = "running"
        else:
            self._record(ex)
            room.schedule_flush(PROGRESS_DELAY)
        self.queue.append(ex)
        self._active[cell_id] = ex
        self._wake.set()
        return ex

    def interrupt_queue(self) -> list[Execution]:
        """Fail every queued (not running) execution; return them."""
        cancelled = list(self.queue)
        self.queue.clear()
        for ex in cancelled:
            self._finish(ex, status="error", error="Cancelled: the kernel was interrupted",
                         failure="interrupted")
        return cancelled

    async def interrupt(self) -> None:
        """Cancel the queue and interrupt the running cell; return once that cell has ended.

        Raises :class:`KernelError` if the kernel does not stop the cell within
        ``INTERRUPT_GRACE`` (e.g. Deno waiting on a promise): ``restart`` recovers.
        """
        self.interrupt_queue()
        running = self.running
        if self.process is None:
            return
        await self.process.interrupt()
        if running is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(running.done), INTERRUPT_GRACE)
        if not running.done.done():
            raise KernelError(
                f"The {self.kernel_type} kernel did not stop cell {running.cell_id} within "
                f"{INTERRUPT_GRACE:g} s of the interrupt: it may be waiting on something it cannot "
                "interrupt (in Deno, a pending await). restart_kernel() stops it.",
                cell_id=running.cell_id, notebook_id=self.room.notebook_id)

    def _fail_all(self, reason: str, failure: str) -> None:
        pending = ([self.running] if self.running else []) + list(self.queue)
        self.queue.clear()
        for ex in pending:
            self._finish(ex, status="error", error=reason, failure=failure)
        self.running = None
        self.room.schedule_flush()

    def _record(self, ex: Execution, *, running: bool = False) -> None:
        self.room.writer.add_execution(ex.id, ex.cell_id, ex.source, running=running)
        ex.recorded = True

    def _annotate_cell(self, ex: Execution, delay: float = 0.0) -> None:
        """One notebook change: the cell points at its latest execution and its count."""
        room = self.room
        notebook.set_execution(room.doc, ex.cell_id, execution_id=ex.id, execution_count=ex.execution_count)
        ex.annotated, ex.annotated_count = True, ex.execution_count
        room.doc_changed_locally(delay)

    def _finish(self, ex: Execution, *, status: str, error: str | None = None,
                success: bool | None = None, failure: str | None = None,
                kernel: dict[str, Any] | None = None) -> None:
        """Record the end of an execution. ``failure`` says why it did not run to completion:
        ``cancelled``, ``interrupted``, ``kernel_died``, ``restarted`` or ``shutdown``."""
        if ex.done.done():
            return
        ex.status = status
        ex.success = bool(success)
        ex.error = error
        ex.failure = failure
        self._active.pop(ex.cell_id, None)
        room = self.room
        if not ex.recorded:  # ended before its request reached the kernel
            self._record(ex)
        room.writer.update_execution(
            ex.id, kernel, status=status, success=ex.success, error=error, failure=failure,
            execution_count=ex.execution_count,
        )
        if not ex.annotated or ex.execution_count != ex.annotated_count:
            self._annotate_cell(ex)
        for sink in room.daemon.sinks:
            sink.on_execution_finished(ex.ctx, ex.success)
        ex.done.set_result(None)
        self._finished.append(ex.id)
        if len(self._finished) > KEEP_FINISHED:
            old = {self._finished.popleft() for _ in range(len(self._finished) - KEEP_FINISHED)}
            room.forget_executions(old)

    async def _drain(self) -> None:
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            ex = self.queue.popleft()
            await self._run(ex)

    async def _run(self, ex: Execution) -> None:
        process = self.process
        if process is None:
            self._finish(ex, status="error", error=self.dead_reason or "The kernel is not running",
                         failure="kernel_died")
            return
        room = self.room
        sinks = room.daemon.sinks
        self.running = ex
        ex.status = "running"
        loop = asyncio.get_running_loop()
        idle: asyncio.Future[None] = loop.create_future()
        ctx = ex.ctx

        saw_error = False

        def on_iopub(msg_type: str, msg: dict[str, Any]) -> None:
            nonlocal saw_error
            content = msg["content"]
            saw_error = saw_error or msg_type == "error"
            if msg_type in OUTPUT_MSG_TYPES:
                for sink in sinks:
                    sink.on_output(ctx, msg_type, content)
            elif msg_type == "status":
                if content.get("execution_state") == "idle" and not idle.done():
                    idle.set_result(None)
            elif msg_type == "execute_input":
                ex.execution_count = content.get("execution_count")
                self._annotate_cell(ex, PROGRESS_DELAY)  # while the kernel works, not after
                for sink in sinks:
                    sink.on_execution_started(ctx, ex.execution_count)

        reply = process.request(
            "shell", "execute_request",
            {"code": ex.source, "silent": False, "store_history": True, "user_expressions": {},
             "allow_stdin": False, "stop_on_error": False},
            on_iopub=on_iopub,
        )
        # the kernel is already at work: record that while it runs
        if ex.recorded:  # as queued
            room.writer.update_execution(ex.id, status="running", kernel={"activity": "busy"})
        else:
            self._record(ex, running=True)
        room.schedule_flush(PROGRESS_DELAY)
        msg_id = None
        try:
            assert process.exited is not None
            both = asyncio.gather(reply, idle)
            await asyncio.wait({both, process.exited}, return_when=asyncio.FIRST_COMPLETED)
            if not both.done():  # the process exited first; _watch fails this execution
                both.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await both
                await ex.done
                return
            grace = self.launcher.output_grace
            if grace > 0:  # a kernel that publishes outputs after idle: keep routing them a moment
                await asyncio.wait({process.exited}, timeout=grace)
            content = reply.result()["content"]
            msg_id = reply.result()["parent_header"].get("msg_id")
        finally:
            if self.running is ex:
                self.running = None
        if msg_id:
            process.forget(msg_id)
        if ex.execution_count is None:
            ex.execution_count = content.get("execution_count")
        ok = content.get("status") == "ok"
        error = None if ok else _reply_error(content)
        if not ok and not saw_error and content.get("status") == "error":
            # some kernels (Deno on a syntax error) fail a cell without an error output
            for sink in sinks:
                sink.on_output(ctx, "error", {"ename": content.get("ename", "Error"),
                                              "evalue": content.get("evalue", ""),
                                              "traceback": content.get("traceback", [])})
        if not ok:  # stop on error: what was queued behind this cell will not run
            for queued in list(self.queue):
                self._finish(queued, status="error", failure="cancelled",
                             error=f"Cancelled: an earlier cell ({ex.cell_id}) failed")
            self.queue.clear()
        self._finish(ex, status="done" if ok else "error", success=ok, error=error,
                     kernel=None if self.queue else {"activity": "idle"})
        room.flush()


def _reply_error(content: dict[str, Any]) -> str:
    if content.get("status") == "aborted":
        return "Aborted by the kernel"
    ename, evalue = content.get("ename", "Error"), content.get("evalue", "")
    return f"{ename}: {evalue}" if evalue else ename
