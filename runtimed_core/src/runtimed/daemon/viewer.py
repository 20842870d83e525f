"""The daemon's web side: blobs, health, and the live notebook page over its rooms.

Routes (all behind the daemon's secret, :mod:`runtimed.web.server`):

- ``GET /health``: ``{"ok": true, "version", "pid"}``;
- ``GET /blob/<sha256>``: a blob's bytes with the content type they were stored
  with, cached for good (they never change); a blob whose bytes do not match
  its name is never served (410, and logged);
- ``GET /notebook?id=<notebook id>`` or ``?path=<file>``: the live page;
- ``WS /ws/notebook?id=...|path=...``: what the page shows, as JSON, updated as
  the room changes: a ``snapshot`` first, then ``update`` messages with the
  cells and widget models that changed (every page of a room shares one view,
  computed at most every :data:`MIN_INTERVAL` seconds). The page sends
  ``{"type": "comm_msg", "comm_id": ..., "data": {...}}`` when a control is
  moved (a comm message to the kernel, as ``session.send_comm_message``); a
  refusal comes back as ``{"type": "notice", "message": ...}``.

A room that a page shows is kept open like one that a session has.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from runtimed import version
from runtimed.blobs import BlobStore, blob_file, valid_sha
from runtimed.document import notebook
from runtimed.document.runtime_state import read_comm, read_comms, read_kernel
from runtimed.errors import RuntimedError
from runtimed.formats.ipynb import cell_outputs
from runtimed.web import assets, view
from runtimed.web.server import Request, Response, WebServer, WebSocket, push_updates

log = logging.getLogger(__name__)

#: The shortest time between two computations of a room's view (seconds).
MIN_INTERVAL = 0.03
#: The largest message a page may send (a comm message: a control's new value).
MAX_PAGE_MESSAGE = 1 << 20


class RoomView:
    """What the pages of one room show, recomputed when the room changes (only what changed)."""

    def __init__(self, room: Any) -> None:
        self.room = room
        self.changed = asyncio.Event()
        self.order: list[str] = []
        self.cells: dict[str, str] = {}  # cell id -> its view, as JSON
        self.kernel = ""
        #: Model id -> its view, as JSON: the kernel's models, or with none the saved ones.
        self.widgets: dict[str, str] = {}
        self._live: dict[str, str] | None = None
        self._saved: dict[str, str] = {}
        self._saved_version = -1
        self.pages = 0
        self._seen: tuple[int, int] = (-1, -1)
        self._doc_version = -1
        self._cell_data: list[notebook.CellData] = []
        self._keys: dict[str, tuple[Any, ...]] = {}  # cell id -> what its view was made from

    def refresh(self) -> None:
        """Recompute the cells whose source, count or outputs changed since the last refresh."""
        room = self.room
        doc, state = room.doc, room.state
        if (doc.version, state.version) == self._seen:
            return
        self._seen = (doc.version, state.version)
        dirty = room.writer.take_dirty()  # executions (and saved outputs) written since
        if doc.version != self._doc_version:
            self._doc_version = doc.version
            self._cell_data = notebook.read_cells(doc)
            self.order = [c.id for c in self._cell_data]
            for gone in set(self.cells) - set(self.order):
                del self.cells[gone]
                del self._keys[gone]
        for cell in self._cell_data:
            shown = cell.execution_id or f"saved:{cell.id}"
            key = (cell.cell_type, cell.source, cell.execution_count, shown)
            if self._keys.get(cell.id) == key and shown not in dirty:
                continue
            self._keys[cell.id] = key
            outputs = cell_outputs(state, cell) if cell.cell_type == "code" else []
            self.cells[cell.id] = json.dumps(view.cell_view(cell, outputs, _blob_url))
        kernel = read_kernel(state)
        self.kernel = json.dumps({k: kernel.get(k) for k in
                                  ("lifecycle", "activity", "kernel_type", "error", "env_source")})
        self._refresh_widgets(dirty)

    def _refresh_widgets(self, dirty: set[str]) -> None:
        state = self.room.state
        if self._live is None:  # the first look: every model
            self._live = {mid: json.dumps(view.widget_view(comm, _blob_url))
                          for mid, comm in read_comms(state).items() if comm["model_name"]}
        for key in dirty:
            if key.startswith("comm:"):
                comm = read_comm(state, key[5:])
                if comm is not None and comm["model_name"]:
                    self._live[key[5:]] = json.dumps(view.widget_view(comm, _blob_url))
                else:
                    self._live.pop(key[5:], None)
        if self._live:
            self.widgets = self._live
            return
        doc = self.room.doc  # no live models: those the notebook's metadata saved
        if self._saved_version != doc.version:
            self._saved_version = doc.version
            self._saved = {mid: json.dumps(model) for mid, model in
                           view.saved_widget_views(notebook.get_metadata(doc)).items()}
        self.widgets = self._saved


def _blob_url(sha: str) -> str:
    return f"/blob/{sha}"


class Viewer:
    """The daemon's web server and its routes (see the module docstring).

    ``open_room(kind, ref)`` returns the room for ``kind`` ``"id"`` or ``"path"``.
    """

    def __init__(self, blobs: BlobStore, open_room: Callable[[str, str], Awaitable[Any]],
                 info: Callable[[], dict[str, Any]]) -> None:
        self.blobs = blobs
        self._open_room = open_room
        self._info = info
        self.server = WebServer(cookie=f"runtimed-{os.getpid()}")
        self._views: dict[int, RoomView] = {}
        self._verified: dict[str, tuple[int, int]] = {}  # sha -> (size, mtime_ns) checked
        server = self.server
        server.route("GET", "/health", self._health)
        server.route("GET", "/blob/{sha}", self._blob)
        server.route("GET", "/", self._index)
        server.route("GET", "/notebook", self._page)
        server.route("GET", "/static/{name:path}", self._static)
        server.websocket("/ws/notebook", self._live)

    async def start(self, port: int = 0) -> None:
        await self.server.start(port)
        self.server.cookie = f"runtimed-{self.server.port}"
        log.info("Web view on %s", self.server.url)

    async def stop(self) -> None:
        await self.server.stop()

    def link(self, *, notebook_id: str | None = None, path: str | None = None) -> str:
        """The page of a notebook, with the secret (what ``session.show()`` opens)."""
        query = f"path={quote(path)}" if path else f"id={quote(notebook_id or '')}"
        return self.server.link(f"/notebook?{query}")

    def changed(self, room: Any) -> None:
        """A room's documents changed: its pages (if any) update."""
        room_view = self._views.get(id(room))
        if room_view is not None:
            room_view.changed.set()

    # routes ---------------------------------------------------------------------------------------
    async def _health(self, request: Request) -> Response:
        return Response.json({"ok": True, "version": version.__version__, "pid": os.getpid(),
                              **self._info()})

    async def _blob(self, request: Request) -> Response:
        sha = request.params["sha"]
        if not valid_sha(sha):
            return Response.text("400: not a SHA-256 (64 lowercase hex digits)", 400)
        path = blob_file(self.blobs.root, sha)
        try:
            stat = path.stat()
            raw = await asyncio.to_thread(path.read_bytes) if stat.st_size > 1 << 20 else path.read_bytes()
        except OSError:
            return Response.text("404: no such blob", 404)
        if self._verified.get(sha) != (stat.st_size, stat.st_mtime_ns):
            if hashlib.sha256(raw).hexdigest() != sha:
                log.error("Blob %s is corrupt on disk (its content does not match its name): "
                          "not serving it", path)
                return Response.text("410: this blob is corrupt on disk", 410)
            self._verified[sha] = (stat.st_size, stat.st_mtime_ns)
        return Response(200, raw, self.blobs.content_type(sha), {
            "cache-control": "private, max-age=31536000, immutable", "etag": f'"{sha}"',
            # opened on its own (an HTML or SVG part), it may not run scripts as this origin
            "content-security-policy": "sandbox"})

    async def _index(self, request: Request) -> Response:
        rooms = self._info().get("rooms", [])
        items = "".join(
            f'<li><a href="/notebook?{"path=" + quote(r["path"]) if r.get("path") else "id=" + quote(r["notebook_id"])}">'
            f'{_escape(r.get("path") or r["notebook_id"])}</a></li>' for r in rooms)
        page = (f"<!doctype html><meta charset=utf-8><title>runtimed</title>"
                f"<link rel=stylesheet href=/static/viewer.css><h1>runtimed notebooks</h1>"
                f"<ul>{items or '<li>none open</li>'}</ul>")
        return Response(200, page.encode(), "text/html; charset=utf-8")

    async def _page(self, request: Request) -> Response:
        return assets.page()

    async def _static(self, request: Request) -> Response:
        return assets.static_file(request.params["name"])

    async def _live(self, request: Request, socket: WebSocket) -> None:
        kind = "path" if "path" in request.query else "id"
        ref = request.query.get(kind, "")
        try:
            room = await self._open_room(kind, ref)
        except RuntimedError as exc:
            await socket.send(json.dumps({"type": "error", "message": exc.message}))
            return
        room_view = self._views.get(id(room))
        if room_view is None or room_view.room is not room:
            room_view = self._views[id(room)] = RoomView(room)
            room.writer.track_dirty = True
        room_view.pages += 1
        room.watch(self)
        try:
            await self._feed(room, room_view, socket)
        finally:
            room_view.pages -= 1
            room.unwatch(self)
            if room_view.pages == 0 and self._views.get(id(room)) is room_view:
                del self._views[id(room)]
                room.writer.track_dirty = False

    async def _feed(self, room: Any, room_view: RoomView, socket: WebSocket) -> None:
        sent: dict[str, str] = {}
        sent_widgets: dict[str, str] = {}
        last: dict[str, Any] = {"order": None, "kernel": None}

        def message() -> str | None:
            room_view.refresh()
            changed = {cid: text for cid, text in room_view.cells.items() if sent.get(cid) != text}
            models = room_view.widgets
            widgets = {mid: text for mid, text in models.items() if sent_widgets.get(mid) != text}
            widgets.update((mid, "null") for mid in set(sent_widgets) - set(models))
            first = last["order"] is None
            if not (first or changed or widgets or room_view.order != last["order"]
                    or room_view.kernel != last["kernel"]):
                return None
            sent.update(changed)
            for gone in set(sent) - set(room_view.order):
                del sent[gone]
            sent_widgets.clear()
            sent_widgets.update(models)
            last["order"], last["kernel"] = list(room_view.order), room_view.kernel
            return view.page_message("snapshot" if first else "update", room.notebook_id,
                                     str(room.file.path) if room.file else None, room_view.order,
                                     room_view.kernel, changed, widgets)

        async def received(text: str) -> None:
            """What the page sends: a moved control's comm message."""
            try:
                msg = json.loads(text) if len(text) <= MAX_PAGE_MESSAGE else None
            except ValueError:
                msg = None
            if not isinstance(msg, dict) or msg.get("type") != "comm_msg":
                log.info("%s: ignored a message from a page that is not a comm message",
                         room.notebook_id)
                return
            try:
                await room.send_comm(msg.get("comm_id"), msg.get("data"))
            except RuntimedError as exc:
                await socket.send(json.dumps({"type": "notice", "message": exc.message}))

        await push_updates(socket, room_view.changed, message, MIN_INTERVAL, received)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
