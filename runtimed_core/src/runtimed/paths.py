"""Where runtimed keeps its files: platformdirs defaults, each overridable.

Every function resolves lazily (on call), so tests can monkeypatch the
environment. Each directory is, in order: its environment variable
(``RUNTIMED_CACHE_DIR``...), its key in the configuration file
(:mod:`runtimed.configfile`), else the platformdirs default (app name ``runt``).
The socket and the blob store default to places inside the cache directory, so
one override isolates a whole daemon.

``CONDUCTOR_WORKSPACE_PATH`` (set by Conductor in each of its worktrees) gives
that worktree a daemon of its own: the *default* directories move under
``worktrees/<name>-<hash of the path>/`` (``~/.cache/runt/worktrees/app-3f2a9c.../runtimed.sock``);
a directory set explicitly is used as it is.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from pathlib import Path

import platformdirs

from runtimed import configfile
from runtimed.configfile import APP
from runtimed.errors import ConfigError

__all__ = ["APP", "blob_store_dir", "cache_dir", "log_dir", "private_dir", "runtime_dir",
           "socket_path", "state_dir", "workspace_key"]

WORKSPACE_ENV = "CONDUCTOR_WORKSPACE_PATH"


def _explicit(key: str, var: str) -> Path | None:
    found = configfile.lookup(key, var)
    if found is None:
        return None
    value, source = found
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{configfile.path()}: {key} = {value!r} is not a valid value for "
                          f"{key}: expected a path")
    path = Path(value).expanduser()
    if not path.is_absolute() and source.startswith("file "):
        raise ConfigError(f"{configfile.path()}: {key} = {value!r} is not a valid value for "
                          f"{key}: expected an absolute path")
    return path


def workspace_key() -> str | None:
    """``<folder name>-<12 hex digits of its path's hash>`` for ``CONDUCTOR_WORKSPACE_PATH``, or None."""
    workspace = os.environ.get(WORKSPACE_ENV)
    if not workspace:
        return None
    path = Path(workspace).expanduser().absolute()
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.name)[:16] or "root"  # socket paths are short
    return f"{name}-{digest}"


def _default(base: str) -> Path:
    key = workspace_key()
    return Path(base) / "worktrees" / key if key else Path(base)


#: The longest path a Unix socket can have (``sun_path``: 108 bytes on Linux, 104 on macOS).
MAX_SOCKET_PATH = 103


def check_socket_path(path: Path) -> Path:
    """``path``, or a :class:`ConfigError` if it is too long to be a Unix socket's."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise ConfigError(f"The socket path {path} is {len(os.fsencode(path))} bytes long, more than "
                          f"a Unix socket allows ({MAX_SOCKET_PATH}); set RUNTIMED_SOCKET_PATH "
                          "(or socket_path in the configuration file) to a shorter one")
    return path


def cache_dir() -> Path:
    """Environments and other rebuildable data (``RUNTIMED_CACHE_DIR``)."""
    return _explicit("cache_dir", "RUNTIMED_CACHE_DIR") or _default(
        platformdirs.user_cache_dir(APP, appauthor=False))


def socket_path() -> Path:
    """The daemon's Unix socket (``RUNTIMED_SOCKET_PATH``)."""
    return _explicit("socket_path", "RUNTIMED_SOCKET_PATH") or cache_dir() / "runtimed.sock"


def state_dir() -> Path:
    """Persisted notebook documents (``RUNTIMED_STATE_DIR``)."""
    return _explicit("state_dir", "RUNTIMED_STATE_DIR") or _default(
        platformdirs.user_state_dir(APP, appauthor=False))


def blob_store_dir() -> Path:
    """Content-addressed output blobs (``RUNTIMED_BLOB_STORE_DIR``)."""
    return _explicit("blob_store_dir", "RUNTIMED_BLOB_STORE_DIR") or cache_dir() / "blobs"


def log_dir() -> Path:
    """The log of a daemon started in the background (``RUNTIMED_LOG_DIR``)."""
    return _explicit("log_dir", "RUNTIMED_LOG_DIR") or _default(
        platformdirs.user_log_dir(APP, appauthor=False))


def runtime_dir() -> Path:
    """Kernels' connection files (``RUNTIMED_RUNTIME_DIR``): the user runtime dir
    (``$XDG_RUNTIME_DIR/runt``, else ``/tmp/runtime-<uid>/runt`` on Linux)."""
    explicit = _explicit("runtime_dir", "RUNTIMED_RUNTIME_DIR")
    if explicit is not None:
        return explicit
    with warnings.catch_warnings():  # platformdirs warns when it falls back to /tmp
        warnings.simplefilter("ignore")
        base = platformdirs.user_runtime_dir(APP, appauthor=False)
    return _default(base)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable only by this user; return it.

    A directory that exists but belongs to someone else is a :class:`ConfigError`
    (``/tmp/runtime-<uid>`` could have been created by another user).
    """
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):  # missing parents are private too (umask permitting)
        directory.mkdir(exist_ok=True, mode=0o700)
    if path.stat().st_uid != os.getuid():
        raise ConfigError(f"{path} belongs to another user; refusing to keep runtimed's files there")
    os.chmod(path, 0o700)
    return path
