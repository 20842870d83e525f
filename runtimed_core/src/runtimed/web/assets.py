"""The page's files (``static/``), served the same way by the daemon and by the sidecar."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from runtimed.web.server import Response

STATIC = resources.files("runtimed.web") / "static"
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".woff2": "font/woff2", ".svg": "image/svg+xml"}


def page(socket_path: str = "/ws/notebook") -> Response:
    """The live page, reading what it shows from the WebSocket at ``socket_path``."""
    html = (STATIC / "notebook.html").read_bytes()
    if socket_path != "/ws/notebook":
        html = html.replace(b"<head>", b'<head>\n<script>window.RUNTIMED_SOCKET = "%s";</script>'
                            % socket_path.encode(), 1)
    return Response(200, html, "text/html; charset=utf-8", {"cache-control": "no-cache"})


def static_file(name: str) -> Response:
    """``/static/<name>``: a file of the page (never outside ``static/``)."""
    if ".." in name.split("/") or name.startswith("/"):
        return Response.text("404 Not Found", 404)
    target = STATIC / name
    if not target.is_file():
        return Response.text("404 Not Found", 404)
    suffix = Path(name).suffix
    return Response(200, target.read_bytes(), _TYPES.get(suffix, "application/octet-stream"),
                    {"cache-control": "no-cache" if suffix in (".html", ".js", ".css") else
                     "private, max-age=86400"})
