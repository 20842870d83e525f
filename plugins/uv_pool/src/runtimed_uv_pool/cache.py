"""The cache of built environments: inline / PEP 723 envs and project overlays.

Layout under ``config.cache_dir / "envs"`` (shared with the pool's prewarmed envs)::

    uv-inline-<key>/                 an env for one dependency set (uv:inline and uv:pep723)
    uv-project-<key>/                an ipykernel overlay for one project env (uv:pyproject)
        .runtimed-env.json           written last: the env is complete (JSON: how it was built)
        .last-used                   its mtime is the last acquire or release (LRU and age)
    uv-inline-<key>.partial-<hex>/   being built (deleted at start)
    uv-inline-<key>.trash-<hex>/     being deleted (renamed first, so a lookup never sees half an env)

Rules: an env is *in use* from the moment an acquire asks for it (before it is
even built) until the kernel's release; in-use envs are never collected.
:meth:`EnvCache.collect` deletes envs unused for ``max_age`` seconds, then the
least recently used beyond ``max_count`` (counting in-use envs too).
:meth:`EnvCache.build_once` runs at most one build per name at a time; every
acquire asking for that name meanwhile waits for the same build and receives
its progress messages.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from runtimed.pools import Progress

log = logging.getLogger("runtimed.pools.uv")

PREFIXES = ("uv-inline-", "uv-project-")
COMPLETE = ".runtimed-env.json"
LAST_USED = ".last-used"
PARTIAL = ".partial-"
TRASH = ".trash-"


class BuildAbandoned(Exception):
    """The build a caller waited for was cancelled (the pool is stopping)."""


class _Build:
    """One build in flight: its task and everyone who wants its progress."""

    def __init__(self) -> None:
        self.listeners: list[Progress] = []
        self.task: asyncio.Task[Path] | None = None

    def progress(self, phase: str, message: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(phase, message)
            except Exception:
                log.exception("UV pool: a progress listener failed")


class EnvCache:
    """Cached envs in ``envs_dir``; ``discard(path)`` deletes a directory in the background."""

    def __init__(
        self,
        envs_dir: Path,
        discard: Callable[[Path], None],
        *,
        max_age: float,
        max_count: int,
    ) -> None:
        self.envs_dir = envs_dir
        self.discard = discard
        self.max_age = max_age
        self.max_count = max_count
        #: name -> number of acquires holding it (waiting for its build, or a live kernel).
        self.in_use: Counter[str] = Counter()
        self._builds: dict[str, _Build] = {}

    # -- lookup and use -------------------------------------------------------

    def path(self, name: str) -> Path:
        return self.envs_dir / name

    def ready(self, name: str) -> Path | None:
        """The env's directory when it is complete and its python still runs, else None."""
        path = self.path(name)
        if (path / COMPLETE).is_file() and (path / "bin" / "python").exists():
            return path
        return None

    def info(self, name: str) -> dict[str, Any]:
        """The JSON written when the env was completed ({} if unreadable)."""
        try:
            data = json.loads((self.path(name) / COMPLETE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def hold(self, name: str) -> None:
        """Mark ``name`` in use (synchronously: no collection can slip in between)."""
        self.in_use[name] += 1

    def unhold(self, name: str) -> None:
        """One holder is done with ``name``; it becomes collectable once nobody holds it."""
        if self.in_use[name] > 1:
            self.in_use[name] -= 1
        else:
            self.in_use.pop(name, None)
        self.touch(name)

    def touch(self, name: str) -> None:
        """Record ``now`` as the env's last use."""
        marker = self.path(name) / LAST_USED
        try:
            marker.touch()  # updates the mtime of an existing file too
        except OSError:
            pass  # the env is gone (or never completed): nothing to record

    def last_used(self, path: Path) -> float:
        for candidate in (path / LAST_USED, path / COMPLETE):
            try:
                return candidate.stat().st_mtime
            except OSError:
                continue
        return 0.0

    # -- building -------------------------------------------------------------

    def building(self, name: str) -> bool:
        return name in self._builds

    async def build_once(
        self,
        name: str,
        progress: Progress,
        build: Callable[[Path, Progress], Awaitable[dict[str, Any]]],
    ) -> Path:
        """Build ``name`` unless a build of it is under way; either way wait for that one build.

        ``build(tmp, progress)`` fills the temporary directory ``tmp`` and returns
        the JSON describing the env; it is moved into place only when complete.
        A failed build leaves nothing behind and raises to every waiter; a
        cancelled one (:meth:`cancel_builds`) raises :class:`BuildAbandoned`. A
        waiter's own cancellation does not abort the build.
        """
        current = self._builds.get(name)
        if current is None:
            current = self._builds[name] = _Build()
            current.task = asyncio.create_task(
                self._build(name, current, build), name=f"runtimed-uv-build-{name}"
            )
            current.task.add_done_callback(lambda task: self._forget_build(name, current, task))
        else:
            progress(
                "preparing_env",
                "Waiting for the same environment, already being built for another notebook",
            )
        current.listeners.append(progress)
        task = current.task
        assert task is not None
        try:
            # asyncio.wait: our cancellation raises here and leaves the build running.
            await asyncio.wait({task})
        finally:
            if progress in current.listeners:
                current.listeners.remove(progress)
        if task.cancelled():
            raise BuildAbandoned(name)
        return task.result()

    def _forget_build(self, name: str, build: _Build, task: asyncio.Task[Path]) -> None:
        if self._builds.get(name) is build:
            del self._builds[name]
        if not task.cancelled():
            task.exception()  # retrieved, even if every waiter left: no "never retrieved" noise

    async def _build(
        self,
        name: str,
        state: _Build,
        build: Callable[[Path, Progress], Awaitable[dict[str, Any]]],
    ) -> Path:
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
        log.info("UV pool: built %s in %.1f s", name, time.monotonic() - started)
        return final

    async def cancel_builds(self) -> None:
        """Cancel every build in flight and wait for them (their uv processes are killed)."""
        tasks = [b.task for b in self._builds.values() if b.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # -- garbage collection ---------------------------------------------------

    def entries(self) -> Iterator[Path]:
        """Complete cached envs on disk."""
        try:
            children = list(self.envs_dir.iterdir())
        except OSError:
            return
        for path in children:
            if (
                path.name.startswith(PREFIXES)
                and PARTIAL not in path.name
                and TRASH not in path.name
            ):
                yield path

    def clean_leftovers(self) -> None:
        """At start: delete interrupted builds, half-deleted envs and envs never completed."""
        try:
            children = list(self.envs_dir.iterdir())
        except OSError:
            return
        for path in children:
            if not path.name.startswith(PREFIXES):
                continue
            if PARTIAL in path.name or TRASH in path.name:
                self.discard(path)
            elif not (path / COMPLETE).is_file() and path.name not in self._builds:
                log.info("UV pool: discarding %s, it was never completed", path.name)
                self._remove(path)

    def collect(self, now: float | None = None) -> list[str]:
        """Delete envs unused for ``max_age``, then the LRU beyond ``max_count``; return their names.

        Envs in use (or being built) are never deleted, and they count towards
        ``max_count``.
        """
        now = time.time() if now is None else now
        protected = set(self.in_use) | set(self._builds)
        envs = sorted(self.entries(), key=self.last_used, reverse=True)  # newest first
        removed: list[str] = []
        kept: list[Path] = []
        for path in envs:
            idle = now - self.last_used(path)
            if path.name not in protected and idle > self.max_age:
                log.info("UV pool: deleting %s, unused for %.1f h", path.name, idle / 3600)
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
            log.info(
                "UV pool: deleting %s, the least recently used of more than %d cached envs",
                path.name,
                self.max_count,
            )
            self._remove(path)
            removed.append(path.name)
            excess -= 1
        return removed

    def next_expiry(self, now: float | None = None) -> float | None:
        """Seconds until the next unused env becomes older than ``max_age`` (None: none will)."""
        now = time.time() if now is None else now
        waits = [
            self.last_used(path) + self.max_age - now
            for path in self.entries()
            if path.name not in self.in_use
        ]
        return max(0.0, min(waits)) if waits else None

    def _remove(self, path: Path) -> None:
        """Rename out of the way at once (lookups see it gone), delete in the background."""
        trash = path.with_name(f"{path.name}{TRASH}{uuid.uuid4().hex[:12]}")
        try:
            path.rename(trash)
        except OSError:
            log.warning("UV pool: could not move %s aside for deletion", path, exc_info=True)
            return
        self.discard(trash)
