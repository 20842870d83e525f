"""Envs keyed by a hash of what they contain: built once, shared by every kernel that asks.

Used for ``conda:inline``, ``conda:env_yml``, ``conda:pixi`` and envs from a
notebook's ``conda-lock.yml``. Layout under ``envs_dir``::

    conda-building-<hex>/     an env being built (deleted at start)
    conda-<kind>-<key>/       a ready env; ``.warmed`` holds JSON {created, kind, key, source, ...}

A ready env is reused at once (marker present, python present); using it
touches the marker, and envs nobody used for :attr:`EnvCache.max_unused`
seconds are deleted at start. Concurrent requests for the same key share one
build (each gets its progress); a failed build is forgotten, so the next
request tries again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from runtimed.pools import Progress
from runtimed.prewarm import MARKER
from runtimed_conda_pool.specs import EnvSpec

KINDS = ("inline", "env_yml", "pixi", "lock")
BUILDING_PREFIX = "conda-building-"

#: ``build(spec, directory, progress)`` -> marker fields.
CacheBuildFn = Callable[[EnvSpec, Path, Progress], Awaitable[dict[str, Any]]]


class _Build:
    """One build in flight and the progress callbacks of everyone waiting for it."""

    def __init__(self) -> None:
        self.listeners: set[Progress] = set()
        self.task: asyncio.Task[Path] | None = None

    def broadcast(self, phase: str, message: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(phase, message)
            except Exception:
                logging.getLogger(__name__).debug("a progress callback failed", exc_info=True)


class EnvCache:
    """See the module docstring."""

    #: Envs not used for this long (seconds) are deleted at start.
    max_unused: float = 30 * 24 * 3600

    def __init__(
        self, envs_dir: Path, build: CacheBuildFn, log: logging.Logger, label: str = "Conda pool"
    ) -> None:
        self.envs_dir = envs_dir
        self._build_env = build
        self.log = log
        self.label = label
        self._inflight: dict[str, _Build] = {}

    def path_for(self, spec: EnvSpec) -> Path:
        return self.envs_dir / f"conda-{spec.kind}-{spec.key[:24]}"

    def ready(self, path: Path) -> bool:
        return (path / MARKER).is_file() and (path / "bin" / "python").exists()

    async def get(self, spec: EnvSpec, progress: Progress) -> tuple[Path, bool]:
        """The env for ``spec`` and whether it was reused; builds it (once) if needed."""
        path = self.path_for(spec)
        if spec.key not in self._inflight and self.ready(path):
            os.utime(path / MARKER)  # last used: keeps it from being pruned
            return path, True
        build = self._inflight.get(spec.key)
        if build is None:
            build = _Build()
            build.task = asyncio.create_task(
                self._build(spec, path, build.broadcast), name=f"runtimed-conda-build-{spec.kind}"
            )
            self._inflight[spec.key] = build
            build.task.add_done_callback(lambda task, key=spec.key: self._done(key, task))
        else:
            progress(
                "preparing_env", "Waiting for an identical conda environment that is being built"
            )
        build.listeners.add(progress)
        try:
            assert build.task is not None
            return await asyncio.shield(build.task), False
        finally:
            build.listeners.discard(progress)

    def _done(self, key: str, task: asyncio.Task[Path]) -> None:
        self._inflight.pop(key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have gone away

    async def _build(self, spec: EnvSpec, path: Path, progress: Progress) -> Path:
        tmp = self.envs_dir / f"{BUILDING_PREFIX}{uuid.uuid4().hex}"
        started = time.monotonic()
        try:
            fields = await self._build_env(spec, tmp, progress)
            marker = {
                **fields,
                "created": time.time(),
                "kind": spec.kind,
                "key": spec.key,
                "source": str(spec.source) if spec.source else None,
            }
            (tmp / MARKER).write_text(json.dumps(marker))
            if path.exists():  # a broken leftover (no marker, or its python is gone)
                await asyncio.to_thread(shutil.rmtree, path, True)
            tmp.rename(path)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, tmp, True))
            raise
        self.log.info("%s: built %s in %.1f s", self.label, path.name, time.monotonic() - started)
        return path

    async def stop(self) -> None:
        """Cancel builds in flight (their temporary directories are deleted)."""
        tasks = [b.task for b in self._inflight.values() if b.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def prune(self) -> None:
        """Delete leftovers of interrupted builds and envs unused for :attr:`max_unused`.

        Call it at start only, before any build (it deletes every building directory).
        """
        if not self.envs_dir.is_dir():
            return
        now = time.time()
        for path in self.envs_dir.iterdir():
            if path.name.startswith(BUILDING_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
                continue
            if not any(path.name.startswith(f"conda-{kind}-") for kind in KINDS):
                continue
            marker = path / MARKER
            try:
                unused = now - marker.stat().st_mtime
            except OSError:
                unused = None
            if unused is None or unused > self.max_unused:
                why = (
                    "it has no marker"
                    if unused is None
                    else f"unused for {unused / 86400:.0f} days"
                )
                self.log.info("%s: deleting %s, %s", self.label, path.name, why)
                shutil.rmtree(path, ignore_errors=True)
