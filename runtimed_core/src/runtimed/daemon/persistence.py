"""Durable notebook documents: a snapshot plus an append-only change log.

Every change the daemon accepts is appended to ``<key>.log`` at once (one
``write``; a SIGKILLed daemon loses nothing the kernel already has in its page
cache). A debounced compaction (0.5 s quiet, 5 s at most) writes a fresh
snapshot with a temp-file-then-rename and empties the log. Loading reads the
snapshot and every complete log record; a file that does not load is renamed
aside (``.corrupt-<time>``), never silently dropped.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import os
import struct
import time
from pathlib import Path

from runtimed.document import notebook
from runtimed.document.replica import Replica

log = logging.getLogger(__name__)

_WRITER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="runtimed-snapshot")
QUIET_SECS = 0.5
MAX_DELAY_SECS = 5.0
_LEN = struct.Struct(">I")


def doc_key(notebook_id: str) -> str:
    return hashlib.sha256(notebook_id.encode()).hexdigest()[:32]


class DocStore:
    """Persistence of one room's notebook document."""

    def __init__(self, directory: Path, notebook_id: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        key = doc_key(notebook_id)
        self.snapshot_path = directory / f"{key}.automerge"
        self.log_path = directory / f"{key}.log"
        self._log: object | None = None
        self._saved_heads: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._first_dirty: float | None = None

    def load(self) -> Replica:
        """The persisted document, or a fresh skeleton; corrupt files are moved aside."""
        data = b""
        with contextlib.suppress(FileNotFoundError):
            data = self.snapshot_path.read_bytes()
        # logs cut by a compaction whose snapshot never landed (a crash in between), then the live one
        stray = sorted(self.log_path.parent.glob(self.log_path.name + ".*"), key=lambda p: p.stat().st_mtime)
        stray = [p for p in stray if ".corrupt-" not in p.name]
        records = [r for path in (*stray, self.log_path) for r in self._read_log(path)]
        if not data and not records:
            replica = notebook.new_replica()
        else:
            try:
                replica = Replica.load((data or notebook.new_replica().save()) + b"".join(records))
            except Exception as exc:
                self._move_aside(exc, stray)
                replica = notebook.new_replica()
        self._saved_heads = replica.heads
        if stray:  # folded into the document: make that durable, then drop them
            self.compact(replica, background=False)
            for path in stray:
                path.unlink(missing_ok=True)
        return replica

    @staticmethod
    def _read_log(path: Path) -> list[bytes]:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return []
        records, pos = [], 0
        while pos + 4 <= len(raw):
            (n,) = _LEN.unpack_from(raw, pos)
            if pos + 4 + n > len(raw):
                log.warning("Ignoring a torn record at the end of %s", path)
                break
            records.append(raw[pos + 4 : pos + 4 + n])
            pos += 4 + n
        return records

    def _move_aside(self, exc: Exception, stray: list[Path]) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for path in (self.snapshot_path, self.log_path, *stray):
            if path.exists():
                aside = path.with_name(f"{path.name}.corrupt-{stamp}")
                path.rename(aside)
                log.error("Could not load %s (%s); moved it to %s", path, exc, aside)

    def record(self, replica: Replica) -> None:
        """Append the changes since the last record/compaction, and schedule a compaction."""
        chunks = replica.changes_since(self._saved_heads)
        if not chunks:
            return
        self._saved_heads = replica.heads
        if self._log is None:
            self._log = open(self.log_path, "ab", buffering=0)  # noqa: SIM115 - kept open on purpose
        self._log.write(b"".join(_LEN.pack(len(c)) + c for c in chunks))  # type: ignore[attr-defined]
        self._schedule(replica)

    def _schedule(self, replica: Replica) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._first_dirty is None:
            self._first_dirty = now
        if self._timer is not None:
            self._timer.cancel()
        delay = min(QUIET_SECS, max(0.0, self._first_dirty + MAX_DELAY_SECS - now))
        self._timer = loop.call_later(delay, self.compact, replica)

    def compact(self, replica: Replica, *, background: bool = True) -> None:
        """Snapshot the document and start a fresh log.

        The snapshot bytes are taken now (so they match the log's cut); writing
        them (temp file, fsync, rename) happens on a worker thread unless
        ``background`` is false. Until the rename, the old snapshot plus the old
        log still hold everything, so a crash at any point loses nothing.
        """
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._first_dirty = None
        self._saved_heads = replica.heads
        data = replica.save()
        old_log, self._log = self._log, None
        old_log_path = self.log_path.with_suffix(f".log.{os.getpid()}-{id(data)}")
        if self.log_path.exists():
            os.replace(self.log_path, old_log_path)  # new changes go to a fresh log from now on
        if old_log is not None:
            old_log.close()  # type: ignore[attr-defined]
        # One writer thread for every store: snapshots land in the order they were taken.
        done = _WRITER.submit(self._write_snapshot, data, old_log_path)
        if not background:
            done.result()

    def _write_snapshot(self, data: bytes, old_log_path: Path) -> None:
        tmp = self.snapshot_path.with_suffix(f".tmp{id(data)}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.snapshot_path)
        with contextlib.suppress(FileNotFoundError):
            old_log_path.unlink()

    def close(self, replica: Replica) -> None:
        """Final compaction (room evicted or daemon stopping), written before returning."""
        self.compact(replica, background=False)
