"""The runtime-state document: kernel lifecycle, execution queue, executions and their outputs.

Only the daemon writes it (:class:`RuntimeStateWriter`); clients read it with
:func:`read_kernel` and :func:`read_execution`. It is not persisted.

::

    ROOT: kernel/   lifecycle, activity, error, kernel_type, env_source, progress,
                    connection_file (while running: what ``jupyter console --existing`` takes)
          queue     [execution_id ...]   (queued, not yet running)
          executions/{execution_id}: cell_id, status, source, execution_count,
                                     success, error, failure, origin, outputs [output ...]
          saved_outputs/{cell_id}: the outputs a notebook file holds for a cell that has
                                   not run since (a JSON string: a list of nbformat outputs)
          comms/{comm_id}: opened (JSON text of the comm as the document first held it:
                           target_name, model_module, model_name, model_module_version (null
                           for a comm that is not a widget model), seq (the order they
                           opened in) and state), state/{key: JSON text of what changed
                           since}, buffers/{JSON text of a path into the state: JSON text of a
                           blob reference {sha256, size}} (both maps absent until needed)
    (``failure``: why a run did not complete: cancelled, interrupted, kernel_died,
    restarted, shutdown; ``origin``: ``external`` for code another Jupyter client ran in
    the kernel, which has no cell: ``cell_id`` is empty)

An output is a map: streams are ``output_type``, ``name`` and ``chunks`` (a list
of strings whose concatenation is the text: appending is one operation per
chunk, see :class:`runtimed.outputs.StreamChunks`); every other output is
``output_type`` and ``json`` (the nbformat output as a JSON string).

A comm is a kernel's open comm channel: a widget model (ipywidgets, anywidget, a
``tqdm.notebook`` bar) and its current state: ``opened`` in one text (a widget
opens with dozens of keys, a layout with 40: one operation, not one each), then one
key per change, so that an update writes only what changed; binary buffers are in
the blob store.

Automerge keeps every change, and applying a sync message costs time in
proportion to that history, so the daemon periodically starts the document
afresh with the same content (:meth:`RuntimeStateWriter.renewed`) and sends
every client the new document whole (the ``state_reset`` broadcast).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from runtimed.blobs import BLOBS_KEY, shas
from runtimed.document.replica import ROOT, F64, Bool, Int, List, Map, Null, Replica, Str, put_json

LIFECYCLES = (
    "not_started", "resolving", "preparing_env", "launching", "connecting",
    "running", "error", "shutdown",
)
EXECUTION_STATUSES = ("queued", "running", "done", "error")
#: A comm's fields besides its state and buffers.
COMM_FIELDS = ("target_name", "model_module", "model_name", "model_module_version", "seq")


@dataclass
class CommWrite:
    """What changed of one comm since the last write (see :meth:`RuntimeStateWriter.write_comms`)."""

    comm_id: str
    #: When the document does not hold the comm yet: its :data:`COMM_FIELDS` and ``state``,
    #: as the JSON text of an object.
    opened: str | None = None
    #: State keys -> JSON text (None: the key is gone).
    state: dict[str, str | None] = field(default_factory=dict)
    #: Buffer paths (JSON text) -> blob reference (JSON text; None: the buffer is gone).
    buffers: dict[str, str | None] = field(default_factory=dict)
    closed: bool = False


def to_json(value: Any) -> str:
    """A comm's state value as the document keeps it: compact JSON text, NaN and infinities
    as null (as ``JSON.stringify`` does: the pages parse this)."""
    try:
        return json.dumps(value, allow_nan=False, separators=(",", ":"))
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False, separators=(",", ":"))


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _put_scalar(tx: Any, obj: bytes, key: str, value: Any) -> None:
    if value is None:
        tx.put(obj, key, Null, None)
    elif isinstance(value, bool):
        tx.put(obj, key, Bool, value)
    elif isinstance(value, int):
        tx.put(obj, key, Int, value)
    elif isinstance(value, float):
        tx.put(obj, key, F64, value)
    else:
        tx.put(obj, key, Str, str(value))


class RuntimeStateWriter:
    """The daemon's handle on a room's runtime-state document (object ids cached)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        with replica.change() as tx:
            self.kernel = tx.put_object(ROOT, "kernel", Map)
            for key, value in (("lifecycle", "not_started"), ("activity", None), ("error", None),
                               ("kernel_type", None), ("env_source", None), ("progress", None),
                               ("connection_file", None)):
                _put_scalar(tx, self.kernel, key, value)
            self.queue = tx.put_object(ROOT, "queue", List)
            self.executions = tx.put_object(ROOT, "executions", Map)
            self.saved = tx.put_object(ROOT, "saved_outputs", Map)
            self.comms = tx.put_object(ROOT, "comms", Map)
        self._saved: set[str] = set()
        #: Comm id -> its object ids: "comm", and "state" and "buffers" once it has them.
        self._comm_objs: dict[str, dict[str, bytes]] = {}
        #: With ``track_dirty``, the executions (and ``saved:<cell id>``) written since the
        #: last :meth:`take_dirty` (a live page updates only what changed).
        self.track_dirty = False
        self._dirty: set[str] = set()
        self._exec_objs: dict[str, tuple[bytes, bytes]] = {}  # eid -> (execution map, outputs list)
        self._queued: list[str] = []

    def renewed(self) -> RuntimeStateWriter:
        """A writer on a new document holding what this one's holds now, without its history."""
        old = self.replica
        new = RuntimeStateWriter(Replica())
        with new.replica.change() as tx:
            for key, value in old.to_py(self.kernel).items():
                _put_scalar(tx, new.kernel, key, value)
            for i, execution_id in enumerate(self._queued):
                tx.insert(new.queue, i, Str, execution_id)
            for execution_id, (ex, _) in self._exec_objs.items():
                record = old.to_py(ex)
                copy = tx.put_object(new.executions, execution_id, Map)
                for key, value in record.items():
                    if key != "outputs":
                        _put_scalar(tx, copy, key, value)
                outputs = tx.put_object(copy, "outputs", List)
                for i, output in enumerate(record.get("outputs", [])):
                    put_json(tx, outputs, i, output, insert=True)
                new._exec_objs[execution_id] = (copy, outputs)
            for cell_id in self._saved:
                tx.put(new.saved, cell_id, Str, old.get(self.saved, cell_id) or "[]")
            for comm_id, objs in self._comm_objs.items():
                record = old.to_py(objs["comm"])
                fields, state = _fields_and_state(record)
                new._put_comm(tx, comm_id, to_json({**fields, "state": state}))
                new._put_changes(tx, comm_id, "buffers", record.get("buffers") or {})
        new._queued = list(self._queued)
        new._saved = set(self._saved)
        new.track_dirty = self.track_dirty
        new._dirty = set(self._dirty)
        return new

    def _touch(self, key: str) -> None:
        if self.track_dirty:
            self._dirty.add(key)

    def take_dirty(self) -> set[str]:
        """What was written since the last call (see :attr:`track_dirty`)."""
        dirty, self._dirty = self._dirty, set()
        return dirty

    # outputs saved in a notebook file -------------------------------------------------------------
    def set_saved_outputs(self, outputs: dict[str, list[dict[str, Any]]]) -> None:
        """Record the outputs a notebook file holds, per cell id (one change)."""
        if not outputs:
            return
        with self.replica.change() as tx:
            for cell_id, cell_outputs in outputs.items():
                tx.put(self.saved, cell_id, Str, json.dumps(cell_outputs))
                self._touch(f"saved:{cell_id}")
        self._saved.update(outputs)

    def drop_saved_outputs(self, cell_ids: Iterable[str]) -> None:
        """Forget saved outputs (the cells ran since, or were cleared)."""
        gone = [c for c in cell_ids if c in self._saved]
        if gone:
            with self.replica.change() as tx:
                for cell_id in gone:
                    tx.delete(self.saved, cell_id)
                    self._touch(f"saved:{cell_id}")
            self._saved.difference_update(gone)

    def blob_shas(self) -> set[str]:
        """Every blob the executions' outputs, the saved outputs and the comms refer to."""
        replica, found = self.replica, set()
        for _, outputs in self._exec_objs.values():
            for i in range(replica.length(outputs)):
                text = replica.get(replica.get_obj(outputs, i), "json")
                if isinstance(text, str) and BLOBS_KEY in text:
                    found |= shas([json.loads(text)])
        for cell_id in self._saved:
            text = replica.get(self.saved, cell_id)
            if isinstance(text, str) and BLOBS_KEY in text:
                found |= shas(json.loads(text))
        for objs in self._comm_objs.values():
            for key in replica.keys(objs["buffers"]) if "buffers" in objs else ():
                found.add(json.loads(replica.get(objs["buffers"], key))["sha256"])
        return found

    def execution_ids(self) -> list[str]:
        """Every execution the document holds."""
        return list(self._exec_objs)

    def set_kernel(self, **fields: Any) -> None:
        with self.replica.change() as tx:
            for key, value in fields.items():
                _put_scalar(tx, self.kernel, key, value)

    # comms --------------------------------------------------------------------------------------
    def _put_comm(self, tx: Any, comm_id: str, opened: str) -> None:
        comm = tx.put_object(self.comms, comm_id, Map)
        tx.put(comm, "opened", Str, opened)
        self._comm_objs[comm_id] = {"comm": comm}

    def _put_changes(self, tx: Any, comm_id: str, part: str, changes: dict[str, str | None]
                     ) -> None:
        """Keys of a comm's ``state`` or ``buffers`` map (made by the first change: most
        models never change after they open); None deletes."""
        objs = self._comm_objs[comm_id]
        obj = objs.get(part)
        for key, text in changes.items():
            if text is not None:
                if obj is None:
                    obj = objs[part] = tx.put_object(objs["comm"], part, Map)
                tx.put(obj, key, Str, text)
            elif obj is not None and self.replica.get(obj, key) is not None:
                tx.delete(obj, key)

    def write_comms(self, writes: Iterable[CommWrite]) -> None:
        """Apply what changed of the comms, in one change."""
        with self.replica.change() as tx:
            for write in writes:
                comm_id = write.comm_id
                if write.closed:
                    if self._comm_objs.pop(comm_id, None) is not None:
                        tx.delete(self.comms, comm_id)
                        self._touch(f"comm:{comm_id}")
                    continue
                if write.opened is not None:
                    self._put_comm(tx, comm_id, write.opened)
                if comm_id not in self._comm_objs:
                    continue
                self._touch(f"comm:{comm_id}")
                self._put_changes(tx, comm_id, "state", write.state)
                self._put_changes(tx, comm_id, "buffers", write.buffers)

    def clear_comms(self) -> None:
        """Forget every comm (the kernel that held them is gone)."""
        if self._comm_objs:
            with self.replica.change() as tx:
                for comm_id in self._comm_objs:
                    tx.delete(self.comms, comm_id)
                    self._touch(f"comm:{comm_id}")
            self._comm_objs.clear()

    # executions -------------------------------------------------------------------------------
    def add_execution(self, execution_id: str, cell_id: str, source: str, *, running: bool = False
                      ) -> None:
        """A new execution, queued, or (``running``: the kernel is free) running at once, the
        kernel busy, in the same change. Fields not yet known are left absent (read as None)."""
        with self.replica.change() as tx:
            ex = tx.put_object(self.executions, execution_id, Map)
            tx.put(ex, "cell_id", Str, cell_id)
            tx.put(ex, "status", Str, "running" if running else "queued")
            tx.put(ex, "source", Str, source)
            outputs = tx.put_object(ex, "outputs", List)
            if running:
                tx.put(self.kernel, "activity", Str, "busy")
            else:
                tx.insert(self.queue, len(self._queued), Str, execution_id)
        if not running:
            self._queued.append(execution_id)
        self._exec_objs[execution_id] = (ex, outputs)
        self._touch(execution_id)

    def _dequeue(self, tx: Any, execution_id: str) -> None:
        if execution_id in self._queued:
            tx.delete(self.queue, self._queued.index(execution_id))
            self._queued.remove(execution_id)

    def update_execution(self, execution_id: str, kernel: dict[str, Any] | None = None,
                         **fields: Any) -> None:
        """Set fields of an execution (None values are skipped: fields are set once) and,
        in the same change, ``kernel`` fields; leaving ``queued`` removes it from the queue."""
        ex, _ = self._exec_objs[execution_id]
        self._touch(execution_id)
        with self.replica.change() as tx:
            if fields.get("status", "queued") != "queued":
                self._dequeue(tx, execution_id)
            for key, value in fields.items():
                if value is not None:
                    _put_scalar(tx, ex, key, value)
            for key, value in (kernel or {}).items():
                _put_scalar(tx, self.kernel, key, value)

    def forget_execution(self, execution_id: str) -> None:
        """Drop an old execution's record (outputs included) to bound the document's working set."""
        if execution_id in self._exec_objs and execution_id not in self._queued:
            del self._exec_objs[execution_id]
            with self.replica.change() as tx:
                tx.delete(self.executions, execution_id)

    # outputs ----------------------------------------------------------------------------------
    def outputs_obj(self, execution_id: str) -> bytes:
        self._touch(execution_id)  # every output write goes through here
        return self._exec_objs[execution_id][1]

    def append_output(self, execution_id: str, index: int, output: dict[str, Any]) -> None:
        """Insert an output; a stream starts with no chunks (see :meth:`write_stream`)."""
        outputs = self.outputs_obj(execution_id)
        with self.replica.change() as tx:
            out = tx.insert_object(outputs, index, Map)
            tx.put(out, "output_type", Str, output["output_type"])
            if output["output_type"] == "stream":
                tx.put(out, "name", Str, output["name"])
                tx.put_object(out, "chunks", List)
            else:
                tx.put(out, "json", Str, json.dumps(output))

    def write_stream(self, execution_id: str, index: int,
                     plan: tuple[list[tuple[int, str]], list[tuple[int, str]], int]) -> None:
        """Apply a :meth:`runtimed.outputs.StreamChunks.commit` plan to a stream output."""
        puts, inserts, deletes = plan
        out = self.replica.get_obj(self.outputs_obj(execution_id), index)
        chunks = self.replica.get_obj(out, "chunks")
        if chunks is None:
            return
        length = self.replica.length(chunks)
        with self.replica.change() as tx:
            for i in range(length - 1, length - 1 - deletes, -1):
                tx.delete(chunks, i)
            for i, text in puts:
                tx.put(chunks, i, Str, text)
            for i, text in inserts:
                tx.insert(chunks, i, Str, text)

    def replace_output(self, execution_id: str, index: int, output: dict[str, Any]) -> None:
        outputs = self.outputs_obj(execution_id)
        out = self.replica.get_obj(outputs, index)
        if out is not None:
            with self.replica.change() as tx:
                tx.put(out, "json", Str, json.dumps(output))

    def clear_outputs(self, execution_id: str) -> None:
        outputs = self.outputs_obj(execution_id)
        n = self.replica.length(outputs)
        if n:
            with self.replica.change() as tx:
                for i in range(n - 1, -1, -1):
                    tx.delete(outputs, i)


# reading (clients and daemon) ---------------------------------------------------------------
def read_kernel(replica: Replica) -> dict[str, Any]:
    kernel = replica.get_obj(ROOT, "kernel")
    return replica.to_py(kernel) if kernel is not None else {"lifecycle": "not_started"}


def _read_output(replica: Replica, out: bytes) -> dict[str, Any]:
    kind = replica.get(out, "output_type")
    if kind == "stream":
        chunks = replica.get_obj(out, "chunks")
        text = "".join(replica.get(chunks, i) for i in range(replica.length(chunks))) if chunks else ""
        return {"output_type": "stream", "name": replica.get(out, "name"), "text": text}
    return json.loads(replica.get(out, "json") or "{}")


def read_execution(replica: Replica, execution_id: str) -> dict[str, Any] | None:
    executions = replica.get_obj(ROOT, "executions")
    ex = replica.get_obj(executions, execution_id) if executions is not None else None
    if ex is None:
        return None
    outputs = replica.get_obj(ex, "outputs")
    result = {key: replica.get(ex, key) for key in
              ("cell_id", "status", "source", "execution_count", "success", "error", "failure",
               "origin")}
    result["execution_id"] = execution_id
    result["outputs"] = [
        _read_output(replica, replica.get_obj(outputs, i)) for i in range(replica.length(outputs))
    ] if outputs is not None else []
    return result


def read_saved_outputs(replica: Replica, cell_id: str, saved: bytes | None = None
                       ) -> list[dict[str, Any]] | None:
    """The outputs a notebook file holds for ``cell_id`` (it has not run since), if any
    (``saved``: :func:`saved_outputs_obj`, when reading many cells)."""
    saved = saved if saved is not None else replica.get_obj(ROOT, "saved_outputs")
    text = replica.get(saved, cell_id) if saved is not None else None
    return json.loads(text) if isinstance(text, str) else None


def saved_outputs_obj(replica: Replica) -> bytes | None:
    """The map of saved outputs, or None when it holds none (most notebooks: nothing to read
    per cell)."""
    saved = replica.get_obj(ROOT, "saved_outputs")
    return saved if saved is not None and replica.length(saved) else None


def read_comms(replica: Replica) -> dict[str, dict[str, Any]]:
    """The comms the kernel holds, in the order they opened: comm id -> its fields,
    ``state`` (key -> value) and ``buffers`` (path tuple -> blob reference)."""
    comms = replica.get_obj(ROOT, "comms")
    if comms is None:
        return {}
    found = {}
    for comm_id in replica.keys(comms):
        record = read_comm(replica, comm_id, comms)
        if record is not None:
            found[comm_id] = record
    return dict(sorted(found.items(), key=lambda item: item[1].get("seq") or 0))


def read_comm(replica: Replica, comm_id: str, comms: bytes | None = None) -> dict[str, Any] | None:
    """One comm (see :func:`read_comms`), or None if the kernel does not hold it."""
    comms = comms if comms is not None else replica.get_obj(ROOT, "comms")
    comm = replica.get_obj(comms, comm_id) if comms is not None else None
    if comm is None:
        return None
    record = replica.to_py(comm)
    fields, state = _fields_and_state(record)
    return {**fields, "state": state, "buffers": {
        tuple(json.loads(k)): json.loads(v) for k, v in (record.get("buffers") or {}).items()}}


def _fields_and_state(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A comm's :data:`COMM_FIELDS` and state from its document record (``to_py``): as it
    opened, and what changed since."""
    opened = json.loads(record.get("opened") or "{}")
    state = opened.get("state") or {}
    state.update((k, json.loads(v)) for k, v in (record.get("state") or {}).items())
    return {key: opened.get(key) for key in COMM_FIELDS}, state


def model_state(comm: dict[str, Any], read_blob: Callable[[str], Any]) -> dict[str, Any]:
    """A comm's state (a :func:`read_comm` record's) with its buffers in place, each what
    ``read_blob(sha256)`` gives (its bytes: the state the kernel's side holds)."""
    state = comm["state"]
    for path, ref in comm["buffers"].items():
        put_at(state, path, read_blob(ref["sha256"]))
    return state


def put_at(state: Any, path: Iterable[Any], value: Any) -> None:
    """Put ``value`` at ``path`` (keys and indexes) in a widget state; nothing if the path is
    not in it (the kernel changed the state since)."""
    *parents, last = path
    try:
        for part in parents:
            state = state[part]
        state[last] = value
    except (KeyError, IndexError, TypeError):
        pass


def queued_ids(replica: Replica) -> list[str]:
    queue = replica.get_obj(ROOT, "queue")
    return [replica.get(queue, i) for i in range(replica.length(queue))] if queue is not None else []


def execution_ids(replica: Replica) -> list[str]:
    """The ids of every execution the document holds (the most recent ones per room)."""
    executions = replica.get_obj(ROOT, "executions")
    return list(replica.keys(executions)) if executions is not None else []
