"""Where kernels come from: launcher and env resolution, pool environments, hot kernels.

:class:`Provisioner` owns the daemon's launcher and pool instances. For a
kernel start it decides *what* to start (:meth:`Provisioner.plan`: the kernel
type from the request or the notebook's kernelspec, the env_source from
:mod:`runtimed.envsource`), then *starts* it (:meth:`Provisioner.provision`):
a hot kernel when one of that kind is ready, else an environment from the pool
and a fresh kernel in it; whatever fails on the way is handed back. The result
is a :class:`Lease`, which :meth:`Provisioner.release` ends.

Hot kernels (:class:`HotKernels`) are kernels of the default kernel type
started ahead of time in the default family's ready pool, idle until claimed:
the launcher's ``claim_code`` moves a claimed one to the notebook's directory,
and it belongs to that notebook from then on (never shared). Refilling happens
in the background, after the pool has its own environments back, one kernel at
a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtimed import configfile, envsource
from runtimed.config import DaemonConfig, check_file
from runtimed.daemon.kernel import Kernel
from runtimed.errors import PluginError, RuntimedError
from runtimed.launchers import KernelLauncher, LaunchContext
from runtimed.plugins import Registry
from runtimed.pools import EnvPool, EnvRequest, PreparedEnv, Progress, no_progress

log = logging.getLogger(__name__)

#: Pause before refilling after a claim, so refills do not compete with the claimer's first cells.
REFILL_PAUSE = 1.0
#: Pause before trying again after a hot kernel failed to start.
HOT_RETRY = 30.0
#: The seed's status keys, reported (as 0) even when their pools are not installed.
SEED_STATUS_KEYS = ("uv_available", "conda_available", "uv_warming", "conda_warming")
HOT = "<hot>"


@dataclass
class KernelRequest:
    """What a room asks for when it starts a kernel."""

    notebook_id: str
    kernel_type: str | None = None
    env_source: str | None = None
    notebook_path: Path | None = None
    cwd: Path = field(default_factory=Path.home)
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Sources of the notebook's code cells, in order (script blocks live there).
    cell_sources: list[str] = field(default_factory=list)


@dataclass
class Plan:
    """What :meth:`Provisioner.plan` decided to start."""

    launcher: KernelLauncher
    #: The full kernel type, e.g. ``"python"`` or ``"jupyter:bash"``.
    kernel_type: str
    kernel_name: str | None
    #: The concrete env_source (the kernel type for launchers that need no environment).
    env_source: str
    pool: EnvPool | None = None
    project_file: Path | None = None


@dataclass
class Lease:
    """A started kernel and the environment it runs in, until :meth:`Provisioner.release`."""

    kernel: Kernel
    launcher: KernelLauncher
    kernel_type: str
    kernel_name: str | None
    env_source: str
    env: PreparedEnv | None
    pool: EnvPool | None
    #: Whether it was a hot kernel, claimed instead of launched.
    claimed: bool = False


class Provisioner:
    """The daemon's launchers and pools; see the module docstring."""

    def __init__(self, config: DaemonConfig, registry: Registry, runtime_dir: Path) -> None:
        self.config = config
        self.registry = registry
        self.runtime_dir = runtime_dir
        declared = registry.declared_settings()
        for namespace in check_file(declared):
            log.info("%s: [%s] is not used: no installed plugin declares that namespace",
                     configfile.path(), namespace)
        for namespace, setting, _owner in declared:
            config.resolve_setting(namespace, setting)  # a bad value fails now, naming its variable
        self.launchers = {kt: cls(config) for kt, cls in registry.launchers.items()}
        self.pools = {family: cls(config) for family, cls in registry.pools.items()}
        self.default_family = registry.default_family(config.default_family)
        self.default_kernel_type = registry.default_kernel_type(config.default_kernel_type)
        self.hot = self._hot_kernels()

    def _hot_kernels(self) -> HotKernels | None:
        kernel_type = self.default_kernel_type
        launcher = self.launchers.get(kernel_type) if kernel_type else None
        if launcher is None or not launcher.hot or self.config.hot_kernels <= 0:
            return None
        if not launcher.needs_env:
            return HotKernels(self, self.config.hot_kernels, launcher, kernel_type, None)
        pool = self.pools.get(self.default_family) if self.default_family else None
        if pool is None:
            return None
        return HotKernels(self, self.config.hot_kernels, launcher, kernel_type, pool)

    # lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        log.info("Plugins: launchers %s, pools %s (default kernel %s, default family %s)",
                 sorted(self.launchers), sorted(self.pools), self.default_kernel_type,
                 self.default_family)
        for pool in self.pools.values():
            await pool.start()
        if self.hot is not None:
            self.hot.start()

    async def stop(self) -> None:
        if self.hot is not None:
            await self.hot.stop()
        stops = [pool.stop for pool in self.pools.values()]
        stops += [launcher.close for launcher in self.launchers.values()]
        for stop in stops:
            try:
                await stop()
            except Exception:
                log.exception("Stopping %s failed", type(stop.__self__).__qualname__)

    async def flush(self) -> None:
        """Discard and rebuild every pool's ready envs, and the hot kernels made from them."""
        for pool in self.pools.values():
            await pool.flush()
        if self.hot is not None:
            await self.hot.flush()

    def status(self) -> dict[str, Any]:
        """Pool counts (the seed's four keys always, then ``<family>_available`` /
        ``<family>_warming`` for every pool) and ``hot_available``; for every pool and the hot
        kernels, ``<family>_error`` (the last build's error while builds keep failing, else
        None) and ``<family>_retry_in`` (seconds until the next attempt while backing off)."""
        counts: dict[str, Any] = dict.fromkeys(SEED_STATUS_KEYS, 0)
        for family, pool in self.pools.items():
            st = pool.status()
            counts[f"{family}_available"] = st.available
            counts[f"{family}_warming"] = st.warming
            counts[f"{family}_error"] = st.error
            counts[f"{family}_retry_in"] = st.retry_in
        hot = self.hot
        counts["hot_available"] = hot.available if hot is not None else 0
        counts["hot_error"] = hot.last_error if hot is not None else None
        counts["hot_retry_in"] = hot.retry_in() if hot is not None else None
        return counts

    # deciding ---------------------------------------------------------------------------------
    async def plan(self, req: KernelRequest) -> Plan:
        """What to start for ``req``: PluginError, InvalidRequest or EnvironmentFailed if
        nothing installed can."""
        launcher, kernel_type, kernel_name = await self._launcher_for(req.kernel_type, req.metadata)
        if not launcher.needs_env:
            if req.env_source not in (None, "", "auto", "prewarmed", kernel_type):
                log.warning("%s: env_source %r ignored for the %s kernel (it needs no environment)",
                            req.notebook_id, req.env_source, kernel_type)
            return Plan(launcher, kernel_type, kernel_name, env_source=kernel_type)
        resolved = envsource.resolve(
            req.env_source, pools=list(self.registry.pools.values()),
            default_family=self.default_family, notebook_path=req.notebook_path,
            metadata=req.metadata, cell_sources=req.cell_sources)
        pool = self.pools[resolved.env_source.split(":", 1)[0]]
        return Plan(launcher, kernel_type, kernel_name, resolved.env_source, pool,
                    resolved.project_file)

    async def _launcher_for(self, requested: str | None,
                            metadata: dict[str, Any]) -> tuple[KernelLauncher, str, str | None]:
        if requested and requested != "auto":
            if requested in self.launchers:
                return self.launchers[requested], requested, None
            prefix, _, name = requested.partition(":")
            name = name.lower()  # kernelspec names are case-insensitive, as in jupyter_client
            requested = f"{prefix}:{name}"
            launcher = self.launchers.get(prefix)
            if launcher is None or not name:
                raise PluginError(
                    f"No kernel launcher for kernel_type {requested!r} (installed: "
                    f"{', '.join(sorted(self.launchers)) or 'none'}; `runtimed plugins` lists them)")
            specs = await launcher.kernelspecs()
            if name not in specs:
                raise PluginError(
                    f"No {prefix} kernel named {name!r} (available: "
                    f"{', '.join(sorted(specs)) or 'none'})")
            return launcher, requested, name
        spec = metadata.get("kernelspec") if isinstance(metadata.get("kernelspec"), dict) else {}
        info = metadata.get("language_info") if isinstance(metadata.get("language_info"), dict) else {}
        name = spec["name"].lower() if isinstance(spec.get("name"), str) else None
        language = spec.get("language") or info.get("name")
        language = language if isinstance(language, str) else None
        cls = self.registry.launcher_claiming(kernelspec_name=name)
        if cls is not None:
            return self.launchers[cls.kernel_type], cls.kernel_type, None
        unlisted: list[str] = []  # launchers that could not say what they serve (a gateway down)
        if name:
            for kernel_type, launcher in self.launchers.items():
                try:
                    specs = await launcher.kernelspecs()
                except RuntimedError as exc:
                    log.info("Kernel type %s: could not list its kernels: %s", kernel_type, exc)
                    unlisted.append(f"{kernel_type}: {exc.message}")
                    continue
                if name in specs:
                    return launcher, f"{kernel_type}:{name}", name
        cls = self.registry.launcher_claiming(language=language)
        if cls is not None:
            return self.launchers[cls.kernel_type], cls.kernel_type, None
        if name or language:
            raise PluginError(
                f"No installed kernel serves this notebook's kernelspec {name!r} "
                f"(language {language!r}); install that kernel, or start one with kernel_type= "
                f"(installed: {', '.join(sorted(self.launchers)) or 'none'})"
                + (f"; not asked: {'; '.join(unlisted)}" if unlisted else ""))
        default = self.default_kernel_type
        if default is None or default not in self.launchers:
            raise PluginError(
                "No kernel launcher is installed to start a default kernel"
                if default is None else f"The default kernel type {default!r} has no launcher "
                f"(installed: {', '.join(sorted(self.launchers)) or 'none'})")
        return self.launchers[default], default, None

    # starting -----------------------------------------------------------------------------------
    async def provision(self, plan: Plan, req: KernelRequest, progress: Progress) -> Lease:
        """Start ``plan``'s kernel for ``req`` (a hot one when ready); nothing leaks on failure."""
        if self.hot is not None:
            hot = self.hot.claim(plan.kernel_type, plan.env_source)
            if hot is not None:
                return await self._adopt(hot, req.notebook_id, req.cwd)
        env = None
        if plan.pool is not None:
            env = await plan.pool.acquire(
                EnvRequest(env_source=plan.env_source, notebook_id=req.notebook_id,
                           notebook_path=req.notebook_path, metadata=req.metadata,
                           cell_sources=req.cell_sources, project_file=plan.project_file),
                progress)
        try:
            progress("launching", f"Starting {plan.kernel_type} kernel")
            kernel = await self._launch(plan.launcher, plan.kernel_type, plan.kernel_name,
                                        req.notebook_id, req.cwd, env)
        except BaseException:
            if env is not None and plan.pool is not None:
                await plan.pool.release(env)
            raise
        return Lease(kernel, plan.launcher, plan.kernel_type, plan.kernel_name, plan.env_source,
                     env, plan.pool)

    async def _launch(self, launcher: KernelLauncher, kernel_type: str, kernel_name: str | None,
                      notebook_id: str, cwd: Path, env: PreparedEnv | None) -> Kernel:
        return await Kernel.launch(launcher, kernel_type=kernel_type, kernel_name=kernel_name,
                                   runtime_dir=self.runtime_dir, notebook_id=notebook_id,
                                   cwd=cwd, env=env)

    async def _adopt(self, hot: Lease, notebook_id: str, cwd: Path) -> Lease:
        """Make a claimed hot kernel the notebook's (its launcher's claim_code runs in it)."""
        kernel = hot.kernel
        ctx = LaunchContext(notebook_id=notebook_id, kernel_type=hot.kernel_type, kernel_name=None,
                            connection_file=kernel.connection_file or Path(),
                            connection_info=kernel.handle.connection_info, cwd=cwd, env={},
                            prepared_env=hot.env)
        code = hot.launcher.claim_code(ctx, kernel.cwd)
        try:
            if code:
                await kernel.run_silently(code)
        except BaseException:
            await self.release(hot)
            raise
        kernel.cwd = cwd
        hot.claimed = True
        return hot

    async def restart(self, lease: Lease, notebook_id: str) -> Lease:
        """Replace ``lease``'s kernel: a hot one of the same kind when ready (prewarmed envs
        are interchangeable), else a fresh kernel in the same environment. A kernel whose
        handle restarts it in place (a gateway's) is restarted that way."""
        if await lease.kernel.restart_in_place():
            return lease
        await lease.kernel.kill()
        if self.hot is not None:
            hot = self.hot.claim(lease.kernel_type, lease.env_source)
            if hot is not None:
                if lease.env is not None and lease.pool is not None:
                    await lease.pool.release(lease.env)
                return await self._adopt(hot, notebook_id, lease.kernel.cwd)
        try:
            kernel = await self._launch(lease.launcher, lease.kernel_type, lease.kernel_name,
                                        notebook_id, lease.kernel.cwd, lease.env)
        except BaseException:
            if lease.env is not None and lease.pool is not None:
                await lease.pool.release(lease.env)
            raise
        return Lease(kernel, lease.launcher, lease.kernel_type, lease.kernel_name,
                     lease.env_source, lease.env, lease.pool)

    async def release(self, lease: Lease, *, graceful: bool = True) -> None:
        """Stop the kernel (politely first, with ``graceful``) and hand its environment back."""
        try:
            await (lease.kernel.shutdown() if graceful else lease.kernel.kill())
        finally:
            if lease.env is not None and lease.pool is not None:
                env, lease.env = lease.env, None
                await lease.pool.release(env)


class HotKernels:
    """Keeps ``size`` idle kernels of one launcher in one pool's first source (see the module
    docstring); ``pool`` is None for a launcher that needs no environment."""

    def __init__(self, provisioner: Provisioner, size: int, launcher: KernelLauncher,
                 kernel_type: str, pool: EnvPool | None) -> None:
        self.provisioner = provisioner
        self.size = size
        self.launcher = launcher
        self.kernel_type = kernel_type
        self.pool = pool
        self.env_source = pool.sources[0] if pool is not None else kernel_type
        self._ready: deque[Lease] = deque()
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Why the last start failed (None once one succeeds), and when the next is tried.
        self.last_error: str | None = None
        self._retry_at = 0.0

    @property
    def available(self) -> int:
        return len(self._ready)

    def retry_in(self) -> float | None:
        """Seconds until the next start after a failure, else None."""
        left = self._retry_at - time.monotonic()
        return round(left, 1) if self.last_error is not None and left > 0 else None

    def start(self) -> None:
        if self.size > 0:
            self._task = asyncio.create_task(self._fill(), name="runtimed-hot-kernels")
            self._wanted.set()

    def claim(self, kernel_type: str, env_source: str) -> Lease | None:
        """A ready kernel for this combination, or None."""
        if kernel_type != self.kernel_type or env_source != self.env_source:
            return None
        while self._ready:
            hot = self._ready.popleft()
            self._wanted.set()
            if hot.kernel.alive:
                return hot
            asyncio.create_task(self.provisioner.release(hot, graceful=False))
        return None

    async def _fill(self) -> None:
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await asyncio.sleep(REFILL_PAUSE)
            while len(self._ready) < self.size:
                if self.pool is not None and self.pool.status().available == 0:
                    await asyncio.sleep(REFILL_PAUSE)  # let the pool serve real starts first
                    continue
                try:
                    lease = await self._start_one()
                except Exception as exc:
                    log.warning("Hot kernels: could not start one (%s); retrying in %g s", exc,
                                HOT_RETRY)
                    self.last_error = exc.message if isinstance(exc, RuntimedError) else str(exc)
                    self._retry_at = time.monotonic() + HOT_RETRY
                    await asyncio.sleep(HOT_RETRY)
                    continue
                self.last_error = None
                self._ready.append(lease)
                log.info("Hot kernels: %d/%d ready", len(self._ready), self.size)

    async def _start_one(self) -> Lease:
        env = None
        if self.pool is not None:
            env = await self.pool.acquire(EnvRequest(env_source=self.env_source, notebook_id=HOT),
                                          no_progress)
        try:
            kernel = await self.provisioner._launch(self.launcher, self.kernel_type, None, HOT,
                                                    Path.home(), env)
        except BaseException:
            if env is not None and self.pool is not None:
                await self.pool.release(env)
            raise
        return Lease(kernel, self.launcher, self.kernel_type, None, self.env_source, env, self.pool)

    async def flush(self) -> None:
        """Retire the idle kernels (their environments were flushed) and refill from the new ones."""
        while self._ready:
            await self.provisioner.release(self._ready.popleft(), graceful=False)
        self._wanted.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._ready:
            await self.provisioner.release(self._ready.popleft(), graceful=False)

