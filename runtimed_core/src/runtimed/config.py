"""The daemon's configuration: one dataclass, filled from flags over env vars over defaults."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from runtimed import paths


def _env_int(var: str, default: int) -> int:
    value = os.environ.get(var)
    return int(value) if value else default


def _env_list(var: str) -> list[str]:
    return [item.strip() for item in os.environ.get(var, "").split(",") if item.strip()]


@dataclass
class DaemonConfig:
    """Everything a daemon and its plugins need to know about where and how to run.

    Plugins receive this object; they may read any field and should ignore
    fields they do not know.
    """

    socket_path: Path = field(default_factory=paths.socket_path)
    cache_dir: Path = field(default_factory=paths.cache_dir)
    state_dir: Path = field(default_factory=paths.state_dir)
    blob_store_dir: Path = field(default_factory=paths.blob_store_dir)
    log_dir: Path = field(default_factory=paths.log_dir)
    uv_pool_size: int = field(default_factory=lambda: _env_int("RUNTIMED_UV_POOL_SIZE", 2))
    conda_pool_size: int = field(default_factory=lambda: _env_int("RUNTIMED_CONDA_POOL_SIZE", 1))
    #: Python kernels kept started and idle in prewarmed envs, claimed by ``start_kernel``.
    hot_kernels: int = field(default_factory=lambda: _env_int("RUNTIMED_HOT_KERNELS", 1))
    # Seconds a room with no peers stays alive (its kernel running) before eviction.
    keep_alive_secs: float = field(
        default_factory=lambda: float(os.environ.get("RUNTIMED_KEEP_ALIVE_SECS", "30"))
    )
    # The interpreter pool environments are built from (absolute path).
    python: str = field(default_factory=lambda: os.environ.get("RUNTIMED_PYTHON") or sys.executable)
    # Extra packages installed into every prewarmed environment.
    default_packages: list[str] = field(
        default_factory=lambda: _env_list("RUNTIMED_DEFAULT_PACKAGES")
    )
    #: Cached inline / PEP 723 environments unused this long (seconds) are garbage-collected...
    inline_env_max_age_secs: float = field(
        default_factory=lambda: float(os.environ.get("RUNTIMED_INLINE_ENV_MAX_AGE_SECS", "86400"))
    )
    #: ...and so are the least recently used beyond this many (never one a live kernel uses).
    inline_env_max_count: int = field(default_factory=lambda: _env_int("RUNTIMED_INLINE_ENV_MAX_COUNT", 10))
    #: Conda channels (names or URLs, ``file://`` included) for the conda family.
    conda_channels: list[str] = field(
        default_factory=lambda: _env_list("RUNTIMED_CONDA_CHANNELS") or ["conda-forge"]
    )
    #: The env family ``auto`` and ``prewarmed`` fall back to (``uv`` or ``conda``).
    default_family: str = field(default_factory=lambda: os.environ.get("RUNTIMED_DEFAULT_FAMILY", "uv"))
    log_level: str = field(default_factory=lambda: os.environ.get("RUNTIMED_LOG_LEVEL", "info"))
    #: Changes to a room's runtime-state document after which it is started afresh (same
    #: content, no history): Automerge's cost to apply a change grows with the history.
    state_history_limit: int = field(
        default_factory=lambda: _env_int("RUNTIMED_STATE_HISTORY_LIMIT", 1000)
    )

    def pool_size(self, family: str) -> int:
        """The configured number of ready environments for an env family (``uv``, ``conda``...)."""
        return int(getattr(self, f"{family}_pool_size", 1))
