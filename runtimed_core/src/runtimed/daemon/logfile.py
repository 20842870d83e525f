"""The daemon's logging: stderr in the foreground, a size-capped rotating file in the background.

A daemon started with ``runtimed run --detach`` (as clients start it) writes
``<log dir>/runtimed.log``; at ``log_max_bytes`` the file becomes
``runtimed.log.1`` (the older ones shift up) and ``log_backups`` old files are
kept. Whatever reaches file descriptors 1 and 2 directly (a native library, an
uncaught exception in a thread) lands in the current file too.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path

from runtimed import paths
from runtimed.config import DaemonConfig

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_NAME = "runtimed.log"


class RotatingLog(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler whose file is also stdout and stderr (again after each rollover)."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, maxBytes=max(max_bytes, 0), backupCount=max(backups, 0),
                         encoding="utf-8")
        self._redirect()

    def _redirect(self) -> None:
        if self.stream is None:
            return
        self.stream.flush()
        for fd in (1, 2):
            os.dup2(self.stream.fileno(), fd)

    def doRollover(self) -> None:  # noqa: N802 - logging's name
        super().doRollover()
        self._redirect()


def log_path(config: DaemonConfig) -> Path:
    return config.log_dir / LOG_NAME


def configure(config: DaemonConfig, *, to_file: bool) -> None:
    """Log at ``config.log_level`` to stderr, or (``to_file``) to the rotating log file, which
    then also receives stdout and stderr."""
    level = getattr(logging, config.log_level.upper(), logging.INFO)
    if to_file:
        paths.private_dir(config.log_dir)
        handler: logging.Handler = RotatingLog(log_path(config), config.log_max_bytes,
                                               config.log_backups)
        with open(os.devnull, "rb") as devnull:
            os.dup2(devnull.fileno(), 0)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for chatty in ("markdown_it", "watchfiles"):  # a line per parsing rule / file event
        logging.getLogger(chatty).setLevel(max(level, logging.INFO if chatty == "watchfiles"
                                               else logging.WARNING))
