"""Following one execution from the session that queued it: its events as they happen
(``session.stream``) and the answers to its ``input()`` calls (``stdin=``).

The session sends ``execute_cell`` with a ``token`` it chose; the daemon sends this
session alone the execution's events and input requests under that token (see
:mod:`runtimed.daemon.client_link`), and the request's response is the end. Nothing
is polled: each event wakes the waiting caller.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Union

from runtimed.client.events import ExecutionEvent
from runtimed.client.results import Output
from runtimed.errors import ExecutionTimeout

log = logging.getLogger("runtimed.client")

#: ``stdin(prompt, password) -> str``; on AsyncSession it may be a coroutine function.
StdinHandler = Callable[[str, bool], Union[str, Awaitable[str]]]
#: After the timeout ended a wait for input, how long the cell has to finish (it gets EOFError).
STDIN_GRACE = 10.0
_END = object()


class _Ask:
    """An input request in a stream's queue: answered when the caller reaches it, after the
    events before it (the prompt shows after the outputs printed before ``input()``)."""

    def __init__(self, request_id: Any, event: dict[str, Any]) -> None:
        self.request_id = request_id
        self.event = event


class Follower:
    """One followed execution: a queue of its events, and its stdin handler."""

    def __init__(self, session: Any, stdin: StdinHandler | None, events: bool) -> None:
        self.session = session
        self.stdin = stdin
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.events = events
        #: Input requests being answered now: request id -> the task calling the handler.
        self.answering: dict[Any, asyncio.Task[None]] = {}

    def on_event(self, event: dict[str, Any]) -> None:
        if event.get("event") == "input_request":
            request_id = event.get("request_id")
            if self.stdin is None:  # never offered: the daemon does not ask (defensive)
                self.session._send_input_reply(request_id, error="no stdin handler")
            elif self.events:
                self.queue.put_nowait(_Ask(request_id, event))
            else:
                self.ask(request_id, event)
            return
        if not self.events:
            return
        kind = event.get("kind")
        if kind == "output" and isinstance(event.get("output"), dict):
            self.queue.put_nowait(ExecutionEvent("output", output=Output.from_nbformat(event["output"])))
        elif kind == "started":
            self.queue.put_nowait(ExecutionEvent("started", execution_count=event.get("execution_count")))
        elif kind == "queued":
            self.queue.put_nowait(ExecutionEvent("queued", execution_id=event.get("execution_id")))

    def ask(self, request_id: Any, event: dict[str, Any]) -> None:
        """Call the handler for this input request (in a task of its own)."""
        task = asyncio.get_running_loop().create_task(self._answer(request_id, event))
        self.answering[request_id] = task
        task.add_done_callback(lambda _: self.answering.pop(request_id, None))

    async def _answer(self, request_id: Any, event: dict[str, Any]) -> None:
        prompt, password = str(event.get("prompt", "")), bool(event.get("password"))
        handler = self.stdin
        assert handler is not None
        try:
            if inspect.iscoroutinefunction(handler):
                value = await handler(prompt, password)
            else:  # it may block (a terminal prompt): not on the event loop
                value = await asyncio.get_running_loop().run_in_executor(None, handler, prompt, password)
                if inspect.isawaitable(value):
                    value = await value
            if not isinstance(value, str):
                raise TypeError(f"the stdin handler returned {type(value).__name__}, not a str")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the cell gets EOFError; its stderr says why
            log.info("The stdin handler raised %s", type(exc).__name__)
            self.session._send_input_reply(request_id, error=f"{type(exc).__name__}: {exc}")
            return
        self.session._send_input_reply(request_id, value=value)

    def time_out(self, timeout_secs: float | None) -> bool:
        """The execution's time is up: end the waits for input still being answered (their
        cells get EOFError); whether there were any."""
        if not self.answering:
            return False
        for request_id, task in list(self.answering.items()):
            task.cancel()
            self.session._send_input_reply(request_id, timeout=float(timeout_secs or 0))
        self.answering.clear()
        return True

    def close(self) -> None:
        for task in self.answering.values():
            task.cancel()
        self.answering.clear()


async def follow(session: Any, cell_id: str, timeout_secs: float | None,
                 stdin: StdinHandler | None, *, events: bool) -> AsyncIterator[ExecutionEvent]:
    """Run ``cell_id`` with ``session``, following it; yield its events (with ``events``)
    and, last, ``done`` with the result."""
    if not session._connected():
        await session.connect()
    loop = asyncio.get_running_loop()
    token = uuid.uuid4().hex
    follower = Follower(session, stdin, events)
    session._followers[token] = follower
    request = asyncio.ensure_future(session._execute_request(
        cell_id, wait=True, token=token, events=events, stdin=stdin is not None))
    request.add_done_callback(lambda _: follower.queue.put_nowait(_END))
    deadline = None if timeout_secs is None else loop.time() + timeout_secs
    try:
        while True:
            try:
                item = follower.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = None if deadline is None else max(deadline - loop.time(), 0)
                try:
                    item = await asyncio.wait_for(follower.queue.get(), remaining)
                except asyncio.TimeoutError:
                    if follower.time_out(timeout_secs):  # it waited for input: it ends now
                        deadline = loop.time() + STDIN_GRACE
                        continue
                    raise ExecutionTimeout(f"Execution timed out after {timeout_secs:g} seconds",
                                           cell_id=cell_id, notebook_id=session.notebook_id) from None
            if item is _END:
                break
            if isinstance(item, _Ask):
                follower.ask(item.request_id, item.event)
                continue
            yield item
        result = request.result()  # its error (CellNotFound, KernelDied...) raises here
        yield ExecutionEvent("done", result=session._result_of(cell_id, result["execution_id"]),
                             execution_id=result["execution_id"])
    finally:
        follower.close()
        session._followers.pop(token, None)
        if not request.done():
            request.cancel()
