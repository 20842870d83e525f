"""The environment-pool contract: what a plugin implements to hand kernels an environment.

A pool serves one env *family* (``uv``, ``conda``...) and a set of concrete
``env_source`` values (``uv:prewarmed``...). The daemon owns the pool object:
it calls :meth:`EnvPool.start` once, :meth:`EnvPool.acquire` for every kernel
that needs an environment, :meth:`EnvPool.release` when that kernel is gone,
and :meth:`EnvPool.stop` at shutdown.

A pool also *declares* how it is chosen, as class attributes the daemon reads
without instantiating anything: the project files, notebook-metadata keys and
script blocks that make ``env_source="auto"`` pick one of its sources
(:class:`ProjectFile`, :class:`InlineDependencies`, :class:`ScriptBlock`), and
its configuration knobs (:class:`runtimed.settings.Setting`; every pool gets a
``pool_size`` knob). ``auto`` resolution (:mod:`runtimed.envsource`) goes
through whatever pools are installed; two pools that claim the same family,
env_source, project file, metadata key or block type stop the daemon with an
error naming both.

Helpers for implementations: :mod:`runtimed.prewarm` (the prewarmed-pool rules:
N ready envs, take/replenish/flush, stale and broken envs),
:mod:`runtimed.envcache` (envs built once per key and shared, collected by age
and count) and :mod:`runtimed.procs` (subprocesses killed by process group).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from runtimed.config import DaemonConfig
from runtimed.settings import Configurable, Setting

#: ``progress(phase, message)``: long work reports through this; the daemon shows
#: it in the runtime-state document (``kernel.progress``) and its log.
Progress = Callable[[str, str], None]


def no_progress(phase: str, message: str) -> None:
    """A :data:`Progress` that discards everything."""


@dataclass(frozen=True)
class ProjectFile:
    """A file that, found in the notebook's directory or above it, makes ``auto`` pick
    ``env_source`` (the closest file wins; see :mod:`runtimed.envsource`)."""

    #: The file name, e.g. ``"environment.yml"``.
    name: str
    #: The concrete env_source it selects; one of the declaring pool's ``sources``.
    env_source: str
    #: Tie-break between files in the same directory, across all pools: the lowest wins.
    rank: int = 100
    #: Optional, cheap and synchronous: whether a found file really is one (a
    #: ``pyproject.toml`` that only holds tool settings is not a project). Default: any file.
    accepts: Callable[[Path], bool] | None = None


@dataclass(frozen=True)
class InlineDependencies:
    """A notebook-metadata key that lists dependencies; a non-empty list makes ``auto``
    pick ``env_source``."""

    #: Dotted path into the notebook metadata, e.g. ``"runt.uv.dependencies"``. Its value
    #: must be a list of strings.
    key: str
    env_source: str


@dataclass(frozen=True)
class ScriptBlock:
    """A ``# /// <block_type>`` comment block (PEP 723's syntax) in a code cell that makes
    ``auto`` pick ``env_source``."""

    #: The block's type, e.g. ``"script"`` for PEP 723 inline script metadata.
    block_type: str
    env_source: str


@dataclass(frozen=True)
class PoolStatus:
    """What a pool reports for ``DaemonClient.status()`` (``<family>_available``,
    ``<family>_warming``, ``<family>_error``, ``<family>_retry_in``)."""

    #: Ready environments.
    available: int
    #: Environments being built or about to be (not while waiting to retry a failed build).
    warming: int
    target: int
    #: Why the last build failed, while builds keep failing (None once one succeeds).
    error: str | None = None
    #: Seconds until the next attempt while backing off after failures, else None.
    retry_in: float | None = None


@dataclass
class EnvRequest:
    """What a kernel start asks a pool for."""

    env_source: str
    notebook_id: str
    notebook_path: Path | None = None
    #: The notebook-level metadata (``metadata.runt`` and friends).
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Sources of the notebook's code cells, in order (PEP 723 blocks live there).
    cell_sources: list[str] = field(default_factory=list)
    #: For project-file sources (``uv:pyproject``, ``conda:env_yml``...): the file that decided it.
    project_file: Path | None = None


@dataclass
class PreparedEnv:
    """An environment ready to run a kernel; it belongs to exactly one kernel."""

    env_source: str
    #: The environment's ``sys.prefix``.
    prefix: Path
    #: argv that runs the environment's interpreter, e.g. ``[prefix/bin/python]``.
    python: list[str]
    #: Environment variables the kernel needs in this env (e.g. a conda env's activation).
    #: ``PATH``, if present, lists directories to put in front of the kernel's PATH
    #: (``os.pathsep``-separated), not a whole PATH.
    env: dict[str, str] = field(default_factory=dict)
    #: Plugin-private data (the pool uses it in :meth:`EnvPool.release`).
    extra: dict[str, Any] = field(default_factory=dict)


class EnvPool(Configurable, ABC):
    """Base class of environment pools. Subclasses set :attr:`family` and :attr:`sources`.

    Required: :meth:`start`, :meth:`stop`, :meth:`acquire`, :meth:`status`,
    :meth:`flush`. Optional: :meth:`release` (default: nothing to do), :meth:`update`
    (default: never in place), and the declarations below (default: none).
    """

    #: The env family this pool serves, e.g. ``"uv"``: the part of an env_source before ``:``.
    family: ClassVar[str]
    #: The concrete ``env_source`` values :meth:`acquire` accepts, each ``<family>:<kind>``.
    #: The first is what ``auto`` falls back to within this family (its ready pool).
    sources: ClassVar[tuple[str, ...]]
    #: Project files that make ``auto`` pick one of :attr:`sources`.
    project_files: ClassVar[tuple[ProjectFile, ...]] = ()
    #: Notebook-metadata keys of inline dependencies, checked in this order.
    inline_dependencies: ClassVar[tuple[InlineDependencies, ...]] = ()
    #: Script blocks in code cells this pool understands.
    script_blocks: ClassVar[tuple[ScriptBlock, ...]] = ()
    #: Configuration knobs (besides ``pool_size``, which every pool has).
    settings: ClassVar[tuple[Setting, ...]] = ()
    #: Ready environments kept by default (the ``pool_size`` knob; 0 builds on demand).
    default_pool_size: ClassVar[int] = 1
    #: Which family ``auto`` and ``prewarmed`` fall back to when the user chose none
    #: (``RUNTIMED_DEFAULT_FAMILY``): the lowest rank wins; None: never by default.
    default_rank: ClassVar[int | None] = None

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config

    @classmethod
    def settings_namespace(cls) -> str:
        return cls.family

    @classmethod
    def declared_settings(cls) -> tuple[Setting, ...]:
        size = Setting("pool_size", cls.default_pool_size,
                       f"ready {cls.family} environments (0: build on demand)", parse=int)
        return (size, *cls.settings)

    @property
    def pool_size(self) -> int:
        """How many ready environments to keep (the ``<family>.pool_size`` knob)."""
        return max(0, int(self.setting("pool_size")))

    @abstractmethod
    async def start(self) -> None:
        """Required. Begin warming in the background; return promptly."""

    @abstractmethod
    async def stop(self) -> None:
        """Required. Cancel background work. Environments on disk may stay for the next start."""

    @abstractmethod
    async def acquire(self, request: EnvRequest, progress: Progress) -> PreparedEnv:
        """Required. Return an environment for one kernel, waiting (bounded) if none is ready.

        Raise :class:`runtimed.errors.EnvironmentFailed` with a message a user can act on.
        """

    async def release(self, env: PreparedEnv) -> None:
        """Optional. The kernel that used ``env`` is gone."""

    async def update(self, env: PreparedEnv, request: EnvRequest,
                     progress: Progress) -> PreparedEnv | None:
        """Optional. The notebook of the kernel running in ``env`` (which this pool handed out)
        now asks for ``request`` (its dependencies changed): make ``env`` satisfy it in place,
        while the kernel runs, if that is possible.

        Return ``env`` itself if it already satisfies ``request``, a new
        :class:`PreparedEnv` (same prefix; it replaces ``env``, :meth:`release` gets it
        later) once it does, or None if it cannot be done in place (an env shared with
        other kernels, a removed package...): the daemon then restarts the kernel in an
        env from :meth:`acquire`. Raise :class:`runtimed.errors.EnvironmentFailed` if an
        install fails. Default: None.
        """
        return None

    @abstractmethod
    def status(self) -> PoolStatus:
        """Required. Current counts; cheap and non-blocking."""

    @abstractmethod
    async def flush(self) -> None:
        """Required. Discard ready environments and rebuild them."""
