"""N ready environments, built ahead of time: the prewarmed-pool rules, for pool plugins.

A helper for :class:`~runtimed.pools.EnvPool` implementations that keep a pool
of ready envs (the uv and conda plugins both use it, so every family behaves
alike). Nothing here knows about a family: the pool supplies a *build*
function (build one env into a given directory) and a few predicates. The rules:

- the pool keeps ``target`` ready envs; taking one hands it to exactly one
  kernel (its ``.warmed`` marker is removed, so it is never reused, even after
  a restart) and wakes the warmer to build a replacement;
- with none ready, :meth:`Prewarmer.take` waits, bounded by
  :attr:`Prewarmer.acquire_timeout`, and gives up early once builds keep failing;
- ready envs older than :attr:`Prewarmer.max_age` are deleted and rebuilt;
  envs whose marker does not match the current configuration, whose python is
  gone or that fail the pool's check are discarded at start, never handed out;
- :meth:`Prewarmer.flush` deletes every ready env, abandons a build in progress
  and rebuilds.

Layout under ``envs_dir`` (the pool touches nothing else there; other pools may share it)::

    <family>-building-<hex>/    an env being built (never handed out; deleted at start);
                                the name is configurable (``building_prefix``/``building_suffix``)
    <family>-prewarmed-<hex>/   a ready env; ``.warmed`` holds JSON {created, ...the build's fields}

One background task (the *warmer*) builds envs one at a time until the pool
holds its target plus one per waiting :meth:`Prewarmer.take`. It sleeps on an
:class:`asyncio.Event` between builds; waiters sleep on a "something changed"
event the warmer sets after every build, success or failure. While a waiter
waits, the build's progress messages are forwarded to it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtimed.errors import EnvironmentFailed
from runtimed.pools import PoolStatus, Progress

MARKER = ".warmed"

#: ``build(directory, progress)``: build one env into ``directory`` (which does
#: not exist yet) and return the marker fields to record (JSON-able).
BuildFn = Callable[[Path, Progress], Awaitable[dict[str, Any]]]


class BuildFailed(Exception):
    """Building one env failed; the message says which step and quotes the tool."""


@dataclass
class ReadyEnv:
    """A ready env on disk and what its marker says."""

    path: Path
    created: float
    marker: dict[str, Any] = field(default_factory=dict)


class Prewarmer:
    """A pool of ready envs of one family; see the module docstring.

    Tunables are plain attributes so the pool (or a test) can change them after
    construction.
    """

    #: Longest :meth:`take` waits for the warmer, in seconds.
    acquire_timeout: float = 120.0
    #: :meth:`take` gives up early once this many builds in a row failed
    #: (at least one of them while it was waiting).
    give_up_after_failures: int = 2
    #: Ready envs older than this (seconds) are deleted and rebuilt.
    max_age: float = 2 * 24 * 3600
    #: Longest pause between retries while builds keep failing and nobody waits.
    max_retry_delay: float = 300.0

    def __init__(
        self,
        *,
        family: str,
        label: str,
        envs_dir: Path,
        target: Callable[[], int],
        build: BuildFn,
        log: logging.Logger,
        is_current: Callable[[dict[str, Any]], bool] = lambda marker: True,
        python: Callable[[Path], Path] = lambda path: path / "bin" / "python",
        check: Callable[[Path], Awaitable[bool]] | None = None,
        fix_hint: Callable[[], str] = lambda: "",
        log_label: str | None = None,
        building_prefix: str | None = None,
        building_suffix: str = "",
        mismatch_reason: str = "it was built for another configuration",
        built_log_level: int = logging.INFO,
    ) -> None:
        """``label`` names the pool in messages (``"conda pool"``); ``build`` is
        :data:`BuildFn`. Optional: ``is_current(marker)`` says whether an env on disk
        was built for the current configuration (default: any is); ``python(path)`` is
        an env's interpreter (default ``bin/python``); ``check(path)`` says whether an
        env found at start still works (default: its python imports ipykernel,
        :func:`python_imports`); ``fix_hint()`` ends the message of repeated build failures.

        ``log_label`` starts log lines (default: ``label`` capitalized); an env
        being built is named ``<building_prefix><hex><building_suffix>`` (default
        prefix ``<family>-building-``); ``mismatch_reason`` is logged when an env
        on disk is not current; ``built_log_level`` is the level of "built ..." lines.
        """
        self.family = family
        self.label = label
        self.log_label = log_label or label[:1].upper() + label[1:]
        self.envs_dir = envs_dir
        self.ready_prefix = f"{family}-prewarmed-"
        self.building_prefix = building_prefix or f"{family}-building-"
        self.building_suffix = building_suffix
        self._mismatch_reason = mismatch_reason
        self._built_log_level = built_log_level
        self._target = target
        self._build_env = build
        self._is_current = is_current
        self._python = python
        self._check = check or python_imports("ipykernel", python)
        self._fix_hint = fix_hint
        self.log = log
        self._ready: deque[ReadyEnv] = deque()
        self._running = False
        self._warmer: asyncio.Task[None] | None = None
        self._warmer_crashed = False
        self._building = False
        self._waiters = 0
        self._listeners: set[Progress] = set()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._deletions: set[asyncio.Task[None]] = set()
        self._consecutive_failures = 0
        self._failures_total = 0
        self._last_error: str | None = None
        self._retry_at = 0.0
        self._logged_available: int | None = None
        #: Bumped by flush/stop: an env taken before is not given back after.
        self.generation = 0

    @property
    def target(self) -> int:
        return max(0, self._target())

    @property
    def running(self) -> bool:
        return self._running

    # -- lifecycle ------------------------------------------------------------

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
            self.discard(env.path)
        # Oldest first, like the envs the warmer appends: take() pops from the left.
        self._ready.extend(reversed(reusable[: self.target]))
        self._log_available()
        self._start_warmer()

    async def stop(self) -> None:
        """Cancel the warmer (and its build), wake waiters, finish deletions. Safe to call twice.

        Ready envs stay on disk for the next :meth:`start`.
        """
        self._running = False
        self.generation += 1
        await self._stop_warmer()
        self._notify()
        self._ready.clear()
        self._logged_available = None
        await self.drain_deletions()

    async def drain_deletions(self) -> None:
        while self._deletions:
            await asyncio.gather(*self._deletions)

    def status(self) -> PoolStatus:
        """``available``: ready envs; ``warming``: the build running plus those still to build
        (none while waiting to retry after failures); ``error``: the last build's error while
        builds keep failing; ``retry_in``: seconds until the next attempt while backing off."""
        available = len(self._ready)
        warming = 1 if self._building else 0
        now = time.monotonic()
        backing_off = not self._building and not self._waiters and self._retry_at > now
        if self._warmer is not None and not self._warmer.done() and not backing_off:
            warming = max(warming, self._wanted() - available)
        failing = self._consecutive_failures > 0 or self._warmer_crashed
        return PoolStatus(available=available, warming=warming, target=self.target,
                          error=self._last_error if failing else None,
                          retry_in=round(self._retry_at - now, 1) if backing_off else None)

    async def flush(self) -> None:
        """Delete every ready env, abandon a build in progress, and rebuild to the target."""
        self.generation += 1
        while self._ready:
            self.discard(self._ready.popleft().path)
        self._consecutive_failures = 0
        self._last_error = None
        self._retry_at = 0.0
        self._log_available()
        await self._stop_warmer()
        if self._running and self._warmer is None:  # not stopped (or restarted) meanwhile
            self._start_warmer()

    # -- handing envs out -----------------------------------------------------

    async def take(self, env_source: str, progress: Progress) -> ReadyEnv:
        """Hand out one ready env (never twice) and wake the warmer for its replacement.

        With none ready, report progress and wait (see the class docstring).
        Raises :class:`EnvironmentFailed` for a stopped pool, repeated build
        failures (quoting the last error), or the timeout.
        """
        if not self._running:
            raise EnvironmentFailed(
                f"The {self.label} is not running (the daemon is starting or stopping); try again.",
                env_source=env_source,
            )
        env = self.take_ready()
        if env is None:
            progress("preparing_env", f"Waiting for the {self.label} to warm an environment")
            env = await self._wait_for_env(env_source, progress)
        self._wake.set()  # build the replacement
        return env

    def owns(self, path: Path) -> bool:
        """Whether ``path`` is one of this pool's ready (or handed-out) env directories."""
        return path.parent == self.envs_dir and path.name.startswith(self.ready_prefix)

    async def release(self, path: Path) -> None:
        """The kernel using ``path`` is gone: delete the env (in the background while running)."""
        if not self.owns(path):
            self.log.warning(
                "%s: not deleting %s, it is not one of the pool's envs", self.log_label, path
            )
            return
        if self._running:
            self.discard(path)
        else:
            await asyncio.to_thread(shutil.rmtree, path, True)

    def take_ready(self) -> ReadyEnv | None:
        """Pop the oldest ready env that is still intact; discard broken ones on the way.

        Unlike :meth:`take`, neither waits nor wakes the warmer: a pool that builds
        another env from the one taken calls :meth:`wake` (or :meth:`give_back`) after.
        """
        while self._ready:
            env = self._ready.popleft()
            marker = env.path / MARKER
            if self._python(env.path).exists() and marker.exists():
                marker.unlink(missing_ok=True)  # handed out: never reused after a restart
                self._log_available()
                return env
            self.log.warning("%s: discarding broken environment %s", self.log_label, env.path)
            self.discard(env.path)
        self._log_available()
        return None

    async def _wait_for_env(self, env_source: str, progress: Progress) -> ReadyEnv:
        deadline = time.monotonic() + self.acquire_timeout
        failures_seen = self._failures_total
        self._waiters += 1
        self._listeners.add(progress)
        self._wake.set()
        try:
            while True:
                changed = self._changed
                env = self.take_ready()
                if env is not None:
                    return env
                # (No warmer at all is fine: flush() is between stopping and restarting it.)
                if not self._running or self._warmer_crashed:
                    raise EnvironmentFailed(
                        f"The {self.label} stopped before an environment was ready."
                        + self._last_error_hint(),
                        env_source=env_source,
                    )
                if (
                    self._failures_total > failures_seen
                    and self._consecutive_failures >= self.give_up_after_failures
                ):
                    raise EnvironmentFailed(
                        f"The {self.label} could not build an environment "
                        f"({self._consecutive_failures} attempts in a row failed). "
                        f"{self._last_error}\n{self._fix_hint()}",
                        env_source=env_source,
                    )
                if not await wait_event(changed, deadline - time.monotonic()):
                    raise EnvironmentFailed(
                        f"Timed out after {self.acquire_timeout:g} s waiting for the {self.label} "
                        "to warm an environment." + self._last_error_hint(),
                        env_source=env_source,
                    ) from None
        finally:
            self._waiters -= 1
            self._listeners.discard(progress)

    def _last_error_hint(self) -> str:
        return f" Last build error: {self._last_error}" if self._last_error else ""

    def give_back(self, env: ReadyEnv, path: Path, generation: int) -> bool:
        """Return ``env`` (taken with :meth:`take_ready`, now at ``path``) to the pool, untouched.

        Only while running and if no flush or stop happened since :attr:`generation`
        was ``generation``; otherwise (or if moving it back fails) ``path`` is
        deleted and the warmer builds a replacement. Returns whether it went back.
        """
        if self._running and generation == self.generation:
            try:
                (path / MARKER).write_text(json.dumps({**env.marker, "created": env.created}))
                path.rename(env.path)
            except OSError:
                self.log.warning(
                    "%s: could not return %s to the pool", self.log_label, env.path, exc_info=True
                )
            else:
                self._ready.appendleft(env)
                self._log_available()
                self._notify()
                return True
        self.discard(path)
        self._wake.set()
        return False

    # -- the warmer -----------------------------------------------------------

    def wake(self) -> None:
        """Make the warmer look again (after a configuration change, say)."""
        self._wake.set()

    def _wanted(self) -> int:
        """Ready envs the warmer aims for: the target plus one per waiting take."""
        return self.target + self._waiters

    def _start_warmer(self) -> None:
        self._warmer_crashed = False
        self._warmer = asyncio.create_task(self._warm(), name=f"runtimed-{self.family}-pool-warmer")

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
                    await wait_event(self._wake, self._seconds_until_stale())
                elif self._retry_at > now and not self._waiters:
                    await wait_event(self._wake, self._retry_at - now)
                else:
                    await self._build_and_record()
        except Exception as exc:  # a bug, not a build failure: waiters must not hang
            self.log.exception("%s: the warmer crashed", self.log_label)
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
            self.log.warning("%s: building an environment failed: %s", self.log_label, exc)
        else:
            self._consecutive_failures = 0
            self._retry_at = 0.0
            self._ready.append(env)
            self._log_available()
        finally:
            self._building = False
            self._notify()

    def _broadcast(self, phase: str, message: str) -> None:
        """Forward a build's progress to everyone waiting (and the debug log)."""
        self.log.debug("%s: %s", self.log_label, message)
        for listener in list(self._listeners):
            try:
                listener(phase, message)
            except Exception:  # a client's callback must not break the build
                self.log.debug("%s: a progress callback failed", self.log_label, exc_info=True)

    async def _build(self) -> ReadyEnv:
        """Build one env into a temporary directory and move it into place once warmed."""
        name = uuid.uuid4().hex
        tmp = self.envs_dir / f"{self.building_prefix}{name}{self.building_suffix}"
        final = self.envs_dir / f"{self.ready_prefix}{name}"
        started = time.monotonic()
        self.log.debug("%s: building %s", self.log_label, final.name)
        try:
            fields = await self._build_env(tmp, self._broadcast)
            created = time.time()
            marker = {**fields, "created": created}
            (tmp / MARKER).write_text(json.dumps(marker))
            tmp.rename(final)
        except BaseException:
            self.discard(tmp)
            raise
        self.log.log(
            self._built_log_level,
            "%s: built %s in %.1f s",
            self.log_label,
            final.name,
            time.monotonic() - started,
        )
        return ReadyEnv(final, created, marker)

    def _seconds_until_stale(self) -> float | None:
        if not self._ready:
            return None
        oldest = min(env.created for env in self._ready)
        return max(0.0, oldest + self.max_age - time.time())

    def _prune_stale(self) -> None:
        now = time.time()
        for env in [e for e in self._ready if now - e.created > self.max_age]:
            self.log.info(
                "%s: %s is older than %g h, rebuilding",
                self.log_label,
                env.path.name,
                self.max_age / 3600,
            )
            self._ready.remove(env)
            self.discard(env.path)
        self._log_available()

    # -- disk -----------------------------------------------------------------

    async def _scan(self) -> list[ReadyEnv]:
        """Envs on disk worth reusing, newest first; every other pool env is deleted."""
        candidates: list[ReadyEnv] = []
        for path in sorted(self.envs_dir.iterdir()):
            if path.name.startswith(self.building_prefix) and path.name.endswith(
                self.building_suffix
            ):
                self.discard(path)  # a build interrupted by a crash
            elif path.name.startswith(self.ready_prefix):
                env = self._reusable(path)
                if env is None:
                    self.discard(path)
                else:
                    candidates.append(env)
        works = await asyncio.gather(*(self._check(env.path) for env in candidates))
        reusable = []
        for env, ok in zip(candidates, works, strict=True):
            if ok:
                reusable.append(env)
            else:
                self.log.info(
                    "%s: discarding %s, its python no longer runs", self.log_label, env.path.name
                )
                self.discard(env.path)
        return sorted(reusable, key=lambda env: env.created, reverse=True)

    def _reusable(self, path: Path) -> ReadyEnv | None:
        """A ready env from a marker that is fresh and matches the current config, else None."""
        try:
            marker: dict[str, Any] = json.loads((path / MARKER).read_text())
            created = float(marker["created"])
        except (OSError, ValueError, KeyError, TypeError):
            self.log.info(
                "%s: discarding %s, it has no valid %s marker", self.log_label, path.name, MARKER
            )
            return None
        env = ReadyEnv(path, created, marker)
        if time.time() - created > self.max_age:
            reason = "it is stale"
        elif not self._is_current(marker):
            reason = self._mismatch_reason
        elif not self._python(path).exists():
            reason = "its python is missing"
        else:
            return env
        self.log.info("%s: discarding %s, %s", self.log_label, path.name, reason)
        return None

    def discard(self, path: Path) -> None:
        """Delete ``path`` in a background thread; :meth:`stop` waits for pending deletions."""
        task = asyncio.create_task(asyncio.to_thread(shutil.rmtree, path, True))
        self._deletions.add(task)
        task.add_done_callback(self._deletions.discard)

    # -- notifications --------------------------------------------------------

    def _notify(self) -> None:
        """Wake every waiter: swap in a fresh event and set the old one."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _log_available(self) -> None:
        available = len(self._ready)
        if available != self._logged_available:
            self._logged_available = available
            self.log.info("%s: %d/%d available", self.log_label, available, self.target)


def python_imports(module: str, python: Callable[[Path], Path] = lambda path: path / "bin" / "python",
                   timeout: float = 30.0) -> Callable[[Path], Awaitable[bool]]:
    """A check for :class:`Prewarmer` (and pools): whether an env's python imports ``module``."""
    from runtimed import procs

    async def check(env: Path) -> bool:
        try:
            await procs.run([str(python(env)), "-c", f"import {module}"],
                            env=procs.subprocess_env(for_python=True), timeout=timeout)
        except procs.CommandFailed:
            return False
        return True

    return check


async def wait_event(event: asyncio.Event, timeout: float | None) -> bool:
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
