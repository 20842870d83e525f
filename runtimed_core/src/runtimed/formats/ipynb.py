"""``.ipynb`` from and to the documents: pure functions over nbformat v4 dicts (sans-IO).

Reading, writing and validating the file is nbformat's job
(:mod:`runtimed.formats.nbfile`, in a child process of the daemon); this module
turns the notebook dict nbformat reads into the notebook document and the
runtime state, and back. A notebook is kept whole: cells with their ids,
sources, metadata (unknown keys too) and attachments; notebook metadata
(unknown keys too); outputs and execution counts, outputs a kernel never
produced included.

Outputs read from a file live in the runtime-state document as the cell's
*saved outputs* (one JSON string per cell); a cell's own execution, once it
runs, takes their place.

Widgets: while the kernel holds widget models, a saved notebook's
``metadata.widgets`` holds their state in the
``application/vnd.jupyter.widget-state+json`` form nbclient writes (so
JupyterLab shows the widgets of a saved notebook); without live models, the
notebook's own ``metadata.widgets`` (the file's, when it was opened) is kept.
"""

from __future__ import annotations

import base64
import bisect
import difflib
import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from fractional_indexing import generate_n_keys_between

from runtimed.blobs import inline_output
from runtimed.document import notebook
from runtimed.document.replica import ROOT, Int, Map, Replica, Str, Text, put_json, splice_to
from runtimed.document.runtime_state import (
    RuntimeStateWriter, read_comms, read_execution, read_saved_outputs,
)

NBFORMAT = 4
NBFORMAT_MINOR = 5
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
#: Output fields nbformat's schema does not allow in a file (the daemon keeps them for updates).
_TRANSIENT = ("transient",)


def source_text(value: Any) -> str:
    """A cell source as one string (nbformat may hold a list of lines)."""
    if isinstance(value, list):
        return "".join(value)
    return value if isinstance(value, str) else ""


def new_notebook() -> dict[str, Any]:
    """An empty nbformat 4.5 notebook."""
    return {"nbformat": NBFORMAT, "nbformat_minor": NBFORMAT_MINOR, "metadata": {}, "cells": []}


def file_output(output: dict[str, Any]) -> dict[str, Any]:
    """An output as a file holds it (nothing transient)."""
    return {k: v for k, v in output.items() if k not in _TRANSIENT}


# documents -> notebook ------------------------------------------------------------------------
def cell_outputs(state: Replica, cell: notebook.CellData) -> list[dict[str, Any]]:
    """The outputs a cell shows: its latest execution's, else those saved in its file (blob
    references not resolved)."""
    if cell.execution_id:
        record = read_execution(state, cell.execution_id)
        if record is not None:
            return record["outputs"]
    return read_saved_outputs(state, cell.id) or []


def to_notebook(doc: Replica, state: Replica,
                read_blob: Callable[[str], bytes | None] = lambda sha: None) -> dict[str, Any]:
    """The nbformat 4.5 notebook the documents hold (strings joined, as nbformat reads them;
    blobs inlined with ``read_blob``)."""
    cells = []
    for cell in notebook.read_cells(doc):
        out: dict[str, Any] = {"id": cell.id, "cell_type": cell.cell_type,
                               "metadata": cell.metadata, "source": cell.source}
        if cell.cell_type == "code":
            out["execution_count"] = cell.execution_count
            out["outputs"] = [file_output(inline_output(o, read_blob))
                              for o in cell_outputs(state, cell)]
        elif cell.attachments is not None:
            out["attachments"] = cell.attachments
        cells.append(out)
    metadata = notebook.get_metadata(doc)
    widgets = widgets_metadata(state, read_blob)
    if widgets is not None:
        metadata["widgets"] = widgets
    return {"nbformat": NBFORMAT, "nbformat_minor": NBFORMAT_MINOR, "metadata": metadata,
            "cells": cells}


def widgets_metadata(state: Replica, read_blob: Callable[[str], bytes | None]
                     ) -> dict[str, Any] | None:
    """``metadata.widgets`` for the widget models the kernel holds (None if it holds none),
    as nbclient writes it: model id -> model name, module and version, the state, and the
    binary buffers base64-encoded beside it."""
    models = {}
    for comm_id, comm in read_comms(state).items():
        if not comm["model_name"]:
            continue
        model: dict[str, Any] = {"model_name": comm["model_name"],
                                 "model_module": comm["model_module"],
                                 "model_module_version": comm["model_module_version"],
                                 "state": comm["state"]}
        buffers = [{"data": base64.b64encode(raw).decode(), "encoding": "base64", "path": list(path)}
                   for path, ref in comm["buffers"].items()
                   if (raw := read_blob(ref["sha256"])) is not None]
        if buffers:
            model["buffers"] = buffers
        models[comm_id] = model
    if not models:
        return None
    return {WIDGET_STATE_MIME: {"state": models, "version_major": 2, "version_minor": 0}}


# notebook -> documents ------------------------------------------------------------------------
def _put_cell(tx: Any, cells_obj: bytes, cell: dict[str, Any], position: str) -> None:
    cid = cell["id"]
    obj = tx.put_object(cells_obj, cid, Map)
    tx.put(obj, "id", Str, cid)
    tx.put(obj, "cell_type", Str, cell.get("cell_type", "code"))
    tx.put(obj, "position", Str, position)
    text = tx.put_object(obj, "source", Text)
    source = source_text(cell.get("source"))
    if source:
        tx.splice_text(text, 0, 0, source)
    meta = tx.put_object(obj, "metadata", Map)
    for key, value in (cell.get("metadata") or {}).items():
        put_json(tx, meta, str(key), value)
    if isinstance(cell.get("execution_count"), int):
        tx.put(obj, "execution_count", Int, cell["execution_count"])
    if cell.get("attachments") is not None:
        tx.put(obj, "attachments", Str, json.dumps(cell["attachments"]))


def fill_documents(doc: Replica, writer: RuntimeStateWriter, nb: dict[str, Any],
                   offload: Callable[[dict[str, Any]], dict[str, Any]] = lambda o: o) -> None:
    """Put ``nb`` into a document that has no cells yet, and its outputs into the runtime state
    (through ``offload``: images and long texts to the blob store)."""
    cells = nb.get("cells") or []
    cells_obj = doc.get_obj(ROOT, "cells")
    assert cells_obj is not None
    with doc.change() as tx:
        for cell, position in zip(cells, generate_n_keys_between(None, None, len(cells))):
            _put_cell(tx, cells_obj, cell, position)
        meta = doc.get_obj(ROOT, "metadata")
        for key, value in (nb.get("metadata") or {}).items():
            put_json(tx, meta, str(key), value)
    writer.set_saved_outputs(saved_outputs(nb, offload))


def saved_outputs(nb: dict[str, Any], offload: Callable[[dict[str, Any]], dict[str, Any]] = lambda o: o
                  ) -> dict[str, list[dict[str, Any]]]:
    """``cell id -> outputs`` (through ``offload``) of the notebook's code cells that have any."""
    return {c["id"]: [offload(o) for o in c["outputs"]] for c in nb.get("cells") or []
            if c.get("cell_type") == "code" and c.get("outputs")}


def apply_notebook(doc: Replica, nb: dict[str, Any]) -> None:
    """Edit ``doc`` until it holds ``nb``: cells matched by id, sources changed by splices,
    cells added, moved and removed, metadata and counts set (outputs are not in ``doc``)."""
    cells_obj = doc.get_obj(ROOT, "cells")
    assert cells_obj is not None
    wanted = list(nb.get("cells") or [])
    wanted_ids = [c["id"] for c in wanted]
    current = {c.id: c for c in notebook.read_cells(doc)}
    keep = set(wanted_ids)
    with doc.change() as tx:
        for cid in current:
            if cid not in keep:
                tx.delete(cells_obj, cid)
        for cell in wanted:
            old = current.get(cell["id"])
            if old is None:
                continue
            obj = doc.get_obj(cells_obj, cell["id"])
            kind = cell.get("cell_type", "code")
            if kind != old.cell_type:
                tx.put(obj, "cell_type", Str, kind)
            text = doc.get_obj(obj, "source")
            splice_to(tx, text, old.source, source_text(cell.get("source")))
            metadata = cell.get("metadata") or {}
            if metadata != old.metadata:
                meta = doc.get_obj(obj, "metadata")
                for key in old.metadata:
                    if key not in metadata:
                        tx.delete(meta, key)
                for key, value in metadata.items():
                    if old.metadata.get(key, _MISSING) != value:
                        put_json(tx, meta, str(key), value)
            count = cell.get("execution_count") if kind == "code" else None
            if count != old.execution_count:
                if isinstance(count, int):
                    tx.put(obj, "execution_count", Int, count)
                else:
                    tx.delete(obj, "execution_count")
            if cell.get("attachments") != old.attachments:
                if cell.get("attachments") is None:
                    tx.delete(obj, "attachments")
                else:
                    tx.put(obj, "attachments", Str, json.dumps(cell["attachments"]))
        positions = _positions([current[c].position if c in current else None for c in wanted_ids])
        for cell, position in zip(wanted, positions):
            old = current.get(cell["id"])
            if old is None:
                _put_cell(tx, cells_obj, cell, position)
            elif position != old.position:
                tx.put(doc.get_obj(cells_obj, cell["id"]), "position", Str, position)
        if any(c in current and p != current[c].position for c, p in zip(wanted_ids, positions)):
            tx.put(ROOT, "layout", Str, uuid.uuid4().hex)
        meta = doc.get_obj(ROOT, "metadata")
        old_meta = notebook.get_metadata(doc)
        new_meta = nb.get("metadata") or {}
        for key in old_meta:
            if key not in new_meta:
                tx.delete(meta, key)
        for key, value in new_meta.items():
            if old_meta.get(key, _MISSING) != value:
                put_json(tx, meta, str(key), value)


_MISSING = object()


def _positions(existing: list[str | None]) -> list[str]:
    """Positions for cells in their new order: those already in increasing order keep theirs
    (the longest such run), the others (moved or new) get keys between their neighbours."""
    keep = _increasing(existing)
    result: list[str | None] = [p if i in keep else None for i, p in enumerate(existing)]
    i = 0
    while i < len(result):
        if result[i] is not None:
            i += 1
            continue
        j = i
        while j < len(result) and result[j] is None:
            j += 1
        lower = result[i - 1] if i > 0 else None
        upper = result[j] if j < len(result) else None
        result[i:j] = generate_n_keys_between(lower, upper, j - i)
        i = j
    return [p for p in result if p is not None]


def _increasing(values: list[str | None]) -> set[int]:
    """Indexes of a longest strictly increasing subsequence of the non-None values."""
    tails: list[int] = []  # index of the smallest tail of each length
    parent: dict[int, int | None] = {}
    for i, value in enumerate(values):
        if value is None:
            continue
        keys = [values[t] for t in tails]
        k = bisect.bisect_left(keys, value)  # type: ignore[arg-type]
        parent[i] = tails[k - 1] if k > 0 else None
        if k == len(tails):
            tails.append(i)
        else:
            tails[k] = i
    out: set[int] = set()
    node = tails[-1] if tails else None
    while node is not None:
        out.add(node)
        node = parent[node]
    return out


# cell ids --------------------------------------------------------------------------------------
def align_ids(base: Iterable[dict[str, Any]], cells: list[dict[str, Any]]) -> None:
    """Give the cells of a file that had no ids (nbformat < 4.5) the ids of the ``base`` cells
    they match (same type and source, in order; then what differs, position by position)."""
    base = list(base)
    key = lambda c: (c.get("cell_type"), source_text(c.get("source")))  # noqa: E731
    matcher = difflib.SequenceMatcher(a=[key(c) for c in base], b=[key(c) for c in cells],
                                      autojunk=False)
    for tag, a0, a1, b0, b1 in matcher.get_opcodes():
        if tag in ("equal", "replace"):
            for a, b in zip(range(a0, a1), range(b0, b1)):
                if tag == "equal" or base[a].get("cell_type") == cells[b].get("cell_type"):
                    cells[b]["id"] = base[a]["id"]
    seen: set[str] = set()
    for cell in cells:  # anything left keeps its fresh id; never two cells with one id
        if cell["id"] in seen:
            cell["id"] = uuid.uuid4().hex[:8]
        seen.add(cell["id"])
