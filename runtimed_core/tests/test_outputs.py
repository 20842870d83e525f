"""StreamText terminal semantics, checked through the edits it returns, and output shapes."""

from __future__ import annotations

import random
import time

import pytest

from runtimed.outputs import StreamText, output_from_message


def reference_render(raw: str) -> str:
    """A character-at-a-time terminal: ``\\n`` starts a line, ``\\r`` returns to column 0,
    other characters overwrite at the cursor (or extend the line)."""
    lines: list[list[str]] = [[]]
    col = 0
    for ch in raw:
        if ch == "\n":
            lines.append([])
            col = 0
        elif ch == "\r":
            col = 0
        else:
            line = lines[-1]
            if col < len(line):
                line[col] = ch
            else:
                line.append(ch)
            col += 1
    return "\n".join("".join(line) for line in lines)


class Mirror:
    """A client's copy of the stream text, updated only through the returned edits."""

    def __init__(self) -> None:
        self.stream = StreamText()
        self.text = ""
        self.edits: list[tuple[int, int, str]] = []

    def append(self, chunk: str) -> str:
        start, delete, insert = edit = self.stream.append(chunk)
        assert 0 <= start <= len(self.text), edit
        assert delete >= 0 and start + delete <= len(self.text), edit
        self.text = self.text[:start] + insert + self.text[start + delete :]
        self.edits.append(edit)
        assert self.stream.rendered_len == len(self.text)
        return self.text


def run(*chunks: str) -> list[str]:
    mirror = Mirror()
    return [mirror.append(c) for c in chunks]


# --- plain appends -----------------------------------------------------------------------------


def test_plain_appends_are_pure_inserts_at_the_end():
    mirror = Mirror()
    assert mirror.append("hello ") == "hello "
    assert mirror.append("world\n") == "hello world\n"
    assert mirror.append("next") == "hello world\nnext"
    assert mirror.edits == [(0, 0, "hello "), (6, 0, "world\n"), (12, 0, "next")]


def test_multiple_lines_per_chunk():
    assert run("a\nb\nc", "d\ne\n", "f") == ["a\nb\nc", "a\nb\ncd\ne\n", "a\nb\ncd\ne\nf"]


def test_empty_chunk_changes_nothing():
    mirror = Mirror()
    mirror.append("abc")
    assert mirror.append("") == "abc"
    start, delete, insert = mirror.edits[-1]
    assert delete == 0 and insert == ""


def test_ansi_colour_codes_are_kept():
    red = "\x1b[31merror\x1b[0m\n"
    assert run(red) == [red]


# --- carriage return ---------------------------------------------------------------------------


def test_carriage_return_overwrites_the_line():
    assert run("hello\rHE") == ["HEllo"]
    assert run("10%\r20%\r30%") == ["30%"]


def test_carriage_return_overwrites_only_the_current_line():
    assert run("keep\nabc\rX") == ["keep\nXbc"]


def test_carriage_return_at_end_of_chunk_then_overwrite_in_next():
    assert run("progress 10%\r", "progress 20%\r", "progress 30%") == [
        "progress 10%",
        "progress 20%",
        "progress 30%",
    ]


def test_carriage_return_at_end_then_shorter_text_overwrites_prefix_only():
    assert run("abcdef\r", "XY") == ["abcdef", "XYcdef"]


def test_overwrite_continues_at_the_cursor_across_chunks():
    # after "\rX" the cursor is at column 1; the next chunk continues from there
    assert run("abcdef\rX", "Y", "Z") == ["Xbcdef", "XYcdef", "XYZdef"]


def test_carriage_return_edits_touch_only_the_last_line():
    mirror = Mirror()
    mirror.append("line one\nline two\n")
    mirror.append("50%")
    mirror.append("\r75%")
    start, delete, insert = mirror.edits[-1]
    assert start == len("line one\nline two\n")
    assert delete == 3 and insert == "75%"
    assert mirror.text == "line one\nline two\n75%"


def test_crlf_is_a_newline():
    assert run("a\r\nb\r\n") == ["a\nb\n"]
    assert run("abc\r\nX") == ["abc\nX"]


def test_crlf_split_across_chunks_is_a_newline():
    assert run("abc\r", "\nX") == ["abc", "abc\nX"]


def test_newline_after_overwrite_then_new_line_is_independent():
    assert run("aaaa\rbb\ncc") == ["bbaa\ncc"]


def test_progress_bar_then_done_line():
    chunks = [f"\r{pct:3d}%" for pct in range(0, 101, 10)] + ["\ndone\n"]
    assert run(*chunks)[-1] == "100%\ndone\n"


# --- randomized against the reference renderer -------------------------------------------------


@pytest.mark.parametrize("seed", range(25))
def test_random_chunks_match_reference_terminal(seed):
    rng = random.Random(seed)
    alphabet = ["a", "b", "c", "\r", "\n", "\r\n", "é", "😀", "\x1b[1m"]
    for _ in range(40):
        mirror = Mirror()
        raw = ""
        for _ in range(rng.randint(1, 12)):
            chunk = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
            raw += chunk
            assert mirror.append(chunk) == reference_render(raw), repr(raw)


def test_long_progress_bar_stays_fast():
    """A progress bar redrawing its line thousands of times must not slow down with history."""
    mirror_stream = StreamText()
    bar = "#" * 60
    started = time.perf_counter()
    for i in range(8_000):
        start, delete, insert = mirror_stream.append(f"\r{i:6d} {bar}")
        assert delete <= len(insert) + 8  # only the line is rewritten, never the history
    elapsed = time.perf_counter() - started
    assert mirror_stream.rendered_len == 7 + len(bar)
    assert elapsed < 1.0, f"8k progress updates took {elapsed:.2f}s (quadratic?)"


# --- nbformat output shapes ---------------------------------------------------------------------


def test_output_from_stream_message():
    assert output_from_message("stream", {"name": "stderr", "text": "x"}) == {
        "output_type": "stream",
        "name": "stderr",
        "text": "x",
    }


def test_output_from_error_message():
    out = output_from_message("error", {"ename": "ValueError", "evalue": "bad", "traceback": ("l1", "l2")})
    assert out == {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": ["l1", "l2"]}


def test_output_from_execute_result_keeps_count_and_display_id():
    content = {
        "data": {"text/plain": "3"},
        "metadata": {},
        "execution_count": 4,
        "transient": {"display_id": "d1"},
    }
    out = output_from_message("execute_result", content)
    assert out["output_type"] == "execute_result"
    assert out["execution_count"] == 4
    assert out["data"] == {"text/plain": "3"}
    assert out["transient"] == {"display_id": "d1"}


def test_output_from_display_data_without_display_id():
    out = output_from_message("display_data", {"data": {"text/html": "<b>"}, "metadata": {"a": 1}})
    assert out == {"output_type": "display_data", "data": {"text/html": "<b>"}, "metadata": {"a": 1}}


def test_stream_chunks_commits_reproduce_the_rendered_text():
    """Random kernel chunks and random sync points: the stored chunks always render right."""
    import random

    from runtimed.outputs import StreamChunks

    def rendered(raw: list[str]) -> str:
        st, text = StreamText(), ""
        for chunk in raw:
            start, _, insert = st.append(chunk)
            text = text[:start] + insert
        return text

    rng = random.Random(7)
    for _ in range(2000):
        stream, doc, raw = StreamChunks(), [], []
        for _ in range(rng.randint(1, 12)):
            chunk = "".join(rng.choice("ab\n\r") for _ in range(rng.randint(0, 6)))
            raw.append(chunk)
            stream.append(chunk)
            if rng.random() < 0.5:
                puts, inserts, deletes = stream.commit()
                del doc[len(doc) - deletes:]
                for i, text in puts:
                    doc[i] = text
                for i, text in inserts:
                    doc.insert(i, text)
                assert "".join(doc) == rendered(raw)
        assert stream.text == rendered(raw)
