"""A small HTTP/1.1 and WebSocket server on asyncio, for 127.0.0.1 and one user.

It parses with h11 and wsproto (sans-IO libraries, ~2 MB of memory together,
where aiohttp would cost the long-lived daemon ~15 MB); routes are plain
async functions. Every request must carry the server's secret: a ``token``
query parameter (in the links the daemon hands out) or, after the first such
request, a cookie; anything else gets 403. WebSocket handshakes must come
from a page of this server (their ``Origin``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import h11
from wsproto.connection import Connection as WSConnection
from wsproto.connection import ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Message, Ping, TextMessage

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20  # requests carry no uploads
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
READ_CHUNK = 65536


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    #: Path parameters from the route pattern.
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(value).encode(), "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        return cls(status, text.encode())


class WebSocket:
    """One accepted WebSocket: send text, receive text, close."""

    def __init__(self, ws: WSConnection, writer: asyncio.StreamWriter, reader: asyncio.StreamReader
                 ) -> None:
        self._ws = ws
        self._writer = writer
        self._reader = reader
        self.closed = False

    async def send(self, text: str) -> None:
        if self.closed:
            return
        self._writer.write(self._ws.send(Message(data=text)))
        await self._writer.drain()

    async def receive(self) -> str | None:
        """The next text message, or None once the connection is closed."""
        while not self.closed:
            for event in self._ws.events():
                if isinstance(event, TextMessage):
                    return event.data
                if isinstance(event, BytesMessage):
                    continue
                if isinstance(event, Ping):
                    self._writer.write(self._ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(Exception):
                        self._writer.write(self._ws.send(event.response()))
                    self.closed = True
                    return None
            data = await self._reader.read(READ_CHUNK)
            if not data:
                self.closed = True
                return None
            self._ws.receive_data(data)
        return None


Handler = Callable[[Request], Awaitable[Response]]
SocketHandler = Callable[[Request, WebSocket], Awaitable[None]]


class WebServer:
    """Routes (``"GET /blob/{sha}"``) to handlers, behind the secret (see the module docstring)."""

    def __init__(self, *, secret: str | None = None, cookie: str = "runtimed") -> None:
        self.secret = secret or secrets.token_urlsafe(32)
        self.cookie = cookie
        self.port = 0
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = []
        self._sockets: list[tuple[re.Pattern[str], SocketHandler]] = []
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # routing ------------------------------------------------------------------------------------
    @staticmethod
    def _pattern(path: str) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{(\w+)(:path)?\}",
                                       lambda m: f"(?P<{m[1]}>{'.+' if m[2] else '[^/]+'})", path) + "$")

    def route(self, method: str, path: str, handler: Handler) -> None:
        self._routes.append((method, self._pattern(path), handler))

    def websocket(self, path: str, handler: SocketHandler) -> None:
        self._sockets.append((self._pattern(path), handler))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def link(self, path: str) -> str:
        """``path`` on this server with the secret: what the daemon hands to its user."""
        sep = "&" if "?" in path else "?"
        return f"{self.url}{path}{sep}token={self.secret}"

    # lifecycle ----------------------------------------------------------------------------------
    async def start(self, port: int = 0) -> int:
        """Listen on 127.0.0.1 (``port`` 0: any free one); the port."""
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    # serving ------------------------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, h11.RemoteProtocolError):
            pass
        except asyncio.CancelledError:  # the server stops; asyncio's stream callback would log
            pass                        # a cancelled connection task as an error
        except Exception:
            log.exception("HTTP connection failed")
        finally:
            self._connections.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            event = await self._next(conn, reader)
            if isinstance(event, h11.ConnectionClosed) or event is None:
                return
            if not isinstance(event, h11.Request):
                return
            size = 0  # bodies are read and ignored: no route takes one
            while True:
                more = await self._next(conn, reader)
                if isinstance(more, h11.Data):
                    size += len(more.data)
                    if size > MAX_BODY:
                        return
                elif isinstance(more, h11.EndOfMessage) or more is None:
                    break
            request = self._request(event)
            upgrade = request.headers.get("upgrade", "").lower() == "websocket"
            if upgrade:
                await self._upgrade(conn, request, reader, writer)
                return
            response = await self._respond(request)
            headers = [("content-type", response.content_type), ("content-length", str(len(response.body))),
                       ("x-content-type-options", "nosniff"), *response.headers.items()]
            writer.write(conn.send(h11.Response(status_code=response.status, headers=headers)))
            if request.method != "HEAD":
                writer.write(conn.send(h11.Data(data=response.body)))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            if conn.our_state is h11.MUST_CLOSE:
                return
            conn.start_next_cycle()

    @staticmethod
    async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(READ_CHUNK)
                conn.receive_data(data)
                if not data and conn.their_state is h11.DONE:
                    return None
                continue
            if event is h11.PAUSED:
                return None
            return event

    @staticmethod
    def _request(event: h11.Request) -> Request:
        target = urlsplit(event.target.decode("latin-1"))
        query = {k: v[-1] for k, v in parse_qs(target.query).items()}
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
        return Request(event.method.decode(), unquote(target.path), query, headers)

    def _authorized(self, request: Request) -> bool:
        token = request.query.get("token")
        if token is not None and hmac.compare_digest(token.encode(), self.secret.encode()):
            return True
        cookies = SimpleCookie()
        with contextlib.suppress(Exception):
            cookies.load(request.headers.get("cookie", ""))
        morsel = cookies.get(self.cookie)
        return morsel is not None and hmac.compare_digest(morsel.value.encode(), self.secret.encode())

    def _set_cookie(self, response: Response) -> None:
        response.headers["set-cookie"] = (f"{self.cookie}={self.secret}; Path=/; HttpOnly; "
                                          "SameSite=Strict")

    async def _respond(self, request: Request) -> Response:
        if not self._authorized(request):
            return Response.text("403 Forbidden: this address needs the link the runtimed daemon "
                                 "gives you (session.show() or `runtimed open`).", 403)
        for method, pattern, handler in self._routes:
            match = pattern.match(request.path)
            if match and request.method in (method, "HEAD" if method == "GET" else method):
                request.params = match.groupdict()
                try:
                    response = await handler(request)
                except Exception:
                    log.exception("%s %s failed", request.method, request.path)
                    response = Response.text("500: the daemon could not answer this request", 500)
                if "token" in request.query:
                    self._set_cookie(response)
                    if response.status == 200 and response.content_type.startswith("text/html"):
                        # a page: the cookie holds the secret now, the address bar need not
                        rest = "&".join(f"{quote(k)}={quote(v)}" for k, v in request.query.items()
                                        if k != "token")
                        response.status, response.body = 302, b""
                        response.headers["location"] = request.path + (f"?{rest}" if rest else "")
                return response
        return Response.text("404 Not Found", 404)

    async def _upgrade(self, conn: h11.Connection, request: Request, reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        origin = request.headers.get("origin")
        allowed = (f"http://127.0.0.1:{self.port}", f"http://localhost:{self.port}")
        handler, params = None, {}
        for pattern, candidate in self._sockets:
            match = pattern.match(request.path)
            if match:
                handler, params = candidate, match.groupdict()
        key = request.headers.get("sec-websocket-key")
        if handler is None or key is None or not self._authorized(request) or \
                (origin is not None and origin not in allowed):
            status = 404 if handler is None else 403
            writer.write(conn.send(h11.Response(status_code=status, headers=[("content-length", "0")])))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
            return
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        writer.write(conn.send(h11.InformationalResponse(status_code=101, headers=[
            ("upgrade", "websocket"), ("connection", "Upgrade"), ("sec-websocket-accept", accept)])))
        await writer.drain()
        ws = WSConnection(ConnectionType.SERVER)
        trailing, _ = conn.trailing_data
        if trailing:
            ws.receive_data(trailing)
        request.params = params
        socket = WebSocket(ws, writer, reader)
        try:
            await handler(request, socket)
        finally:
            if not socket.closed:
                with contextlib.suppress(Exception):
                    writer.write(ws.send(CloseConnection(code=1000)))
                    await writer.drain()


async def push_updates(socket: WebSocket, changed: asyncio.Event, message: Callable[[], str | None],
                       min_interval: float,
                       received: Callable[[str], Awaitable[None]] | None = None) -> None:
    """Send ``message()`` (when it is not None) now and each time ``changed`` is set, at most
    every ``min_interval`` seconds, until the page goes away; what the page sends goes to
    ``received`` (one at a time, in order; without it, it is ignored)."""
    closed = asyncio.ensure_future(_until_closed(socket, received))
    loop = asyncio.get_running_loop()
    try:
        while not closed.done():
            text = message()
            if text is not None:
                await socket.send(text)
            changed.clear()
            started = loop.time()
            waiter = asyncio.ensure_future(changed.wait())
            await asyncio.wait({waiter, closed}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            pause = min_interval - (loop.time() - started)
            if pause > 0 and not closed.done():
                await asyncio.sleep(pause)
    except (ConnectionError, OSError):
        pass
    finally:
        closed.cancel()


async def _until_closed(socket: WebSocket, received: Callable[[str], Awaitable[None]] | None
                        ) -> None:
    while (text := await socket.receive()) is not None:
        if received is not None:
            await received(text)
