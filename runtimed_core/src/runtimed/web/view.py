"""What the live page shows, as JSON: cells and outputs from the documents (sans-IO).

The page renders what this module gives it: a cell's source, its markdown
already turned into HTML (markdown-it, CommonMark plus tables and ``$...$``
maths that the page typesets with KaTeX; raw HTML in markdown is shown as text,
never run), and its outputs as nbformat has them, except that parts kept in
the blob store are URLs (``{"$blob": url}``) the page loads from the daemon.
Widget models are sent beside the cells (:func:`widget_view`): the kernel's, or,
with none, those a notebook file saved in ``metadata.widgets``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from runtimed.blobs import BLOBS_KEY, blob_refs
from runtimed.document import notebook
from runtimed.document.replica import Replica
from runtimed.document.runtime_state import model_state, put_at, read_kernel
from runtimed.formats.ipynb import WIDGET_STATE_MIME, cell_outputs

BlobUrl = Callable[[str], str]


@functools.lru_cache(maxsize=1)
def _markdown() -> Any:
    from markdown_it import MarkdownIt  # imported when a page first asks
    from mdit_py_plugins.dollarmath import dollarmath_plugin

    return MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table").enable(
        "strikethrough").use(dollarmath_plugin, double_inline=True)


@functools.lru_cache(maxsize=4096)
def render_markdown(source: str) -> str:
    """Markdown as HTML: raw HTML escaped, maths as ``<span class="math inline">`` and
    ``<div class="math block">`` for the page to typeset."""
    return _markdown().render(source)


def output_view(output: dict[str, Any], blob_url: BlobUrl) -> dict[str, Any]:
    """An output for the page: blob parts as ``{"$blob": url, "size": n}``, text/markdown
    also rendered (``"rendered"``)."""
    view = {k: v for k, v in output.items() if k != BLOBS_KEY and k != "transient"}
    refs = blob_refs(output)
    if refs or "data" in view:
        data = dict(view.get("data") or {})
        for mime, ref in refs.items():
            data[mime] = {"$blob": blob_url(ref["sha256"]), "size": ref["size"]}
        view["data"] = data
        markdown = data.get("text/markdown")
        if isinstance(markdown, str):
            view["rendered"] = {"text/markdown": render_markdown(markdown)}
    return view


def cell_view(cell: notebook.CellData, outputs: list[dict[str, Any]], blob_url: BlobUrl
              ) -> dict[str, Any]:
    view: dict[str, Any] = {"id": cell.id, "cell_type": cell.cell_type, "source": cell.source}
    if cell.cell_type == "markdown":
        view["html"] = render_markdown(cell.source)
    elif cell.cell_type == "code":
        view["execution_count"] = cell.execution_count
        view["outputs"] = [output_view(o, blob_url) for o in outputs]
    return view


def widget_view(comm: dict[str, Any], blob_url: BlobUrl) -> dict[str, Any]:
    """A widget model the kernel holds (a :func:`~runtimed.document.runtime_state.read_comm`
    record), for the page: name, module, state, its buffers as ``{"$blob": url}``."""
    return {"model_name": comm["model_name"], "model_module": comm["model_module"],
            "state": model_state(comm, lambda sha: {"$blob": blob_url(sha)})}


def saved_widget_views(metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The widget models a notebook's ``metadata.widgets`` holds (what its file shows with no
    kernel), as :func:`widget_view` gives them; buffers as ``{"$base64": data}``."""
    saved = (metadata.get("widgets") or {}).get(WIDGET_STATE_MIME) or {}
    models = saved.get("state") if isinstance(saved, dict) else None
    views = {}
    for model_id, model in (models if isinstance(models, dict) else {}).items():
        if not isinstance(model, dict) or not isinstance(model.get("state"), dict):
            continue
        state = dict(model["state"])
        for buffer in model.get("buffers") or []:
            if isinstance(buffer, dict) and isinstance(buffer.get("path"), list) and buffer["path"]:
                put_at(state, buffer["path"], {"$base64": buffer.get("data", "")})
        views[model_id] = {"model_name": model.get("model_name"),
                           "model_module": model.get("model_module"), "state": state}
    return views


def notebook_view(doc: Replica, state: Replica, blob_url: BlobUrl) -> dict[str, Any]:
    """The whole notebook: ``{"cells": [...], "kernel": {...}}``."""
    cells = [cell_view(c, cell_outputs(state, c) if c.cell_type == "code" else [], blob_url)
             for c in notebook.read_cells(doc)]
    kernel = read_kernel(state)
    return {"cells": cells, "kernel": {k: kernel.get(k) for k in
                                       ("lifecycle", "activity", "kernel_type", "error")}}


def page_message(kind: str, title: str, path: str | None, order: list[str], kernel: str,
                 cells: dict[str, str], widgets: dict[str, str] | None = None) -> str:
    """What the page receives: ``kind`` "snapshot" (everything) or "update" (what changed);
    ``order`` the cell ids, ``kernel`` and each of ``cells`` and ``widgets`` (model id ->
    :func:`widget_view`; ``null``: gone) already JSON."""
    return ('{"type":"%s","notebook_id":%s,"path":%s,"order":%s,"kernel":%s,"cells":{%s},'
            '"widgets":{%s}}') % (
        kind, json.dumps(title), json.dumps(path), json.dumps(order), kernel,
        ",".join(f"{json.dumps(cid)}:{text}" for cid, text in cells.items()),
        ",".join(f"{json.dumps(mid)}:{text}" for mid, text in (widgets or {}).items()))
