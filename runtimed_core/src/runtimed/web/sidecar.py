"""The sidecar process: one kernel's IOPub channel, shown on the live page.

``python -m runtimed.web.sidecar CONNECTION_FILE [--parent-pid PID] [--port N]``
prints its page's address (with its secret) on the first line of its standard
output, then serves until the process ``PID`` ends, the kernel stops answering
its heartbeat for :data:`HEARTBEAT_GRACE` seconds, or it is terminated.

Every message is verified with the key in the connection file (one with a bad
signature is dropped and logged). Each execution request the kernel answers
becomes a pseudo-cell: its code (from ``execute_input``) and its outputs, with
the notebook's semantics for streams, ``clear_output`` and
``update_display_data``. Outputs stay in this process's memory, the most recent
:data:`MAX_CELLS` executions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtimed.outputs import StreamText, output_from_message
from runtimed.protocol.jupyter import JupyterCodec
from runtimed.web import assets, view
from runtimed.web.server import Request, Response, WebServer, WebSocket, push_updates

log = logging.getLogger("runtimed.sidecar")

MAX_CELLS = 500
HEARTBEAT_EVERY = 2.0
HEARTBEAT_GRACE = 10.0
MIN_INTERVAL = 0.03
HANDSHAKE_TIMEOUT = 5.0
OUTPUT_TYPES = {"stream", "display_data", "execute_result", "error", "clear_output",
                "update_display_data"}


@dataclass
class _Cell:
    id: str
    source: str | None = None  # None: its execute_input came before the sidecar subscribed
    execution_count: int | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    stream: StreamText | None = None  # the last output's terminal state, if it is a stream
    clear_pending: bool = False
    version: int = 0
    _json: tuple[int, str] = (-1, "")

    def view(self) -> str:
        """This cell for the page, as JSON (made once per change)."""
        if self._json[0] != self.version:
            self._json = (self.version, json.dumps({
                "id": self.id, "cell_type": "code", "source": self.source,
                "execution_count": self.execution_count,
                "outputs": [view.output_view(o, _no_blobs) for o in self.outputs]}))
        return self._json[1]


class KernelOutputs:
    """What the page shows of a kernel, built from its IOPub messages (sans-IO)."""

    def __init__(self, max_cells: int = MAX_CELLS) -> None:
        self.cells: OrderedDict[str, _Cell] = OrderedDict()
        self.activity = "unknown"
        self.max_cells = max_cells
        self.version = 0  # grows with every change
        self._displays: dict[str, list[tuple[str, int]]] = {}  # display_id -> places

    def handle(self, msg: dict[str, Any]) -> None:
        """One verified IOPub message."""
        msg_type, content = msg.get("msg_type") or "", msg.get("content") or {}
        if msg_type == "status":
            self.activity = content.get("execution_state", self.activity)
            self.version += 1
            return
        if msg_type == "update_display_data":
            self._update_display(content)
            return
        if msg_type != "execute_input" and msg_type not in OUTPUT_TYPES:
            return  # comms, debug events...
        parent = (msg.get("parent_header") or {}).get("msg_id") or "no-request"
        cell = self._cell(parent)
        if msg_type == "execute_input":
            cell.source = content.get("code", "")
            cell.execution_count = content.get("execution_count")
        elif msg_type == "clear_output":
            if content.get("wait"):
                cell.clear_pending = True
            else:
                self._clear(cell)
        else:
            self._output(cell, msg_type, content)
        cell.version += 1
        self.version += 1

    def _cell(self, parent: str) -> _Cell:
        cell = self.cells.get(parent)
        if cell is None:
            cell = self.cells[parent] = _Cell(parent)
            while len(self.cells) > self.max_cells:
                gone, _ = self.cells.popitem(last=False)
                self._forget(gone)
        return cell

    def _output(self, cell: _Cell, msg_type: str, content: dict[str, Any]) -> None:
        if cell.clear_pending:
            self._clear(cell)
        output = output_from_message(msg_type, content)
        if msg_type == "stream":
            last = cell.outputs[-1] if cell.outputs else None
            if cell.stream is None or last is None or last.get("name") != output["name"]:
                cell.stream = StreamText()
                output["text"] = ""
                cell.outputs.append(output)
                last = output
            start, delete, insert = cell.stream.append(content.get("text", ""))
            last["text"] = last["text"][:start] + insert + last["text"][start + delete:]
            return
        cell.stream = None
        display_id = (output.pop("transient", None) or {}).get("display_id")
        if display_id:
            self._displays.setdefault(display_id, []).append((cell.id, len(cell.outputs)))
        cell.outputs.append(output)

    def _clear(self, cell: _Cell) -> None:
        cell.outputs.clear()
        cell.stream = None
        cell.clear_pending = False
        self._forget(cell.id)

    def _forget(self, cell_id: str) -> None:
        for key, places in list(self._displays.items()):
            kept = [p for p in places if p[0] != cell_id]
            if kept:
                self._displays[key] = kept
            else:
                del self._displays[key]

    def _update_display(self, content: dict[str, Any]) -> None:
        places = self._displays.get((content.get("transient") or {}).get("display_id"), [])
        for cell_id, index in places:
            output = self.cells[cell_id].outputs[index]
            output["data"], output["metadata"] = content.get("data", {}), content.get("metadata", {})
            self.cells[cell_id].version += 1
        if places:
            self.version += 1

    def page_message(self, title: str, kernel_type: str, sent: Shown) -> str | None:
        """The page's next message (a snapshot for a page shown nothing yet), or None when
        nothing changed; ``sent`` is brought up to date."""
        first = sent.version < 0
        if sent.version == self.version:
            return None
        fresh = {cid: cell.view() for cid, cell in self.cells.items()
                 if sent.cells.get(cid) != cell.version}
        sent.cells = {cid: cell.version for cid, cell in self.cells.items()}
        sent.version = self.version
        kernel = json.dumps({"lifecycle": "running", "activity": self.activity,
                             "kernel_type": kernel_type})
        return view.page_message("snapshot" if first else "update", title, None, list(self.cells),
                                 kernel, fresh)


@dataclass
class Shown:
    """What one page has been sent: each cell's version, and the outputs' version."""
    cells: dict[str, int] = field(default_factory=dict)
    version: int = -1


def _no_blobs(sha: str) -> str:  # a kernel's own messages carry no blob references
    raise AssertionError(sha)


class SidecarApp:
    """The sidecar's server, subscriber and watchdogs (see the module docstring)."""

    def __init__(self, connection_file: Path, parent_pid: int | None) -> None:
        self.connection_file = connection_file
        self.info = json.loads(connection_file.read_text())
        if not isinstance(self.info, dict) or not isinstance(self.info.get("iopub_port"), int):
            raise ValueError("not a Jupyter connection file (no iopub_port)")
        self.parent_pid = parent_pid
        self.title = f"sidecar: {self.info.get('kernel_name') or 'kernel'} ({connection_file.name})"
        self.outputs = KernelOutputs()
        self.changed = asyncio.Event()
        self.stopped = asyncio.Event()
        self.heard = asyncio.Event()  # set by each IOPub message
        self.server = WebServer(cookie="runtimed-sidecar")
        self.server.route("GET", "/", self._page)
        self.server.route("GET", "/health", self._health)
        self.server.route("GET", "/static/{name:path}", self._static)
        self.server.websocket("/ws/sidecar", self._live)

    def _address(self, port_key: str) -> str:
        transport, ip = self.info.get("transport", "tcp"), self.info.get("ip", "127.0.0.1")
        if transport == "ipc":
            return f"ipc://{ip}-{self.info[port_key]}"
        return f"{transport}://{ip}:{self.info[port_key]}"

    async def run(self, port: int = 0) -> None:
        import zmq
        import zmq.asyncio

        context = zmq.asyncio.Context()
        sub = context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(self._address("iopub_port"))
        tasks = [asyncio.ensure_future(self._subscribe(sub)),
                 asyncio.ensure_future(self._watch_parent())]
        await self.server.start(port)
        self.server.cookie = f"runtimed-sidecar-{self.server.port}"
        if self.info.get("control_port"):
            await self._handshake(context)
        print(self.server.link("/"), flush=True)
        with contextlib.suppress(OSError):  # nobody reads more than the address
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if self.info.get("hb_port"):
            tasks.append(asyncio.ensure_future(self._heartbeat(context)))
        try:
            await self.stopped.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.server.stop()
            sub.close()
            context.term()

    async def _subscribe(self, sub: Any) -> None:
        codec = JupyterCodec(self.info.get("key", "").encode())
        while True:
            frames = await sub.recv_multipart()
            try:
                msg = codec.parse(frames)
            except Exception as exc:  # a bad signature or a malformed message: dropped
                log.warning("Dropped an IOPub message: %s", exc)
                continue
            self.outputs.handle(msg)
            self.heard.set()
            self.changed.set()

    async def _handshake(self, context: Any) -> None:
        """Ask the kernel for its info on the control channel (it answers even while a cell
        runs) and wait until IOPub carries its status: from then on, nothing is missed."""
        import zmq

        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self._address("control_port"))
        codec = JupyterCodec(self.info.get("key", "").encode(), username="sidecar")
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + HANDSHAKE_TIMEOUT
            while loop.time() < deadline:
                self.heard.clear()
                await dealer.send_multipart(codec.message("kernel_info_request", {})[1])
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.heard.wait(), 0.25)
                    return
            log.warning("The kernel published nothing within %.0f s; outputs may be missed until "
                        "it does", HANDSHAKE_TIMEOUT)
        finally:
            dealer.close()

    async def _watch_parent(self) -> None:
        if self.parent_pid is None:
            return
        while True:
            try:
                os.kill(self.parent_pid, 0)
            except ProcessLookupError:
                log.info("The process that started the sidecar ended; stopping")
                self.stopped.set()
                return
            except PermissionError:
                pass
            await asyncio.sleep(1.0)

    async def _heartbeat(self, context: Any) -> None:
        import zmq

        quiet_since: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            sock = context.socket(zmq.REQ)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(self._address("hb_port"))
            try:
                while True:
                    await sock.send(b"ping")
                    if await sock.poll(HEARTBEAT_EVERY * 1000):
                        await sock.recv()
                        quiet_since = None
                        await asyncio.sleep(HEARTBEAT_EVERY)
                        continue
                    break  # no answer: a REQ socket must be remade before it sends again
            finally:
                sock.close()
            now = loop.time()
            quiet_since = quiet_since if quiet_since is not None else now - HEARTBEAT_EVERY
            if now - quiet_since >= HEARTBEAT_GRACE:
                log.info("The kernel has not answered its heartbeat for %.0f s; stopping",
                         now - quiet_since)
                self.stopped.set()
                return

    # the page ----------------------------------------------------------------------------------
    async def _page(self, request: Request) -> Response:
        return assets.page("/ws/sidecar")

    async def _static(self, request: Request) -> Response:
        return assets.static_file(request.params["name"])

    async def _health(self, request: Request) -> Response:
        return Response.json({"ok": True, "pid": os.getpid(), "kernel": str(self.connection_file),
                              "executions": len(self.outputs.cells)})

    async def _live(self, request: Request, socket: WebSocket) -> None:
        sent = Shown()
        kernel_type = self.info.get("kernel_name") or "kernel"
        await push_updates(socket, self.changed,
                           lambda: self.outputs.page_message(self.title, kernel_type, sent),
                           MIN_INTERVAL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runtimed.web.sidecar",
                                     description="A live page of one kernel's outputs.")
    parser.add_argument("connection_file", type=Path)
    parser.add_argument("--parent-pid", type=int, help="stop when this process ends")
    parser.add_argument("--port", type=int, default=0, help="the page's port (0: any free one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="runtimed sidecar: %(message)s")
    try:
        app = SidecarApp(args.connection_file, args.parent_pid)
    except (OSError, ValueError) as exc:
        print(f"runtimed sidecar: cannot read the connection file {args.connection_file}: {exc}",
              file=sys.stderr)
        return 2

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, app.stopped.set)
        await app.run(args.port)

    try:
        asyncio.run(serve())
    except OSError as exc:  # the port is taken, the kernel's address is unusable...
        print(f"runtimed sidecar: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
