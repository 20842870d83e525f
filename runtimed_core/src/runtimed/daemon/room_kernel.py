"""A room's kernel lifecycle: start (or join the running one), shut down, and its status.

The room's runtime-state document says where a start is (``resolving``,
``preparing_env`` with the pool's progress, ``launching``, ``running``, or
``error`` with the reason); :class:`~runtimed.daemon.provisioning.Provisioner`
decides what to start and starts it; :class:`~runtimed.daemon.executor.KernelRunner`
runs the cells once it is up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from runtimed.daemon.executor import KernelRunner
from runtimed.daemon.host import RoomHost
from runtimed.daemon.plugin_sinks import PluginSinks
from runtimed.daemon.provisioning import KernelRequest, Lease, Provisioner
from runtimed.document.runtime_state import LIFECYCLES, read_kernel
from runtimed.errors import InvalidRequest, NoKernel, RuntimedError

log = logging.getLogger(__name__)


class RoomKernel:
    """The kernel of one room (at most one at a time)."""

    def __init__(self, host: RoomHost, provisioner: Provisioner, sinks: PluginSinks) -> None:
        self.host = host
        self.provisioner = provisioner
        self.sinks = sinks
        self.runner: KernelRunner | None = None
        self._starting: asyncio.Task[dict[str, Any]] | None = None
        self._stopping: set[asyncio.Future[None]] = set()
        self._shut_down = False

    def info(self) -> dict[str, Any]:
        """The room's kernel as ``list_rooms`` reports it."""
        runner = self.runner
        alive = runner is not None and runner.alive
        record = read_kernel(self.host.writer.replica)
        if runner is not None and alive:
            status = "busy" if runner.running is not None or runner.queue else "idle"
        else:
            status = record.get("lifecycle", "not_started")
        return {
            "has_kernel": alive,
            "kernel_type": runner.kernel_type if runner else None,
            "kernel_status": status,
            "env_source": runner.env_source if runner else None,
            "kernel_error": record.get("error"),
            "connection_file": record.get("connection_file") if alive else None,
        }

    def connection_info(self) -> dict[str, Any]:
        """The running kernel's Jupyter connection info, for another Jupyter client (a kernel
        provisioner) to talk to it directly. NoKernel if none runs; InvalidRequest for a kernel
        that is not reached over ZMQ (a gateway's)."""
        runner = self.runner
        if runner is None or not runner.alive:
            raise NoKernel("No kernel is running. Call start_kernel() first.",
                           notebook_id=self.host.notebook_id)
        info = runner.lease.kernel.zmq_connection_info
        if info is None:
            raise InvalidRequest(f"The {runner.kernel_type} kernel is not reached over ZMQ: it has "
                                 "no connection info for other Jupyter clients",
                                 notebook_id=self.host.notebook_id)
        return info

    def _progress(self, phase: str, message: str) -> None:
        fields: dict[str, Any] = {"progress": message}
        if phase in LIFECYCLES:
            fields["lifecycle"] = phase
        self.host.writer.set_kernel(**fields)
        self.host.schedule_flush()
        log.info("%s: %s", self.host.notebook_id, message)

    async def start(self, kernel_type: str | None = None, env_source: str | None = None,
                    notebook_path: str | None = None, cwd: str | None = None) -> dict[str, Any]:
        """Start the room's kernel, or return the running one (``reused``)."""
        if self.runner is not None and self.runner.alive:
            return {**self._started_info(), "reused": True}
        if self._starting is None:
            self._starting = asyncio.create_task(
                self._start(kernel_type, env_source, notebook_path, cwd))
            self._starting.add_done_callback(lambda _: setattr(self, "_starting", None))
        return await asyncio.shield(self._starting)

    def _started_info(self) -> dict[str, Any]:
        assert self.runner is not None
        return {"kernel_type": self.runner.kernel_type, "env_source": self.runner.env_source}

    async def _start(self, kernel_type: str | None, env_source: str | None,
                     notebook_path: str | None, cwd: str | None) -> dict[str, Any]:
        host, provisioner = self.host, self.provisioner
        started = asyncio.get_running_loop().time()
        host.writer.set_kernel(lifecycle="resolving", error=None, progress=None, activity=None)
        host.schedule_flush()
        metadata = host.notebook_metadata()
        path = Path(notebook_path).expanduser() if notebook_path else host.notebook_path()
        work_dir = path.parent if path else Path(cwd) if cwd and os.path.isdir(cwd) else Path.home()
        request = KernelRequest(notebook_id=host.notebook_id, kernel_type=kernel_type,
                                env_source=env_source, notebook_path=path, cwd=work_dir,
                                metadata=metadata, cell_sources=host.code_sources())
        try:
            plan = await provisioner.plan(request)
            host.writer.set_kernel(kernel_type=plan.kernel_type)
            if self.runner is not None:  # a dead or shut-down kernel: hand its env back first
                old, self.runner = self.runner, None
                await old.shutdown()
            if plan.pool is not None:
                host.writer.set_kernel(lifecycle="preparing_env", env_source=plan.env_source)
                host.schedule_flush()
            lease = await provisioner.provision(plan, request, self._progress)
        except BaseException as exc:
            message = exc.message if isinstance(exc, RuntimedError) else f"{type(exc).__name__}: {exc}"
            host.writer.set_kernel(lifecycle="error", error=message, activity=None, progress=None)
            host.schedule_flush()
            raise
        host.writer.set_kernel(env_source=lease.env_source)
        runner = KernelRunner(host, lease, sinks=self.sinks, restart=self._restart,
                              release=provisioner.release)
        runner.start()
        log.info("%s: %s kernel %s in %.3f s (pid %s, %s)", host.notebook_id, lease.kernel_type,
                 "claimed" if lease.claimed else "ready", asyncio.get_running_loop().time() - started,
                 lease.kernel.pid, lease.env_source)
        self.runner = runner
        self._shut_down = False
        if "kernelspec" not in metadata:
            spec = await plan.launcher.kernelspec_for(plan.kernel_name)
            if spec:
                host.set_default_kernelspec(spec)
        host.flush()
        return {**self._started_info(), "reused": False}

    async def switch(self, request: KernelRequest, progress: Any) -> dict[str, Any]:
        """Start a kernel for ``request`` beside the running one and, once it is up, put it in
        the running one's place (whose cells fail as restarted). If the new one cannot start
        (its environment does not build, say), the running kernel stays as it was."""
        plan = await self.provisioner.plan(request)
        lease = await self.provisioner.provision(plan, request, progress)
        old, self.runner = self.runner, None
        if old is not None:
            old.kernel_gone("Kernel restarted in a new environment", "restarted")
            await old.shutdown()
        runner = KernelRunner(self.host, lease, sinks=self.sinks, restart=self._restart,
                              release=self.provisioner.release)
        self.host.writer.set_kernel(kernel_type=lease.kernel_type, env_source=lease.env_source,
                                    progress=None)
        runner.start()
        self.runner = runner
        self._shut_down = False
        log.info("%s: %s kernel switched to %s (pid %s)", self.host.notebook_id, lease.kernel_type,
                 lease.env_source, lease.kernel.pid)
        self.host.flush()
        return self._started_info()

    async def _restart(self, lease: Lease) -> Lease:
        return await self.provisioner.restart(lease, self.host.notebook_id)

    async def runner_for(self, auto_start: bool) -> KernelRunner:
        """The runner to execute on, starting a kernel if none was ever started here."""
        if self._starting is not None:
            await asyncio.shield(self._starting)
        if self.runner is not None and (self.runner.alive or self.runner.dead_reason):
            return self.runner
        if self._shut_down:
            raise NoKernel("No kernel is running: it was shut down. Call start_kernel() to start one.",
                           notebook_id=self.host.notebook_id)
        if not auto_start:
            raise NoKernel("No kernel is running. Call start_kernel() first.",
                           notebook_id=self.host.notebook_id)
        await self.start()
        assert self.runner is not None
        return self.runner

    async def shutdown(self, *, wait: bool = True) -> None:
        """Stop the kernel for good. Without ``wait`` this returns once the room says so (no
        kernel runs for it any more); the process ends and its environment goes back in the
        background (a later ``shutdown(wait=True)``, as when the room closes, waits for that)."""
        if self._starting is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._starting)
        runner, self.runner = self.runner, None
        if runner is not None:
            runner.kernel_gone("Kernel shut down", "shutdown")  # now, before this returns
            stopping = asyncio.ensure_future(runner.shutdown())
            self._stopping.add(stopping)
            stopping.add_done_callback(self._stopping.discard)
            self._shut_down = True
            self.host.writer.set_kernel(lifecycle="shutdown", activity=None, progress=None,
                                        connection_file=None)
            self.host.flush()
        if wait and self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)
