"""The kernel-launcher contract: what a plugin implements to start one kind of kernel.

The daemon does the Jupyter plumbing (ports, connection file, ZMQ sockets,
heartbeat of the process, interrupts); a launcher says *what to run*. The
default :meth:`KernelLauncher.launch` spawns :meth:`KernelLauncher.command` with
:meth:`KernelLauncher.environment`; override it for anything more exotic.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Literal

from runtimed.config import DaemonConfig
from runtimed.pools import PreparedEnv


@dataclass
class LaunchContext:
    """Everything known about one kernel start."""

    notebook_id: str
    connection_file: Path
    cwd: Path
    #: Environment variables for the kernel process (a copy; change it freely).
    env: dict[str, str]
    #: The pool environment, for launchers with :attr:`KernelLauncher.needs_env`.
    prepared_env: PreparedEnv | None = None
    #: Where the kernel's stderr goes; the daemon quotes its tail when a launch fails.
    stderr: IO[bytes] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class KernelLauncher(ABC):
    """Base class of kernel launchers. Required: :attr:`kernel_type` and :meth:`command`."""

    #: The name users pass as ``start_kernel(kernel_type=...)``.
    kernel_type: ClassVar[str]
    #: Whether the kernel needs an environment from a pool (Python does, Deno does not).
    needs_env: ClassVar[bool] = True
    #: ``"signal"`` sends SIGINT to the process; ``"message"`` sends an interrupt_request.
    interrupt_mode: ClassVar[Literal["signal", "message"]] = "signal"
    #: Seconds to keep collecting a cell's outputs after its reply and idle status, for
    #: kernels that publish late (Deno does, by a few milliseconds). 0 for well-behaved ones.
    output_grace: ClassVar[float] = 0.0
    #: The kernelspec written into notebook metadata when none is set.
    kernelspec: ClassVar[dict[str, str]] = {}

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config

    @abstractmethod
    def command(self, ctx: LaunchContext) -> list[str]:
        """Required. The argv that starts the kernel with ``ctx.connection_file``."""

    def environment(self, ctx: LaunchContext) -> dict[str, str]:
        """Optional. The process environment; default ``ctx.env`` unchanged."""
        return ctx.env

    def claim_code(self, ctx: LaunchContext, launched_in: Path) -> str | None:
        """Optional. Code that adapts an already running, idle kernel to a notebook.

        The daemon keeps *hot* kernels started ahead of time (in ``launched_in``,
        with no notebook); when one is claimed it runs this code silently, with
        ``ctx`` describing the notebook (``cwd``, ``notebook_id``). Return None
        (the default) if this launcher's kernels cannot be claimed that way.
        """
        return None

    async def launch(self, ctx: LaunchContext) -> asyncio.subprocess.Process:
        """Optional. Start the kernel process; the default runs :meth:`command`."""
        return await asyncio.create_subprocess_exec(
            *self.command(ctx),
            cwd=str(ctx.cwd),
            env=self.environment(ctx),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=ctx.stderr or asyncio.subprocess.DEVNULL,
            stderr=ctx.stderr or asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
