"""Requests for scripts and agents beyond running cells: links to the executions a client
queued (events, stdin), results by id, completion and inspection, dependencies.

The server dispatches to these; each is a thin layer over the room's parts
(:mod:`~runtimed.daemon.client_link`, :mod:`~runtimed.daemon.execution_store`,
:mod:`~runtimed.daemon.dependencies`, the kernel's shell channel).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from runtimed.daemon.client_link import ExecutionLink
from runtimed.daemon.dependencies import Dependencies
from runtimed.daemon.execution_store import ExecutionStore, check_execution_id
from runtimed.daemon.provisioning import Provisioner
from runtimed.daemon.room import Room
from runtimed.document.runtime_state import read_execution
from runtimed.errors import InvalidRequest, KernelError
from runtimed.protocol.transport import FramedProtocol

#: How long ``complete`` / ``inspect`` wait for the kernel (busy running a cell, it answers
#: once the cell ends).
QUERY_TIMEOUT = 10.0
NOTEBOOK_KINDS = frozenset(("input_reply", "get_result", "complete", "inspect", "get_dependencies",
                            "add_dependency", "remove_dependency", "sync_environment"))


class Links:
    """The :class:`ExecutionLink` objects of one client connection."""

    def __init__(self, proto: FramedProtocol) -> None:
        self.proto = proto
        self._links: list[ExecutionLink] = []

    def link_for(self, req: dict[str, Any]) -> ExecutionLink | None:
        """A link for an ``execute_cell`` request that asks for ``events`` or offers ``stdin``."""
        events, stdin = req.get("events") is True, req.get("stdin") is True
        if not (events or stdin):
            return None
        token = req.get("token")
        if not isinstance(token, str) or not token:
            raise InvalidRequest("execute_cell with events or stdin needs a token (a string)")
        link = ExecutionLink(self.proto, token, events=events)
        self._links.append(link)
        return link

    def done(self, link: ExecutionLink) -> None:
        """Its execution ended: nothing more can come for it."""
        if link in self._links:
            self._links.remove(link)
        link.closed()

    def input_reply(self, req: dict[str, Any]) -> None:
        request_id = req.get("request_id")
        for link in self._links:
            if link.answer(request_id, req):
                return
        raise InvalidRequest("input_reply: no input request with that id is waiting (the cell "
                             "ended, or it was answered)")

    def closed(self) -> None:
        links, self._links = self._links, []
        for link in links:
            link.closed()


async def get_result(rooms: Iterable[Room], store: ExecutionStore, execution_id: Any) -> dict[str, Any]:
    """An execution's record: from the live room that has it (finished or not), else kept."""
    execution_id = check_execution_id(execution_id)
    for room in rooms:
        if not room.closed:
            record = read_execution(room.state, execution_id)
            if record is not None:
                return {**record, "notebook_id": room.notebook_id}
    return await store.get(execution_id)


def _code_and_cursor(req: dict[str, Any], what: str) -> tuple[str, int]:
    code, cursor = req.get("code"), req.get("cursor_pos")
    if not isinstance(code, str):
        raise InvalidRequest(f"{what} needs code (a string)")
    if cursor is None:
        cursor = len(code)
    if not isinstance(cursor, int) or isinstance(cursor, bool) or not 0 <= cursor <= len(code):
        raise InvalidRequest(f"{what}: cursor_pos must be between 0 and {len(code)} (the length "
                             "of the code)")
    return code, cursor


async def _ask(room: Room, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
    runner = await room.kernel.runner_for(auto_start=True)
    if not runner.alive:
        raise KernelError(runner.dead_reason or "The kernel is not running",
                          notebook_id=room.notebook_id)
    try:
        reply = await runner.lease.kernel.ask(msg_type, content, QUERY_TIMEOUT)
    except asyncio.TimeoutError:
        busy = f" (it is running cell {runner.running.cell_id})" if runner.running else ""
        raise KernelError(f"The kernel did not answer the {msg_type} within {QUERY_TIMEOUT:g} s"
                          f"{busy}", notebook_id=room.notebook_id) from None
    if reply.get("status") not in (None, "ok"):
        raise KernelError(f"The kernel could not answer the {msg_type}: "
                          f"{reply.get('ename', 'error')}: {reply.get('evalue', '')}",
                          notebook_id=room.notebook_id)
    return reply


async def complete(room: Room, req: dict[str, Any]) -> dict[str, Any]:
    code, cursor = _code_and_cursor(req, "complete")
    reply = await _ask(room, "complete_request", {"code": code, "cursor_pos": cursor})
    return {"matches": list(reply.get("matches") or []),
            "cursor_start": reply.get("cursor_start", cursor),
            "cursor_end": reply.get("cursor_end", cursor),
            "metadata": reply.get("metadata") or {}}


async def inspect(room: Room, req: dict[str, Any]) -> dict[str, Any] | None:
    code, cursor = _code_and_cursor(req, "inspect")
    level = req.get("detail_level", 0)
    if level not in (0, 1):
        raise InvalidRequest("inspect: detail_level is 0 or 1")
    reply = await _ask(room, "inspect_request",
                       {"code": code, "cursor_pos": cursor, "detail_level": level})
    return dict(reply.get("data") or {}) if reply.get("found") else None


async def notebook_request(kind: str, req: dict[str, Any], *, room: Room, links: Links,
                           provisioner: Provisioner, rooms: Iterable[Room],
                           store: ExecutionStore) -> Any:
    """One of :data:`NOTEBOOK_KINDS` on a notebook connection."""
    if kind == "input_reply":
        links.input_reply(req)
        return None
    if kind == "get_result":
        return await get_result(rooms, store, req.get("execution_id"))
    if kind == "complete":
        return await complete(room, req)
    if kind == "inspect":
        return await inspect(room, req)
    deps = Dependencies(room.doc, room.kernel, provisioner, room.notebook_path(), room.notebook_id)
    if kind == "get_dependencies":
        return {"dependencies": deps.get()}
    if kind == "add_dependency":
        result = {"dependencies": deps.add(req.get("spec"))}
    elif kind == "remove_dependency":
        result = {"dependencies": deps.remove(req.get("name"))}
    else:
        result = await deps.sync()
    room.doc_changed_locally()
    room.flush()
    return {**result, "state_heads": [h.hex() for h in room.state.heads],
            "notebook_heads": [h.hex() for h in room.doc.heads]}
