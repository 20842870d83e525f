"""What a client follows of an execution it queued: its events (``session.stream``) and its
``input()`` calls (``stdin=``). Only that client's connection hears of them: never another
peer of the room.

An :class:`ExecutionLink` is made per ``execute_cell`` request that asks for events or
offers stdin (the request names a ``token`` the client chose). It is the execution's
:data:`~runtimed.daemon.executor.Observer` and
:data:`~runtimed.daemon.executor.StdinAnswerer`; the frames it sends are ``BROADCAST``
events on the client's connection::

    {"event": "execution", "token", "kind": "queued" | "started" | "output", ...}
    {"event": "input_request", "token", "request_id", "prompt", "password"}

and the client answers an input request with an ``input_reply`` request (``value``, or
``error`` / ``timeout`` when it could not). The answer goes to the kernel and nowhere
else: it is never logged nor written to a document. When the client's connection
closes, the input still awaited (and any later one) ends with EOFError and a note in
the cell's stderr.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

from runtimed.daemon.executor import Answer
from runtimed.outputs import output_from_message
from runtimed.protocol.messages import BROADCAST, dumps, typed
from runtimed.protocol.transport import FramedProtocol

log = logging.getLogger(__name__)

#: Output messages a stream's caller gets as ``output`` events (``clear_output`` and
#: ``update_display_data`` rewrite earlier outputs: the final result shows their effect).
EVENT_OUTPUTS = frozenset(("stream", "display_data", "execute_result", "error"))
_request_ids = itertools.count(1)


class ExecutionLink:
    """One client's link to one execution (see the module docstring)."""

    def __init__(self, proto: FramedProtocol, token: str, *, events: bool) -> None:
        self.proto = proto
        self.token = token
        self.events = events
        #: Input requests sent to the client and not answered yet: request id -> answer.
        self.waiting: dict[int, Answer] = {}
        self.gone = False

    def _send(self, event: dict[str, Any]) -> bool:
        if self.gone or self.proto.closed:
            return False
        try:
            self.proto.send(typed(BROADCAST, dumps(event)))
        except Exception:  # closing under us: the client is gone
            return False
        return True

    # the execution's observer ---------------------------------------------------------------
    def queued(self, execution_id: str, status: str) -> None:
        if self.events:
            self._send({"event": "execution", "token": self.token, "kind": "queued",
                        "execution_id": execution_id, "status": status})

    def __call__(self, kind: str, data: dict[str, Any]) -> None:
        if not self.events:
            return
        if kind == "output":
            msg_type = data["msg_type"]
            if msg_type not in EVENT_OUTPUTS:
                return
            self._send({"event": "execution", "token": self.token, "kind": "output",
                        "output": output_from_message(msg_type, data["content"])})
        elif kind == "started":
            self._send({"event": "execution", "token": self.token, "kind": "started",
                        "execution_count": data.get("execution_count")})

    # the execution's stdin ------------------------------------------------------------------------
    def stdin(self, prompt: str, password: bool, answer: Answer) -> None:
        request_id = next(_request_ids)
        if self._send({"event": "input_request", "token": self.token, "request_id": request_id,
                       "prompt": prompt, "password": password}):
            self.waiting[request_id] = answer
        else:
            answer(None, note="runtimed: the client that ran this cell is gone, so nobody can "
                              "answer input(); it got end-of-file")

    def answer(self, request_id: Any, req: dict[str, Any]) -> bool:
        """The client's ``input_reply``; False if no such input request is waiting."""
        answer = self.waiting.pop(request_id, None) if isinstance(request_id, int) else None
        if answer is None:
            return False
        value, timeout = req.get("value"), req.get("timeout")
        if isinstance(value, str) and not req.get("error") and not timeout:
            answer(value)
        elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
            answer(None, note=f"runtimed: nobody answered input() within {timeout:g} s "
                              "(the execution's timeout); it got end-of-file")
        else:
            reason = req.get("error") if isinstance(req.get("error"), str) else "no answer"
            answer(None, note=f"runtimed: the stdin handler failed ({reason}); input() got "
                              "end-of-file")
        return True

    def closed(self) -> None:
        """The client's connection is gone: end every wait for its answer."""
        self.gone = True
        waiting, self.waiting = self.waiting, {}
        for answer in waiting.values():
            answer(None, note="runtimed: the client that ran this cell disconnected while input() "
                              "waited for it; it got end-of-file")
