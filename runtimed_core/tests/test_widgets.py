"""Widgets and comms through a real daemon and real kernels (ipykernel with ipywidgets)."""

from __future__ import annotations

import json
from collections.abc import Iterator

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
