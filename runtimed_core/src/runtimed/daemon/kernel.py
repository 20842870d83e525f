"""One started Jupyter kernel, as the daemon talks to it: channels and message routing.

A launcher (a plugin) starts the kernel and returns a
:class:`~runtimed.kernel_handles.KernelHandle`; this module owns the Jupyter
plumbing on top of it: the connection file, the shell/control/iopub/stdin channels
(ZMQ sockets at the handle's endpoints, or the handle's own
:class:`~runtimed.kernel_handles.KernelChannels`), the IOPub handshake before the
kernel counts as ready, routing replies, IOPub messages and stdin requests by
``parent_header.msg_id``, interrupts, shutdown, and noticing death.
No polling: ZMQ sockets are read straight from the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from runtimed.errors import KernelLaunchFailed, ProtocolError
from runtimed.kernel_handles import Deliver, KernelChannels, KernelHandle
from runtimed.launchers import KernelLauncher, LaunchContext
from runtimed.pools import PreparedEnv
from runtimed.protocol.jupyter import JupyterCodec, write_connection_file

log = logging.getLogger(__name__)

#: How many times a kernel whose port was taken before it bound it is started again.
PORT_RETRIES = 2

READY_TIMEOUT = 60.0
#: The answer to an ``input_request`` that makes ``input()`` raise EOFError (as Ctrl-D does).
EOF = "\x04"
INTERRUPT_REPLY_TIMEOUT = 5.0
SHUTDOWN_GRACE = 2.0
#: Kernel messages handled per socket per event-loop turn.
DRAIN_BATCH = 256
#: IOPub messages received and not yet handled, at most (a few seconds of a widget flood,
#: ~10 MB); past it the kernel's side drops them.
IOPUB_BACKLOG = 20_000

IOPubHandler = Callable[[str, dict[str, Any]], None]
COMM_MSG_TYPES = frozenset(("comm_open", "comm_msg", "comm_close"))
#: ``on_stdin(message)``: an ``input_request`` of the kernel, for a request sent with
#: ``allow_stdin`` (answer it with :meth:`Kernel.answer_input`).
StdinHandler = Callable[[dict[str, Any]], None]

_context: zmq.Context[zmq.Socket[bytes]] | None = None


def _zmq_context() -> zmq.Context[zmq.Socket[bytes]]:
    global _context
    if _context is None:
        _context = zmq.Context()
    return _context


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Replace ``path`` (mode 0600) atomically."""
    import json

    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    tmp.replace(path)


class ZmqChannels(KernelChannels):
    """The shell, control, iopub and stdin channels of a kernel at ZMQ endpoints (the default).

    The shell and stdin sockets share one identity: a kernel sends its ``input_request``
    to the identity that sent the execute request.
    """

    supports_stdin = True

    def __init__(self, connection_info: dict[str, Any]) -> None:
        scheme = connection_info.get("signature_scheme", "hmac-sha256")
        if scheme != "hmac-sha256":
            raise KernelLaunchFailed(f"Unsupported signature scheme {scheme!r} (only hmac-sha256)")
        self.codec = JupyterCodec(key=str(connection_info.get("key", "")).encode())
        self.info = connection_info
        self._sockets: dict[str, zmq.Socket[bytes]] = {}
        self._deliver: Deliver | None = None

    def _url(self, name: str) -> str:
        info = self.info
        port = info[f"{name}_port"]
        if info.get("transport", "tcp") == "ipc":
            return f"ipc://{info['ip']}-{port}"
        return f"tcp://{info['ip']}:{port}"

    def open(self, deliver: Deliver) -> None:
        self._deliver = deliver
        zctx = _zmq_context()
        identity = os.urandom(16).hex().encode()
        channels = [("shell", zmq.DEALER), ("control", zmq.DEALER), ("iopub", zmq.SUB)]
        if self.info.get("stdin_port"):
            channels.append(("stdin", zmq.DEALER))
        for name, kind in channels:
            sock = zctx.socket(kind)
            sock.linger = 0
            sock.setsockopt(zmq.RECONNECT_IVL, 10)  # the kernel binds after we connect; retry fast
            if kind == zmq.SUB:
                sock.setsockopt(zmq.SUBSCRIBE, b"")
                # A kernel's PUB socket drops what a subscriber has not taken past its high-water
                # mark (1,000 messages): ZMQ's own thread keeps up to IOPUB_BACKLOG more here
                # while this loop is busy (a flood of widget updates), bounded in memory.
                sock.setsockopt(zmq.RCVHWM, IOPUB_BACKLOG)
            if name in ("shell", "stdin"):
                sock.setsockopt(zmq.IDENTITY, identity)
            sock.connect(self._url(name))
            self._sockets[name] = sock
        # Plain sockets read straight from the event loop (no task, no future per message):
        # on each wake-up every message that is there is handled.
        loop = asyncio.get_running_loop()
        for name, sock in self._sockets.items():
            loop.add_reader(sock.FD, self._drain, name)
            loop.call_soon(self._drain, name)

    def send(self, channel: str, msg_type: str, content: dict[str, Any],
             parent: dict[str, Any] | None = None) -> str:
        msg_id, frames = self.codec.message(msg_type, content, parent)
        self._sockets[channel].send_multipart(frames, copy=False)
        # A send can consume the socket's readiness edge: look for replies once more.
        asyncio.get_running_loop().call_soon(self._drain, channel)
        return msg_id

    def _drain(self, name: str) -> None:
        """Handle the messages waiting on socket ``name`` (ZMQ's FD is edge-triggered, so
        until none is left; after a batch, the rest waits one loop turn: others get theirs).

        Before a stdin message, what IOPub holds is handled first: a kernel flushes its
        outputs before it asks for input, and the prompt must follow them."""
        if name == "stdin":
            self._drain("iopub")
        parse = self.codec.parse
        for _ in range(DRAIN_BATCH):
            sock = self._sockets.get(name)  # a handler may have closed the channels
            if sock is None or self._deliver is None:
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
            self._deliver(name, msg)
        asyncio.get_running_loop().call_soon(self._drain, name)

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets.values():
            loop.remove_reader(sock.FD)
            sock.close(linger=0)
        self._sockets.clear()
        self._deliver = None


class Kernel:
    """A started kernel behind its handle. Create with :meth:`launch`."""

    def __init__(self, handle: KernelHandle, kernel_type: str, *, cwd: Path,
                 connection_file: Path | None = None) -> None:
        self.handle = handle
        self.kernel_type = kernel_type
        self.cwd = cwd
        self.connection_file = connection_file
        own_channels = handle.channels()
        self.channels = own_channels or ZmqChannels(handle.connection_info)
        #: The connection file another Jupyter client can attach with (``jupyter console
        #: --existing``); None for a kernel whose messages do not travel over ZMQ.
        self.attach_file = connection_file if own_channels is None else None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._iopub_handlers: dict[str, IOPubHandler] = {}
        #: Gets IOPub messages whose parent request the daemon did not send (another client's).
        self.on_unrouted: Callable[[dict[str, Any]], None] | None = None
        #: Gets every comm message on IOPub (``comm_open``, ``comm_msg``, ``comm_close``),
        #: whichever request it belongs to: widgets outlive the cell that made them.
        self.on_comm: Callable[[dict[str, Any]], None] | None = None
        self._stdin_handlers: dict[str, StdinHandler] = {}
        #: When the last IOPub message arrived (``time.monotonic()``).
        self.last_iopub = time.monotonic()
        self._closing = False
        self.exited: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._watcher = asyncio.create_task(self._watch())
        self.language_info: dict[str, Any] = {}

    # start ----------------------------------------------------------------------------------------
    @classmethod
    async def launch(cls, launcher: KernelLauncher, *, kernel_type: str, kernel_name: str | None,
                     runtime_dir: Path, notebook_id: str, cwd: Path,
                     env: PreparedEnv | None) -> Kernel:
        """Start a kernel with ``launcher``; return once it answers and IOPub is flowing.

        The ports in a connection file are free when chosen, but another process can take
        one before the kernel binds it (many kernels starting at once): a kernel that dies
        of that is started again with fresh ports, up to :data:`PORT_RETRIES` times."""
        for attempt in range(PORT_RETRIES + 1):
            try:
                return await cls._launch_once(launcher, kernel_type=kernel_type,
                                              kernel_name=kernel_name, runtime_dir=runtime_dir,
                                              notebook_id=notebook_id, cwd=cwd, env=env)
            except KernelLaunchFailed as exc:
                if attempt == PORT_RETRIES or "Address already in use" not in str(exc):
                    raise
                log.info("%s: a %s kernel's port was taken before it bound it; starting it "
                         "again with fresh ports", notebook_id, kernel_type)
        raise AssertionError("unreachable")

    @classmethod
    async def _launch_once(cls, launcher: KernelLauncher, *, kernel_type: str,
                           kernel_name: str | None, runtime_dir: Path, notebook_id: str,
                           cwd: Path, env: PreparedEnv | None) -> Kernel:
        fd, conn = tempfile.mkstemp(prefix="kernel-", suffix=".json", dir=runtime_dir)
        os.close(fd)
        connection_file = Path(conn)
        info = write_connection_file(connection_file, os.urandom(16).hex().encode(), kernel_type)
        stderr_path = connection_file.with_suffix(".log")
        ctx = LaunchContext(
            notebook_id=notebook_id, kernel_type=kernel_type, kernel_name=kernel_name,
            connection_file=connection_file, connection_info=info, cwd=cwd,
            env=dict(os.environ), prepared_env=env, stderr_path=stderr_path,
        )
        try:
            handle = await launcher.launch(ctx)
        except BaseException as exc:
            for path in (connection_file, stderr_path, connection_file.with_suffix(".pid")):
                with contextlib.suppress(OSError):
                    path.unlink()
            if isinstance(exc, OSError):
                raise KernelLaunchFailed(f"Could not start the {kernel_type} kernel: {exc}") from exc
            raise
        if handle.connection_info != info:  # a kernel elsewhere: the file says where it listens
            _write_json(connection_file, handle.connection_info)
        log.debug("Launched %s kernel (pid %s)", kernel_type, handle.pid)
        return await cls.connect(handle, kernel_type, cwd=cwd, connection_file=connection_file)

    @classmethod
    async def connect(cls, handle: KernelHandle, kernel_type: str, *, cwd: Path,
                      connection_file: Path | None = None) -> Kernel:
        """Open ``handle``'s channels; return once the kernel answers and IOPub is flowing
        (else kill it and raise KernelLaunchFailed)."""
        kernel = cls(handle, kernel_type, cwd=cwd, connection_file=connection_file)
        try:
            kernel.channels.open(kernel._deliver)
            await kernel._wait_ready()
        except BaseException:
            await kernel.kill()
            raise
        return kernel

    async def _wait_ready(self) -> None:
        """kernel_info until a reply *and* an IOPub message arrive (early outputs are not lost)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        iopub_seen = asyncio.Event()
        while True:
            reply, msg_id = self._request("shell", "kernel_info_request", {},
                                          on_iopub=lambda *_: iopub_seen.set())
            remaining = deadline - loop.time()
            done, _ = await asyncio.wait({reply, self.exited}, timeout=max(remaining, 0),
                                         return_when=asyncio.FIRST_COMPLETED)
            if self.exited.done():
                self.forget(msg_id)
                raise KernelLaunchFailed(self.death_message("exited while starting"))
            if not done:
                self.forget(msg_id)
                raise KernelLaunchFailed(self.death_message(f"did not answer within {READY_TIMEOUT:.0f} s"))
            self.language_info = reply.result()["content"].get("language_info", {})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(iopub_seen.wait(), 0.25)
            self.forget(msg_id)
            if iopub_seen.is_set():
                return

    def death_message(self, what: str = "died") -> str:
        msg = f"The {self.kernel_type} kernel {what}"
        code = self.handle.exit_code
        if code is not None:
            msg += f" (exit code {code})"
        reason = self.handle.exit_reason
        if reason:
            msg += f": {reason}"
        tail = self.handle.log_tail()
        return msg + (f". Its stderr ends with:\n{tail}" if tail else "" if reason else ".")

    # messaging ------------------------------------------------------------------------------------
    def _deliver(self, channel: str, msg: dict[str, Any]) -> None:
        parent = msg["parent_header"].get("msg_id")
        if channel == "iopub":
            self.last_iopub = time.monotonic()
            if self.on_comm is not None and msg["header"].get("msg_type") in COMM_MSG_TYPES:
                self.on_comm(msg)
                return
            handler = self._iopub_handlers.get(parent)
            if handler is not None:
                handler(msg["header"]["msg_type"], msg)
            elif parent and self.on_unrouted is not None and parent not in self._replies:
                self.on_unrouted(msg)
        elif channel == "stdin":
            on_stdin = self._stdin_handlers.get(parent)
            if on_stdin is not None and msg["header"].get("msg_type") == "input_request":
                on_stdin(msg)
            else:  # nobody offered to answer: end the kernel's wait (input() raises EOFError)
                self.answer_input(msg, EOF)
        else:
            fut = self._replies.pop(parent, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def _request(self, channel: str, msg_type: str, content: dict[str, Any], *,
                 on_iopub: IOPubHandler | None = None, on_stdin: StdinHandler | None = None,
                 ) -> tuple[asyncio.Future[dict[str, Any]], str]:
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        msg_id = self.channels.send(channel, msg_type, content)
        self._replies[msg_id] = fut
        if on_iopub is not None:
            self._iopub_handlers[msg_id] = on_iopub
        if on_stdin is not None:
            self._stdin_handlers[msg_id] = on_stdin
        return fut, msg_id

    def request(self, channel: str, msg_type: str, content: dict[str, Any], *,
                on_iopub: IOPubHandler | None = None, on_stdin: StdinHandler | None = None,
                ) -> asyncio.Future[dict[str, Any]]:
        """Send a request; the future resolves with the reply. IOPub children go to ``on_iopub``
        and the kernel's ``input_request`` messages (for ``allow_stdin``) to ``on_stdin``,
        until :meth:`forget` is called with the reply's ``parent_header.msg_id``."""
        return self._request(channel, msg_type, content, on_iopub=on_iopub, on_stdin=on_stdin)[0]

    @property
    def supports_stdin(self) -> bool:
        """Whether the kernel's channels carry stdin (``input()`` can be answered)."""
        return bool(getattr(self.channels, "supports_stdin", False))

    def answer_input(self, request: dict[str, Any], value: str) -> None:
        """Answer the kernel's ``input_request`` (:data:`EOF`: ``input()`` raises EOFError).

        ``value`` may be a password: it goes to the kernel and nowhere else (never logged).
        """
        if self.exited.done() or not self.supports_stdin:
            return
        try:
            self.channels.send("stdin", "input_reply", {"value": value},
                               parent=request.get("header"))  # type: ignore[call-arg]
        except Exception as exc:  # the channels are closing: the kernel is going away anyway
            log.debug("Could not answer an input request: %s", type(exc).__name__)

    async def ask(self, msg_type: str, content: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One shell request (``complete_request``...) and its reply's content, within ``timeout``
        seconds (asyncio.TimeoutError); nothing stays routed afterwards."""
        fut, msg_id = self._request("shell", msg_type, content)
        try:
            done, _ = await asyncio.wait({fut, self.exited}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
            if fut not in done:
                raise asyncio.TimeoutError
            return fut.result()["content"]
        finally:
            self.forget(msg_id)
            if not fut.done():
                fut.cancel()

    def send(self, channel: str, msg_type: str, content: dict[str, Any]) -> str:
        """Send a message that gets no reply (a ``comm_msg``); its msg_id."""
        return self.channels.send(channel, msg_type, content)

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
        self._stdin_handlers.pop(msg_id, None)

    # control ------------------------------------------------------------------------------------
    async def interrupt(self) -> None:
        if self.handle.interrupt_mode == "message":
            reply = self.request("control", "interrupt_request", {})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(reply, INTERRUPT_REPLY_TIMEOUT)
        elif self.alive:
            await self.handle.interrupt()

    async def shutdown(self) -> None:
        """Ask the kernel to exit (the handle's own way if it has one); kill it if it has not
        after a short grace period."""
        if self.alive:
            self._closing = True
            if not await self.handle.shutdown():
                self.request("control", "shutdown_request", {"restart": False})
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self.exited), SHUTDOWN_GRACE)
        await self.kill()

    async def restart_in_place(self) -> bool:
        """Restart the kernel through its handle (:meth:`KernelHandle.restart`), keeping this
        object and its channels; False if the handle cannot (the caller kills the kernel and
        launches another). Pending requests are dropped first either way, so nothing the old
        kernel still sends reaches the executions they belonged to."""
        if not self.alive:
            return False
        self._drop_requests()
        try:
            if not await self.handle.restart():
                return False
            await self._wait_ready()
        except BaseException:  # it may be half restarted: stop it for good
            await self.kill()
            raise
        return True

    def _drop_requests(self) -> None:
        for fut in self._replies.values():
            if not fut.done():
                fut.cancel()
        self._replies.clear()
        self._iopub_handlers.clear()
        self._stdin_handlers.clear()

    async def kill(self) -> None:
        """Stop the kernel now and release channels and files; idempotent."""
        self._closing = True
        await self.handle.kill()
        self._watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._watcher
        if not self.exited.done():
            self.exited.set_result(self.handle.exit_code)
        self.channels.close()
        self._drop_requests()
        await self.handle.cleanup()

    async def _watch(self) -> None:
        code = await self.handle.wait()
        log.debug("The %s kernel (pid %s) exited with %s", self.kernel_type, self.handle.pid, code)
        if not self.exited.done():
            self.exited.set_result(code)

    @property
    def pid(self) -> int | None:
        return self.handle.pid

    @property
    def zmq_connection_info(self) -> dict[str, Any] | None:
        """Where another Jupyter client reaches this kernel (a connection file's fields, the key
        included), or None for a kernel whose messages do not travel over ZMQ."""
        return dict(self.handle.connection_info) if isinstance(self.channels, ZmqChannels) else None

    @property
    def alive(self) -> bool:
        return not self.exited.done() and self.handle.is_alive()

    @property
    def closing(self) -> bool:
        """True once shutdown or kill began (an exit now is expected, not a death)."""
        return self._closing
