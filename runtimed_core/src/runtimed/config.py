"""The daemon's configuration: one dataclass, filled from flags over env vars over defaults.

Plugins' own knobs (declared with :class:`runtimed.settings.Setting`) live in
:attr:`DaemonConfig.settings`, keyed ``<namespace>.<name>``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runtimed import paths

if TYPE_CHECKING:
    from runtimed.settings import Setting


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
    #: The env family ``auto`` and ``prewarmed`` fall back to; None: the installed pool
    #: that ranks first (:attr:`runtimed.pools.EnvPool.default_rank`).
    default_family: str | None = field(
        default_factory=lambda: os.environ.get("RUNTIMED_DEFAULT_FAMILY") or None
    )
    #: The kernel type started when neither the request nor the notebook says; None: the
    #: installed launcher that ranks first (:attr:`runtimed.launchers.KernelLauncher.default_rank`).
    default_kernel_type: str | None = field(
        default_factory=lambda: os.environ.get("RUNTIMED_DEFAULT_KERNEL_TYPE") or None
    )
    #: Seconds of quiet after which a file-backed notebook is saved (0: only on save()).
    autosave_secs: float = field(
        default_factory=lambda: float(os.environ.get("RUNTIMED_AUTOSAVE_SECS", "2"))
    )
    #: Text output parts longer than this many characters go to the blob store.
    blob_text_threshold: int = field(
        default_factory=lambda: _env_int("RUNTIMED_BLOB_TEXT_THRESHOLD", 64 * 1024)
    )
    #: The largest blob kept (bytes); a larger output part is dropped with a note.
    blob_cap: int = field(default_factory=lambda: _env_int("RUNTIMED_BLOB_CAP", 100 * 2**20))
    log_level: str = field(default_factory=lambda: os.environ.get("RUNTIMED_LOG_LEVEL", "info"))
    #: Changes to a room's runtime-state document after which it is started afresh (same
    #: content, no history): Automerge's cost to apply a change grows with the history.
    state_history_limit: int = field(
        default_factory=lambda: _env_int("RUNTIMED_STATE_HISTORY_LIMIT", 1000)
    )

    #: Plugins' knobs by key (``<namespace>.<name>``): set here (by flags, or by a test) they
    #: win over the environment; the daemon fills in every other declared knob's value.
    settings: dict[str, Any] = field(default_factory=dict)

    def resolve_setting(self, namespace: str, setting: Setting) -> Any:
        """The effective value of a plugin's knob (recorded in :attr:`settings`)."""
        key = setting.key(namespace)
        if key not in self.settings:
            self.settings[key] = setting.resolve(namespace, self.settings)
        return self.settings[key]
