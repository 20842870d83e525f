"""What an agent reads: results, cells and outputs as MCP content (sans-IO, no daemon).

An execution's outputs become one text block (streams, text results, errors; ANSI
escapes stripped) and one image block per image. A text longer than the budget
keeps its start and its end (where errors and final values are) and says, in the
middle, how much was cut and how to read it: ``get_result(execution_id,
offset=N)`` returns the text from character N on.

A widget output's text is what the widget was when it was displayed (its
``text/plain``: a ``tqdm.notebook`` bar at 0%); what it is now (the state the
kernel holds: a slider's value, the bar at 100%) follows the outputs' text in a
block of its own, so offsets into that text stay the same while widgets change.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

from mcp.types import ContentBlock, ImageContent, TextContent

from runtimed import Cell, ExecutionResult, Output

#: Characters of text per tool result (``runtimed mcp --max-output-chars``).
DEFAULT_MAX_CHARS = 12_000
#: Of a cut text, the share kept from its start (the rest from its end).
HEAD_SHARE = 0.3
#: Traceback lines kept of an error (its last ones: where it happened).
TRACEBACK_LINES = 12
IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/webp")
TEXT_TYPES = ("text/markdown", "text/plain", "application/json", "text/latex", "image/svg+xml",
              "text/html")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
#: The state keys of a widget an agent is shown (the rest are layout, style and internals).
WIDGET_KEYS = ("description", "value", "index", "min", "max", "bar_style")
#: Characters of one state value shown; nested boxes shown this deep.
WIDGET_VALUE_CHARS, WIDGET_DEPTH = 120, 4
#: ``session.widget_state()``: model id -> state.
Widgets = Mapping[str, Mapping[str, Any]]
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")


def strip_ansi(text: str) -> str:
    """``text`` without terminal escapes (colours, cursor moves, hyperlinks)."""
    return _ANSI.sub("", text)


def error_text(out: Output) -> str:
    """An error output as ``Name: message`` and the last lines of its traceback."""
    head = f"{out.ename}: {out.evalue}" if out.evalue else str(out.ename)
    lines = [line for tb in out.traceback or [] for line in strip_ansi(tb).splitlines()]
    lines = [line for line in lines if line.strip() and not set(line.strip()) <= {"-"}]
    if not lines:
        return head
    shown = lines[-TRACEBACK_LINES:]
    cut = f" ({len(lines) - len(shown)} lines above left out)" if len(lines) > len(shown) else ""
    return f"{head}\nTraceback, last lines{cut}:\n" + "\n".join(shown)


def _bundle_text(data: dict[str, Any]) -> str | None:
    for mime in TEXT_TYPES:
        if mime in data:
            value = data[mime]
            if not isinstance(value, str):
                value = json.dumps(value, indent=1)
            return strip_ansi(value) if mime != "text/html" else f"[text/html]\n{value}"
    return None


def output_parts(outputs: Iterable[Output]) -> tuple[str, list[ImageContent]]:
    """The text of ``outputs`` (one string) and their images."""
    texts: list[str] = []
    images: list[ImageContent] = []
    for out in outputs:
        if out.output_type == "stream":
            text = strip_ansi(out.text or "")
            texts.append(text if out.name != "stderr" else f"[stderr]\n{text}")
        elif out.output_type == "error":
            texts.append(error_text(out))
        elif out.data:
            image = next((m for m in IMAGE_TYPES if isinstance(out.data.get(m), str)), None)
            if image is not None:
                images.append(ImageContent(type="image", data="".join(out.data[image].split()),
                                           mime_type=image))
                texts.append(f"[{image} image {len(images)}]")
            else:
                text = _bundle_text(out.data)
                texts.append(text if text is not None else f"[{', '.join(out.data)}]")
    joined = ""
    for text in texts:  # one newline between outputs, none added after text ending in one
        joined += text if not joined or joined.endswith("\n") else "\n" + text
    return joined, images


def _widget(model_id: str, widgets: Widgets, depth: int = 0) -> str:
    state = widgets.get(model_id)
    if state is None:
        return f"(closed widget {model_id})"
    name = str(state.get("_model_name") or "Widget").removesuffix("Model")
    parts = []
    for key in WIDGET_KEYS:
        value = state.get(key)
        if value is None or value == "":
            continue
        shown = f"<{len(value)} bytes>" if isinstance(value, (bytes, bytearray)) else repr(value)
        if len(shown) > WIDGET_VALUE_CHARS:
            shown = shown[:WIDGET_VALUE_CHARS] + "..."
        parts.append(f"{key}={strip_ansi(shown)}")
    children = [c.removeprefix("IPY_MODEL_") for c in state.get("children") or []
                if isinstance(c, str) and c.startswith("IPY_MODEL_")]
    if children:
        parts.append("[" + ", ".join(_widget(c, widgets, depth + 1) for c in children) + "]"
                     if depth < WIDGET_DEPTH else f"[{len(children)} widgets]")
    return f"{name}({', '.join(parts)})"


def widgets_text(outputs: Iterable[Output], widgets: Widgets | None) -> str:
    """What the widgets that ``outputs`` show are now (``widgets``: the session's
    ``widget_state()``), one line each, boxes with their children; "" if they show none."""
    if not widgets:
        return ""
    views = [out.data.get(WIDGET_VIEW) for out in outputs if out.data]
    ids = [v["model_id"] for v in views if isinstance(v, dict) and isinstance(v.get("model_id"), str)]
    return "\n--- widgets now ---\n" + "\n".join(_widget(i, widgets) for i in ids) if ids else ""


def cut(text: str, max_chars: int, how_to_read: str) -> str:
    """``text`` within ``max_chars``: its start and end, with a note of what was left out
    in between (``how_to_read`` is formatted with ``offset``: where the cut starts)."""
    if len(text) <= max_chars:
        return text
    head = int(max_chars * HEAD_SHARE)
    tail = max_chars - head
    left_out = len(text) - head - tail
    note = (f"\n[... {left_out:,} characters cut (of {len(text):,}); "
            f"{how_to_read.format(offset=head)} ...]\n")
    return text[:head] + note + text[len(text) - tail:]


def status_line(result: ExecutionResult) -> str:
    if result.status in ("queued", "running"):
        state = f"still {result.status}"
    elif result.success:
        state = "ok"
    elif result.failure:
        state = f"failed ({result.failure})"
    else:
        state = "error"
    count = f", execution_count {result.execution_count}" if result.execution_count is not None else ""
    return f"cell {result.cell_id}: {state}{count} (execution_id {result.execution_id})"


def result_content(result: ExecutionResult, max_chars: int = DEFAULT_MAX_CHARS, *,
                   offset: int = 0, widgets: Widgets | None = None) -> list[ContentBlock]:
    """An execution's result for an agent: a status line, its outputs' text (cut to
    ``max_chars``; from ``offset`` on, if given), its widgets now (:func:`widgets_text`) and
    its images (only with the start)."""
    text, images = output_parts(result.outputs)
    header = status_line(result)
    if offset:
        window = text[offset:offset + max_chars]
        more = len(text) - offset - len(window)
        tail = (f"\n[... {more:,} more characters: get_result(execution_id="
                f"\"{result.execution_id}\", offset={offset + len(window)}) ...]") if more > 0 else ""
        body = f"[characters {offset:,} to {offset + len(window):,} of {len(text):,}]\n{window}{tail}"
        return [TextContent(type="text", text=f"{header}\n{body}")]
    read = (f"get_result(execution_id=\"{result.execution_id}\", offset={{offset}}) returns the "
            "text from there")
    body = cut(text, max_chars, read) if text else "(no output)"
    body += widgets_text(result.outputs, widgets)
    return [TextContent(type="text", text=f"{header}\n{body}"), *images]


def result_summary(result: ExecutionResult) -> dict[str, Any]:
    """The structured part of a result (what an agent may branch on)."""
    error = result.error
    return {"execution_id": result.execution_id, "cell_id": result.cell_id,
            "success": result.success, "status": result.status,
            "execution_count": result.execution_count, "failure": result.failure,
            "error": f"{error.ename}: {error.evalue}" if error is not None else None}


def cell_text(cell: Cell, *, outputs: bool = True, max_chars: int = DEFAULT_MAX_CHARS,
              widgets: Widgets | None = None) -> str:
    """A cell as an agent reads it: id, type, count, tags, source, its outputs' text and
    widgets (:func:`widgets_text`)."""
    tags = cell.metadata.get("tags") or []
    meta = [cell.cell_type]
    if cell.execution_count is not None:
        meta.append(f"execution_count {cell.execution_count}")
    if tags:
        meta.append("tags " + ", ".join(map(str, tags)))
    text = f"--- cell {cell.id} ({'; '.join(meta)}) ---\n{cell.source}"
    if outputs and cell.outputs:
        body, images = output_parts(cell.outputs)
        read = f"get_cell(cell_id=\"{cell.id}\") shows this cell alone"
        text += "\n--- outputs ---\n" + cut(body, max_chars, read) + widgets_text(cell.outputs, widgets)
        if images:
            text += f"\n({len(images)} image{'s' if len(images) > 1 else ''}: get_cell shows them)"
    return text
