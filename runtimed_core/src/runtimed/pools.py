"""The environment-pool contract: what a plugin implements to hand kernels an environment.

A pool serves one env *family* (``uv``, ``conda``...) and a set of concrete
``env_source`` values (``uv:prewarmed``...). The daemon owns the pool object:
it calls :meth:`EnvPool.start` once, :meth:`EnvPool.acquire` for every kernel
that needs an environment, :meth:`EnvPool.release` when that kernel is gone,
and :meth:`EnvPool.stop` at shutdown.

Helpers for implementations: :mod:`runtimed.prewarm` (the prewarmed-pool rules:
N ready envs, take/replenish/flush, stale and broken envs) and
:mod:`runtimed.procs` (subprocesses killed by process group, ``find_uv``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from runtimed.config import DaemonConfig

#: ``progress(phase, message)``: long work reports through this; the daemon shows
#: it in the runtime-state document (``kernel.progress``) and its log.
Progress = Callable[[str, str], None]


def no_progress(phase: str, message: str) -> None:
    """A :data:`Progress` that discards everything."""


@dataclass(frozen=True)
class PoolStatus:
    """Counts a pool reports for ``DaemonClient.status()``."""

    available: int
    warming: int
    target: int


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


class EnvPool(ABC):
    """Base class of environment pools. Subclasses set :attr:`family` and :attr:`sources`.

    Required: :meth:`start`, :meth:`stop`, :meth:`acquire`, :meth:`status`,
    :meth:`flush`. Optional: :meth:`release` (default: nothing to do).
    """

    #: The env family this pool serves, e.g. ``"uv"``.
    family: ClassVar[str]
    #: The concrete ``env_source`` values :meth:`acquire` accepts.
    sources: ClassVar[tuple[str, ...]]

    def __init__(self, config: DaemonConfig) -> None:
        self.config = config

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

    @abstractmethod
    def status(self) -> PoolStatus:
        """Required. Current counts; cheap and non-blocking."""

    @abstractmethod
    async def flush(self) -> None:
        """Required. Discard ready environments and rebuild them."""
