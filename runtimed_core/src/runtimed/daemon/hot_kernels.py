"""Hot kernels: kernels started ahead of time in prewarmed environments, idle until claimed.

``start_kernel`` for the default combination (python in ``<family>:prewarmed``)
claims one instead of launching: the launcher's :meth:`claim_code` moves it to
the notebook's directory, and it belongs to that notebook from then on (never
shared). Refilling happens in the background, after the pool has its own
environments back, one kernel at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runtimed.daemon.kernel import KernelProcess
from runtimed.pools import EnvPool, EnvRequest, PreparedEnv, no_progress

if TYPE_CHECKING:
    from runtimed.daemon.server import Daemon

log = logging.getLogger(__name__)

#: Pause before refilling after a claim, so refills do not compete with the claimer's first cells.
REFILL_PAUSE = 1.0


@dataclass
class HotKernel:
    process: KernelProcess
    env: PreparedEnv
    pool: EnvPool


class HotKernels:
    """Keeps ``size`` idle kernels of one (kernel_type, env_source) combination."""

    def __init__(self, daemon: Daemon, size: int, kernel_type: str, env_source: str) -> None:
        self.daemon = daemon
        self.size = size
        self.kernel_type = kernel_type
        self.env_source = env_source
        self._ready: deque[HotKernel] = deque()
        self._wanted = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def available(self) -> int:
        return len(self._ready)

    def start(self) -> None:
        if self.size > 0 and self.kernel_type in self.daemon.launchers:
            self._task = asyncio.create_task(self._fill(), name="runtimed-hot-kernels")
            self._wanted.set()

    def claim(self, kernel_type: str, env_source: str) -> HotKernel | None:
        """A ready kernel for this combination, or None."""
        if kernel_type != self.kernel_type or env_source != self.env_source:
            return None
        while self._ready:
            hot = self._ready.popleft()
            self._wanted.set()
            if hot.process.alive:
                return hot
            asyncio.create_task(self._discard(hot))
        return None

    async def _fill(self) -> None:
        daemon = self.daemon
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            await asyncio.sleep(REFILL_PAUSE)
            while len(self._ready) < self.size:
                pool = daemon.pool_for(self.env_source)
                if pool.status().available == 0:  # let the pool serve real starts first
                    await asyncio.sleep(REFILL_PAUSE)
                    continue
                try:
                    env = await pool.acquire(
                        EnvRequest(env_source=self.env_source, notebook_id="<hot>"), no_progress)
                except Exception as exc:
                    log.warning("Hot kernels: no environment (%s); retrying later", exc)
                    await asyncio.sleep(30)
                    continue
                launcher = daemon.launchers[self.kernel_type](daemon.config)
                process = KernelProcess(launcher, daemon.runtime_dir)
                try:
                    await process.start(notebook_id="<hot>", cwd=Path.home(), env=env)
                except BaseException as exc:
                    await pool.release(env)
                    if not isinstance(exc, Exception):
                        raise
                    log.warning("Hot kernels: a kernel failed to start (%s); retrying later", exc)
                    await asyncio.sleep(30)
                    continue
                self._ready.append(HotKernel(process, env, pool))
                log.info("Hot kernels: %d/%d ready", len(self._ready), self.size)

    async def _discard(self, hot: HotKernel) -> None:
        await hot.process.kill()
        await hot.pool.release(hot.env)

    async def flush(self) -> None:
        """Retire the idle kernels (their environments were flushed) and refill from the new ones."""
        while self._ready:
            await self._discard(self._ready.popleft())
        self._wanted.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._ready:
            await self._discard(self._ready.popleft())
