"""One kernel on a gateway: its handle (REST) and its channels (the WebSocket).

:class:`GatewayKernel` is the :class:`runtimed.kernel_handles.KernelHandle` the
daemon drives: ``interrupt`` and ``restart`` are the gateway's REST calls, a
polite ``shutdown`` is ``DELETE`` (the gateway asks the kernel, then kills it),
and the kernel counts as gone when the gateway says so.

:class:`GatewayChannels` carries the messages over ``/api/kernels/{id}/channels``
(see :mod:`runtimed_gateway_kernel.wire`). When the connection drops it
reconnects with back-off, with the same ``session_id``: the gateway keeps what
the kernel sent meanwhile and replays it, so a cell that was running finishes
with all its outputs. Between attempts it asks the gateway (``GET
/api/kernels/{id}``) whether the kernel still exists. The kernel is *lost*, and
the daemon fails its cells with a "kernel died" error naming the gateway, when:

- the gateway no longer has it (404: culled as idle, deleted by another client,
  or the gateway was restarted and forgot it);
- the gateway says it died (an IOPub ``status`` of ``restarting``: the gateway
  restarted it, so its state is gone; or ``dead``) or shut it down (a
  ``shutdown_reply`` runtimed did not ask for);
- the gateway stays unreachable for :attr:`Gateway.reconnect_secs`;
- the gateway refuses the credentials (never retried).
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import logging
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from runtimed.kernel_handles import Deliver, KernelChannels, KernelHandle
from runtimed_gateway_kernel import wire
from runtimed_gateway_kernel.client import AUTH_FAILED, GatewayClient, GatewayError

log = logging.getLogger(__name__)

#: Reconnect back-off: first pause, growth factor, longest pause (seconds).
BACKOFF_FIRST, BACKOFF_FACTOR, BACKOFF_MAX = 0.1, 2.0, 5.0
#: Pauses before trying a DELETE again that the gateway failed with a server error.
DELETE_RETRIES = (0.25, 0.5, 1.0, 2.0, 4.0)
#: Tasks that outlive the call that started them.
_BACKGROUND: set[asyncio.Future[None]] = set()


def _quickack(ws: Any) -> Callable[[], None]:
    """A function that asks this machine's TCP stack to acknowledge the gateway's data at once.

    jupyter_server's WebSocket (tornado) leaves Nagle's algorithm on, so it holds each
    small message until the previous one is acknowledged, and Linux delays that
    acknowledgement by up to 40 ms: a trivial cell took ~45 ms over a gateway instead of
    ~5 ms. ``TCP_QUICKACK`` turns the delay off, but only until the stack decides
    otherwise, so it is set again after every frame (one cheap system call). A no-op
    where the option does not exist.
    """
    import socket

    option = getattr(socket, "TCP_QUICKACK", None)
    sock = ws.transport.get_extra_info("socket") if getattr(ws, "transport", None) else None
    if option is None or sock is None:
        return lambda: None

    def quickack() -> None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, 1)

    quickack()
    return quickack


class GatewayKernel(KernelHandle):
    """A kernel the gateway started (``kernel_id``), as the daemon sees it."""

    interrupt_mode = "signal"  # interrupt() is the gateway's REST interrupt

    def __init__(self, client: GatewayClient, kernel_id: str, kernel_name: str, *,
                 files: tuple[Path, ...] = ()) -> None:
        self.client = client
        self.gateway = client.gateway
        self.kernel_id = kernel_id
        self.kernel_name = kernel_name
        #: The WebSocket's ``session_id``, also every message's ``header.session``: the gateway
        #: buffers for it while the connection is down, and replays on reconnect.
        self.session_id = uuid.uuid4().hex
        self.username = getpass.getuser()
        self.files = files
        self._gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._reason: str | None = None
        self._deleted = False
        #: Set while runtimed itself restarts or stops the kernel (the gateway's status
        #: messages about it are then expected, not a death).
        self.restarting = False
        self.stopping = False
        self._channels: GatewayChannels | None = None

    @property
    def where(self) -> str:
        return f"the gateway at {self.gateway.url}"

    @property
    def path(self) -> str:
        return f"/api/kernels/{self.kernel_id}"

    # KernelHandle -------------------------------------------------------------------------------
    @property
    def connection_info(self) -> dict[str, Any]:
        return {"transport": "websocket", "gateway_url": self.gateway.url,
                "kernel_id": self.kernel_id, "kernel_name": self.kernel_name}

    def is_alive(self) -> bool:
        return not self._gone.done()

    async def wait(self) -> int | None:
        await asyncio.shield(self._gone)
        return None

    @property
    def exit_reason(self) -> str | None:
        return self._reason

    def channels(self) -> KernelChannels:
        if self._channels is None:
            self._channels = GatewayChannels(self)
        return self._channels

    async def interrupt(self) -> None:
        if self.is_alive():
            status, _ = await self.client.request("POST", f"{self.path}/interrupt", allow=(404,))
            if status == 404:
                self.lost(f"{self.where} no longer has it (kernel {self.kernel_id})")

    async def restart(self) -> bool:
        """The gateway's REST restart: same kernel id, same WebSocket; returns once it runs."""
        self.restarting = True
        try:
            status, _ = await self.client.request("POST", f"{self.path}/restart", allow=(404,))
        finally:
            self.restarting = False
        if status == 404:
            self.lost(f"{self.where} no longer has it (kernel {self.kernel_id})")
            raise GatewayError(f"Could not restart the gateway kernel {self.kernel_id}: "
                               f"{self._reason}", url=self.gateway.url, status=404)
        if self._channels is not None:
            # the restarted kernel may listen on other ports (a remote kernel, or one whose
            # provisioner hands out new ones): the gateway connects a new WebSocket to them
            await self._channels.reconnect()
        return True

    async def shutdown(self) -> bool:
        await self._delete()
        return True

    async def kill(self) -> None:
        await self._delete()
        if self._channels is not None:
            self._channels.close()

    async def cleanup(self) -> None:
        for path in self.files:
            with contextlib.suppress(OSError):
                path.unlink()

    # ----------------------------------------------------------------------------------------------
    async def _delete(self) -> None:
        """``DELETE`` the kernel once (not when the gateway already lost it); idempotent."""
        if self._deleted:
            return
        self._deleted = True
        self.stopping = True
        if self._reason is None or "no longer has it" not in self._reason:
            # a kernel lost some other way may still be there; do not wait long for a gateway
            # that has not been answering (cells fail only once this returns)
            timeout = None if self._reason is None else min(self.gateway.request_timeout, 5.0)
            try:
                await self.client.request("DELETE", self.path, allow=(404,), timeout=timeout)
            except GatewayError as exc:
                if (exc.context.get("status") or 0) >= 500:
                    # e.g. a kernel the gateway is restarting (jupyter_client then fails the
                    # DELETE): try again shortly, in the background
                    retry = asyncio.ensure_future(self._delete_again(exc.message))
                    _BACKGROUND.add(retry)
                    retry.add_done_callback(_BACKGROUND.discard)
                else:  # down or refusing: nothing more runtimed can do
                    log.warning("Could not delete gateway kernel %s: %s", self.kernel_id,
                                exc.message)
        self._set_gone("stopped by runtimed")

    async def _delete_again(self, problem: str) -> None:
        for delay in DELETE_RETRIES:
            await asyncio.sleep(delay)
            try:
                await self.client.request("DELETE", self.path, allow=(404,), timeout=10.0)
                return
            except GatewayError as exc:
                problem = exc.message
                if (exc.context.get("status") or 0) < 500:
                    break
        log.warning("Could not delete gateway kernel %s: %s", self.kernel_id, problem)

    def lost(self, reason: str) -> None:
        """The kernel is gone for ``reason`` (the gateway's doing, not runtimed's)."""
        if not self._gone.done():
            log.warning("Gateway kernel %s (%s) lost: %s", self.kernel_id, self.kernel_name, reason)
        self._set_gone(reason)

    def _set_gone(self, reason: str) -> None:
        if not self._gone.done():
            self._reason = reason
            self._gone.set_result(None)

    async def probe(self) -> str | None:
        """Ask the gateway about the kernel: None if it has it, else why it is gone (raises
        :class:`GatewayError` when the gateway cannot be reached)."""
        status, _ = await self.client.request("GET", self.path, allow=(404,),
                                              timeout=min(self.gateway.request_timeout, 10.0))
        return f"{self.where} no longer has it (kernel {self.kernel_id})" if status == 404 else None


class GatewayChannels(KernelChannels):
    """Shell, iopub, stdin and control over the gateway's WebSocket, reconnecting (see the
    module docstring)."""

    def __init__(self, kernel: GatewayKernel) -> None:
        self.kernel = kernel
        self._deliver: Deliver | None = None
        self._outbox: deque[str] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ws: Any = None
        self._closing: set[asyncio.Future[Any]] = set()
        self._again = False  # reconnect at once (runtimed closed the connection on purpose)
        self.connections = 0  # how many times the WebSocket was (re)opened

    def open(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._task = asyncio.create_task(self._run(),
                                         name=f"gateway-kernel-{self.kernel.kernel_id}")

    def send(self, channel: str, msg_type: str, content: dict[str, Any]) -> str:
        msg_id, frame = wire.new_message(channel, msg_type, content, session=self.kernel.session_id,
                                         username=self.kernel.username)
        self._outbox.append(frame)  # sent as soon as the WebSocket is up (in order)
        self._wake.set()
        return msg_id

    async def reconnect(self) -> None:
        """Close the WebSocket; the connection loop opens a new one at once."""
        ws = self._ws
        if ws is not None:
            self._again = True
            await ws.close()

    def close(self) -> None:
        self._deliver = None
        if self._task is not None and not self._task.done():
            self._task.cancel()
        ws, self._ws = self._ws, None
        if ws is not None:
            closing = asyncio.ensure_future(ws.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    # the connection ---------------------------------------------------------------------------
    async def _run(self) -> None:
        kernel = self.kernel
        delay = BACKOFF_FIRST
        down_since: float | None = None
        loop = asyncio.get_running_loop()
        while kernel.is_alive():
            problem = await self._connect_and_pump()
            if not kernel.is_alive() or self._deliver is None:
                return
            if problem is None and self._again:
                self._again = False
                continue
            if problem is None:  # it was up, then dropped: start counting again
                down_since, delay = None, BACKOFF_FIRST
                problem = "the connection closed"
                log.warning("Gateway kernel %s: %s; reconnecting", kernel.kernel_id, problem)
            try:
                gone = await kernel.probe()
            except GatewayError as exc:
                if exc.context.get("status") in AUTH_FAILED:
                    kernel.lost(exc.message)
                    return
                problem = exc.message
            else:
                if gone is not None:
                    kernel.lost(gone)
                    return
            now = loop.time()
            down_since = now if down_since is None else down_since
            if now - down_since >= kernel.gateway.reconnect_secs:
                kernel.lost(f"{kernel.where} could not be reached for "
                            f"{kernel.gateway.reconnect_secs:g} s ({problem})")
                return
            await asyncio.sleep(delay)
            delay = min(delay * BACKOFF_FACTOR, BACKOFF_MAX)

    async def _connect_and_pump(self) -> str | None:
        """Open the WebSocket and carry messages until it closes: None once it had opened,
        else why it could not open."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import InvalidStatus, WebSocketException

        kernel = self.kernel
        gateway = kernel.gateway
        url = gateway.channels_url(kernel.kernel_id, kernel.session_id)
        try:
            ws = await connect(url, additional_headers=gateway.http_headers(),
                               ssl=gateway.ssl_context(url), open_timeout=gateway.request_timeout,
                               max_size=None, compression=None)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in AUTH_FAILED:
                kernel.lost(gateway.auth_error(status, "the kernel's WebSocket").message)
            elif status == 404:
                kernel.lost(f"{kernel.where} no longer has it (kernel {kernel.kernel_id})")
            return f"the WebSocket was refused with HTTP {status}"
        except (OSError, asyncio.TimeoutError, WebSocketException) as exc:
            return f"{type(exc).__name__}: {exc}"
        except GatewayError as exc:  # the TLS files do not load
            kernel.lost(exc.message)
            return exc.message
        self._ws = ws
        self.connections += 1
        quickack = _quickack(ws)
        writer = asyncio.create_task(self._write(ws))
        try:
            async for frame in ws:
                quickack()
                self._receive(frame)
        except WebSocketException:
            pass
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketException, OSError):
                await writer
            if self._ws is ws:
                self._ws = None
        return None

    async def _write(self, ws: Any) -> None:
        while True:
            while self._outbox:
                await ws.send(self._outbox[0])
                self._outbox.popleft()  # only once it was handed to the connection
            self._wake.clear()
            await self._wake.wait()

    def _receive(self, frame: str | bytes) -> None:
        try:
            channel, msg = wire.parse_frame(frame)
        except wire.FrameError as exc:
            log.warning("Gateway kernel %s: dropped a frame: %s", self.kernel.kernel_id, exc)
            return
        if channel == "iopub" and not msg["parent_header"].get("msg_id"):
            self._gateway_status(msg)
            return
        if channel == "iopub" and msg["msg_type"] == "shutdown_reply":
            self._shutdown_seen(msg)
        if self._deliver is not None:
            self._deliver(channel, msg)

    def _gateway_status(self, msg: dict[str, Any]) -> None:
        """The gateway's own IOPub messages (no parent): its verdicts on the kernel."""
        kernel = self.kernel
        state = msg["content"].get("execution_state") if msg["msg_type"] == "status" else None
        if kernel.stopping or kernel.restarting:
            return
        if state == "restarting":
            kernel.lost(f"it died, and {kernel.where} restarted it (its variables are gone)")
        elif state == "dead":
            kernel.lost(f"it died, and {kernel.where} could not restart it")

    def _shutdown_seen(self, msg: dict[str, Any]) -> None:
        kernel = self.kernel
        if msg["content"].get("restart") or kernel.stopping or kernel.restarting:
            return  # a restart, or runtimed's own DELETE
        kernel.lost(f"{kernel.where} shut it down (culled as idle, or stopped by another client)")
