"""Running the server: stdio (what MCP clients start as a subprocess), or streamable HTTP
on 127.0.0.1 behind a per-user secret.

The HTTP secret is a random token in ``<state dir>/mcp-token`` (mode 0600, made on
first use; ``runtimed mcp --show-token`` prints it): every request needs
``Authorization: Bearer <token>``, else 401. The port is bound on 127.0.0.1 only,
and the SDK's DNS-rebinding protection (Host and Origin checks) stays on.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

from runtimed import paths
from runtimed_mcp.server import build_server

log = logging.getLogger("runtimed.mcp")
HOST = "127.0.0.1"


def token_path() -> Path:
    return paths.state_dir() / "mcp-token"


def token() -> str:
    """The HTTP server's bearer token, created (0600) if there is none."""
    path = token_path()
    try:
        text = path.read_text().strip()
        if text:
            return text
    except FileNotFoundError:
        pass
    paths.private_dir(path.parent)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value


def _logging() -> None:
    # stdout is the MCP channel: logs go to stderr only
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve_stdio(socket_path: str | None, *, max_output_chars: int) -> int:
    _logging()
    server, notebooks = build_server(socket_path, max_output_chars)

    async def main() -> None:
        try:
            await server.run_stdio_async()
        finally:
            await notebooks.close()

    asyncio.run(main())
    return 0


class BearerToken:
    """ASGI middleware: HTTP requests without ``Authorization: Bearer <secret>`` get 401."""

    def __init__(self, app: Any, secret: str) -> None:
        self.app = app
        self.expected = f"Bearer {secret}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"www-authenticate", b"Bearer")]})
                await send({"type": "http.response.body",
                            "body": b'{"error": "missing or wrong bearer token '
                                    b'(runtimed mcp --show-token prints it)"}'})
                return
        await self.app(scope, receive, send)


def serve_http(socket_path: str | None, *, port: int, max_output_chars: int) -> int:
    import uvicorn

    _logging()
    server, notebooks = build_server(socket_path, max_output_chars)
    app = BearerToken(server.streamable_http_app(host=HOST), token())

    async def main() -> None:
        config = uvicorn.Config(app, host=HOST, port=port, log_level="warning", lifespan="on")
        web = uvicorn.Server(config)
        started = asyncio.ensure_future(web.serve())
        while not web.started and not started.done():
            await asyncio.sleep(0.05)
        if web.started:
            bound = web.servers[0].sockets[0].getsockname()[1]
            print(f"runtimed mcp: http://{HOST}:{bound}/mcp (bearer token: runtimed mcp "
                  f"--show-token; in {token_path()})", file=sys.stderr, flush=True)
        try:
            await started
        finally:
            await notebooks.close()

    asyncio.run(main())
    return 0
