"""What an agent reads, without a daemon: ANSI stripped, errors shortened, long text cut."""

from __future__ import annotations

from mcp.types import ImageContent

from runtimed import ExecutionResult, Output
from runtimed_mcp import render


def test_ansi_escapes_are_stripped():
    assert render.strip_ansi("\x1b[31mred\x1b[0m \x1b]8;;http://x\x07link\x1b]8;;\x07 \x1b[2K\rok") == "red link \rok"


def test_an_error_is_its_name_message_and_last_traceback_lines():
    tb = ["\x1b[0;31m---------------------------------------------------------------------------\x1b[0m",
          *[f"line {i}" for i in range(30)], "\x1b[0;31mZeroDivisionError\x1b[0m: division by zero"]
    text = render.error_text(Output("error", ename="ZeroDivisionError", evalue="division by zero", traceback=tb))
    lines = text.splitlines()
    assert lines[0] == "ZeroDivisionError: division by zero"
    assert "(19 lines above left out)" in lines[1] and lines[-1] == "ZeroDivisionError: division by zero"
    assert "line 29" in text and "line 10" not in text and "\x1b" not in text and "----" not in text


def test_outputs_become_one_text_and_images():
    outputs = [Output("stream", name="stdout", text="a\n"), Output("stream", name="stderr", text="warn\n"),
               Output("display_data", data={"image/png": "iVBO\nRw==", "text/plain": "<Figure>"}),
               Output("execute_result", data={"text/plain": "42", "text/html": "<b>42</b>"}),
               Output("display_data", data={"application/vnd.custom+json": {}})]
    text, images = render.output_parts(outputs)
    assert text == "a\n[stderr]\nwarn\n[image/png image 1]\n42\n[application/vnd.custom+json]"
    assert images == [ImageContent(type="image", data="iVBORw==", mime_type="image/png")]


def test_a_long_text_keeps_its_start_and_end_and_says_how_to_read_on():
    text = "".join(f"{i:05d}\n" for i in range(10_000))
    cut = render.cut(text, 1000, "read from {offset}")
    assert cut.startswith("00000\n") and cut.endswith("09999\n") and len(cut) < 1200
    assert f"[... {len(text) - 1000:,} characters cut (of {len(text):,}); read from 300 ...]" in cut
    assert render.cut("short", 1000, "unused") == "short"


def test_a_result_with_its_status_and_a_window_by_offset():
    result = ExecutionResult("c1", True, 3, [Output("stream", name="stdout", text="x" * 50)],
                             execution_id="exec-1", status="done")
    [block] = render.result_content(result, 20)
    assert block.text.startswith("cell c1: ok, execution_count 3 (execution_id exec-1)\nxxxxxx")
    [window] = render.result_content(result, 20, offset=40)
    assert "[characters 40 to 50 of 50]\nxxxxxxxxxx" in window.text and "more characters" not in window.text
    [window] = render.result_content(result, 20, offset=10)
    assert 'get_result(execution_id="exec-1", offset=30)' in window.text
    running = ExecutionResult("c1", False, None, [], execution_id="exec-2", status="running")
    assert render.status_line(running) == "cell c1: still running (execution_id exec-2)"


def test_a_cell_as_an_agent_reads_it():
    from runtimed import Cell

    cell = Cell("c7", "code", "print('x' * 3000)", 4, metadata={"tags": ["parameters"]},
                outputs=[Output("stream", name="stdout", text="x" * 3000 + "\n")])
    text = render.cell_text(cell, max_chars=600)
    assert text.startswith("--- cell c7 (code; execution_count 4; tags parameters) ---\nprint('x' * 3000)")
    assert "characters cut" in text and 'get_cell(cell_id="c7") shows this cell alone' in text
    assert render.cell_text(cell, outputs=False).endswith("print('x' * 3000)")


def test_widgets_are_shown_as_they_are_now_after_the_outputs_text():
    view = {"model_id": "box", "version_major": 2, "version_minor": 0}
    outputs = [Output("display_data", data={"text/plain": "HBox(...)", render.WIDGET_VIEW: view}),
               Output("display_data", data={"text/plain": "gone", render.WIDGET_VIEW: {"model_id": "old"}})]
    widgets = {"box": {"_model_name": "HBoxModel", "children": ["IPY_MODEL_bar", "IPY_MODEL_img"]},
               "bar": {"_model_name": "FloatProgressModel", "value": 40.0, "max": 40.0, "min": 0.0,
                       "bar_style": "success", "description": ""},
               "img": {"_model_name": "ImageModel", "value": b"\x89PNG" * 10}}
    text = render.widgets_text(outputs, widgets)
    assert text == ("\n--- widgets now ---\nHBox([FloatProgress(value=40.0, min=0.0, max=40.0, "
                    "bar_style='success'), Image(value=<40 bytes>)])\n(closed widget old)")
    assert render.widgets_text(outputs, {}) == "" and render.widgets_text([], widgets) == ""
    result = ExecutionResult("c1", True, 1, outputs, execution_id="e1", status="done")
    [block] = render.result_content(result, widgets=widgets)
    assert block.text.endswith("HBox(...)\ngone" + text), "after the text offsets point into"
