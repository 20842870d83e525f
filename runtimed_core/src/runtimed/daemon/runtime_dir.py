"""Where kernels' connection files live, and cleaning up after a daemon that was killed.

Each daemon keeps its kernels' files in ``<runtime dir>/kernels-<key>/``: the
runtime dir is :func:`runtimed.paths.runtime_dir` (``RUNTIMED_RUNTIME_DIR``, by
default ``$XDG_RUNTIME_DIR/runt``) and ``<key>`` a hash of the daemon's socket
path, so every daemon on one socket uses the same directory. In it, per kernel,
a connection file (``kernel-*.json``, 0600: it holds the HMAC key; what
``jupyter console --existing`` takes), its stderr log and a ``.pid`` file, and
``daemon.pid``: the daemon's pid, locked (``flock``) for as long as it runs.

A daemon that stops cleanly removes the directory. One killed outright (SIGKILL,
OOM) cannot; Python kernels notice on their own (``JPY_PARENT_PID``), but other
kernels would run on. So every daemon, as it starts, kills the kernels its
predecessor on the same socket left in its directory, and does the same for the
directories of other daemons whose ``daemon.pid`` nobody holds any more
(removing them). Only a process whose command line names the connection file
is killed, so a recycled pid is never hit.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

from runtimed import paths
from runtimed.errors import DaemonUnavailable

log = logging.getLogger(__name__)

PREFIX = "kernels-"
OWNER = "daemon.pid"
#: A directory being removed (renamed first, so a daemon starting meanwhile never uses it).
TOMBSTONE = ".removing-"
#: Longest a starting daemon waits for a sweeper to let go of its directory, in seconds.
CLAIM_TIMEOUT = 10.0


def directory_for(root: Path, socket_path: Path) -> Path:
    """The kernels directory of the daemon on ``socket_path`` (nothing is created)."""
    key = hashlib.sha256(str(Path(socket_path).absolute()).encode()).hexdigest()[:16]
    return Path(root) / f"{PREFIX}{key}"


class RuntimeDir:
    """One daemon's kernels directory: :meth:`claim` at start, :meth:`release` at shutdown."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def claim(self) -> int:
        """Take the directory (the caller holds its socket's lock, so no other daemon on that
        socket runs), kill what a predecessor left in it, then sweep dead daemons' directories
        beside it. Returns the number of kernels killed."""
        paths.private_dir(self.path.parent)
        deadline = time.monotonic() + CLAIM_TIMEOUT
        while True:
            paths.private_dir(self.path)
            owner = self.path / OWNER
            try:
                fd = os.open(owner, os.O_RDWR | os.O_CREAT, 0o600)
            except FileNotFoundError:  # a sweep took the directory away just now: again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # a starting daemon's sweep is cleaning it: wait
                os.close(fd)
                if time.monotonic() > deadline:
                    raise DaemonUnavailable(f"{self.path} stays locked by another process") from None
                time.sleep(0.05)
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(owner).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # removed while we waited: make it afresh
        killed = _kill_orphans(self.path)
        for leftover in self.path.iterdir():
            if leftover.name != OWNER:
                with contextlib.suppress(OSError):
                    shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink()
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return killed + sweep(self.path.parent, skip=self.path)

    def release(self) -> None:
        """Remove the directory (its kernels are gone) and let go of it; idempotent."""
        if self._fd is None:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)
        self._fd = None


def sweep(root: Path, skip: Path | None = None) -> int:
    """Clean up the kernels directories under ``root`` whose daemon is gone (nobody holds their
    ``daemon.pid``): kill their kernels, remove them. Returns the number of kernels killed."""
    killed = 0
    try:
        entries = list(Path(root).iterdir())
    except OSError:
        return 0
    for directory in entries:
        if directory.name.startswith(TOMBSTONE):
            shutil.rmtree(directory, ignore_errors=True)  # a sweep that was interrupted
            continue
        if not directory.name.startswith(PREFIX) or directory == skip:
            continue
        try:
            if directory.stat().st_uid != os.getuid():
                continue
            fd = os.open(directory / OWNER, os.O_RDONLY)
        except OSError:
            fd = None
        try:
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its daemon is alive
            killed += _kill_orphans(directory)
            tombstone = directory.with_name(f"{TOMBSTONE}{uuid.uuid4().hex}")
            try:
                directory.rename(tombstone)
            except OSError:
                continue
        finally:
            if fd is not None:
                os.close(fd)
        shutil.rmtree(tombstone, ignore_errors=True)
        log.info("Removed %s, left by a daemon that did not stop cleanly", directory)
    return killed


def _kill_orphans(directory: Path) -> int:
    return sum(_kill_orphan(pid_file) for pid_file in directory.glob("kernel-*.pid"))


def _kill_orphan(pid_file: Path) -> int:
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return 0
    connection_file = str(pid_file.with_suffix(".json"))
    if connection_file not in _command_line(pid):
        return 0  # gone, or the pid now belongs to something else
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # kernels run in their own process group
        log.warning("Killed kernel pid %d, orphaned by a daemon that did not stop cleanly", pid)
        return 1
    return 0


def _command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    result = subprocess.run(["ps", "-p", str(pid), "-o", "args="], capture_output=True, text=True, check=False)
    return result.stdout
