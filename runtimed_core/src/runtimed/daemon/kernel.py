"""One running Jupyter kernel: process, ZMQ channels, and message routing.

The launcher (a plugin) decides what process to run; this module owns the
Jupyter plumbing: the connection file, the shell/control/iopub sockets, the
IOPub handshake before the kernel counts as ready, routing replies and IOPub
messages by ``parent_header.msg_id``, interrupts, shutdown, and noticing death.
No polling: each socket has one reader task awaiting ``recv_multipart``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from runtimed.errors import KernelLaunchFailed, ProtocolError
from runtimed.launchers import KernelLauncher, LaunchContext
from runtimed.pools import PreparedEnv
from runtimed.protocol.jupyter import JupyterCodec, write_connection_file

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
INTERRUPT_REPLY_TIMEOUT = 5.0
SHUTDOWN_GRACE = 2.0
#: Kernel messages handled per socket per event-loop turn.
DRAIN_BATCH = 256

IOPubHandler = Callable[[str, dict[str, Any]], None]

_context: zmq.Context[zmq.Socket[bytes]] | None = None


def _zmq_context() -> zmq.Context[zmq.Socket[bytes]]:
    global _context
    if _context is None:
        _context = zmq.Context()
    return _context


def _tail(path: Path, limit: int = 2000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace").strip()


class KernelProcess:
    """A started kernel. Create with :meth:`start`; everything else is message passing."""

    def __init__(self, launcher: KernelLauncher, runtime_dir: Path) -> None:
        self.launcher = launcher
        self.runtime_dir = runtime_dir
        self.codec = JupyterCodec(key=os.urandom(16).hex().encode())
        self.process: asyncio.subprocess.Process | None = None
        self.connection_file: Path | None = None
        self.stderr_path: Path | None = None
        self._sockets: dict[str, zmq.Socket[bytes]] = {}
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._iopub_handlers: dict[str, IOPubHandler] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        self._last_msg_id = ""
        self.exited: asyncio.Future[int] | None = None
        self.language_info: dict[str, Any] = {}
        self.cwd: Path | None = None

    # start ------------------------------------------------------------------------------------
    async def start(self, *, notebook_id: str, cwd: Path, env: PreparedEnv | None) -> None:
        """Launch, connect, and return once the kernel answers and IOPub is flowing."""
        loop = asyncio.get_running_loop()
        self.cwd = cwd
        fd, conn = tempfile.mkstemp(prefix="kernel-", suffix=".json", dir=self.runtime_dir)
        os.close(fd)
        self.connection_file = Path(conn)
        info = write_connection_file(self.connection_file, self.codec.key, self.launcher.kernel_type)
        self.stderr_path = self.connection_file.with_suffix(".log")
        ctx = LaunchContext(
            notebook_id=notebook_id, connection_file=self.connection_file, cwd=cwd,
            env=dict(os.environ), prepared_env=env,
        )
        with open(self.stderr_path, "wb") as stderr:
            ctx.stderr = stderr
            try:
                self.process = await self.launcher.launch(ctx)
                log.debug("Launched %s kernel pid %d", self.launcher.kernel_type, self.process.pid)
                self.connection_file.with_suffix(".pid").write_text(str(self.process.pid))
            except OSError as exc:
                raise KernelLaunchFailed(
                    f"Could not start the {self.launcher.kernel_type} kernel: {exc}"
                ) from exc
        self.exited = loop.create_future()
        self._tasks.append(asyncio.create_task(self._watch_process()))
        try:
            self._connect(info)
            await self._wait_ready()
        except BaseException:
            await self.kill()
            raise

    def _connect(self, info: dict[str, Any]) -> None:
        zctx = _zmq_context()
        url = f"tcp://{info['ip']}:"
        for name, kind in (("shell", zmq.DEALER), ("control", zmq.DEALER), ("iopub", zmq.SUB)):
            sock = zctx.socket(kind)
            sock.linger = 0
            sock.setsockopt(zmq.RECONNECT_IVL, 10)  # the kernel binds after we connect; retry fast
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.connect(url + str(info[f"{name}_port"]))
            self._sockets[name] = sock
        # Plain sockets read straight from the event loop (no task, no future per message):
        # on each wake-up every message that is there is handled.
        loop = asyncio.get_running_loop()
        for name, sock in self._sockets.items():
            loop.add_reader(sock.FD, self._drain, name)
            loop.call_soon(self._drain, name)

    async def _wait_ready(self) -> None:
        """kernel_info until a reply *and* an IOPub message arrive (early outputs are not lost)."""
        assert self.exited is not None
        deadline = asyncio.get_running_loop().time() + READY_TIMEOUT
        iopub_seen = asyncio.Event()
        while True:
            reply = self.request("shell", "kernel_info_request", {}, on_iopub=lambda *_: iopub_seen.set())
            msg_id = self._last_msg_id
            waiters = {asyncio.ensure_future(reply), self.exited}
            remaining = deadline - asyncio.get_running_loop().time()
            done, _ = await asyncio.wait(waiters, timeout=max(remaining, 0), return_when=asyncio.FIRST_COMPLETED)
            if self.exited.done():
                self.forget(msg_id)
                raise KernelLaunchFailed(self._death_message("exited while starting"))
            if not done:
                self.forget(msg_id)
                raise KernelLaunchFailed(self._death_message(f"did not answer within {READY_TIMEOUT:.0f} s"))
            self.language_info = reply.result()["content"].get("language_info", {})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(iopub_seen.wait(), 0.25)
            self.forget(msg_id)
            if iopub_seen.is_set():
                return

    def _death_message(self, what: str) -> str:
        code = self.process.returncode if self.process else None
        tail = _tail(self.stderr_path) if self.stderr_path else ""
        msg = f"The {self.launcher.kernel_type} kernel {what}"
        if code is not None:
            msg += f" (exit code {code})"
        return msg + (f". Its stderr ends with:\n{tail}" if tail else ".")

    # messaging --------------------------------------------------------------------------------
    def request(
        self, channel: str, msg_type: str, content: dict[str, Any], *, on_iopub: IOPubHandler | None = None,
    ) -> asyncio.Future[dict[str, Any]]:
        """Send a request; the future resolves with the reply. IOPub children go to ``on_iopub``."""
        msg_id, frames = self.codec.message(msg_type, content)
        self._last_msg_id = msg_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[msg_id] = fut
        if on_iopub is not None:
            self._iopub_handlers[msg_id] = on_iopub
        self._sockets[channel].send_multipart(frames, copy=False)
        # A send can consume the socket's readiness edge: look for replies once more.
        asyncio.get_running_loop().call_soon(self._drain, channel)
        return fut

    async def run_silently(self, code: str, timeout: float = 10.0) -> None:
        """Execute ``code`` without history or outputs; raise KernelLaunchFailed if it fails."""
        reply = await asyncio.wait_for(self.request("shell", "execute_request", {
            "code": code, "silent": True, "store_history": False, "user_expressions": {},
            "allow_stdin": False, "stop_on_error": False,
        }), timeout)
        self.forget(reply["parent_header"].get("msg_id", ""))
        content = reply["content"]
        if content.get("status") != "ok":
            raise KernelLaunchFailed(
                f"Preparing the kernel failed: {content.get('ename')}: {content.get('evalue')}")

    def forget(self, msg_id: str) -> None:
        """Stop routing messages for a finished request."""
        self._replies.pop(msg_id, None)
        self._iopub_handlers.pop(msg_id, None)

    def _drain(self, name: str) -> None:
        """Handle the messages waiting on socket ``name`` (ZMQ's FD is edge-triggered, so
        until none is left; after a batch, the rest waits one loop turn: others get theirs)."""
        parse = self.codec.parse
        for _ in range(DRAIN_BATCH):
            sock = self._sockets.get(name)  # a handler may have killed the kernel
            if sock is None:
                return
            try:
                if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    return
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.ZMQError:
                return
            try:
                msg = parse(parts)
            except (ProtocolError, ValueError) as exc:  # bad signature or garbage: drop, keep going
                log.warning("Dropped an undecodable message on %s: %s", name, exc)
                continue
            parent = msg["parent_header"].get("msg_id")
            if name == "iopub":
                handler = self._iopub_handlers.get(parent)
                if handler is not None:
                    handler(msg["header"]["msg_type"], msg)
            else:
                fut = self._replies.pop(parent, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        asyncio.get_running_loop().call_soon(self._drain, name)

    # control ----------------------------------------------------------------------------------
    async def interrupt(self) -> None:
        if self.launcher.interrupt_mode == "message":
            reply = self.request("control", "interrupt_request", {})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(reply, INTERRUPT_REPLY_TIMEOUT)
        elif self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGINT)

    async def shutdown(self) -> None:
        """Ask the kernel to exit; kill it if it has not after a short grace period."""
        if self.alive:
            self._closing = True
            self.request("control", "shutdown_request", {"restart": False})
            assert self.exited is not None
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.exited), SHUTDOWN_GRACE)
        await self.kill()

    async def kill(self) -> None:
        """Stop the process now and release sockets and files; idempotent."""
        self._closing = True
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        loop = asyncio.get_running_loop()
        for sock in self._sockets.values():
            loop.remove_reader(sock.FD)
            sock.close(linger=0)
        self._sockets.clear()
        for fut in self._replies.values():
            if not fut.done():
                fut.cancel()
        self._replies.clear()
        self._iopub_handlers.clear()
        pid_file = self.connection_file.with_suffix(".pid") if self.connection_file else None
        for path in (self.connection_file, self.stderr_path, pid_file):
            if path is not None:
                with contextlib.suppress(OSError):
                    path.unlink()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    @property
    def closing(self) -> bool:
        """True once shutdown or kill began (an exit now is expected, not a death)."""
        return self._closing

    async def _watch_process(self) -> None:
        assert self.process is not None and self.exited is not None
        code = await self.process.wait()
        log.debug("Kernel pid %d exited with %s", self.process.pid, code)
        if not self.exited.done():
            self.exited.set_result(code)

    def death_message(self) -> str:
        return self._death_message("died")
