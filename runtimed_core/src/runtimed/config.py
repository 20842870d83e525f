"""The daemon's configuration: one dataclass, filled from flags over environment variables
over the configuration file (:mod:`runtimed.configfile`) over defaults.

The core's settings are :data:`CORE_SETTINGS` (key ``hot_kernels``, variable
``RUNTIMED_HOT_KERNELS``, file key ``hot_kernels``). Plugins' own knobs (declared
with :class:`runtimed.settings.Setting`) live in :attr:`DaemonConfig.settings`,
keyed ``<namespace>.<name>``. :func:`effective` lists every value and where it
came from (``runtimed config``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtimed import configfile, paths
from runtimed.errors import ConfigError
from runtimed.settings import Setting, csv, flag_bool


def _path(text: str) -> Path:
    return Path(text).expanduser().absolute()


def _optional(text: str) -> str | None:
    return text.strip() or None


def _log_level(text: str) -> str:
    level = text.strip().lower()
    if level not in ("debug", "info", "warning", "error", "critical"):
        raise ValueError("expected debug, info, warning, error or critical")
    return level


#: The core's settings, in the order ``runtimed config`` lists them.
CORE_SETTINGS: tuple[Setting, ...] = (
    Setting("socket_path", None, "the daemon's socket (clients and daemon)", parse=_path,
            default_factory=paths.socket_path),
    Setting("cache_dir", None, "pool environments and caches", parse=_path,
            default_factory=paths.cache_dir),
    Setting("state_dir", None, "persisted notebook documents", parse=_path,
            default_factory=paths.state_dir),
    Setting("blob_store_dir", None, "output blobs", parse=_path,
            default_factory=paths.blob_store_dir),
    Setting("log_dir", None, "the log of a daemon started in the background", parse=_path,
            default_factory=paths.log_dir),
    Setting("runtime_dir", None, "kernels' connection files (one directory per daemon)",
            parse=_path, default_factory=paths.runtime_dir),
    Setting("hot_kernels", 1, "kernels of the default type kept started in prewarmed envs",
            parse=int),
    Setting("keep_alive_secs", 30.0, "seconds an abandoned room keeps its kernel", parse=float),
    Setting("python", None, "the interpreter pool environments are built from",
            default_factory=lambda: sys.executable),
    Setting("default_packages", [], "comma-separated packages added to every pool env", parse=csv),
    Setting("default_family", None, "the env family auto and prewarmed fall back to "
            "(default: the pool ranked first)", parse=_optional),
    Setting("default_kernel_type", None, "the kernel a notebook that says nothing gets "
            "(default: the launcher ranked first)", parse=_optional),
    Setting("autosave_secs", 2.0, "a notebook file is saved this long after its last change "
            "(0: only on save())", parse=float),
    Setting("blob_text_threshold", 32 * 1024, "output texts longer than this (characters) go "
            "to the blob store", parse=int),
    Setting("blob_cap", 100 * 2**20, "the largest output blob kept (bytes)", parse=int),
    Setting("http_port", 0, "the port of the daemon's web server on 127.0.0.1 (0: any free one)",
            parse=int),
    Setting("log_level", "info", "debug, info, warning, error", parse=_log_level),
    Setting("log_max_bytes", 10 * 2**20, "size at which the daemon's log file is rotated",
            parse=int),
    Setting("log_backups", 3, "rotated log files kept (runtimed.log.1 ...)", parse=int),
    Setting("state_history_limit", 1000, "changes after which a room's runtime-state document "
            "starts afresh", parse=int),
    Setting("no_autostart", False, "clients never start a daemon", parse=flag_bool),
    Setting("disable_plugins", [], "comma-separated plugin names to skip (*: all)", parse=csv),
)
_CORE = {s.name: s for s in CORE_SETTINGS}


def core(name: str) -> Any:
    """The effective value of core setting ``name`` (environment, file or default)."""
    return _CORE[name].resolve("", {})


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
    #: Where this daemon's kernels' connection files go (a directory per daemon inside it).
    runtime_dir: Path = field(default_factory=paths.runtime_dir)
    #: Python kernels kept started and idle in prewarmed envs, claimed by ``start_kernel``.
    hot_kernels: int = field(default_factory=lambda: core("hot_kernels"))
    # Seconds a room with no peers stays alive (its kernel running) before eviction.
    keep_alive_secs: float = field(default_factory=lambda: core("keep_alive_secs"))
    # The interpreter pool environments are built from (absolute path).
    python: str = field(default_factory=lambda: core("python"))
    # Extra packages installed into every prewarmed environment.
    default_packages: list[str] = field(default_factory=lambda: core("default_packages"))
    #: The env family ``auto`` and ``prewarmed`` fall back to; None: the installed pool
    #: that ranks first (:attr:`runtimed.pools.EnvPool.default_rank`).
    default_family: str | None = field(default_factory=lambda: core("default_family"))
    #: The kernel type started when neither the request nor the notebook says; None: the
    #: installed launcher that ranks first (:attr:`runtimed.launchers.KernelLauncher.default_rank`).
    default_kernel_type: str | None = field(default_factory=lambda: core("default_kernel_type"))
    #: Seconds of quiet after which a file-backed notebook is saved (0: only on save()).
    autosave_secs: float = field(default_factory=lambda: core("autosave_secs"))
    #: Text output parts longer than this many characters go to the blob store.
    blob_text_threshold: int = field(default_factory=lambda: core("blob_text_threshold"))
    #: The largest blob kept (bytes); a larger output part is dropped with a note.
    blob_cap: int = field(default_factory=lambda: core("blob_cap"))
    #: The web server's port on 127.0.0.1 (0: any free one).
    http_port: int = field(default_factory=lambda: core("http_port"))
    log_level: str = field(default_factory=lambda: core("log_level"))
    #: The daemon's log file is rotated at this size; ``log_backups`` old ones are kept.
    log_max_bytes: int = field(default_factory=lambda: core("log_max_bytes"))
    log_backups: int = field(default_factory=lambda: core("log_backups"))
    #: Changes to a room's runtime-state document after which it is started afresh (same
    #: content, no history): Automerge's cost to apply a change grows with the history.
    state_history_limit: int = field(default_factory=lambda: core("state_history_limit"))

    #: Plugins' knobs by key (``<namespace>.<name>``): set here (by flags, or by a test) they
    #: win over the environment; the daemon fills in every other declared knob's value.
    settings: dict[str, Any] = field(default_factory=dict)

    def resolve_setting(self, namespace: str, setting: Setting) -> Any:
        """The effective value of a plugin's knob (recorded in :attr:`settings`)."""
        key = setting.key(namespace)
        if key not in self.settings:
            self.settings[key] = setting.resolve(namespace, self.settings)
        return self.settings[key]


def check_file(declared: list[tuple[str, Setting, Any]]) -> list[str]:
    """Fail on keys of the configuration file that no setting has (a typo would otherwise be
    silently ignored); return the namespaces of tables no installed plugin declares."""
    known = {s.name for s in CORE_SETTINGS} | {s.key(ns) for ns, s, _ in declared}
    errors, unused = configfile.unknown_keys(known, {ns for ns, _, _ in declared})
    if errors:
        raise ConfigError(f"{configfile.path()}: unknown setting{'s' * (len(errors) > 1)} "
                          f"{', '.join(errors)} (`runtimed config` lists them all)")
    return unused


def effective(declared: list[tuple[str, Setting, Any]], flags: dict[str, Any] | None = None
              ) -> list[dict[str, Any]]:
    """Every setting (the core's, then each plugin's) with its value and source (``flag``,
    ``env <VAR>``, ``file <path>``, ``default``); ``flags`` by key, already parsed."""
    flags = flags or {}
    rows = []
    for namespace, setting, owner in [("", s, None) for s in CORE_SETTINGS] + list(declared):
        value, source = setting.resolve_with_source(namespace, flags)
        rows.append({
            "key": setting.key(namespace), "value": _jsonable(value), "source": source,
            "env": setting.env_var(namespace), "help": setting.help,
            "plugin": getattr(owner, "__qualname__", None),
        })
    return rows


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
