"""Environments built once per key and shared by every kernel that asks: a helper for pools.

For env sources whose environment is determined by what the notebook declares
(inline dependencies, a project file, a lock file), a pool names the env by a
hash of that declaration and asks :meth:`EnvCache.acquire` for it: the first
request builds it, every later one (any notebook) reuses it at once. Every
pool that uses it follows the same rules:

- **build once**: at most one build per name at a time; every request for that
  name meanwhile waits for the same build and receives its progress messages;
  a failed build leaves nothing behind and raises to every waiter (the next
  request tries again); a cancelled one (:meth:`EnvCache.stop`) raises
  :class:`runtimed.errors.EnvironmentFailed` ("stopped while building");
- **in use**: an env is in use from the moment a request asks for it (before it
  is even built) until :meth:`EnvCache.release`; an env in use is never deleted;
- **garbage collection**: envs unused for ``max_age`` seconds are deleted, then
  the least recently used beyond ``max_count`` (envs in use count towards it);
  collection runs on every acquire and release and when the next env expires.

Layout under ``envs_dir`` (the cache touches only names with its ``prefixes``)::

    <name>/                     a complete env
        .runtimed-env.json      written last: the env is complete (JSON: how it was built)
        .last-used              its mtime is the last acquire or release (LRU and age)
    <name>.partial-<hex>/       being built (deleted at start)
    <name>.trash-<hex>/         being deleted (renamed first, so a lookup never sees half an env)
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from runtimed.errors import EnvironmentFailed
from runtimed.pools import Progress

COMPLETE = ".runtimed-env.json"
LAST_USED = ".last-used"
PARTIAL = ".partial-"
TRASH = ".trash-"

#: ``build(directory, progress)``: fill ``directory`` (which does not exist yet) with the
#: env and return JSON-able fields describing how it was built.
CacheBuildFn = Callable[[Path, Progress], Awaitable[dict[str, Any]]]


class _Build:
    """One build in flight: its task and everyone who wants its progress."""

    def __init__(self, log: logging.Logger) -> None:
        self.listeners: list[Progress] = []
        self.task: asyncio.Task[Path] | None = None
        self.log = log

    def progress(self, phase: str, message: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(phase, message)
            except Exception:
                self.log.exception("A progress listener failed")


class EnvCache:
    """Cached envs in ``envs_dir``; see the module docstring.

    ``label`` names the pool in messages (``"conda pool"``) and, capitalized unless
    ``log_label`` is given, starts log lines, as :class:`runtimed.prewarm.Prewarmer`'s;
    ``python(path)`` is an env's interpreter (a complete env whose interpreter is
    gone is rebuilt).

    A build runs in a temporary directory that is renamed into place when complete:
    an env must work from its final path (``bin/python -m ...`` does, for a venv;
    scripts with the build path in their shebang may not).
    """

    def __init__(self, envs_dir: Path, *, prefixes: tuple[str, ...], max_age: float,
                 max_count: int, label: str, log: logging.Logger, log_label: str | None = None,
                 python: Callable[[Path], Path] = lambda path: path / "bin" / "python") -> None:
        self.envs_dir = envs_dir
        self.prefixes = prefixes
        #: Envs unused this long (seconds) are deleted...
        self.max_age = max_age
        #: ...and the least recently used beyond this many.
        self.max_count = max_count
        self.label = label
        self.log_label = log_label or label[:1].upper() + label[1:]
        self.log = log
        self._python = python
        #: name -> number of requests holding it (waiting for its build, or a live kernel).
        self.in_use: Counter[str] = Counter()
        self._builds: dict[str, _Build] = {}
        self._deletions: set[asyncio.Task[None]] = set()
        self._collector: asyncio.Task[None] | None = None
        self._collect_wake = asyncio.Event()

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Delete leftovers of a previous run and collect in the background from now on."""
        if self._collector is not None:
            return
        self.envs_dir.mkdir(parents=True, exist_ok=True)
        self._collect_wake = asyncio.Event()  # bound to the loop that first waits on it
        self.clean_leftovers()
        self._collector = asyncio.create_task(self._collect_loop(), name=f"runtimed-envcache-{self.label}")

    async def stop(self) -> None:
        """Cancel builds in flight (waiters get EnvironmentFailed), stop collecting, finish
        deletions. Complete envs stay on disk for the next start. Idempotent."""
        tasks = [b.task for b in self._builds.values() if b.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        collector, self._collector = self._collector, None
        if collector is not None:
            collector.cancel()
            await asyncio.wait({collector})
        while self._deletions:
            await asyncio.gather(*self._deletions)

    # -- lookup and use -----------------------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.envs_dir / name

    def ready(self, name: str) -> Path | None:
        """The env's directory when it is complete and its python still exists, else None."""
        path = self.path(name)
        if (path / COMPLETE).is_file() and self._python(path).exists():
            return path
        return None

    def info(self, name: str) -> dict[str, Any]:
        """The JSON written when the env was completed ({} if unreadable)."""
        try:
            data = json.loads((self.path(name) / COMPLETE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    async def acquire(self, name: str, build: CacheBuildFn, progress: Progress, *,
                      env_source: str, reuse_message: str | None = None) -> tuple[Path, bool]:
        """The env ``name`` (held in use until :meth:`release`) and whether it was reused;
        built first (once, whoever else asks meanwhile) if it is not complete.

        A failed build raises what ``build`` raised; a cancelled one (the pool is
        stopping) raises :class:`EnvironmentFailed`.
        """
        self.hold(name)  # before any await: the collector must not take it from here on
        try:
            path = None if name in self._builds else self.ready(name)
            reused = path is not None
            if path is not None:
                if reuse_message:
                    progress("preparing_env", reuse_message)
            else:
                path = await self._build_once(name, progress, build, env_source)
        except BaseException:
            self.unhold(name)
            raise
        self.touch(name)
        self._collect_soon()
        return path, reused

    def release(self, name: str) -> None:
        """A kernel using ``name`` is gone; the env becomes collectable once nobody holds it."""
        self.unhold(name)
        self._collect_soon()

    def hold(self, name: str) -> None:
        """Mark ``name`` in use (synchronously: no collection can slip in between)."""
        self.in_use[name] += 1

    def unhold(self, name: str) -> None:
        if self.in_use[name] > 1:
            self.in_use[name] -= 1
        else:
            self.in_use.pop(name, None)
        self.touch(name)

    def touch(self, name: str) -> None:
        """Record now as the env's last use."""
        try:
            (self.path(name) / LAST_USED).touch()
        except OSError:
            pass  # the env is gone (or never completed): nothing to record

    def last_used(self, path: Path) -> float:
        for candidate in (path / LAST_USED, path / COMPLETE):
            try:
                return candidate.stat().st_mtime
            except OSError:
                continue
        return 0.0

    # -- building -------------------------------------------------------------------------------

    def building(self, name: str) -> bool:
        return name in self._builds

    async def _build_once(self, name: str, progress: Progress, build: CacheBuildFn,
                          env_source: str) -> Path:
        current = self._builds.get(name)
        if current is None:
            current = self._builds[name] = _Build(self.log)
            current.task = asyncio.create_task(self._build(name, current, build),
                                               name=f"runtimed-env-build-{name}")
            current.task.add_done_callback(lambda task: self._forget_build(name, current, task))
        else:
            progress("preparing_env",
                     "Waiting for the same environment, already being built for another notebook")
        current.listeners.append(progress)
        task = current.task
        assert task is not None
        try:
            await asyncio.wait({task})  # our cancellation raises here and leaves the build running
        finally:
            if progress in current.listeners:
                current.listeners.remove(progress)
        if task.cancelled():
            raise EnvironmentFailed(
                f"The {self.label} stopped while building the environment; try again.",
                env_source=env_source,
            )
        return task.result()

    def _forget_build(self, name: str, build: _Build, task: asyncio.Task[Path]) -> None:
        if self._builds.get(name) is build:
            del self._builds[name]
        if not task.cancelled():
            task.exception()  # retrieved, even if every waiter left: no "never retrieved" noise

    async def _build(self, name: str, state: _Build, build: CacheBuildFn) -> Path:
        final = self.path(name)
        tmp = self.envs_dir / f"{name}{PARTIAL}{uuid.uuid4().hex[:12]}"
        started = time.monotonic()
        try:
            if final.exists():  # incomplete or broken: never reused
                self._remove(final)
            info = await build(tmp, state.progress)
            info.setdefault("created", time.time())
            info["build_secs"] = round(time.monotonic() - started, 3)
            (tmp / COMPLETE).write_text(json.dumps(info, indent=1))
            (tmp / LAST_USED).touch()
            tmp.rename(final)
        except BaseException:
            if tmp.exists():
                self.discard(tmp)
            raise
        self.log.info("%s: built %s in %.1f s", self.log_label, name, time.monotonic() - started)
        return final

    # -- garbage collection -----------------------------------------------------------------------

    def entries(self) -> Iterator[Path]:
        """Complete or incomplete cached envs on disk (not builds or deletions in progress)."""
        try:
            children = list(self.envs_dir.iterdir())
        except OSError:
            return
        for path in children:
            if path.name.startswith(self.prefixes) and PARTIAL not in path.name and TRASH not in path.name:
                yield path

    def clean_leftovers(self) -> None:
        """Delete interrupted builds, half-deleted envs and envs never completed."""
        try:
            children = list(self.envs_dir.iterdir())
        except OSError:
            return
        for path in children:
            if not path.name.startswith(self.prefixes):
                continue
            if PARTIAL in path.name or TRASH in path.name:
                self.discard(path)
            elif not (path / COMPLETE).is_file() and path.name not in self._builds:
                self.log.info("%s: discarding %s, it was never completed", self.log_label, path.name)
                self._remove(path)

    def collect(self, now: float | None = None) -> list[str]:
        """Delete envs unused for ``max_age``, then the LRU beyond ``max_count``; return their names.

        Envs in use (or being built) are never deleted, and they count towards ``max_count``.
        """
        now = time.time() if now is None else now
        protected = set(self.in_use) | set(self._builds)
        envs = sorted(self.entries(), key=self.last_used, reverse=True)  # newest first
        removed: list[str] = []
        kept: list[Path] = []
        for path in envs:
            idle = now - self.last_used(path)
            if path.name not in protected and idle > self.max_age:
                self.log.info("%s: deleting %s, unused for %.1f h", self.log_label, path.name, idle / 3600)
                self._remove(path)
                removed.append(path.name)
            else:
                kept.append(path)
        excess = len(kept) - max(0, self.max_count)
        for path in reversed(kept):  # least recently used first
            if excess <= 0:
                break
            if path.name in protected:
                continue
            self.log.info("%s: deleting %s, the least recently used of more than %d cached envs",
                          self.log_label, path.name, self.max_count)
            self._remove(path)
            removed.append(path.name)
            excess -= 1
        return removed

    def next_expiry(self, now: float | None = None) -> float | None:
        """Seconds until the next unused env becomes older than ``max_age`` (None: none will)."""
        now = time.time() if now is None else now
        waits = [self.last_used(path) + self.max_age - now
                 for path in self.entries() if path.name not in self.in_use]
        return max(0.0, min(waits)) if waits else None

    def _collect_soon(self) -> None:
        """Collect now, and let the collector recompute when the next env expires."""
        self.collect()
        self._collect_wake.set()

    async def _collect_loop(self) -> None:
        while True:
            self._collect_wake.clear()
            try:
                self.collect()
                wait = self.next_expiry()
            except Exception:  # a bug: keep the daemon up, try again later
                self.log.exception("%s: collecting cached environments failed", self.log_label)
                wait = 3600.0
            waiter = asyncio.ensure_future(self._collect_wake.wait())
            try:
                await asyncio.wait({waiter}, timeout=None if wait is None else wait + 1.0)
            finally:
                waiter.cancel()

    def _remove(self, path: Path) -> None:
        """Rename out of the way at once (lookups see it gone), delete in the background."""
        trash = path.with_name(f"{path.name}{TRASH}{uuid.uuid4().hex[:12]}")
        try:
            path.rename(trash)
        except OSError:
            self.log.warning("%s: could not move %s aside for deletion", self.log_label, path, exc_info=True)
            return
        self.discard(trash)

    def discard(self, path: Path) -> None:
        """Delete ``path`` in a background thread; :meth:`stop` waits for pending deletions."""
        task = asyncio.create_task(asyncio.to_thread(shutil.rmtree, path, True))
        self._deletions.add(task)
        task.add_done_callback(self._deletions.discard)
