"""The conda pool: prewarmed conda envs, and cached envs for inline deps, environment.yml, pixi.

Everything is built with rattler (:mod:`runtimed_conda_pool.build`; its solve and install
in a worker process); there is no conda binary. Layout under ``config.cache_dir / "conda-envs"``::

    conda-building-<hex>/        an env being built (never handed out; deleted at start)
    conda-prewarmed-<hex>/       a ready pool env (``.warmed``: JSON {created, key, ...})
    conda-<kind>-<key>/          a cached env (kind: inline, env_yml, pixi, lock; see
                                 :mod:`runtimed.envcache`: built once, collected by age and count)
    prewarmed.conda-lock.yml     the pool's last solve: replenishing installs from it, no solve

Every env directory holds ``conda-lock.yml``, its exact solve, and
``.activation.json``, its activation variables. Kernels get the env's
activation, as if ``conda activate`` had run: ``CONDA_PREFIX``,
``CONDA_DEFAULT_ENV``, ``CONDA_SHLVL``, the variables of
``etc/conda/env_vars.d`` and ``conda-meta/state``, what the packages'
``etc/conda/activate.d`` scripts set, and the env's directories in front of
PATH (:mod:`runtimed_conda_pool.activation`; computed once per env, so handing
an env out stays instant). Channels come
from ``RUNTIMED_CONDA_CHANNELS`` (comma-separated, default ``conda-forge``);
rattler's repodata and package caches live in ``$RATTLER_CACHE_DIR`` if set
(shared with pixi), else ``config.cache_dir / "rattler"``.

Which env a request gets:

- a ``conda-lock.yml`` in the notebook's directory (or next to the project
  file) wins for every conda source: the env is installed from it without
  solving and cached by the lock's content;
- ``conda:prewarmed``: a ready pool env (same rules as the uv pool, see
  :mod:`runtimed.prewarm`);
- ``conda:inline``, ``conda:env_yml``, ``conda:pixi``: a cached env keyed by a
  hash of the request (or the file's content), reused at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from functools import partial
from pathlib import Path
from typing import Any

from runtimed.config import DaemonConfig
from runtimed.envcache import EnvCache
from runtimed.envsource import find_project_file
from runtimed.errors import EnvironmentFailed
from runtimed.pools import (
    EnvPool, EnvRequest, InlineDependencies, PoolStatus, PreparedEnv, Progress, ProjectFile,
)
from runtimed.prewarm import BuildFailed, Prewarmer
from runtimed.settings import Setting, csv
from runtimed_conda_pool.activation import activation_env
from runtimed_conda_pool.build import Builder
from runtimed_conda_pool.lockfile import KEY_FIELD, LOCK_NAME, Locked, LockError, read_lock
from runtimed_conda_pool.specs import (
    EnvSpec,
    SpecError,
    env_yml_spec,
    inline_spec,
    lock_spec,
    pixi_spec,
    prewarmed_spec,
)

log = logging.getLogger("runtimed.pools.conda")

POOL_LOCK = "prewarmed.conda-lock.yml"
#: Kinds of cached envs (``conda-<kind>-<key>``).
CACHED_KINDS = ("inline", "env_yml", "pixi", "lock")


def rattler_cache_root(config: DaemonConfig) -> Path:
    """``$RATTLER_CACHE_DIR`` (rattler's and pixi's own variable), else ``<cache dir>/rattler``."""
    override = os.environ.get("RATTLER_CACHE_DIR")
    return Path(override) if override else Path(config.cache_dir) / "rattler"


class CondaPool(EnvPool):
    """Conda envs for kernels (``conda:prewarmed``, ``conda:inline``, ``conda:env_yml``,
    ``conda:pixi``); see the module docstring.

    Tunables: :attr:`prewarmed` (a :class:`Prewarmer`: ``acquire_timeout``,
    ``max_age``...), :attr:`builder` (``compile_bytecode``, ``step_timeout``...),
    :attr:`cache` (``max_age``, ``max_count``) and :attr:`channels`, all settable after
    construction.
    """

    family = "conda"
    sources = ("conda:prewarmed", "conda:inline", "conda:env_yml", "conda:pixi")
    project_files = (
        ProjectFile("pixi.toml", "conda:pixi", rank=20),
        ProjectFile("environment.yml", "conda:env_yml", rank=30),
        ProjectFile("environment.yaml", "conda:env_yml", rank=31),
    )
    inline_dependencies = (InlineDependencies("runt.conda.dependencies", "conda:inline"),)
    default_pool_size = 1
    default_rank = 10
    settings = (
        Setting("channels", ["conda-forge"], "comma-separated conda channels (names or URLs, "
                "file:// too)", parse=csv),
        Setting("env_max_age_secs", 30 * 24 * 3600.0, "cached conda envs (inline, "
                "environment.yml, pixi, lock) unused this long are removed", parse=float),
        Setting("env_max_count", 10, "... and the least recently used beyond this many", parse=int),
    )

    def __init__(self, config: DaemonConfig) -> None:
        super().__init__(config)
        self.envs_dir = Path(config.cache_dir) / "conda-envs"
        self.channels = list(self.setting("channels"))
        self.platform = _current_platform()
        self.builder = Builder(
            cache_root=rattler_cache_root(config), platform=self.platform, log=log
        )
        self.prewarmed = Prewarmer(
            family="conda",
            label="conda pool",
            envs_dir=self.envs_dir,
            target=lambda: self.pool_size,
            build=self._build_prewarmed,
            is_current=self._is_current,
            fix_hint=self._fix_hint,
            log=log,
        )
        self.cache = EnvCache(
            self.envs_dir,
            prefixes=tuple(f"conda-{kind}-" for kind in CACHED_KINDS),
            max_age=float(self.setting("env_max_age_secs")),
            max_count=int(self.setting("env_max_count")),
            label="conda pool",
            log=log,
        )

    # -- the EnvPool contract -------------------------------------------------

    @property
    def pool_lock(self) -> Path:
        """The pool's lock: the last solve of the prewarmed spec."""
        return self.envs_dir / POOL_LOCK

    def prewarmed_spec(self) -> EnvSpec:
        """python, ipykernel, ipywidgets and ``config.default_packages`` on :attr:`channels`."""
        return prewarmed_spec(self.channels, self.config.default_packages, self.platform)

    async def start(self) -> None:
        """Delete leftovers and long-unused cached envs, then start warming in the background."""
        if self.prewarmed.running:
            return
        self.envs_dir.mkdir(parents=True, exist_ok=True)
        await self.cache.start()
        log.info("Conda pool: channels %s, platform %s", ", ".join(self.channels), self.platform)
        await self.prewarmed.start()

    async def stop(self) -> None:
        """Cancel builds; ready and cached envs stay on disk for the next start. Idempotent."""
        await self.cache.stop()
        await self.prewarmed.stop()

    async def acquire(self, request: EnvRequest, progress: Progress) -> PreparedEnv:
        """An env for one kernel; see the module docstring for which.

        Raises :class:`EnvironmentFailed` quoting the solver, naming an
        unreachable channel, or naming a malformed file and its problem.
        """
        source = request.env_source
        if source not in self.sources:
            raise EnvironmentFailed(
                f"The conda pool provides {', '.join(self.sources)}, not {source!r}.",
                env_source=source,
            )
        if not self.prewarmed.running:
            raise EnvironmentFailed(
                "The conda pool is not running (the daemon is starting or stopping); try again.",
                env_source=source,
            )
        project = None
        if source in ("conda:env_yml", "conda:pixi"):
            project = request.project_file or _find(request.notebook_path, source)
        lock = notebook_lock(request.notebook_path, project)
        if lock is None and source == "conda:prewarmed":
            env = await self.prewarmed.take(source, progress)
            python = env.path / "bin" / "python"
            return PreparedEnv(
                env_source=source,
                prefix=env.path,
                python=[str(python)],
                env=await activation_env(env.path, log),
                extra={"kind": "prewarmed", "created": env.created},
            )
        try:
            spec = await asyncio.to_thread(self._spec_for, request, project, lock)
        except SpecError as exc:
            raise EnvironmentFailed(str(exc), env_source=source) from None
        name = f"conda-{spec.kind}-{spec.key[:24]}"
        try:
            path, reused = await self.cache.acquire(
                name, partial(self._build_cached, spec), progress, env_source=source)
        except BuildFailed as exc:
            raise EnvironmentFailed(
                f"Could not build the conda environment for {source} from {spec.describe()}: {exc}",
                env_source=source,
            ) from None
        if reused:
            log.info("Conda pool: %s reuses %s", source, path.name)
        return PreparedEnv(
            env_source=source,
            prefix=path,
            python=[str(path / "bin" / "python")],
            env=await activation_env(path, log),
            extra={"kind": spec.kind, "key": spec.key, "cached": name, "reused": reused},
        )

    async def release(self, env: PreparedEnv) -> None:
        """A pool env is deleted (it served exactly one kernel); a cached env stays for the next
        kernel (and becomes collectable once no kernel uses it)."""
        if env.extra.get("kind") == "prewarmed":
            await self.prewarmed.release(Path(env.prefix))
        elif env.extra.get("cached"):
            self.cache.release(env.extra["cached"])

    def status(self) -> PoolStatus:
        """Counts of the prewarmed pool (cached envs are built on demand and not counted)."""
        return self.prewarmed.status()

    async def flush(self) -> None:
        """Delete the ready envs and the pool's lock, and rebuild with a fresh solve.

        Cached envs stay (a kernel may be using one); they are keyed by content.
        """
        self.pool_lock.unlink(missing_ok=True)
        await self.prewarmed.flush()

    # -- specs ------------------------------------------------------------------

    def _spec_for(self, request: EnvRequest, project: Path | None, lock: Path | None) -> EnvSpec:
        """The spec a request asks for (runs in a thread: it reads files)."""
        source = request.env_source
        if lock is not None:
            return lock_spec(lock, _read_bytes(lock), self.channels, self.platform)
        if source == "conda:inline":
            return inline_spec(request.metadata, self.channels, self.platform)
        kind = source.split(":", 1)[1]
        path = project
        if path is None:
            names = "a pixi.toml" if kind == "pixi" else "an environment.yml or environment.yaml"
            where = (
                f"above {request.notebook_path}"
                if request.notebook_path
                else "(no notebook_path was given to look from)"
            )
            raise SpecError(
                f"{source} needs {names} in the notebook's directory or a parent; "
                f"none found {where}"
            )
        text = _read_bytes(path).decode(errors="replace")
        if kind == "pixi":
            return pixi_spec(path, text, self.channels, self.platform)
        return env_yml_spec(path, text, self.channels, self.platform)

    # -- builds -----------------------------------------------------------------

    async def _build_cached(
        self, spec: EnvSpec, directory: Path, progress: Progress
    ) -> dict[str, Any]:
        """Build a cached env for ``spec`` (the cache's build function)."""
        locked = None
        if spec.lock_file is not None:
            try:
                locked = await asyncio.to_thread(read_lock, spec.lock_file, self.platform)
            except LockError as exc:
                raise BuildFailed(str(exc)) from None
        result = await self.builder.build(spec, directory, progress, locked=locked)
        return {**result.marker(), "kind": spec.kind, "key": spec.key,
                "source": str(spec.source) if spec.source else None}

    async def _build_prewarmed(self, directory: Path, progress: Progress) -> dict[str, Any]:
        """One pool env: from the pool's lock when it is current, else solved (and locked)."""
        try:
            spec = self.prewarmed_spec()
        except SpecError as exc:
            raise BuildFailed(str(exc)) from None
        locked = await asyncio.to_thread(self._current_pool_lock, spec)
        result = None
        if locked is not None:
            try:
                result = await self.builder.build(spec, directory, progress, locked=locked)
            except BuildFailed as exc:
                log.warning(
                    "Conda pool: installing from %s failed, solving again: %s", POOL_LOCK, exc
                )
                await asyncio.to_thread(shutil.rmtree, directory, True)
        if result is None:
            result = await self.builder.build(spec, directory, progress)
            tmp = self.pool_lock.with_name(f".{POOL_LOCK}.tmp")
            await asyncio.to_thread(shutil.copyfile, directory / LOCK_NAME, tmp)
            tmp.replace(self.pool_lock)
        return {
            "key": spec.key,
            "channels": list(spec.channels),
            "specs": list(spec.specs),
            **result.marker(),
        }

    def _current_pool_lock(self, spec: EnvSpec) -> Locked | None:
        """The pool's lock if it was solved for ``spec`` less than ``max_age`` ago, else None."""
        try:
            age = time.time() - self.pool_lock.stat().st_mtime
        except OSError:
            return None
        if age > self.prewarmed.max_age:
            return None
        try:
            locked = read_lock(self.pool_lock, self.platform)
        except LockError as exc:
            log.warning("Conda pool: ignoring %s: %s", POOL_LOCK, exc)
            return None
        return locked if locked.custom.get(KEY_FIELD) == spec.key else None

    def _is_current(self, marker: dict[str, Any]) -> bool:
        try:
            return marker.get("key") == self.prewarmed_spec().key
        except SpecError:
            return False

    def _fix_hint(self) -> str:
        extra = self.config.default_packages
        packages = (
            f", the default packages (RUNTIMED_DEFAULT_PACKAGES={','.join(extra)})" if extra else ""
        )
        return (
            f"Check the conda channels (RUNTIMED_CONDA_CHANNELS={','.join(self.channels)}){packages} "
            "and access to them, then flush the pool."
        )


def notebook_lock(notebook_path: Path | None, project_file: Path | None = None) -> Path | None:
    """A ``conda-lock.yml`` in the notebook's directory, else next to the project file."""
    candidates = []
    if notebook_path is not None:
        path = Path(notebook_path).expanduser()
        candidates.append((path if path.is_dir() else path.parent) / LOCK_NAME)
    if project_file is not None:
        candidates.append(Path(project_file).parent / LOCK_NAME)
    return next((c for c in candidates if c.is_file()), None)


def _find(notebook_path: Path | None, source: str) -> Path | None:
    found = find_project_file(notebook_path, CondaPool.project_files)
    return found[0] if found is not None and found[1].env_source == source else None


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from None


#: (platform.system(), platform.machine()) -> conda subdir, for the machines conda-forge builds.
_SUBDIRS = {
    ("Linux", "x86_64"): "linux-64", ("Linux", "aarch64"): "linux-aarch64",
    ("Linux", "ppc64le"): "linux-ppc64le", ("Darwin", "x86_64"): "osx-64",
    ("Darwin", "arm64"): "osx-arm64", ("Windows", "AMD64"): "win-64",
    ("Windows", "ARM64"): "win-arm64",
}


def _current_platform() -> str:
    """This machine's conda subdir. rattler knows (``Subdir.current()``), but importing it
    costs the daemon ~7 MB for good, so it is asked only for a machine not in the table."""
    import platform

    known = _SUBDIRS.get((platform.system(), platform.machine()))
    if known is not None:
        return known
    from rattler.platform import Subdir

    return str(Subdir.current())
