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
        records = self._read_log()
        if not data and not records:
            replica = notebook.new_replica()
        else:
            try:
                replica = Replica.load((data or notebook.new_replica().save()) + b"".join(records))
            except Exception as exc:
                self._move_aside(exc)
                replica = notebook.new_replica()
        self._saved_heads = replica.heads
        return replica

    def _read_log(self) -> list[bytes]:
        try:
            raw = self.log_path.read_bytes()
        except FileNotFoundError:
            return []
        records, pos = [], 0
        while pos + 4 <= len(raw):
            (n,) = _LEN.unpack_from(raw, pos)
            if pos + 4 + n > len(raw):
                log.warning("Ignoring a torn record at the end of %s", self.log_path)
                break
            records.append(raw[pos + 4 : pos + 4 + n])
            pos += 4 + n
        return records

    def _move_aside(self, exc: Exception) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        for path in (self.snapshot_path, self.log_path):
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

    def compact(self, replica: Replica) -> None:
        """Write a snapshot atomically and empty the log."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._first_dirty = None
        self._saved_heads = replica.heads
        tmp = self.snapshot_path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(replica.save())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.snapshot_path)
        if self._log is not None:
            self._log.close()  # type: ignore[attr-defined]
            self._log = None
        with open(self.log_path, "wb"):
            pass

    def close(self, replica: Replica) -> None:
        """Final compaction (room evicted or daemon stopping)."""
        self.compact(replica)
