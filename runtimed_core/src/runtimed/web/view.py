"""What the live page shows, as JSON: cells and outputs from the documents (sans-IO).

The page renders what this module gives it: a cell's source, its markdown
already turned into HTML (markdown-it, CommonMark plus tables and ``$...$``
maths that the page typesets with KaTeX; raw HTML in markdown is shown as text,
never run), and its outputs as nbformat has them, except that parts kept in
the blob store are URLs (``{"$blob": url}``) the page loads from the daemon.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

from runtimed.blobs import BLOBS_KEY, blob_refs
from runtimed.document import notebook
from runtimed.document.replica import Replica
from runtimed.document.runtime_state import read_kernel
from runtimed.formats.ipynb import cell_outputs

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


def notebook_view(doc: Replica, state: Replica, blob_url: BlobUrl) -> dict[str, Any]:
    """The whole notebook: ``{"cells": [...], "kernel": {...}}``."""
    cells = [cell_view(c, cell_outputs(state, c) if c.cell_type == "code" else [], blob_url)
             for c in notebook.read_cells(doc)]
    kernel = read_kernel(state)
    return {"cells": cells, "kernel": {k: kernel.get(k) for k in
                                       ("lifecycle", "activity", "kernel_type", "error")}}


def page_message(kind: str, title: str, path: str | None, order: list[str], kernel: str,
                 cells: dict[str, str]) -> str:
    """What the page receives: ``kind`` "snapshot" (everything) or "update" (what changed);
    ``order`` the cell ids, ``kernel`` and each of ``cells`` already JSON."""
    return '{"type":"%s","notebook_id":%s,"path":%s,"order":%s,"kernel":%s,"cells":{%s}}' % (
        kind, json.dumps(title), json.dumps(path), json.dumps(order), kernel,
        ",".join(f"{json.dumps(cid)}:{text}" for cid, text in cells.items()))
