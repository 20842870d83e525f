"""The kernel-launcher contract: what a plugin implements to start one kind of kernel.

A launcher says *what to start* and returns a :class:`runtimed.kernel_handles.KernelHandle`;
the daemon does the Jupyter messaging (connection file, channels, the IOPub
handshake, routing, interrupts) with whatever endpoints the handle gives. The
default :meth:`KernelLauncher.launch` spawns :meth:`KernelLauncher.command`
with :meth:`KernelLauncher.environment` as a local process; override it for a
kernel that runs anywhere else (a container, another host, a gateway).

A launcher also *declares* what it serves, as class attributes the daemon reads
without instantiating anything: its ``kernel_type``, the kernelspec names and
languages ``kernel_type="auto"`` maps to it, whether its kernels can be kept
*hot*, and its configuration knobs (:class:`runtimed.settings.Setting`). A
launcher that serves a whole family of kernels (every installed Jupyter
kernelspec, every kernel a gateway offers) answers ``<kernel_type>:<name>``
for each name :meth:`KernelLauncher.kernelspecs` lists.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from runtimed.config import DaemonConfig
from runtimed.kernel_handles import KernelHandle, LocalKernel
from runtimed.pools import PreparedEnv
from runtimed.settings import Configurable, Setting


@dataclass
class LaunchContext:
    """Everything known about one kernel start."""

    notebook_id: str
    #: A connection file the daemon wrote (mode 0600) for a kernel on this machine: ports
    #: on 127.0.0.1 and a fresh key. A kernel elsewhere may ignore it.
    connection_file: Path
    cwd: Path
    #: Environment variables for the kernel process (a copy; change it freely).
    env: dict[str, str]
    #: The pool environment, for launchers with :attr:`KernelLauncher.needs_env`.
    prepared_env: PreparedEnv | None = None
    #: The kernel type asked for, e.g. ``"python"`` or ``"jupyter:bash"``.
    kernel_type: str = ""
    #: For ``<kernel_type>:<name>`` requests, the name (``"bash"``); otherwise None.
    kernel_name: str | None = None
    #: What :attr:`connection_file` holds, as a dict.
    connection_info: dict[str, Any] = field(default_factory=dict)
    #: Where a local kernel's stdout and stderr go; the daemon quotes its tail when a
    #: launch fails or the kernel dies.
    stderr_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class KernelLauncher(Configurable, ABC):
    """Base class of kernel launchers. Required: :attr:`kernel_type` and :meth:`command`
    (or :meth:`launch`)."""

    #: The name users pass as ``start_kernel(kernel_type=...)``.
    kernel_type: ClassVar[str]
    #: Kernelspec names (``metadata.kernelspec.name``) that ``kernel_type="auto"`` maps here.
    kernelspec_names: ClassVar[tuple[str, ...]] = ()
    #: Languages (``kernelspec.language`` / ``language_info.name``) that ``auto`` maps here
    #: when no launcher claims the kernelspec's name.
    languages: ClassVar[tuple[str, ...]] = ()
    #: Whether the kernel needs an environment from a pool.
    needs_env: ClassVar[bool] = True
    #: ``"signal"`` interrupts through the handle (SIGINT for a local process);
    #: ``"message"`` sends an interrupt_request on the control channel.
    interrupt_mode: ClassVar[Literal["signal", "message"]] = "signal"
    #: Seconds to keep collecting a cell's outputs after its reply and idle status, for
    #: kernels that publish late. 0 for well-behaved ones.
    output_grace: ClassVar[float] = 0.0
    #: The kernelspec written into notebook metadata when none is set.
    kernelspec: ClassVar[dict[str, str]] = {}
    #: Whether the daemon may start kernels of this type ahead of time and hand one to
    #: a notebook (then :meth:`claim_code` adapts it to the notebook).
    hot: ClassVar[bool] = False
    #: Which kernel type starts when neither the request nor the notebook says
    #: (``RUNTIMED_DEFAULT_KERNEL_TYPE`` unset): the lowest rank wins; None: never by default.
    default_rank: ClassVar[int | None] = None
    #: Configuration knobs, keyed ``<kernel_type>.<name>``.
    settings: ClassVar[tuple[Setting, ...]] = ()

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config

    @classmethod
    def settings_namespace(cls) -> str:
        return cls.kernel_type

    def command(self, ctx: LaunchContext) -> list[str]:
        """Required unless :meth:`launch` is overridden. The argv that starts the kernel
        with ``ctx.connection_file``."""
        raise NotImplementedError(f"{type(self).__qualname__} implements neither command() nor launch()")

    def environment(self, ctx: LaunchContext) -> dict[str, str]:
        """Optional. The process environment; default ``ctx.env`` unchanged."""
        return ctx.env

    async def kernelspecs(self) -> dict[str, dict[str, Any]]:
        """Optional. Names this launcher serves as ``<kernel_type>:<name>``, each with its
        kernelspec (``display_name``, ``language``...); ``auto`` picks one from a
        notebook's kernelspec name when no launcher declares that name. Default: none.
        Called when a kernel starts and by ``runtimed plugins``; keep it quick."""
        return {}

    async def kernelspec_for(self, kernel_name: str | None) -> dict[str, Any]:
        """Optional. The kernelspec to record in a notebook that has none; default
        :attr:`kernelspec` (for a named kernel, its entry in :meth:`kernelspecs`)."""
        if kernel_name is not None:
            spec = (await self.kernelspecs()).get(kernel_name, {})
            return {"name": kernel_name, "display_name": spec.get("display_name", kernel_name),
                    "language": spec.get("language", "")}
        return dict(self.kernelspec)

    def claim_code(self, ctx: LaunchContext, launched_in: Path) -> str | None:
        """Optional (required with :attr:`hot`). Code that adapts a running, idle kernel to
        a notebook.

        Hot kernels are started ahead of time (in ``launched_in``, for no
        notebook); when one is claimed the daemon runs this code silently, with
        ``ctx`` describing the notebook (``cwd``, ``notebook_id``). None: nothing to run.
        """
        return None

    async def launch(self, ctx: LaunchContext) -> KernelHandle:
        """Optional. Start the kernel and return its handle; the default runs
        :meth:`command` as a local process (:meth:`LocalKernel.spawn`)."""
        return await LocalKernel.spawn(
            self.command(ctx), cwd=ctx.cwd, env=self.environment(ctx),
            connection_info=ctx.connection_info, connection_file=ctx.connection_file,
            stderr_path=ctx.stderr_path, interrupt_mode=self.interrupt_mode,
        )

    async def close(self) -> None:
        """Optional. The daemon is stopping: release what the launcher holds (sessions...)."""
