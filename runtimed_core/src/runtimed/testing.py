"""Helpers for tests: pool and launcher plugins driven directly (no daemon), waiting, processes.

For tests through a real daemon, use the fixtures of :mod:`runtimed.pytest_plugin`.
The process helpers read ``/proc`` (Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from runtimed.pools import EnvPool
from runtimed.prewarm import MARKER

P = TypeVar("P", bound=EnvPool)


class ProgressRecorder:
    """A :data:`runtimed.pools.Progress` that remembers what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, phase: str, message: str) -> None:
        self.events.append((phase, message))

    @property
    def messages(self) -> list[str]:
        return [message for _, message in self.events]


@contextlib.asynccontextmanager
async def running(pool: P) -> AsyncIterator[P]:
    """Start ``pool`` and always stop it, so a failing assertion leaves no build behind."""
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


async def wait_for(predicate: Callable[[], bool], timeout: float = 90, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it holds (tests only: pools themselves never poll)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the pool"
        await asyncio.sleep(interval)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` from a test thread until it holds; AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that mention ``text`` (zombies have none), this one aside."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and pid != str(os.getpid()):
            found.append(cmdline)
    return found


def process_running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def copy_ready_env(src: Path, prefix: str, *, only: tuple[str, ...] = (),
                   **marker_changes: object) -> Path:
    """A hard-linked copy of a ready pool env next to it, named ``<prefix><hex>``, its marker
    edited by ``marker_changes`` (``only``: the top-level entries kept, plus the marker)."""
    dst = src.with_name(f"{prefix}{uuid.uuid4().hex}")
    if only:
        dst.mkdir()
        for name in (*only, MARKER):
            if (src / name).is_dir():
                shutil.copytree(src / name, dst / name, symlinks=True, copy_function=os.link)
            else:
                os.link(src / name, dst / name, follow_symlinks=False)
    else:
        shutil.copytree(src, dst, symlinks=True, copy_function=os.link)
    fields = json.loads((dst / MARKER).read_text())
    fields.update(marker_changes)
    (dst / MARKER).unlink()  # a hard link: do not edit the original's marker
    (dst / MARKER).write_text(json.dumps(fields))
    return dst


class Background:
    """``session.execute_cell(cell_id)`` on a thread, so a test can interrupt or restart
    meanwhile; :meth:`join` returns its result (or raises its error)."""

    def __init__(self, session: Any, cell_id: str, timeout_secs: float = 60) -> None:
        self.result: Any = None
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, args=(session, cell_id, timeout_secs),
                                       daemon=True)
        self.thread.start()

    def _run(self, session: Any, cell_id: str, timeout_secs: float) -> None:
        from runtimed.errors import RuntimedError

        try:
            self.result = session.execute_cell(cell_id, timeout_secs=timeout_secs)
        except RuntimedError as exc:  # handed to the test thread by join()
            self.error = exc

    def join(self, timeout: float) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"the cell was still running after {timeout} s"
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result
