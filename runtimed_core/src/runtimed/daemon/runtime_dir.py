"""Where kernels' connection files live, and cleaning up after a daemon that was killed.

Each daemon keeps its kernels' files in ``<tmp>/runtimed-kernels-<pid>-<random>/``:
per kernel a connection file (``kernel-*.json``, 0600: it holds the HMAC key),
its stderr log and a ``.pid`` file. A daemon that stops cleanly removes them. One
killed outright (SIGKILL, OOM) cannot; Python kernels notice on their own
(``JPY_PARENT_PID``), but other kernels would run on. So every daemon, as it
starts, sweeps the directories of daemons that are no longer alive: it kills
the kernels still running from them (only a process whose command line names
that connection file, so a recycled pid is never hit) and removes the directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "runtimed-kernels-"


def create() -> Path:
    """A fresh runtime directory for this daemon process."""
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))


def sweep(root: Path | None = None) -> int:
    """Clean up the runtime directories of dead daemons under ``root``; return kernels killed."""
    killed = 0
    for directory in Path(root or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        owner = directory.name[len(PREFIX):].split("-", 1)[0]
        try:
            if not owner.isdigit() or _alive(int(owner)) or directory.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        for pid_file in directory.glob("kernel-*.pid"):
            killed += _kill_orphan(pid_file)
        shutil.rmtree(directory, ignore_errors=True)
        log.info("Removed %s, left by a daemon that did not stop cleanly", directory)
    return killed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
