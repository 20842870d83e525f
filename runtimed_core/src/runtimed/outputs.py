"""Sans-IO output handling: terminal semantics for streams, and nbformat output shapes."""

from __future__ import annotations

from typing import Any


def _overwrite_line(line: str) -> str:
    """Apply carriage returns the way a terminal does: each ``\\r`` returns to column 0."""
    if "\r" not in line:
        return line
    shown = ""
    for part in line.split("\r"):
        shown = part + shown[len(part):]
    return shown


class StreamText:
    """One stream output's text under terminal semantics, maintained incrementally.

    :meth:`append` returns the edit ``(start, delete, insert)`` that turns the
    previous rendered text into the new one; only the last line (the one a
    ``\\r`` can still overwrite) is ever re-rendered, so appending is O(chunk).
    """

    def __init__(self) -> None:
        self.rendered_len = 0
        self._tail_raw = ""  # the unterminated last line, as received
        self._tail_start = 0  # where that line starts in the rendered text
        self._tail_rendered_len = 0

    def append(self, chunk: str) -> tuple[int, int, str]:
        chunk = chunk.replace("\r\n", "\n")
        raw = self._tail_raw + chunk
        if "\r" not in raw:  # fast path: plain append
            self._advance(raw)
            return (self.rendered_len - len(chunk), 0, chunk)
        lines = raw.split("\n")
        rendered = "\n".join(_overwrite_line(line) for line in lines)
        start, delete = self._tail_start, self._tail_rendered_len
        self._advance(raw, rendered)
        return (start, delete, rendered)

    def _advance(self, raw: str, rendered: str | None = None) -> None:
        rendered = raw if rendered is None else rendered
        total = self._tail_start + len(rendered)
        cut = raw.rfind("\n")
        tail = raw[cut + 1 :]
        last_rendered = rendered[rendered.rfind("\n") + 1 :]
        if "\r" in tail:
            # Keep the tail bounded (a progress bar sends thousands of "\r..." chunks):
            # the rendered line plus the cursor column is equivalent to the whole history.
            cursor = len(tail) - tail.rfind("\r") - 1
            if cursor < len(last_rendered):
                tail = last_rendered + "\r" + last_rendered[:cursor]
            else:
                tail = last_rendered
        self._tail_raw = tail
        self._tail_rendered_len = len(last_rendered)
        self._tail_start = total - len(last_rendered)
        self.rendered_len = total


def output_from_message(msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
    """An nbformat v4 output dict from an IOPub message (stream text excluded)."""
    if msg_type == "stream":
        return {"output_type": "stream", "name": content.get("name", "stdout"), "text": content.get("text", "")}
    if msg_type == "error":
        return {
            "output_type": "error",
            "ename": content.get("ename", ""),
            "evalue": content.get("evalue", ""),
            "traceback": list(content.get("traceback", [])),
        }
    out: dict[str, Any] = {
        "output_type": msg_type,
        "data": content.get("data", {}),
        "metadata": content.get("metadata", {}),
    }
    if msg_type == "execute_result":
        out["execution_count"] = content.get("execution_count")
    display_id = (content.get("transient") or {}).get("display_id")
    if display_id:
        out["transient"] = {"display_id": display_id}
    return out


class StreamChunks:
    """One stream output stored as a list of text chunks, with edits batched between syncs.

    The document holds a stream as a list of strings (one Automerge op per chunk,
    whatever its size) rather than character-level Text: only the daemon writes
    outputs, so nothing needs merging, and a 100,000-line cell costs a handful of
    operations. :meth:`append` takes raw kernel text (terminal semantics via
    :class:`StreamText`); :meth:`commit` returns the document operations that
    bring the stored chunks up to date. The open last line is kept in a chunk
    of its own, so a ``\\r`` rewrites only that small chunk.
    """

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self._text = StreamText()
        self._stored = 0  # chunks[:_stored] are in the document unchanged
        self._doc_count = 0  # how many chunks the document holds

    @property
    def text(self) -> str:
        return "".join(self.chunks)

    @property
    def dirty(self) -> bool:
        return self._stored < len(self.chunks) or self._doc_count != len(self.chunks)

    def append(self, raw: str) -> None:
        start, _, insert = self._text.append(raw)  # always replaces the suffix from `start`
        chunks = self.chunks
        end = sum(map(len, chunks))
        while chunks and end - len(chunks[-1]) >= start:  # drop whole chunks past the cut
            end -= len(chunks.pop())
        if chunks and end > start:  # cut into the last remaining chunk
            chunks[-1] = chunks[-1][: len(chunks[-1]) - (end - start)]
            self._stored = min(self._stored, len(chunks) - 1)
        self._stored = min(self._stored, len(chunks))
        if insert:
            if len(chunks) > self._stored:  # the last chunk is not stored yet: grow it
                chunks[-1] += insert
            else:
                chunks.append(insert)

    def commit(self) -> tuple[list[tuple[int, str]], list[tuple[int, str]], int]:
        """``(puts, inserts, deletes)``: replace chunk i, insert chunk at i, delete N from the end.

        Apply deletes first (from the end), then puts, then inserts in order.
        """
        chunks = self.chunks
        last = chunks[-1] if chunks else ""
        cut = last.rfind("\n") + 1
        if len(chunks) > self._stored and 0 < cut < len(last):  # keep the open line on its own
            chunks[-1:] = [last[:cut], last[cut:]]
        deletes = max(0, self._doc_count - len(chunks))
        kept = self._doc_count - deletes
        puts = [(i, chunks[i]) for i in range(self._stored, kept)]
        inserts = [(i, chunks[i]) for i in range(kept, len(chunks))]
        self._stored = self._doc_count = len(chunks)
        return puts, inserts, deletes
