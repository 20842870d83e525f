"""A room's kernel and its execution queue.

One execution at a time, FIFO. Queueing a cell that is already queued or
running returns the existing execution. An error stops the queue (the cells
still queued fail as cancelled). Interrupt clears the queue and interrupts the
running cell. A kernel that dies fails its running and queued cells.

The kernel's comms (widget models) are the :class:`~runtimed.daemon.comms.CommRecorder`'s:
they live from the kernel's ``comm_open`` to its ``comm_close`` or the kernel's end.

Another Jupyter client may attach to the kernel with its connection file
(``jupyter console --existing``): what it runs is recorded too, as an execution
with ``origin`` ``external`` and no cell (from the kernel's ``execute_input``
to its ``idle``), outputs included, so every peer sees it.

The runner sees the room only through :class:`~runtimed.daemon.host.RoomHost`,
and the kernel through its :class:`~runtimed.daemon.provisioning.Lease`;
restarting and releasing the kernel are the caller's (``restart`` and
``release``), so the runner can be driven with a fake kernel handle.

Whoever queues a cell may watch it (an :data:`Observer` sees it start and each
output as the kernel publishes it, before the document has it) and may answer
its ``input()`` calls (a :data:`StdinAnswerer`): only executions queued with one
are sent to the kernel with ``allow_stdin``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from runtimed.daemon.comms import CommRecorder
from runtimed.daemon.host import RoomHost
from runtimed.daemon.kernel import EOF
from runtimed.daemon.outputs import PROGRESS_DELAY, OutputRecorder
from runtimed.daemon.plugin_sinks import PluginSinks
from runtimed.daemon.provisioning import Lease
from runtimed.errors import KernelDied, KernelError, NoKernel
from runtimed.sinks import ExecutionContext

log = logging.getLogger(__name__)

OUTPUT_MSG_TYPES = frozenset(
    ("stream", "display_data", "execute_result", "error", "clear_output", "update_display_data")
)
#: How long an interrupted cell may take to end before interrupt() reports it could not.
INTERRUPT_GRACE = 5.0
#: Seconds of IOPub silence after an execution's reply after which its status "idle" is taken
#: as lost (a kernel's PUB socket drops messages when a subscriber falls far behind).
IDLE_LOST_AFTER = 2.0
#: Finished executions no cell shows any more that stay in the runtime-state document, the
#: most recent ones (older ones are dropped; what a cell shows is always kept).
KEEP_FINISHED = 64

#: ``observer(kind, data)``: one execution as it happens: ``("started", {"execution_count"})``
#: when the kernel begins it, ``("output", {"msg_type", "content"})`` for every output message
#: (``stream``, ``display_data``, ``clear_output``...), at once.
Observer = Callable[[str, dict[str, Any]], None]
#: ``stdin(prompt, password, answer)``: the cell called ``input()`` (or getpass); whoever
#: queued it is asked, and calls ``answer(value)`` once: a string, or None to end the wait
#: with EOFError, with an optional ``note`` written to the cell's stderr saying why.
Answer = Callable[..., None]
StdinAnswerer = Callable[[str, bool, Answer], None]


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
    #: Run by another client attached to the kernel (no cell).
    external: bool = False
    saw_error: bool = False
    #: Who watches it (see :data:`Observer`).
    observers: list[Observer] = field(default_factory=list)
    #: Who answers its ``input()`` calls, if anyone (see :data:`StdinAnswerer`).
    stdin: StdinAnswerer | None = None


class KernelRunner:
    """The kernel of one room, the queue in front of it, and the task that drains the queue.

    ``restart(lease)`` returns a lease with a new kernel (the old one is gone);
    ``release(lease)`` stops the kernel for good and hands its environment back.
    """

    def __init__(self, host: RoomHost, lease: Lease, *, sinks: PluginSinks,
                 restart: Callable[[Lease], Awaitable[Lease]],
                 release: Callable[[Lease], Awaitable[None]]) -> None:
        self.host = host
        self.lease = lease
        self.sinks = sinks
        self._restart = restart
        self._release = release
        self.outputs = OutputRecorder(host)
        self.comms = CommRecorder(host, lambda content: self.lease.kernel.send(
            "shell", "comm_msg", content))
        self.kernel_type = lease.kernel_type
        self.env_source = lease.env_source
        self.queue: deque[Execution] = deque()
        self.running: Execution | None = None
        self._active: dict[str, Execution] = {}  # cell_id -> queued or running execution
        self._finished: deque[str] = deque()
        self._sweep_at = 2 * KEEP_FINISHED
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self.dead_reason: str | None = None
        self._released = False
        #: Executions other clients started, by their request's msg_id.
        self._external: dict[str, Execution] = {}

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin watching the lease's kernel and draining the queue."""
        kernel = self.lease.kernel
        self.dead_reason = None
        kernel.on_unrouted = self._unrouted
        kernel.on_comm = self.comms.on_message
        attach = kernel.attach_file
        self.host.writer.set_kernel(lifecycle="running", activity="idle", error=None, progress=None,
                                    connection_file=str(attach) if attach else None)
        self.host.schedule_flush()
        self._watcher = asyncio.create_task(self._watch(kernel))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._drain())

    async def restart(self) -> None:
        """Replace the kernel; queued and running cells fail, its comms close."""
        self.kernel_gone("Kernel restarted", "restarted")
        if self._watcher is not None:
            self._watcher.cancel()
        host = self.host
        host.writer.set_kernel(lifecycle="launching", progress=f"Restarting {self.kernel_type} kernel",
                               connection_file=None)
        host.schedule_flush()
        try:
            self.lease = await self._restart(self.lease)
        except BaseException as exc:
            self._released = True  # the caller's restart handed the environment back
            self.dead_reason = exc.message if isinstance(exc, KernelError) else f"{type(exc).__name__}: {exc}"
            host.writer.set_kernel(lifecycle="error", activity=None, progress=None,
                                   error=self.dead_reason)
            host.schedule_flush()
            raise
        log.info("%s: %s kernel %s (pid %s, %s)", host.notebook_id, self.kernel_type,
                 "restarted (claimed)" if self.lease.claimed else "restarted",
                 self.lease.kernel.pid, self.env_source)
        self.start()

    async def shutdown(self) -> None:
        """Stop the kernel for good and hand the environment back."""
        self.kernel_gone("Kernel shut down", "shutdown")
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._watcher is not None:
            self._watcher.cancel()
        if not self._released:
            self._released = True
            await self._release(self.lease)

    async def _watch(self, kernel: Any) -> None:
        await asyncio.shield(kernel.exited)  # cancelling this watcher must not cancel the future
        if kernel.closing or kernel is not self.lease.kernel:
            return
        reason = kernel.death_message()
        log.warning("%s: %s", self.host.notebook_id, reason)
        self.dead_reason = reason
        await kernel.kill()
        self.kernel_gone(reason, "kernel_died")
        self.host.writer.set_kernel(lifecycle="error", activity=None, error=reason,
                                    connection_file=None)
        self.host.schedule_flush()

    @property
    def alive(self) -> bool:
        return not self._released and self.lease.kernel.alive

    # queue ----------------------------------------------------------------------------------------
    def queue_cell(self, cell_id: str, source: str, *, observer: Observer | None = None,
                   stdin: StdinAnswerer | None = None) -> Execution:
        """Queue a cell (an execution of it already queued or running is returned, and
        ``observer`` watches it from now on; its stdin stays whoever's it was)."""
        existing = self._active.get(cell_id)
        if existing is not None:
            if observer is not None:
                existing.observers.append(observer)
            return existing
        if not self.alive:
            raise KernelDied(self.dead_reason or "The kernel is not running", cell_id=cell_id)
        ex = Execution(
            id=f"exec-{uuid.uuid4()}", cell_id=cell_id, source=source,
            done=asyncio.get_running_loop().create_future(),
        )
        ex.ctx = ExecutionContext(self.host.notebook_id, ex.id, cell_id, source, self.kernel_type)
        if observer is not None:
            ex.observers.append(observer)
        ex.stdin = stdin
        if self.running is None and not self.queue:
            # The kernel is free: the cell runs next, and is recorded (as running) only once
            # its request is on the way to the kernel.
            ex.status = "running"
        else:
            self._record(ex)
            self.host.schedule_flush(PROGRESS_DELAY)
        self.queue.append(ex)
        self._active[cell_id] = ex
        self._wake.set()
        return ex

    def send_comm(self, comm_id: str, data: dict[str, Any]) -> None:
        """A frontend's ``comm_msg`` to the kernel (see :meth:`CommRecorder.send`)."""
        if not self.alive:
            raise NoKernel(self.dead_reason or "The kernel is not running",
                           notebook_id=self.host.notebook_id)
        self.comms.send(comm_id, data)

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
        if not self.alive:
            return
        await self.lease.kernel.interrupt()
        if running is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(running.done), INTERRUPT_GRACE)
        if not running.done.done():
            raise KernelError(
                f"The {self.kernel_type} kernel did not stop cell {running.cell_id} within "
                f"{INTERRUPT_GRACE:g} s of the interrupt: it may be waiting on something it cannot "
                "interrupt (a pending await, say). restart_kernel() stops it.",
                cell_id=running.cell_id, notebook_id=self.host.notebook_id)

    def _unrouted(self, msg: dict[str, Any]) -> None:
        """An IOPub message for another client's request: record its executions."""
        parent = msg["parent_header"].get("msg_id")
        msg_type = msg["header"]["msg_type"]
        content = msg["content"]
        if msg_type in OUTPUT_MSG_TYPES and self.comms.capture(msg):
            return  # an Output widget's (a widget callback's `with out:`, say)
        ex = self._external.get(parent)
        if ex is None:
            if msg_type != "execute_input":
                return  # kernel_info, completions...: nothing to record
            ex = Execution(id=f"exec-{uuid.uuid4()}", cell_id="", source=content.get("code", ""),
                           done=asyncio.get_running_loop().create_future(), status="running",
                           execution_count=content.get("execution_count"), external=True,
                           annotated=True)
            ex.annotated_count = ex.execution_count
            ex.ctx = ExecutionContext(self.host.notebook_id, ex.id, "", ex.source, self.kernel_type)
            self._external[parent] = ex
            self._record(ex, running=True)
            self.host.writer.update_execution(ex.id, origin="external",
                                              execution_count=ex.execution_count)
            if self.sinks:
                self.sinks.started(ex.ctx, ex.execution_count)
            self.host.schedule_flush(PROGRESS_DELAY)
        elif msg_type in OUTPUT_MSG_TYPES:
            ex.saw_error = ex.saw_error or msg_type == "error"
            self.outputs.output(ex.id, msg_type, content)
            if self.sinks:
                self.sinks.output(ex.ctx, msg_type, content)
        elif msg_type == "status" and content.get("execution_state") == "idle":
            del self._external[parent]
            busy = self.running is not None or self.queue or self._external
            self._finish(ex, status="error" if ex.saw_error else "done", success=not ex.saw_error,
                         error="The code raised an error" if ex.saw_error else None,
                         kernel=None if busy else {"activity": "idle"})
            self.host.flush()

    def kernel_gone(self, reason: str, failure: str) -> None:
        """The kernel is going (restart, shutdown, death): what runs and what waits fails
        (``failure`` says why, see :meth:`_finish`), and its comms close."""
        self._fail_all(reason, failure)
        self.comms.clear()

    def _fail_all(self, reason: str, failure: str) -> None:
        for ex in self._external.values():
            self._finish(ex, status="error", error=reason, failure=failure)
        self._external.clear()
        pending = ([self.running] if self.running else []) + list(self.queue)
        self.queue.clear()
        for ex in pending:
            self._finish(ex, status="error", error=reason, failure=failure)
        self.running = None
        self.host.schedule_flush()

    def _record(self, ex: Execution, *, running: bool = False) -> None:
        self.host.writer.add_execution(ex.id, ex.cell_id, ex.source, running=running)
        ex.recorded = True

    def _annotate_cell(self, ex: Execution, delay: float = 0.0) -> None:
        """One notebook change: the cell points at its latest execution and its count."""
        self.host.annotate_cell(ex.cell_id, ex.id, ex.execution_count, delay)
        ex.annotated, ex.annotated_count = True, ex.execution_count

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
        if not ex.external:
            self._active.pop(ex.cell_id, None)
        if not ex.recorded:  # ended before its request reached the kernel
            self._record(ex)
        self.host.writer.update_execution(
            ex.id, kernel, status=status, success=ex.success, error=error, failure=failure,
            execution_count=ex.execution_count,
        )
        if not ex.annotated or ex.execution_count != ex.annotated_count:
            self._annotate_cell(ex)
        self.outputs.finished(ex.id)
        if self.sinks:
            self.sinks.finished(ex.ctx, ex.success)
        ex.done.set_result(None)
        self.host.execution_finished(ex.id)
        self._finished.append(ex.id)
        if len(self._finished) >= self._sweep_at:
            self._forget_old()

    def _forget_old(self) -> None:
        """Drop finished executions no cell shows any more (a cell's latest run is kept, its
        outputs are the cell's), but never the :data:`KEEP_FINISHED` most recent ones."""
        current = self.host.current_executions()
        recent = set(list(self._finished)[-KEEP_FINISHED:])
        old = {eid for eid in self._finished if eid not in current and eid not in recent}
        for eid in old:
            self.host.writer.forget_execution(eid)
        self.outputs.forget(old)
        self._finished = deque(eid for eid in self._finished if eid not in old)
        self._sweep_at = len(self._finished) + KEEP_FINISHED  # the rest are shown: look later

    async def _drain(self) -> None:
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            ex = self.queue.popleft()
            await self._run(ex)

    def _stdin_for(self, ex: Execution, kernel: Any) -> Callable[[dict[str, Any]], None]:
        """The kernel's ``input_request`` messages of ``ex``, handed to its answerer."""
        answerer = ex.stdin
        assert answerer is not None

        def on_stdin(msg: dict[str, Any]) -> None:
            answered = False

            def answer(value: str | None, note: str | None = None) -> None:
                nonlocal answered
                if answered:
                    return
                answered = True
                if note and not ex.done.done():  # the daemon's word on why, in the cell's stderr
                    self.outputs.output(ex.id, "stream",
                                        {"name": "stderr", "text": note.rstrip("\n") + "\n"})
                kernel.answer_input(msg, EOF if value is None else value)

            content = msg.get("content") or {}
            try:
                answerer(str(content.get("prompt", "")), bool(content.get("password")), answer)
            except Exception:  # a bug on our side: the cell must not wait forever
                log.exception("%s: routing an input request failed", self.host.notebook_id)
                answer(None, "runtimed: input() could not be answered (see the daemon's log)")

        return on_stdin

    async def _run(self, ex: Execution) -> None:
        if not self.alive:
            self._finish(ex, status="error", error=self.dead_reason or "The kernel is not running",
                         failure="kernel_died")
            return
        kernel = self.lease.kernel
        host = self.host
        outputs = self.outputs
        comms = self.comms
        sinks = self.sinks or None
        self.running = ex
        ex.status = "running"
        loop = asyncio.get_running_loop()
        idle: asyncio.Future[None] = loop.create_future()
        ctx = ex.ctx
        eid = ex.id

        saw_error = False
        observers = ex.observers

        def on_iopub(msg_type: str, msg: dict[str, Any]) -> None:
            nonlocal saw_error
            content = msg["content"]
            saw_error = saw_error or msg_type == "error"
            if msg_type in OUTPUT_MSG_TYPES:
                if not comms.capture(msg):  # else an Output widget's (`with out:`)
                    outputs.output(eid, msg_type, content)
                    for observer in observers:
                        observer("output", {"msg_type": msg_type, "content": content})
                if sinks is not None:
                    sinks.output(ctx, msg_type, content)
            elif msg_type == "status":
                if content.get("execution_state") == "idle" and not idle.done():
                    idle.set_result(None)
            elif msg_type == "execute_input":
                ex.execution_count = content.get("execution_count")
                self._annotate_cell(ex, PROGRESS_DELAY)  # while the kernel works, not after
                if sinks is not None:
                    sinks.started(ctx, ex.execution_count)
                for observer in observers:
                    observer("started", {"execution_count": ex.execution_count})

        allow_stdin = ex.stdin is not None and kernel.supports_stdin
        reply = kernel.request(
            "shell", "execute_request",
            {"code": ex.source, "silent": False, "store_history": True, "user_expressions": {},
             "allow_stdin": allow_stdin, "stop_on_error": False},
            on_iopub=on_iopub, on_stdin=self._stdin_for(ex, kernel) if allow_stdin else None,
        )
        # the kernel is already at work: record that while it runs
        if ex.recorded:  # as queued
            host.writer.update_execution(ex.id, status="running", kernel={"activity": "busy"})
        else:
            self._record(ex, running=True)
        host.schedule_flush(PROGRESS_DELAY)
        msg_id = None
        try:
            both = asyncio.gather(reply, self._until_idle(idle, reply, kernel))
            await asyncio.wait({both, kernel.exited}, return_when=asyncio.FIRST_COMPLETED)
            if not both.done() or reply.cancelled():  # the kernel is gone; this execution is
                both.cancel()                          # failed by whoever stopped it (or _watch)
                with contextlib.suppress(asyncio.CancelledError):
                    await both
                await ex.done
                return
            grace = self.lease.launcher.output_grace
            if grace > 0:  # a kernel that publishes outputs after idle: keep routing them a moment
                await asyncio.wait({kernel.exited}, timeout=grace)
            content = reply.result()["content"]
            msg_id = reply.result()["parent_header"].get("msg_id")
        finally:
            if self.running is ex:
                self.running = None
        if msg_id:
            kernel.forget(msg_id)
        if ex.execution_count is None:
            ex.execution_count = content.get("execution_count")
        ok = content.get("status") == "ok"
        error = None if ok else _reply_error(content)
        if not ok and not saw_error and content.get("status") == "error":
            # some kernels fail a cell (a syntax error, say) without an error output
            on_iopub("error", {"content": {"ename": content.get("ename", "Error"),
                                           "evalue": content.get("evalue", ""),
                                           "traceback": content.get("traceback", [])}})
        if not ok:  # stop on error: what was queued behind this cell will not run
            for queued in list(self.queue):
                self._finish(queued, status="error", failure="cancelled",
                             error=f"Cancelled: an earlier cell ({ex.cell_id}) failed")
            self.queue.clear()
        self._finish(ex, status="done" if ok else "error", success=ok, error=error,
                     kernel=None if self.queue else {"activity": "idle"})
        host.flush()


    async def _until_idle(self, idle: asyncio.Future[None], reply: asyncio.Future[Any],
                          kernel: Any) -> None:
        """Until the execution's status "idle" arrives, or, once its reply is in, IOPub has
        been silent :data:`IDLE_LOST_AFTER` seconds (then it was lost: the cell ends anyway)."""
        await asyncio.wait({idle, reply}, return_when=asyncio.FIRST_COMPLETED)
        while not idle.done() and not reply.cancelled():
            quiet = time.monotonic() - kernel.last_iopub
            if quiet >= IDLE_LOST_AFTER:
                log.warning("%s: the kernel's 'idle' after an execution never arrived (IOPub "
                            "messages lost: the daemon fell behind a flood); taken as ended",
                            self.host.notebook_id)
                return
            await asyncio.wait({idle}, timeout=IDLE_LOST_AFTER - quiet)


def _reply_error(content: dict[str, Any]) -> str:
    if content.get("status") == "aborted":
        return "Aborted by the kernel"
    ename, evalue = content.get("ename", "Error"), content.get("evalue", "")
    return f"{ename}: {evalue}" if evalue else ename
