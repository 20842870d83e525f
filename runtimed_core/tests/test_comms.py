"""The comm recorder against a fake room (fast; test_widgets.py has the real kernels)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest

from runtimed.daemon.comms import CommRecorder
from runtimed.document.replica import Replica
from runtimed.document.runtime_state import RuntimeStateWriter, model_state, read_comms
from runtimed.errors import CommNotFound


class Room:
    """What the recorder sees of a room; ``flush()`` runs the batched writes."""

    notebook_id = "nb"

    def __init__(self) -> None:
        self.writer = RuntimeStateWriter(Replica())
        self.pending: list[Callable[[], None]] = []
        self.blobs: dict[str, bytes] = {}
        self.broadcasts: list[dict[str, Any]] = []
        self.kept = 0

    def schedule_flush(self, delay: float = 0.0) -> None:
        pass

    def before_flush(self, write: Callable[[], None]) -> None:
        self.pending.append(write)

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for write in pending:
            write()

    def put_blob(self, raw: bytes, content_type: str) -> str | None:
        if len(raw) > 100:
            return None
        sha = f"{len(self.blobs):064x}"
        self.blobs[sha] = raw
        return sha

    def broadcast(self, event: dict[str, Any]) -> None:
        self.broadcasts.append(event)

    def keep_widgets(self) -> None:
        self.kept += 1


class Kernel:
    """Records what the recorder sends to the kernel."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def __call__(self, content: dict[str, Any]) -> str:
        self.sent.append(content)
        return f"sent-{len(self.sent)}"


def msg(msg_type: str, content: dict[str, Any], parent: str = "exec-1",
        buffers: list[bytes] | None = None) -> dict[str, Any]:
    return {"header": {"msg_type": msg_type}, "parent_header": {"msg_id": parent},
            "content": content, "buffers": buffers or []}


def open_slider(comms: CommRecorder, comm_id: str = "s1", value: Any = 3) -> None:
    comms.on_message(msg("comm_open", {"comm_id": comm_id, "target_name": "jupyter.widget",
                                       "data": {"state": {"_model_name": "IntSliderModel",
                                                          "_model_module": "@jupyter-widgets/controls",
                                                          "_model_module_version": "2.0.0",
                                                          "value": value}}}))


def update(comm_id: str, state: dict[str, Any], method: str = "update", parent: str = "x",
           **data: Any) -> dict[str, Any]:
    return msg("comm_msg", {"comm_id": comm_id, "data": {"method": method, "state": state, **data}},
               parent)


def states(room: Room) -> dict[str, dict[str, Any]]:
    return {cid: model_state(c, room.blobs.get) for cid, c in read_comms(room.writer.replica).items()}


@pytest.fixture
def setup() -> tuple[Room, Kernel, CommRecorder]:
    room, kernel = Room(), Kernel()
    return room, kernel, CommRecorder(room, kernel)


def test_a_thousand_updates_between_two_syncs_are_one_document_change(setup):
    room, _, comms = setup
    open_slider(comms)
    room.flush()
    before = room.writer.replica.version
    for i in range(1000):
        comms.on_message(update("s1", {"value": i}))
    assert states(room)["s1"]["value"] == 3, "nothing written before the sync"
    room.flush()
    assert room.writer.replica.version == before + 1
    assert states(room)["s1"] == {"_model_name": "IntSliderModel", "_model_module":
                                  "@jupyter-widgets/controls", "_model_module_version": "2.0.0",
                                  "value": 999}
    record = read_comms(room.writer.replica)["s1"]
    assert (record["target_name"], record["model_name"], record["seq"]) == \
        ("jupyter.widget", "IntSliderModel", 1)


def test_echoes_of_older_updates_are_skipped(setup):
    room, kernel, comms = setup
    open_slider(comms)
    for value in (4, 5, 6):
        comms.send("s1", {"method": "update", "state": {"value": value}})
    assert [m["data"]["state"]["value"] for m in kernel.sent] == [4, 5, 6]
    room.flush()
    assert states(room)["s1"]["value"] == 6, "a client's change shows at once"
    comms.on_message(update("s1", {"value": 4}, "echo_update", parent="sent-1"))
    comms.on_message(update("s1", {"value": 5}, "echo_update", parent="sent-2"))
    room.flush()
    assert states(room)["s1"]["value"] == 6, "no jump back to 4 or 5"
    comms.on_message(update("s1", {"value": 6}, "echo_update", parent="sent-3"))
    comms.on_message(update("s1", {"value": 9}, "echo_update", parent="another-frontend"))
    room.flush()
    assert states(room)["s1"]["value"] == 9, "once confirmed, others' changes apply again"
    comms.on_message(update("s1", {"value": 1}))
    room.flush()
    assert states(room)["s1"]["value"] == 1, "the kernel's own updates always apply"


def test_unknown_closed_and_malformed_messages(setup, caplog):
    room, kernel, comms = setup
    with pytest.raises(CommNotFound):
        comms.send("nope", {"method": "update", "state": {}})
    assert kernel.sent == []
    caplog.set_level(logging.WARNING)
    for _ in range(100):
        comms.on_message(update("ghost", {"value": 1}))
    assert caplog.text.count("comm ghost, which is not open") == 1, "logged once, not a flood"
    comms.on_message(msg("comm_msg", {"data": {}}))
    comms.on_message(msg("comm_msg", {"comm_id": "x", "data": "not a mapping"}))
    open_slider(comms)
    comms.on_message(update("s1", "not a mapping"))  # type: ignore[arg-type]
    comms.on_message(update("s1", {"value": float("nan"), "max": float("inf")}))
    room.flush()
    assert states(room)["s1"]["value"] is None and states(room)["s1"]["max"] is None
    assert "NaN" not in json.dumps(read_comms(room.writer.replica)["s1"]["state"])
    comms.on_message(msg("comm_close", {"comm_id": "s1"}))
    room.flush()
    assert states(room) == {}
    with pytest.raises(CommNotFound):
        comms.send("s1", {"method": "update", "state": {"value": 1}})


def test_a_comm_opened_and_closed_between_syncs_never_reaches_the_document(setup):
    room, _, comms = setup
    open_slider(comms, "brief")
    comms.on_message(msg("comm_close", {"comm_id": "brief"}))
    open_slider(comms, "kept")
    room.flush()
    assert list(states(room)) == ["kept"]
    open_slider(comms, "kept", value=8)  # opened again: replaces it
    room.flush()
    assert states(room)["kept"]["value"] == 8


def test_buffers_go_to_blobs_and_come_back_in_place(setup):
    room, _, comms = setup
    comms.on_message(msg("comm_open", {"comm_id": "img", "target_name": "jupyter.widget", "data": {
        "state": {"_model_name": "ImageModel", "format": "png", "data": [None, 1]},
        "buffer_paths": [["value"], ["data", 0], ["big"]]}}, buffers=[b"png", b"\x00", b"x" * 500]))
    room.flush()
    assert states(room)["img"] == {"_model_name": "ImageModel", "format": "png", "value": b"png",
                                   "data": [b"\x00", 1]}, "the one over the cap is dropped"
    comms.on_message(update("img", {"data": [2]}))
    room.flush()
    assert states(room)["img"]["data"] == [2], "a key set again loses its old buffers"
    assert len(room.writer.blob_shas()) == 1, "the blob collector keeps what comms refer to"


def test_output_widgets_capture_their_msg_id_nested_and_tell_the_kernel(setup):
    room, kernel, comms = setup
    for comm_id in ("outer", "inner"):
        comms.on_message(msg("comm_open", {"comm_id": comm_id, "target_name": "jupyter.widget",
                                           "data": {"state": {"_model_name": "OutputModel",
                                                              "outputs": [], "msg_id": ""}}}))
    out = {"name": "stdout", "text": "a\n"}
    assert not comms.capture(msg("stream", out)), "nothing captures yet"
    comms.on_message(update("outer", {"msg_id": "exec-1"}))
    assert comms.capture(msg("stream", out))
    comms.on_message(update("inner", {"msg_id": "exec-1"}))
    assert comms.capture(msg("stream", {"name": "stdout", "text": "b\n"}))
    comms.on_message(update("inner", {"msg_id": ""}))
    assert comms.capture(msg("stream", {"name": "stdout", "text": "c\n"}))
    assert not comms.capture(msg("stream", out, parent="exec-2")), "other requests' outputs"
    room.flush()
    assert states(room)["outer"]["outputs"] == [{"output_type": "stream", "name": "stdout",
                                                 "text": "a\nc\n"}]
    assert states(room)["inner"]["outputs"][0]["text"] == "b\n"
    told = {m["comm_id"]: m["data"]["state"]["outputs"] for m in kernel.sent}
    assert told["outer"][0]["text"] == "a\nc\n", "sent once per sync, with everything"
    comms.capture(msg("clear_output", {"wait": True}))
    comms.capture(msg("display_data", {"data": {"text/plain": "d"}, "metadata": {},
                                       "transient": {"display_id": "x"}}))
    room.flush()
    assert states(room)["outer"]["outputs"] == [{"output_type": "display_data",
                                                 "data": {"text/plain": "d"}, "metadata": {}}]


def test_custom_messages_are_broadcast_once_per_sync_not_stored(setup):
    room, _, comms = setup
    open_slider(comms)
    for i in range(3):
        comms.on_message(msg("comm_msg", {"comm_id": "s1", "data": {"method": "custom",
                                                                    "content": {"i": i}}},
                             buffers=[b"\x01"]))
    room.flush()
    [event] = room.broadcasts
    assert event["event"] == "comm_msgs" and [m["data"]["content"]["i"] for m in event["messages"]] \
        == [0, 1, 2] and event["messages"][0]["buffers"] == ["AQ=="]
    assert "content" not in states(room)["s1"]


def test_clearing_keeps_the_last_widget_state_and_empties_the_document(setup):
    room, _, comms = setup
    open_slider(comms)
    comms.on_message(update("s1", {"value": 5}))
    comms.clear()
    assert room.kept == 1
    room.flush()
    assert states(room) == {}
    renewed = room.writer.renewed()
    assert read_comms(renewed.replica) == {}


def test_a_renewed_document_keeps_the_comms(setup):
    room, _, comms = setup
    open_slider(comms)
    room.flush()
    room.writer = room.writer.renewed()
    comms.on_message(update("s1", {"value": 12}))
    room.flush()
    assert states(room)["s1"]["value"] == 12 and read_comms(room.writer.replica)["s1"]["seq"] == 1
