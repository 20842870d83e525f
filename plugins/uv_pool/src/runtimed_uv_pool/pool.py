"""The uv pool: N ready virtual environments with ipykernel, built ahead of time.

Layout under ``config.cache_dir / "envs"``::

    uv-prewarmed-<hex>.partial/  an env being built (never handed out; deleted at start)
    uv-prewarmed-<hex>/          a ready env; ``.warmed`` holds JSON {created, python, packages}
                                 (an env handed to a kernel loses its marker: never reused)

The pool touches nothing else in that directory (other pools share it).

One background task (the *warmer*) builds envs one at a time until the pool
holds its target plus one per waiting :meth:`UvPool.acquire`. It sleeps on an
:class:`asyncio.Event` between builds; :meth:`UvPool.acquire` waiters sleep on a
"something changed" event the warmer sets after every build, success or failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimed.config import DaemonConfig
from runtimed.errors import EnvironmentFailed
from runtimed.pools import EnvPool, EnvRequest, PoolStatus, PreparedEnv, Progress
from runtimed_uv_pool import uv

log = logging.getLogger("runtimed.pools.uv")

READY_PREFIX = "uv-prewarmed-"
PARTIAL_SUFFIX = ".partial"
MARKER = ".warmed"
#: Packages every pool env gets, before ``config.default_packages``.
BASE_PACKAGES = ("ipykernel", "ipywidgets")
WARM_UP = "import ipykernel.kernelapp, ipywidgets"


class BuildFailed(Exception):
    """Building one env failed; the message says which step and quotes uv."""


@dataclass
class _ReadyEnv:
    path: Path
    created: float

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


class UvPool(EnvPool):
    """A pool of prewarmed uv venvs (``uv:prewarmed``); see the module docstring.

    Tunables are plain attributes so the daemon (or a test) can change them
    after construction.
    """

    family = "uv"
    sources = ("uv:prewarmed",)

    #: Longest :meth:`acquire` waits for the warmer, in seconds.
    acquire_timeout: float = 120.0
    #: :meth:`acquire` gives up early once this many builds in a row failed
    #: (at least one of them while it was waiting).
    give_up_after_failures: int = 2
    #: Ready envs older than this (seconds) are deleted and rebuilt.
    max_age: float = 2 * 24 * 3600
    #: Longest one build step (a ``uv`` command) may take, in seconds.
    step_timeout: float = 600.0
    #: Longest pause between retries while builds keep failing and nobody waits.
    max_retry_delay: float = 300.0

    def __init__(self, config: DaemonConfig) -> None:
        super().__init__(config)
        self.envs_dir = Path(config.cache_dir) / "envs"
        self._ready: deque[_ReadyEnv] = deque()
        self._running = False
        self._warmer: asyncio.Task[None] | None = None
        self._building = False
        self._warmer_crashed = False
        self._waiters = 0
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._deletions: set[asyncio.Task[None]] = set()
        self._consecutive_failures = 0
        self._failures_total = 0
        self._last_error: str | None = None
        self._retry_at = 0.0
        self._logged_available: int | None = None

    # -- the EnvPool contract -------------------------------------------------

    @property
    def target(self) -> int:
        """How many ready envs the pool keeps (``config.pool_size("uv")``)."""
        return max(0, self.config.pool_size(self.family))

    @property
    def packages(self) -> list[str]:
        """What every env gets installed: ipykernel, ipywidgets, then the user's defaults."""
        return [*BASE_PACKAGES, *self.config.default_packages]

    async def start(self) -> None:
        """Reuse valid envs left on disk, delete the rest, and start warming in the background."""
        if self._running:
            return
        self._running = True
        self._consecutive_failures = 0
        self._last_error = None
        self._retry_at = 0.0
        # Fresh events: asyncio primitives bind to the loop that first waits on them.
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self.envs_dir.mkdir(parents=True, exist_ok=True)
        reusable = await self._scan()  # newest first
        for env in reusable[self.target :]:
            self._discard(env.path)
        # Oldest first, like the envs the warmer appends: acquire() takes from the left.
        self._ready.extend(reversed(reusable[: self.target]))
        self._log_available()
        self._start_warmer()

    async def stop(self) -> None:
        """Cancel the warmer (killing a running uv), wake waiters, finish deletions.

        Ready envs stay on disk for the next :meth:`start`. Safe to call twice.
        """
        self._running = False
        await self._stop_warmer()
        self._notify()
        self._ready.clear()
        self._logged_available = None
        while self._deletions:
            await asyncio.gather(*self._deletions)

    async def acquire(self, request: EnvRequest, progress: Progress) -> PreparedEnv:
        """Hand out one ready env (never twice) and start building its replacement.

        With none ready, report progress and wait up to :attr:`acquire_timeout`
        for the warmer (a pool size of 0 builds one for this request). Raises
        :class:`EnvironmentFailed` for a source this pool does not serve, a
        stopped pool, repeated build failures (quoting uv), or the timeout.
        """
        if request.env_source not in self.sources:
            raise EnvironmentFailed(
                f"The uv pool provides {', '.join(self.sources)}, not {request.env_source!r}.",
                env_source=request.env_source,
            )
        if not self._running:
            raise EnvironmentFailed(
                "The uv pool is not running (the daemon is starting or stopping); try again.",
                env_source=request.env_source,
            )
        env = self._take_ready()
        if env is None:
            progress("preparing_env", "Waiting for the uv pool to warm an environment")
            env = await self._wait_for_env(request.env_source)
        self._wake.set()  # build the replacement
        return PreparedEnv(
            env_source=self.sources[0],
            prefix=env.path,
            python=[str(env.python)],
            extra={"created": env.created},
        )

    async def release(self, env: PreparedEnv) -> None:
        """The kernel is gone: delete its env directory in the background."""
        prefix = Path(env.prefix)
        if prefix.parent != self.envs_dir or not prefix.name.startswith(READY_PREFIX):
            # Never delete a directory the pool did not create.
            log.warning("UV pool: not deleting %s, it is not one of the pool's envs", prefix)
            return
        if self._running:
            self._discard(prefix)
        else:
            await asyncio.to_thread(shutil.rmtree, prefix, True)

    def status(self) -> PoolStatus:
        """``available``: ready envs; ``warming``: the build running plus those still to build."""
        available = len(self._ready)
        warming = 1 if self._building else 0
        if self._warmer is not None and not self._warmer.done():
            warming = max(warming, self._wanted() - available)
        return PoolStatus(available=available, warming=warming, target=self.target)

    async def flush(self) -> None:
        """Delete every ready env, abandon a build in progress, and rebuild to the target."""
        while self._ready:
            self._discard(self._ready.popleft().path)
        self._consecutive_failures = 0
        self._last_error = None
        self._retry_at = 0.0
        self._log_available()
        await self._stop_warmer()
        if self._running and self._warmer is None:  # not stopped (or restarted) meanwhile
            self._start_warmer()

    # -- handing envs out -----------------------------------------------------

    def _take_ready(self) -> _ReadyEnv | None:
        """Pop the oldest ready env that is still intact; discard broken ones on the way."""
        while self._ready:
            env = self._ready.popleft()
            marker = env.path / MARKER
            if env.python.exists() and marker.exists():
                marker.unlink(missing_ok=True)  # handed out: never reused after a restart
                self._log_available()
                return env
            log.warning("UV pool: discarding broken environment %s", env.path)
            self._discard(env.path)
        self._log_available()
        return None

    async def _wait_for_env(self, env_source: str) -> _ReadyEnv:
        """Wait for the warmer to produce an env; raise when it keeps failing or time runs out."""
        deadline = time.monotonic() + self.acquire_timeout
        failures_seen = self._failures_total
        self._waiters += 1
        self._wake.set()
        try:
            while True:
                changed = self._changed
                env = self._take_ready()
                if env is not None:
                    return env
                if not self._running or self._warmer_crashed:
                    raise EnvironmentFailed(
                        "The uv pool stopped before an environment was ready."
                        + self._last_error_hint(),
                        env_source=env_source,
                    )
                if (
                    self._failures_total > failures_seen
                    and self._consecutive_failures >= self.give_up_after_failures
                ):
                    raise EnvironmentFailed(
                        f"The uv pool could not build an environment "
                        f"({self._consecutive_failures} attempts in a row failed). "
                        f"{self._last_error}\n{self._fix_hint()}",
                        env_source=env_source,
                    )
                if not await _wait_event(changed, deadline - time.monotonic()):
                    raise EnvironmentFailed(
                        f"Timed out after {self.acquire_timeout:g} s waiting for the uv pool "
                        "to warm an environment." + self._last_error_hint(),
                        env_source=env_source,
                    ) from None
        finally:
            self._waiters -= 1

    def _last_error_hint(self) -> str:
        return f" Last build error: {self._last_error}" if self._last_error else ""

    def _fix_hint(self) -> str:
        extra = self.config.default_packages
        packages = f" (RUNTIMED_DEFAULT_PACKAGES={','.join(extra)})" if extra else ""
        return (
            f"Check the default packages{packages}, the interpreter "
            f"({self.config.python}) and access to the package index, then flush the pool."
        )

    # -- the warmer -----------------------------------------------------------

    def _wanted(self) -> int:
        """Ready envs the warmer aims for: the target plus one per waiting acquire."""
        return self.target + self._waiters

    def _start_warmer(self) -> None:
        self._warmer_crashed = False
        self._warmer = asyncio.create_task(self._warm(), name="runtimed-uv-pool-warmer")

    async def _stop_warmer(self) -> None:
        """Cancel the warmer and wait for it; concurrent callers wait for the same task."""
        warmer = self._warmer
        if warmer is None:
            return
        warmer.cancel()
        # asyncio.wait does not raise the warmer's CancelledError, only our own.
        await asyncio.wait({warmer})
        if self._warmer is warmer:
            self._warmer = None

    async def _warm(self) -> None:
        """Build envs one at a time until the pool holds what it should; then sleep until woken."""
        try:
            while True:
                self._wake.clear()
                self._prune_stale()
                now = time.monotonic()
                if len(self._ready) >= self._wanted():
                    await self._sleep(self._seconds_until_stale())
                elif self._retry_at > now and not self._waiters:
                    await self._sleep(self._retry_at - now)
                else:
                    await self._build_and_record()
        except Exception as exc:  # a bug, not a build failure: waiters must not hang
            log.exception("UV pool: the warmer crashed")
            self._warmer_crashed = True
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._notify()

    async def _build_and_record(self) -> None:
        self._building = True
        try:
            env = await self._build()
        except BuildFailed as exc:
            self._consecutive_failures += 1
            self._failures_total += 1
            self._last_error = str(exc)
            delay = min(self.max_retry_delay, 5.0 * 2 ** (self._consecutive_failures - 1))
            self._retry_at = time.monotonic() + delay
            log.warning("UV pool: building an environment failed: %s", exc)
        else:
            self._consecutive_failures = 0
            self._retry_at = 0.0
            self._ready.append(env)
            self._log_available()
        finally:
            self._building = False
            self._notify()

    async def _sleep(self, timeout: float | None) -> None:
        """Sleep until :attr:`_wake` is set or ``timeout`` seconds pass."""
        await _wait_event(self._wake, timeout)

    def _seconds_until_stale(self) -> float | None:
        if not self._ready:
            return None
        oldest = min(env.created for env in self._ready)
        return max(0.0, oldest + self.max_age - time.time())

    def _prune_stale(self) -> None:
        now = time.time()
        for env in [e for e in self._ready if now - e.created > self.max_age]:
            log.info(
                "UV pool: %s is older than %g h, rebuilding", env.path.name, self.max_age / 3600
            )
            self._ready.remove(env)
            self._discard(env.path)
        self._log_available()

    async def _build(self) -> _ReadyEnv:
        """Build one env into a temporary directory and move it into place once warmed."""
        name = uuid.uuid4().hex
        final = self.envs_dir / f"{READY_PREFIX}{name}"
        tmp = final.with_name(final.name + PARTIAL_SUFFIX)
        python = tmp / "bin" / "python"
        started = time.monotonic()
        log.debug("UV pool: building %s", final.name)
        try:
            try:
                uv_bin = uv.find_uv()
            except uv.CommandFailed as exc:
                raise BuildFailed(exc.tail()) from exc
            # --relocatable: scripts and activate files do not embed the temp path.
            await self._step(
                "Creating the venv",
                [
                    uv_bin,
                    "venv",
                    "--quiet",
                    "--relocatable",
                    "--no-python-downloads",
                    "--python",
                    self.config.python,
                    str(tmp),
                ],
            )
            await self._step(
                "Installing packages",
                [
                    uv_bin,
                    "pip",
                    "install",
                    "--quiet",
                    "--no-python-downloads",
                    "--python",
                    str(python),
                    "--compile-bytecode",
                    *self.packages,
                ],
            )
            await self._step("Importing ipykernel", [str(python), "-c", WARM_UP], for_python=True)
            created = time.time()
            marker = {"created": created, "python": self.config.python, "packages": self.packages}
            (tmp / MARKER).write_text(json.dumps(marker))
            tmp.rename(final)
        except BaseException:
            self._discard(tmp)
            raise
        log.debug("UV pool: built %s in %.1f s", final.name, time.monotonic() - started)
        return _ReadyEnv(final, created)

    async def _step(self, what: str, argv: list[str], *, for_python: bool = False) -> None:
        try:
            await uv.run(
                argv,
                cwd=self.envs_dir,
                env=uv.subprocess_env(for_python=for_python),
                timeout=self.step_timeout,
            )
        except uv.CommandFailed as exc:
            raise BuildFailed(f"{what} failed: {exc.summary()}") from exc

    # -- disk -----------------------------------------------------------------

    async def _scan(self) -> list[_ReadyEnv]:
        """Envs on disk worth reusing, newest first; everything else is deleted."""
        candidates: list[_ReadyEnv] = []
        for path in sorted(self.envs_dir.iterdir()):
            if not path.name.startswith(READY_PREFIX):
                continue
            if path.name.endswith(PARTIAL_SUFFIX):
                self._discard(path)  # a build interrupted by a crash
            else:
                env = self._reusable(path)
                if env is None:
                    self._discard(path)
                else:
                    candidates.append(env)
        works = await asyncio.gather(*(self._imports_ipykernel(env) for env in candidates))
        reusable = []
        for env, ok in zip(candidates, works, strict=True):
            if ok:
                reusable.append(env)
            else:
                log.info("UV pool: discarding %s, its python no longer runs", env.path.name)
                self._discard(env.path)
        return sorted(reusable, key=lambda env: env.created, reverse=True)

    def _reusable(self, path: Path) -> _ReadyEnv | None:
        """A ready env from a marker that is fresh and matches the current config, else None."""
        try:
            marker: dict[str, Any] = json.loads((path / MARKER).read_text())
            created = float(marker["created"])
        except (OSError, ValueError, KeyError, TypeError):
            log.info("UV pool: discarding %s, it has no valid %s marker", path.name, MARKER)
            return None
        env = _ReadyEnv(path, created)
        if time.time() - created > self.max_age:
            reason = "it is stale"
        elif marker.get("python") != self.config.python or marker.get("packages") != self.packages:
            reason = "it was built for another interpreter or package list"
        elif not env.python.exists():
            reason = "its python is missing"
        else:
            return env
        log.info("UV pool: discarding %s, %s", path.name, reason)
        return None

    async def _imports_ipykernel(self, env: _ReadyEnv) -> bool:
        try:
            await uv.run(
                [str(env.python), "-c", "import ipykernel"],
                env=uv.subprocess_env(for_python=True),
                timeout=30,
            )
        except uv.CommandFailed:
            return False
        return True

    def _discard(self, path: Path) -> None:
        """Delete ``path`` in a background thread; :meth:`stop` waits for pending deletions."""
        task = asyncio.create_task(asyncio.to_thread(shutil.rmtree, path, True))
        self._deletions.add(task)
        task.add_done_callback(self._deletions.discard)

    # -- notifications --------------------------------------------------------

    def _notify(self) -> None:
        """Wake every :meth:`_wait_for_env`: swap in a fresh event and set the old one."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _log_available(self) -> None:
        available = len(self._ready)
        if available != self._logged_available:
            self._logged_available = available
            log.info("UV pool: %d/%d available", available, self.target)


async def _wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; return whether it was set.

    Unlike ``asyncio.wait_for`` on Python 3.10/3.11, never swallows a
    cancellation that arrives just as the event is set.
    """
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=None if timeout is None else max(timeout, 0))
    finally:
        waiter.cancel()
    return bool(done)
