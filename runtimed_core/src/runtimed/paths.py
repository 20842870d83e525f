"""Where runtimed keeps its files: platformdirs defaults, one env override each.

Every function resolves lazily (on call), so tests can monkeypatch the
environment. ``RUNTIMED_SOCKET_PATH`` moves the socket; the other directories
default to places derived from it when it is set, so one override isolates a
whole daemon.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP = "runt"


def _override(var: str) -> Path | None:
    value = os.environ.get(var)
    return Path(value).expanduser() if value else None


def cache_dir() -> Path:
    """Environments and other rebuildable data (``RUNTIMED_CACHE_DIR``)."""
    return _override("RUNTIMED_CACHE_DIR") or Path(platformdirs.user_cache_dir(APP, appauthor=False))


def socket_path() -> Path:
    """The daemon's Unix socket (``RUNTIMED_SOCKET_PATH``)."""
    return _override("RUNTIMED_SOCKET_PATH") or cache_dir() / "runtimed.sock"


def state_dir() -> Path:
    """Persisted notebook documents (``RUNTIMED_STATE_DIR``)."""
    return _override("RUNTIMED_STATE_DIR") or Path(
        platformdirs.user_state_dir(APP, appauthor=False)
    )


def blob_store_dir() -> Path:
    """Content-addressed output blobs (``RUNTIMED_BLOB_STORE_DIR``)."""
    return _override("RUNTIMED_BLOB_STORE_DIR") or cache_dir() / "blobs"


def log_dir() -> Path:
    """Daemon logs, written when a client auto-starts the daemon (``RUNTIMED_LOG_DIR``)."""
    return _override("RUNTIMED_LOG_DIR") or Path(platformdirs.user_log_dir(APP, appauthor=False))


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) readable only by this user; return it."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path
