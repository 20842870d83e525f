"""Finished executions kept on disk, so a result can be fetched by its id later: after its
room was evicted, or after the daemon restarted.

Layout under ``<state dir>/executions/``::

    <execution_id>.json     {"notebook_id", "finished_at", "record": {...}}
    .<execution_id>.<hex>   being written (renamed into place when complete)

``record`` is the execution as the runtime-state document has it
(:func:`runtime_state.read_execution`: cell, source, status, count, outputs...).
Bounded by age and size: records older than ``max_age`` seconds
(``RUNTIMED_RESULTS_MAX_AGE_SECS``, default 7 days) are deleted, then the oldest
beyond ``max_bytes`` (``RUNTIMED_RESULTS_MAX_BYTES``, default 256 MB). The store
keeps no index in memory (the daemon's idle memory stays flat however many
results it holds): only the total size, and what is still being written.
Writes are batched (those of the last :data:`WRITE_DELAY` seconds, in one worker-thread
call: an execution costs the event loop no thread hand-off) and, like sweeps, run off
the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import time
import uuid
from pathlib import Path
from typing import Any

from runtimed.errors import ConfigError, ExecutionNotFound, InvalidRequest

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE = 7 * 24 * 3600.0
DEFAULT_MAX_BYTES = 256 * 2**20
#: How often records past their age are looked for.
SWEEP_INTERVAL = 3600.0
#: A size sweep leaves this fraction of ``max_bytes`` (so sweeps are rare).
SWEEP_TO = 0.9
#: Finished executions are written together, this long after the first of them.
WRITE_DELAY = 0.2
_BLOB_REF = re.compile(r'"sha256": ?"([0-9a-f]{64})"')
EXECUTION_ID = re.compile(r"^exec-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _env_number(var: str, default: float) -> float:
    text = os.environ.get(var)
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{var}={text!r} is not a number") from None
    if value < 0:
        raise ConfigError(f"{var}={text!r} must not be negative")
    return value


def check_execution_id(execution_id: Any) -> str:
    """``execution_id`` if it has the daemon's form (``exec-<uuid>``), else InvalidRequest."""
    if not isinstance(execution_id, str) or not EXECUTION_ID.match(execution_id):
        raise InvalidRequest(f"{execution_id!r} is not an execution id (they look like "
                             "'exec-1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed')")
    return execution_id


class ExecutionStore:
    """The daemon's finished executions on disk; see the module docstring."""

    def __init__(self, directory: Path, *, max_age: float | None = None,
                 max_bytes: float | None = None) -> None:
        self.directory = directory
        self.max_age = _env_number("RUNTIMED_RESULTS_MAX_AGE_SECS", DEFAULT_MAX_AGE) \
            if max_age is None else max_age
        self.max_bytes = int(_env_number("RUNTIMED_RESULTS_MAX_BYTES", DEFAULT_MAX_BYTES)
                             if max_bytes is None else max_bytes)
        #: Records handed to a writer thread and not on disk yet (served from here meanwhile).
        self._pending: dict[str, dict[str, Any]] = {}
        #: Records waiting for the next batch write.
        self._batch: list[tuple[str, dict[str, Any]]] = []
        self._batch_timer: asyncio.TimerHandle | None = None
        self._writes: set[asyncio.Future[Any]] = set()
        self._total = 0
        self._sweeping: asyncio.Future[None] | None = None
        self._timer: asyncio.Task[None] | None = None

    # lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Create the directory, drop what is too old or too much, and sweep hourly from now on."""
        self.directory.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self._sweep)
        self._timer = asyncio.create_task(self._sweep_hourly(), name="runtimed-results-sweep")

    async def close(self) -> None:
        """Finish the writes in flight (their results survive the daemon) and stop sweeping."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        self._write_batch()
        while self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)
        if self._sweeping is not None:
            await asyncio.gather(self._sweeping, return_exceptions=True)

    # writing ------------------------------------------------------------------------------------
    def keep(self, notebook_id: str, record: dict[str, Any]) -> None:
        """Keep a finished execution's record (written in the background)."""
        execution_id = record.get("execution_id")
        if not isinstance(execution_id, str) or not EXECUTION_ID.match(execution_id):
            return
        entry = {"notebook_id": notebook_id, "finished_at": time.time(), "record": record}
        self._pending[execution_id] = entry
        self._batch.append((execution_id, entry))
        if self._batch_timer is None:
            self._batch_timer = asyncio.get_running_loop().call_later(WRITE_DELAY, self._write_batch)

    def _write_batch(self) -> None:
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        batch, self._batch = self._batch, []
        if not batch:
            return
        write = asyncio.ensure_future(asyncio.to_thread(self._write_all, batch))
        self._writes.add(write)
        write.add_done_callback(lambda fut: self._written(batch, fut))

    def _written(self, batch: list[tuple[str, dict[str, Any]]], fut: asyncio.Future[Any]) -> None:
        self._writes.discard(fut)
        for execution_id, entry in batch:
            if self._pending.get(execution_id) is entry:
                del self._pending[execution_id]
        if fut.cancelled() or fut.exception() is not None:
            exc = None if fut.cancelled() else fut.exception()
            log.warning("Could not keep the results of %d executions: %s", len(batch), exc)
            return
        self._total += fut.result()
        if self.max_bytes and self._total > self.max_bytes and self._sweeping is None:
            self._sweep_soon()

    def _write_all(self, batch: list[tuple[str, dict[str, Any]]]) -> int:
        written = 0
        for execution_id, entry in batch:
            try:
                written += self._write(execution_id, entry)
            except OSError as exc:  # one that cannot be written does not keep the others out
                log.warning("Could not keep the result of %s: %s", execution_id, exc)
        return written

    def _write(self, execution_id: str, entry: dict[str, Any]) -> int:
        data = json.dumps(entry, separators=(",", ":"), default=str).encode()
        tmp = self.directory / f".{execution_id}.{uuid.uuid4().hex[:8]}"
        tmp.write_bytes(data)
        os.replace(tmp, self._path(execution_id))
        return len(data)

    def _path(self, execution_id: str) -> Path:
        return self.directory / f"{execution_id}.json"

    # reading ------------------------------------------------------------------------------------
    async def get(self, execution_id: str) -> dict[str, Any]:
        """The kept record of ``execution_id`` (with ``notebook_id`` and ``finished_at``):
        ExecutionNotFound if it never finished here, or is gone past the store's bounds."""
        check_execution_id(execution_id)
        entry = self._pending.get(execution_id)
        if entry is None:
            try:
                data = await asyncio.to_thread(self._path(execution_id).read_bytes)
                entry = json.loads(data)
            except FileNotFoundError:
                entry = None
            except (OSError, ValueError) as exc:
                log.warning("The kept result of %s is unreadable: %s", execution_id, exc)
                entry = None
        if not isinstance(entry, dict) or not isinstance(entry.get("record"), dict):
            days = self.max_age / 86400
            raise ExecutionNotFound(
                f"No execution {execution_id}: the daemon never ran it, or its result is older "
                f"than the {days:g} days results are kept (or was dropped to stay within "
                f"{self.max_bytes / 2**20:g} MB)", execution_id=execution_id)
        return {**entry["record"], "notebook_id": entry.get("notebook_id"),
                "finished_at": entry.get("finished_at")}

    def blob_shas(self) -> set[str]:
        """Every blob a kept result refers to (the blob store's garbage collector keeps them).
        Reads every record: run it in a worker thread."""
        found: set[str] = set()
        for entry in list(self._pending.values()):
            found.update(_BLOB_REF.findall(json.dumps(entry, default=str)))
        with contextlib.suppress(OSError), os.scandir(self.directory) as entries:
            for item in entries:
                if item.name.endswith(".json") and not item.name.startswith("."):
                    with contextlib.suppress(OSError):
                        found.update(_BLOB_REF.findall(Path(item.path).read_text()))
        return found

    # bounds -------------------------------------------------------------------------------------
    def _sweep_soon(self) -> None:
        self._sweeping = asyncio.ensure_future(asyncio.to_thread(self._sweep))
        self._sweeping.add_done_callback(lambda _: setattr(self, "_sweeping", None))

    async def _sweep_hourly(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await asyncio.to_thread(self._sweep)
            except Exception:  # keep serving; try again next time
                log.exception("Sweeping the kept results failed")

    def _sweep(self) -> None:
        """Delete records past ``max_age``, then the oldest until the rest fit ``max_bytes``
        (to :data:`SWEEP_TO` of it); leftovers of interrupted writes too. Sets the total."""
        now = time.time()
        files: list[tuple[float, int, str]] = []
        removed = 0
        with os.scandir(self.directory) as entries:
            for item in entries:
                try:
                    st = item.stat()
                except OSError:
                    continue
                if item.name.startswith("."):  # a write that never finished (the daemon died)
                    if now - st.st_mtime > 60:
                        with contextlib.suppress(OSError):
                            os.unlink(item.path)
                    continue
                if not item.name.endswith(".json"):
                    continue
                if self.max_age and now - st.st_mtime > self.max_age:
                    with contextlib.suppress(OSError):
                        os.unlink(item.path)
                        removed += 1
                    continue
                files.append((st.st_mtime, st.st_size, item.path))
        total = sum(size for _, size, _ in files)
        if self.max_bytes and total > self.max_bytes:
            files.sort()
            for _, size, path in files:
                if total <= self.max_bytes * SWEEP_TO:
                    break
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    total -= size
                    removed += 1
        self._total = total
        if removed:
            log.info("Kept results: %d removed (older than %g s or beyond %d bytes), %d bytes kept",
                     removed, self.max_age, self.max_bytes, total)
