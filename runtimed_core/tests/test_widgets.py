"""Widgets and comms through a real daemon and real kernels (ipykernel with ipywidgets)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

import runtimed
from runtimed.pytest_plugin import DaemonProcess
from runtimed.testing import wait_until

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    process = DaemonProcess(tmp_path_factory.mktemp("widgets-daemon"), pool_sizes={"uv": 1},
                            env={"RUNTIMED_BLOB_CAP": str(64 * 1024)}).start()
    try:
        yield process
    finally:
        process.stop()


def session(daemon: DaemonProcess, **kw) -> runtimed.Session:
    s = runtimed.Session(socket_path=daemon.socket_path, **kw)
    s.connect()
    return s


def model_id(result: runtimed.ExecutionResult) -> str:
    """The widget a cell's result shows."""
    view = result.display_data[-1].data["application/vnd.jupyter.widget-view+json"]
    return view["model_id"]


def test_a_late_joiner_reads_and_moves_a_slider(daemon):
    with session(daemon, notebook_id="slider-room") as a:
        shown = a.run("from ipywidgets import IntSlider\nw = IntSlider(3)\nw")
        assert shown.success
        slider = model_id(shown)
        b = session(daemon, notebook_id="slider-room")  # closed, not exited: A's kernel stays
        try:
            state = b.widget_state()
            assert state[slider]["value"] == 3
            assert state[slider]["_model_name"] == "IntSliderModel"
            layout = state[slider]["layout"].removeprefix("IPY_MODEL_")
            assert state[layout]["_model_name"] == "LayoutModel", "the models it refers to too"
            b.send_comm_message(slider, {"method": "update", "state": {"value": 7}})
            assert b.widget_state()[slider]["value"] == 7, "the sender sees its change at once"
            assert a.run("print(w.value)").stdout == "7\n"
            wait_until(lambda: a.widget_state()[slider]["value"] == 7, "A to see 7", 10)
            a.run("w.value = 11")
            wait_until(lambda: b.widget_state()[slider]["value"] == 11, "B to see the kernel's 11", 10)
        finally:
            b.close()


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def saved_models(path) -> dict:
    nb = nbformat.read(path, 4)
    nbformat.validate(nb)
    return nb.metadata.widgets[WIDGET_STATE]["state"]


def without_ids(state: dict) -> dict:
    """A model's state with the ids of the models it refers to blanked (they differ per run)."""
    return {k: "IPY_MODEL_" if isinstance(v, str) and v.startswith("IPY_MODEL_") else v
            for k, v in state.items()}


def nbclient_widgets(python: str, nb: nbformat.NotebookNode, jupyter_path: Path,
                     monkeypatch: pytest.MonkeyPatch) -> dict:
    """What nbclient writes into ``metadata.widgets`` for ``nb``, on a kernel of ``python``."""
    from nbclient import NotebookClient

    spec = jupyter_path / "kernels" / "pool"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pool", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    NotebookClient(nb, kernel_name="pool", timeout=60).execute()
    return nb.metadata.widgets[WIDGET_STATE]["state"]


SLIDER_CELLS = ["from ipywidgets import IntSlider\nw = IntSlider(5, description='n')\nw", "w.value = 9"]


def test_save_writes_the_widgets_as_nbclient_does_and_opening_keeps_them(daemon, tmp_path,
                                                                        monkeypatch):
    path = tmp_path / "slider.ipynb"
    with session(daemon, path=path) as s:
        results = [s.run(code) for code in SLIDER_CELLS]
        slider = model_id(results[0])
        python = s.run("import sys; print(sys.executable)").stdout.strip()
        s.save()
        models = saved_models(path)
        assert models[slider]["model_name"] == "IntSliderModel"
        assert models[slider]["model_module"] == "@jupyter-widgets/controls"
        assert models[slider]["state"]["value"] == 9 and models[slider]["state"]["description"] == "n"
        ours = sorted((m["model_name"], json.dumps(without_ids(m["state"]), sort_keys=True))
                      for m in models.values())
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in SLIDER_CELLS])
        theirs = nbclient_widgets(python, nb, tmp_path / "jupyter", monkeypatch)
        assert ours == sorted((m["model_name"], json.dumps(without_ids(m["state"]), sort_keys=True))
                              for m in theirs.values()), "the same models and states as nbclient's"
        saved = nbformat.read(path, 4).metadata.widgets
    with session(daemon, path=path) as again:  # the kernel is gone: the saved state stays
        assert json.loads(again.get_metadata("widgets")) == saved
        again.create_cell("# another cell", "markdown")
        again.save()
    assert nbformat.read(path, 4).metadata.widgets == saved, "kept unchanged"
    other = tmp_path / "opened.ipynb"
    nb = nbformat.read(path, 4)
    nbformat.write(nb, other)
    with session(daemon, path=other) as opened:  # a file another tool wrote, opened afresh
        opened.set_source(opened.get_cells()[0].id, "# edited")
        opened.save()
    assert nbformat.read(other, 4).metadata.widgets == saved


@pytest.mark.network
def test_a_saved_notebook_holds_its_slider_and_its_tqdm_bar(daemon, tmp_path):
    path = tmp_path / "progress.ipynb"
    with session(daemon, path=path) as s:
        s.set_metadata("runt", json.dumps({"uv": {"dependencies": ["tqdm"]}}))
        s.start_kernel()
        assert s.env_source == "uv:inline"
        slider = model_id(s.run("from ipywidgets import IntSlider\nIntSlider(4, description='k')"))
        bar = s.run("from tqdm.notebook import trange\nfor i in trange(300, desc='steps'):\n    pass")
        assert bar.success and bar.stderr == ""
        box = model_id(bar)
        s.save()
    models = saved_models(path)
    assert models[slider]["model_name"] == "IntSliderModel" and models[slider]["state"]["value"] == 4
    assert models[box]["model_name"] == "HBoxModel"
    parts = [models[ref.removeprefix("IPY_MODEL_")] for ref in models[box]["state"]["children"]]
    progress = next(p for p in parts if p["model_name"] == "FloatProgressModel")
    assert progress["state"]["value"] == 300 and progress["state"]["max"] == 300
    assert progress["state"]["bar_style"] == "success"
    texts = " ".join(p["state"]["value"] for p in parts if p["model_name"] == "HTMLModel")
    assert "steps" in texts and "300/300" in texts


def test_comms_go_with_the_kernel(daemon):
    with session(daemon) as s:
        slider = model_id(s.run("from ipywidgets import IntSlider\nw = IntSlider(1)\nw"))
        assert slider in s.widget_state()
        s.restart_kernel()
        assert s.widget_state() == {}, "a restart closes every comm"
        saved = json.loads(s.get_metadata("widgets"))["application/vnd.jupyter.widget-state+json"]
        assert saved["state"][slider]["state"]["value"] == 1, "its last state stays in the metadata"
        with pytest.raises(runtimed.CommNotFound) as caught:
            s.send_comm_message(slider, {"method": "update", "state": {"value": 2}})
        assert caught.value.comm_id == slider and "restart" in str(caught.value)
        again = model_id(s.run("from ipywidgets import IntSlider\nw = IntSlider(1)\nw"))
        s.shutdown_kernel()
        assert s.widget_state() == {}
        with pytest.raises(runtimed.NoKernel):
            s.send_comm_message(again, {"method": "update", "state": {"value": 2}})


def test_bad_comm_messages_get_clear_errors_and_the_daemon_serves_on(daemon):
    with session(daemon) as s:
        shown = s.run("from ipywidgets import IntSlider, Image\nw = IntSlider(1)\n"
                      "big = Image(value=bytes(100_000), format='png')\nprint('made')\nw")
        assert shown.success and shown.stdout == "made\n"
        slider = model_id(shown)
        with pytest.raises(runtimed.CommNotFound):
            s.send_comm_message("no-such-comm", {"method": "update", "state": {"value": 2}})
        with pytest.raises(runtimed.InvalidRequest):
            s.send_comm_message(slider, {"method": "update", "state": {"value": object()}})
        with pytest.raises(runtimed.InvalidRequest):
            s.send_comm_message(slider, {"method": "update", "state": {"value": float("nan")}})
        s.run("w.close()")
        with pytest.raises(runtimed.CommNotFound):
            s.send_comm_message(slider, {"method": "update", "state": {"value": 2}})
        assert slider not in s.widget_state()
        image = next(m for m, st in s.widget_state().items() if st["_model_name"] == "ImageModel")
        assert "value" not in s.widget_state()[image], "a buffer over the blob cap is not kept"
        assert s.widget_state()[image]["format"] == "png", "the rest of its state is"
        # a comm message for a comm the daemon never saw open: dropped, logged
        s.run("from ipykernel.comm import Comm\nc = Comm(target_name='x', comm_id='rogue', "
              "data={'state': {}})\nc.comm_id = 'never-opened'\nc.send({'method': 'update', "
              "'state': {'a': 1}})")
        wait_until(lambda: "not open" in daemon.log(), "the drop to be logged", 10)
        assert s.run("print('still here')").stdout == "still here\n"
        assert s.get_cell(s.get_cells()[0].id).outputs[0].text == "made\n", "outputs unaffected"


def test_an_output_widget_captures_what_its_with_block_prints(daemon):
    with session(daemon) as s:
        shown = s.run("from ipywidgets import Output\nout = Output()\ndisplay(out)\n"
                      "with out:\n    print('inside')\n    print('more')\nprint('outside')")
        assert shown.stdout == "outside\n", "the cell keeps only what is printed outside"
        out = model_id(shown)
        assert s.widget_state()[out]["outputs"] == [
            {"output_type": "stream", "name": "stdout", "text": "inside\nmore\n"}]
        assert s.run("print(out.outputs[0]['text'])").stdout == "inside\nmore\n\n", \
            "the kernel's side holds them too"
        cell = s.create_cell("with out:\n    print('streamed inside')\nprint('streamed outside')")
        events = list(s.stream(cell))
        assert [e.output.text for e in events if e.kind == "output"] == ["streamed outside\n"], \
            "stream() yields what the cell shows, as its result has it"
        assert events[-1].result.stdout == "streamed outside\n"
        wait_until(lambda: "streamed inside\n" in s.widget_state()[out]["outputs"][0]["text"],
                   "the widget's text", 10)
        s.run("out.clear_output()")
        wait_until(lambda: s.widget_state()[out]["outputs"] == [], "the widget to be cleared", 10)


def test_custom_messages_both_ways(daemon):
    with session(daemon) as s:
        got: list = []
        s.on_comm_message(lambda comm_id, data, buffers: got.append((comm_id, data, buffers)))
        shown = s.run("from ipywidgets import Button\nclicks = []\nb = Button(description='go')\n"
                      "b.on_click(lambda button: clicks.append(1))\nb")
        button = model_id(shown)
        s.send_comm_message(button, {"method": "custom", "content": {"event": "click"}})
        s.send_comm_message(button, {"method": "custom", "content": {"event": "click"}})
        assert s.run("print(len(clicks))").stdout == "2\n"
        s.run("b.send({'hello': 1}, buffers=[b'\\x00\\x01'])")
        wait_until(lambda: got, "the custom message", 10)
        assert got == [(button, {"method": "custom", "content": {"hello": 1}}, [b"\x00\x01"])]
        assert "hello" not in json.dumps(s.widget_state()), "custom messages are not stored"
        s.on_comm_message(None)


PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c63f8cfc0f01f0005000201a5b6c2a8000000"
                    "0049454e44ae426082")


def test_binary_buffers_are_bytes_and_saved_base64(daemon, tmp_path):
    with session(daemon) as s:
        s.run(f"from ipywidgets import Image\nimg = Image(value={PNG!r}, format='png')\nimg")
        image = next(m for m, st in s.widget_state().items() if st["_model_name"] == "ImageModel")
        assert s.widget_state()[image]["value"] == PNG
        assert s.run("img.value = bytes(img.value) + b'!'").success
        wait_until(lambda: s.widget_state()[image]["value"] == PNG + b"!", "the new bytes", 10)
        s.save(tmp_path / "image.ipynb")
        saved = saved_models(tmp_path / "image.ipynb")[image]
        assert saved["buffers"] == [{"data": base64.b64encode(PNG + b"!").decode(),
                                     "encoding": "base64", "path": ["value"]}]
        assert "value" not in saved["state"]


def test_a_slider_dragged_fast_ends_where_it_was_let_go(daemon):
    with session(daemon, notebook_id="drag-room") as a:
        slider = model_id(a.run("from ipywidgets import IntSlider\nseen = []\n"
                                "w = IntSlider(0, max=1000)\nw.observe(lambda c: seen.append(c['new']), 'value')\nw"))
        b = session(daemon, notebook_id="drag-room")
        try:
            for value in range(1, 101):  # faster than the kernel's echoes come back
                b.send_comm_message(slider, {"method": "update", "state": {"value": value}})
            assert b.widget_state()[slider]["value"] == 100
            assert a.run("print(w.value, seen[-1])").stdout == "100 100\n"
            assert a.widget_state()[slider]["value"] == 100 == b.widget_state()[slider]["value"]
        finally:
            b.close()


def test_ten_thousand_updates_a_second_keep_the_document_small(daemon):
    with session(daemon) as s:
        slider = model_id(s.run("from ipywidgets import IntSlider\nw = IntSlider(0, max=10**6)\nw"))
        sizes = {}
        for n in (2_000, 40_000):
            loop = s.run(f"import time\nt = time.perf_counter()\nfor i in range({n}): w.value = i\n"
                         "print(round(time.perf_counter() - t, 2))")
            assert loop.success
            wait_until(lambda n=n: s.widget_state()[slider]["value"] == n - 1, "the last value", 20)
            sizes[n] = len(s._async.state.save())
        rate = 40_000 / float(loop.stdout)
        print(f"{rate:.0f} updates/s; runtime-state document sizes {sizes}")
        assert rate > 3_000, f"the loop sent only {rate:.0f} updates/s"  # a flood, as meant
        assert sizes[40_000] < 2 * sizes[2_000] + 50_000, sizes
        assert s.run("print('fine')").stdout == "fine\n"


def test_a_cell_whose_idle_never_arrives_still_ends(daemon):
    """A kernel's PUB socket drops what a subscriber that fell behind has not taken, the
    status "idle" that ends a cell included: the cell ends anyway, and the next one runs."""
    with session(daemon) as s:
        lost = s.run("k = get_ipython().kernel\npublish = k._publish_status\n"
                     "def once(status, *args, **kw):\n"
                     "    if status != 'idle':\n        return publish(status, *args, **kw)\n"
                     "    k._publish_status = publish  # this cell's idle is never sent\n"
                     "k._publish_status = once\nprint('done')", timeout_secs=30)
        assert lost.success and lost.stdout == "done\n"
        assert s.run("print('next')").stdout == "next\n"
        assert "'idle' after an execution never arrived" in daemon.log()


def test_the_readme_example_runs_as_written(daemon, monkeypatch):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    [code] = [block for block in readme.split("```python\n")[1:]
              if block.startswith("# widgets: two sessions on one notebook")]
    monkeypatch.setenv("RUNTIMED_SOCKET_PATH", str(daemon.socket_path))
    exec(compile(code.split("```")[0], "README.md (widgets)", "exec"), {})


# the live page, in a real browser ---------------------------------------------------------------
def test_the_page_shows_a_slider_and_moving_it_changes_the_kernels_value(daemon, browser, artifacts):
    with session(daemon) as s:
        s.run("from ipywidgets import IntSlider, VBox, HTML, Output, Checkbox\n"
              "w = IntSlider(3, max=10, description='level')\nnote = HTML('<b>bold</b><script>x</script>')\n"
              "box = VBox([w, note, Checkbox(True, description='on')])\nbox")
        page = browser.new_page()
        page.goto(s.show(open_browser=False))
        slider = page.locator(".widget-slider input[type=range]")
        slider.wait_for()
        assert slider.input_value() == "3"
        assert page.locator(".widget-slider .widget-label").inner_text() == "level"
        assert page.locator(".widget-html b").inner_text() == "bold", "HTML shown, scripts not"
        assert page.locator(".widget-html script").count() == 0
        assert page.locator(".widget-checkbox input").is_checked()
        slider.focus()
        for _ in range(4):
            page.keyboard.press("ArrowRight")
        wait_until(lambda: s.run("print(w.value)").stdout == "7\n", "the kernel to hold 7", 10)
        assert s.widget_state()[model_id_of(s, "IntSliderModel")]["value"] == 7
        s.run("w.value = 9\nw.description = 'changed'")
        page.wait_for_function("() => document.querySelector('.widget-slider input').value === '9'")
        assert page.locator(".widget-slider .widget-label").inner_text() == "changed"
        assert page.locator(".widget-readout").inner_text() == "9"
        page.screenshot(path=str(artifacts / "widgets.png"), full_page=True)
        page.close()


def model_id_of(s: runtimed.Session, model_name: str) -> str:
    return next(m for m, st in s.widget_state().items() if st["_model_name"] == model_name)


def test_the_page_shows_outputs_buttons_and_widgets_it_cannot_draw(daemon, browser):
    with session(daemon) as s:
        s.run("from ipywidgets import Output, Button, DOMWidget\nfrom traitlets import Unicode\n"
              "class Thing(DOMWidget):\n"
              "    _model_name = Unicode('ThingModel').tag(sync=True)\n"
              "    _model_module = Unicode('thing-module').tag(sync=True)\n"
              "    _view_name = Unicode('ThingView').tag(sync=True)\n"
              "    _view_module = Unicode('thing-module').tag(sync=True)\n"
              "    colour = Unicode('teal').tag(sync=True)\n"
              "out = Output()\nb = Button(description='press')\npressed = []\n"
              "b.on_click(lambda _: pressed.append(1))\ndisplay(out, b, Thing())\n"
              "with out:\n    print('captured text')")
        page = browser.new_page()
        page.goto(s.show(open_browser=False))
        captured = page.locator(".widget-output .output.stream")
        captured.wait_for()
        assert captured.inner_text() == "captured text\n"
        unknown = page.locator(".widget-unknown")
        assert "ThingModel (thing-module)" in unknown.inner_text() and "teal" in unknown.inner_text()
        page.get_by_role("button", name="press").click()
        wait_until(lambda: s.run("print(len(pressed))").stdout == "1\n", "the click", 10)
        s.run("with out:\n    print('more text')")
        page.wait_for_function("() => document.querySelector('.widget-output .output.stream')"
                               ".innerText.includes('more text')")
        s.run("b.close()")
        page.get_by_text("its state is not available").wait_for()
        page.close()


def test_the_page_shows_a_saved_notebooks_widgets_without_a_kernel(daemon, browser, tmp_path):
    path = tmp_path / "saved.ipynb"
    with session(daemon, path=path) as s:
        s.run("from ipywidgets import IntSlider\nIntSlider(6, max=10, description='kept')")
        s.save()
    with session(daemon, path=path) as s:  # no kernel: what the file saved
        page = browser.new_page()
        page.goto(s.show(open_browser=False))
        slider = page.locator(".widget-slider input[type=range]")
        slider.wait_for()
        assert slider.input_value() == "6"
        assert page.locator(".widget-slider .widget-label").inner_text() == "kept"
        page.close()


@pytest.mark.network
def test_the_page_shows_a_tqdm_bar_filling_up(daemon, browser, artifacts):
    with session(daemon) as s:
        s.set_metadata("runt", json.dumps({"uv": {"dependencies": ["tqdm"]}}))
        s.start_kernel()
        page = browser.new_page()
        page.goto(s.show(open_browser=False))
        page.wait_for_selector("body[data-state=live]")
        cell = s.create_cell("import time\nfrom tqdm.notebook import tqdm\n"
                             "for i in tqdm(range(40), desc='work'):\n    time.sleep(0.05)")
        s.queue_cell(cell)
        bar = page.locator("progress.widget-progress")
        bar.wait_for()
        page.wait_for_function("() => { const b = document.querySelector('progress'); "
                               "return b && b.value > 0 && b.value < b.max; }")  # moving, live
        page.wait_for_function("() => document.querySelector('progress').value === 40")
        assert bar.get_attribute("data-bar-style") == "success"
        assert "40/40" in page.locator(".widget-hbox").inner_text()
        assert "work" in page.locator(".widget-hbox").inner_text()
        page.screenshot(path=str(artifacts / "widgets-tqdm.png"), full_page=True)
        page.close()
