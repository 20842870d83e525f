"""The kernel-handle contract: what a launcher hands the daemon for one started kernel.

In the spirit of jupyter_client's ``KernelProvisioner``: a handle says where the
kernel's channels are (:attr:`KernelHandle.connection_info`: ZMQ endpoints on
any host, and the HMAC key) and how to interrupt, stop and watch the kernel.
The daemon does the Jupyter messaging itself, over ZMQ to those endpoints, or
over :meth:`KernelHandle.channels` for a kernel reached some other way (a
gateway's WebSocket, say).

:class:`LocalKernel` is the handle of a kernel that runs as a local
subprocess: what :meth:`runtimed.launchers.KernelLauncher.launch` returns by
default. It runs in its own process group (kill stops everything it started),
and when it dies its exit code and the tail of its stderr say why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

#: ``deliver(channel, message)``: how :class:`KernelChannels` hand the daemon a message
#: from the kernel (``channel`` is ``"shell"``, ``"iopub"``, ``"control"`` or ``"stdin"``;
#: ``message`` has ``header``, ``parent_header``, ``metadata``, ``content``, ``msg_type``
#: and ``buffers``).
Deliver = Callable[[str, dict[str, Any]], None]


class KernelChannels(ABC):
    """Jupyter messages to and from a kernel whose channels are not ZMQ sockets.

    Required: :meth:`open`, :meth:`send`, :meth:`close`. Optional: :attr:`supports_stdin`.
    """

    #: Optional. True if these channels carry the kernel's stdin channel: the daemon then
    #: lets cells call ``input()`` (``allow_stdin``) for clients that answer, and answers the
    #: kernel's ``input_request`` with ``send("stdin", "input_reply", content, parent=header)``
    #: (so :meth:`send` must take a ``parent`` keyword, the header being answered).
    supports_stdin: bool = False

    @abstractmethod
    def open(self, deliver: Deliver) -> None:
        """Required. Start receiving; hand every message from the kernel to ``deliver``
        (on the daemon's event loop)."""

    @abstractmethod
    def send(self, channel: str, msg_type: str, content: dict[str, Any]) -> str:
        """Required. Send a new request on ``channel``; return its ``msg_id`` (replies and
        IOPub messages name it as their ``parent_header.msg_id``)."""

    @abstractmethod
    def close(self) -> None:
        """Required. Stop receiving and release the transport; idempotent."""


class KernelHandle(ABC):
    """One started kernel, as its launcher sees it.

    Required: :attr:`connection_info`, :meth:`is_alive`, :meth:`wait`,
    :meth:`interrupt`, :meth:`kill`. Optional: :meth:`cleanup`, :attr:`exit_code`,
    :attr:`exit_reason`, :meth:`log_tail`, :meth:`channels`, :meth:`shutdown`,
    :meth:`restart`, :attr:`interrupt_mode`, :attr:`pid`.
    """

    #: ``"signal"``: the daemon interrupts through :meth:`interrupt`; ``"message"``: it
    #: sends the kernel an ``interrupt_request`` on the control channel instead.
    interrupt_mode: Literal["signal", "message"] = "signal"

    @property
    @abstractmethod
    def connection_info(self) -> dict[str, Any]:
        """Required. Jupyter connection info: ``transport``, ``ip``, ``shell_port``,
        ``iopub_port``, ``stdin_port``, ``control_port``, ``hb_port``, ``key`` and
        ``signature_scheme``, as in a connection file. A handle with its own
        :meth:`channels` describes where the kernel is instead (no ports)."""

    @abstractmethod
    def is_alive(self) -> bool:
        """Required. Whether the kernel is still running (cheap, non-blocking)."""

    @abstractmethod
    async def wait(self) -> int | None:
        """Required. Return once the kernel is gone: its exit code, or None if unknown."""

    @abstractmethod
    async def interrupt(self) -> None:
        """Required. Interrupt the running cell (for :attr:`interrupt_mode` ``"signal"``)."""

    @abstractmethod
    async def kill(self) -> None:
        """Required. Stop the kernel now and wait until it is gone; idempotent."""

    async def cleanup(self) -> None:
        """Optional. Release what the kernel left (files, remote records) after it is gone."""

    @property
    def exit_code(self) -> int | None:
        """Optional. The kernel's exit code once it is gone, if known."""
        return None

    @property
    def exit_reason(self) -> str | None:
        """Optional. Why the kernel is gone, when the handle knows better than an exit code
        (a remote kernel its server lost), quoted in the "kernel died" error; default None."""
        return None

    def log_tail(self) -> str:
        """Optional. The end of what the kernel wrote to its stderr or log, quoted when a
        launch fails or the kernel dies; "" if there is none."""
        return ""

    def channels(self) -> KernelChannels | None:
        """Optional. The kernel's channels when they are not ZMQ sockets at
        :attr:`connection_info`; default None (connect with ZMQ)."""
        return None

    async def shutdown(self) -> bool:
        """Optional. Stop the kernel politely in the handle's own way and return True once
        it is gone (a gateway's ``DELETE``: the gateway asks the kernel, then kills it).
        Default False: the daemon sends a ``shutdown_request`` on the control channel."""
        return False

    async def restart(self) -> bool:
        """Optional. Restart the kernel in place and return True once it runs again (a
        gateway's REST restart: same kernel, same channels; the daemon then waits for it
        to answer). Default False: the daemon kills it and launches another."""
        return False

    @property
    def pid(self) -> int | None:
        """Optional. The kernel's local process id, if it has one (for logs)."""
        return None


def tail(path: Path, limit: int = 2000) -> str:
    """The last ``limit`` characters of a log file ("" if it cannot be read)."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-limit:].decode(errors="replace").strip()


class LocalKernel(KernelHandle):
    """A kernel running as a local subprocess (its own process group).

    ``files`` are removed by :meth:`cleanup` (the connection file, the stderr
    log); ``stderr_path`` is quoted by :meth:`log_tail`.
    """

    def __init__(self, process: asyncio.subprocess.Process, connection_info: dict[str, Any], *,
                 interrupt_mode: Literal["signal", "message"] = "signal",
                 stderr_path: Path | None = None, files: tuple[Path, ...] = ()) -> None:
        self.process = process
        self._connection_info = connection_info
        self.interrupt_mode = interrupt_mode
        self.stderr_path = stderr_path
        self.files = files

    @classmethod
    async def spawn(cls, argv: list[str], *, cwd: Path, env: dict[str, str],
                    connection_info: dict[str, Any], connection_file: Path | None = None,
                    stderr_path: Path | None = None,
                    interrupt_mode: Literal["signal", "message"] = "signal") -> LocalKernel:
        """Start ``argv`` in its own process group, stdout and stderr to ``stderr_path``.

        Next to ``connection_file`` it writes ``<name>.pid``: a daemon that was
        killed leaves it behind, and the next daemon uses it to stop the orphaned
        kernel. :meth:`cleanup` removes these files.
        """
        out = open(stderr_path, "ab") if stderr_path else None  # noqa: SIM115 - the child keeps it
        try:
            process = await asyncio.create_subprocess_exec(
                *argv, cwd=str(cwd), env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=out or asyncio.subprocess.DEVNULL, stderr=out or asyncio.subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            if out is not None:
                out.close()
        files = [p for p in (connection_file, stderr_path) if p is not None]
        if connection_file is not None:
            pid_file = connection_file.with_suffix(".pid")
            pid_file.write_text(str(process.pid))
            files.append(pid_file)
        return cls(process, connection_info, interrupt_mode=interrupt_mode,
                   stderr_path=stderr_path, files=tuple(files))

    @property
    def connection_info(self) -> dict[str, Any]:
        return self._connection_info

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def is_alive(self) -> bool:
        return self.process.returncode is None

    async def wait(self) -> int | None:
        return await self.process.wait()

    async def interrupt(self) -> None:
        """SIGINT to the kernel's process group (what it started gets it too, as in Jupyter)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGINT)

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()

    async def cleanup(self) -> None:
        for path in self.files:
            with contextlib.suppress(OSError):
                path.unlink()

    @property
    def exit_code(self) -> int | None:
        return self.process.returncode

    def log_tail(self) -> str:
        return tail(self.stderr_path) if self.stderr_path else ""
