"""The notebook and runtime-state Automerge documents, without sockets or a daemon.

Two :class:`Replica` objects stand in for the daemon and a client; they sync by
exchanging ``generate``/``receive`` messages until both sides are quiet.
"""

from __future__ import annotations

import json
import os

import pytest

from runtimed.document import notebook as nb
from runtimed.document import runtime_state as rs
from runtimed.document.replica import ROOT, Replica, SyncState, splice_to
from runtimed.errors import CellNotFound, InvalidRequest


class Link:
    """A bidirectional sync link between two replicas (one SyncState per side)."""

    def __init__(self, a: Replica, b: Replica) -> None:
        self.a, self.b = a, b
        self.sa, self.sb = SyncState(), SyncState()

    def sync(self) -> int:
        rounds = 0
        while True:
            to_b = self.a.generate(self.sa)
            if to_b is not None:
                self.b.receive(self.sb, to_b)
            to_a = self.b.generate(self.sb)
            if to_a is not None:
                self.a.receive(self.sa, to_a)
            if to_b is None and to_a is None:
                return rounds
            rounds += 1
            assert rounds < 50, "sync did not converge"


@pytest.fixture
def daemon() -> Replica:
    replica = nb.new_replica()
    nb.set_notebook_id(replica, "nb-1")
    return replica


@pytest.fixture
def pair(daemon):
    """(daemon replica, client replica, link), already in sync."""
    client = nb.new_replica()
    link = Link(daemon, client)
    link.sync()
    return daemon, client, link


def sources(replica: Replica) -> list[str]:
    return [c.source for c in nb.read_cells(replica)]


# --- skeleton ------------------------------------------------------------------------------------


def test_new_replica_has_the_schema_skeleton(daemon):
    assert daemon.get(ROOT, "schema_version") == nb.SCHEMA_VERSION
    assert daemon.get(ROOT, "notebook_id") == "nb-1"
    assert nb.cell_ids(daemon) == []
    assert nb.get_metadata(daemon) == {}


def test_skeleton_is_shared_so_replicas_never_compete(pair):
    daemon, client, link = pair
    # independently created replicas start from the very same skeleton change ...
    assert nb.new_replica().heads == Replica.load(nb.new_replica().save()).heads
    # ... but write with their own actors
    assert daemon.doc.get_actor() != client.doc.get_actor()
    cid = nb.add_cell(client, "from client")
    did = nb.add_cell(daemon, "from daemon")
    link.sync()
    assert set(nb.cell_ids(daemon)) == set(nb.cell_ids(client)) == {cid, did}
    assert client.get(ROOT, "notebook_id") == "nb-1"


def test_set_notebook_id_is_idempotent(daemon):
    version = daemon.version
    nb.set_notebook_id(daemon, "nb-1")
    assert daemon.version == version
    nb.set_notebook_id(daemon, "nb-2")
    assert daemon.get(ROOT, "notebook_id") == "nb-2"
    assert daemon.version == version + 1


def test_document_without_skeleton_is_rejected():
    with pytest.raises(InvalidRequest):
        nb.cell_ids(Replica())
    with pytest.raises(InvalidRequest):
        nb.add_cell(Replica(), "x")


# --- adding cells -------------------------------------------------------------------------------


def test_add_cell_defaults(daemon):
    cid = nb.add_cell(daemon)
    assert cid.startswith("cell-") and len(cid) == len("cell-") + 36
    cell = nb.read_cell(daemon, cid)
    assert cell.id == cid
    assert cell.cell_type == "code"
    assert cell.source == ""
    assert cell.execution_count is None and cell.execution_id is None
    assert cell.metadata == {}


def test_add_cell_appends_at_the_end(daemon):
    ids = [nb.add_cell(daemon, f"cell {i}") for i in range(5)]
    assert nb.cell_ids(daemon) == ids
    assert sources(daemon) == [f"cell {i}" for i in range(5)]
    positions = [c.position for c in nb.read_cells(daemon)]
    assert positions == sorted(positions) and len(set(positions)) == 5


def test_add_cell_after(daemon):
    a = nb.add_cell(daemon, "a")
    c = nb.add_cell(daemon, "c")
    b = nb.add_cell(daemon, "b", after=a)
    d = nb.add_cell(daemon, "d", after=c)
    assert nb.cell_ids(daemon) == [a, b, c, d]


def test_add_cell_at_index(daemon):
    b = nb.add_cell(daemon, "b")
    a = nb.add_cell(daemon, "a", index=0)
    d = nb.add_cell(daemon, "d", index=2)
    c = nb.add_cell(daemon, "c", index=2)
    end = nb.add_cell(daemon, "end", index=99)
    start = nb.add_cell(daemon, "start", index=-5)
    assert nb.cell_ids(daemon) == [start, a, b, c, d, end]
    assert sources(daemon) == ["start", "a", "b", "c", "d", "end"]


def test_many_inserts_at_the_front_keep_order(daemon):
    for i in range(30):
        nb.add_cell(daemon, str(i), index=0)
    assert sources(daemon) == [str(i) for i in reversed(range(30))]


def test_cells_sort_by_position_not_by_insertion(daemon):
    # ids chosen so that id order disagrees with position order
    nb.add_cell(daemon, "second", cell_id="cell-a")
    nb.add_cell(daemon, "first", cell_id="cell-z", index=0)
    assert nb.cell_ids(daemon) == ["cell-z", "cell-a"]


def test_concurrent_appends_get_a_deterministic_order_and_can_be_inserted_between(pair):
    daemon, client, link = pair
    nb.add_cell(daemon, "x", cell_id="cell-b")
    nb.add_cell(client, "y", cell_id="cell-a")
    link.sync()
    # both picked the same position: the cell id breaks the tie, identically everywhere
    assert nb.read_cell(daemon, "cell-a").position == nb.read_cell(daemon, "cell-b").position
    assert nb.cell_ids(daemon) == nb.cell_ids(client) == ["cell-a", "cell-b"]
    # inserting next to tied cells must still work (no key fits strictly between them)
    new = nb.add_cell(client, "z", after="cell-a")
    also = nb.add_cell(client, "w", index=1)
    link.sync()
    order = nb.cell_ids(daemon)
    assert order == nb.cell_ids(client)
    assert set(order) == {"cell-a", "cell-b", new, also}
    assert order.index(new) > order.index("cell-a")
    assert order.index(also) >= 1
    assert order.index("cell-a") < order.index("cell-b")


def test_add_cell_cell_types(daemon):
    for cell_type in ("code", "markdown", "raw"):
        cid = nb.add_cell(daemon, "x", cell_type)
        assert nb.read_cell(daemon, cid).cell_type == cell_type


@pytest.mark.parametrize("bad", ["Code", "python", "", "heading"])
def test_add_cell_rejects_bad_cell_type(daemon, bad):
    version = daemon.version
    with pytest.raises(InvalidRequest, match="cell_type"):
        nb.add_cell(daemon, "x", bad)
    assert daemon.version == version
    assert nb.cell_ids(daemon) == []


def test_add_cell_rejects_duplicate_id(daemon):
    nb.add_cell(daemon, "one", cell_id="cell-1")
    with pytest.raises(InvalidRequest, match="already exists"):
        nb.add_cell(daemon, "two", cell_id="cell-1")
    assert sources(daemon) == ["one"]


def test_add_cell_after_unknown_cell(daemon):
    with pytest.raises(CellNotFound) as info:
        nb.add_cell(daemon, "x", after="cell-missing")
    assert info.value.cell_id == "cell-missing"
    assert nb.cell_ids(daemon) == []


# --- unknown ids, deletion ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda r: nb.read_cell(r, "cell-nope"),
        lambda r: nb.set_source(r, "cell-nope", "x"),
        lambda r: nb.delete_cell(r, "cell-nope"),
    ],
    ids=["read_cell", "set_source", "delete_cell"],
)
def test_unknown_cell_ids_raise_cell_not_found(daemon, call):
    nb.add_cell(daemon, "other")
    with pytest.raises(CellNotFound) as info:
        call(daemon)
    assert isinstance(info.value, LookupError)
    assert info.value.cell_id == "cell-nope"


def test_delete_cell(pair):
    daemon, client, link = pair
    a, b, c = (nb.add_cell(daemon, s) for s in "abc")
    link.sync()
    nb.delete_cell(client, b)
    link.sync()
    assert nb.cell_ids(daemon) == [a, c]
    with pytest.raises(CellNotFound):
        nb.read_cell(daemon, b)
    with pytest.raises(CellNotFound):
        nb.delete_cell(daemon, b)


def test_set_execution_points_cell_at_run_and_ignores_deleted_cells(daemon):
    cid = nb.add_cell(daemon, "1+1")
    nb.set_execution(daemon, cid, execution_id="exec-1", execution_count=3)
    cell = nb.read_cell(daemon, cid)
    assert (cell.execution_id, cell.execution_count) == ("exec-1", 3)
    nb.delete_cell(daemon, cid)
    version = daemon.version
    nb.set_execution(daemon, cid, execution_id="exec-2")  # deleted meanwhile: no error
    assert daemon.version == version


# --- sources --------------------------------------------------------------------------------------


class RecordingTx:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def splice_text(self, obj, start, delete, text):
        self.calls.append((start, delete, text))


@pytest.mark.parametrize(
    "old,new,splice",
    [
        ("hello world", "hello brave world", (6, 0, "brave ")),
        ("hello world", "hello", (5, 6, "")),
        ("abc", "xbc", (0, 1, "x")),
        ("", "new", (0, 0, "new")),
        ("gone", "", (0, 4, "")),
        ("aaa", "aaaa", (3, 0, "a")),
        ("a😀b", "a😀xb", (2, 0, "x")),  # indices are code points, not UTF-8/16 units
        ("über café", "über Café", (5, 1, "C")),
    ],
)
def test_splice_to_is_one_minimal_splice(old, new, splice):
    tx = RecordingTx()
    splice_to(tx, b"obj", old, new)
    assert tx.calls == [splice]
    start, delete, text = splice
    assert old[:start] + text + old[start + delete :] == new


def test_splice_to_same_text_does_nothing():
    tx = RecordingTx()
    splice_to(tx, b"obj", "same", "same")
    assert tx.calls == []


def test_set_source_with_unicode(daemon):
    cid = nb.add_cell(daemon, "print('héllo 😀')")
    nb.set_source(daemon, cid, "print('héllo 😀 wörld 🎉')")
    assert nb.read_cell(daemon, cid).source == "print('héllo 😀 wörld 🎉')"
    nb.set_source(daemon, cid, "😀")
    assert nb.read_cell(daemon, cid).source == "😀"


def test_set_source_unchanged_makes_no_change(daemon):
    cid = nb.add_cell(daemon, "x = 1")
    version, heads = daemon.version, daemon.heads
    nb.set_source(daemon, cid, "x = 1")
    assert daemon.version == version and daemon.heads == heads


def test_concurrent_source_edits_merge_by_character(pair):
    daemon, client, link = pair
    cid = nb.add_cell(daemon, "hello world")
    link.sync()
    nb.set_source(daemon, cid, "hello brave world")
    nb.set_source(client, cid, "hello world!")
    link.sync()
    assert nb.read_cell(daemon, cid).source == "hello brave world!"
    assert nb.read_cell(client, cid).source == "hello brave world!"


def test_concurrent_unicode_edits_merge_at_code_point_offsets(pair):
    daemon, client, link = pair
    cid = nb.add_cell(daemon, "😀 ü 🎉")
    link.sync()
    nb.set_source(daemon, cid, "😀😀 ü 🎉")
    nb.set_source(client, cid, "😀 ü é 🎉")
    link.sync()
    assert nb.read_cell(daemon, cid).source == "😀😀 ü é 🎉"
    assert nb.read_cell(client, cid).source == "😀😀 ü é 🎉"


def test_edit_and_delete_elsewhere_both_survive(pair):
    daemon, client, link = pair
    a = nb.add_cell(daemon, "keep me")
    b = nb.add_cell(daemon, "delete me")
    link.sync()
    nb.set_source(client, a, "kept and edited")
    nb.delete_cell(daemon, b)
    link.sync()
    assert sources(daemon) == sources(client) == ["kept and edited"]


# --- metadata --------------------------------------------------------------------------------------


def test_metadata_key_set_get_as_json(pair):
    daemon, client, link = pair
    spec = nb.parse_metadata_json("kernelspec", '{"name": "python3", "display_name": "Python 3"}')
    nb.set_metadata_value(client, "kernelspec", spec)
    deps = nb.parse_metadata_json("runt", '{"uv": {"dependencies": ["numpy>=2", "pandas"]}}')
    nb.set_metadata_value(client, "runt", deps)
    nb.set_metadata_value(client, "flags", nb.parse_metadata_json("flags", "[1, 2.5, true, null, \"s\"]"))
    link.sync()
    assert json.loads(nb.get_metadata_json(daemon, "kernelspec")) == {
        "name": "python3",
        "display_name": "Python 3",
    }
    assert nb.get_metadata(daemon)["runt"]["uv"]["dependencies"] == ["numpy>=2", "pandas"]
    assert json.loads(nb.get_metadata_json(daemon, "flags")) == [1, 2.5, True, None, "s"]
    assert nb.get_metadata_json(daemon, "absent") is None


def test_notebook_metadata_reads_and_replaces_the_whole_mapping(pair):
    daemon, client, link = pair
    nb.set_metadata_value(daemon, "kernelspec", {"name": "python3"})
    nb.set_metadata_value(daemon, "custom", "kept?")
    link.sync()
    assert json.loads(nb.get_metadata_json(client, nb.NOTEBOOK_METADATA)) == {
        "kernelspec": {"name": "python3"},
        "custom": "kept?",
    }
    whole = nb.parse_metadata_json(
        nb.NOTEBOOK_METADATA, '{"kernelspec": {"name": "deno"}, "language_info": {"name": "ts"}}'
    )
    nb.set_metadata_value(client, nb.NOTEBOOK_METADATA, whole)
    link.sync()
    assert nb.get_metadata(daemon) == {"kernelspec": {"name": "deno"}, "language_info": {"name": "ts"}}
    nb.set_metadata_value(daemon, nb.NOTEBOOK_METADATA, {})
    assert nb.get_metadata(daemon) == {}
    assert nb.get_metadata_json(daemon, nb.NOTEBOOK_METADATA) == "{}"


@pytest.mark.parametrize("bad", ["[1, 2]", '"text"', "3", "null"])
def test_notebook_metadata_must_be_an_object(daemon, bad):
    with pytest.raises(InvalidRequest, match="must be a JSON object"):
        nb.parse_metadata_json(nb.NOTEBOOK_METADATA, bad)
    # other keys may hold any JSON value
    assert nb.parse_metadata_json("other", bad) == json.loads(bad)


def test_setting_notebook_metadata_to_a_non_object_is_invalid_and_changes_nothing(daemon):
    nb.set_metadata_value(daemon, "kernelspec", {"name": "python3"})
    version = daemon.version
    with pytest.raises(InvalidRequest):
        nb.set_metadata_value(daemon, nb.NOTEBOOK_METADATA, ["kernelspec"])
    assert nb.get_metadata(daemon) == {"kernelspec": {"name": "python3"}}
    assert daemon.version == version


@pytest.mark.parametrize("bad", ["{", "{'a': 1}", "", "nope", '{"a": }'])
@pytest.mark.parametrize("key", [nb.NOTEBOOK_METADATA, "kernelspec"])
def test_malformed_metadata_json_is_invalid_request(key, bad):
    with pytest.raises(InvalidRequest, match="not valid JSON") as info:
        nb.parse_metadata_json(key, bad)
    assert isinstance(info.value, ValueError)


# --- heads and persistence ----------------------------------------------------------------------


def test_has_heads(pair):
    daemon, client, link = pair
    start = daemon.heads
    assert daemon.has_heads(start)
    assert daemon.has_heads([])
    nb.add_cell(daemon, "a")
    middle = daemon.heads
    nb.add_cell(daemon, "b")
    assert daemon.has_heads(daemon.heads)  # own heads
    assert daemon.has_heads(middle)  # ancestor heads
    assert daemon.has_heads(start)
    unknown = os.urandom(32)
    assert not daemon.has_heads([unknown])
    assert not daemon.has_heads(middle + [unknown])
    # a client's fresh heads are unknown to the daemon until it syncs
    nb.add_cell(client, "c")
    client_heads = client.heads
    assert not daemon.has_heads(client_heads)
    link.sync()
    assert daemon.has_heads(client_heads)
    assert daemon.has_heads(middle)
    assert not daemon.has_heads([os.urandom(32)])


def test_cell_order_stays_right_as_cells_arrive_and_go(pair):
    """The order is cached and refreshed by putting new cells in and taking gone ones out;
    it must always be what a replica that reads every position from scratch says."""
    daemon, client, link = pair
    for i in range(5):
        nb.add_cell(daemon, f"d{i}")
    link.sync()
    first = nb.cell_ids(client)[0]
    nb.add_cell(client, "front", index=0)
    for i in range(3):  # concurrent appends on both sides
        nb.add_cell(daemon, f"d-more{i}")
        nb.add_cell(client, f"c-more{i}", index=2)
    nb.delete_cell(daemon, first)
    link.sync()
    fresh = Replica.load(client.save())  # no cache: every position read
    assert nb.cell_ids(client) == nb.cell_ids(fresh) == nb.cell_ids(daemon)
    assert sources(client) == sources(fresh)
    assert first not in nb.cell_ids(client) and len(nb.cell_ids(client)) == 5 + 1 + 6 - 1


def test_version_moves_with_heads(pair):
    daemon, client, link = pair
    version = client.version
    link.sync()  # already in sync: nothing moves
    assert client.version == version
    nb.add_cell(daemon, "a")
    link.sync()
    assert client.version > version


def test_load_snapshot_plus_incremental_changes(daemon):
    a = nb.add_cell(daemon, "first")
    nb.set_metadata_value(daemon, "kernelspec", {"name": "python3"})
    snapshot, saved_heads = daemon.save(), daemon.heads
    nb.set_source(daemon, a, "first, edited ü")
    b = nb.add_cell(daemon, "second", "markdown")
    nb.set_metadata_value(daemon, "custom", 1)
    nb.delete_cell(daemon, a)
    c = nb.add_cell(daemon, "third", index=0)
    restored = Replica.load(snapshot + b"".join(daemon.changes_since(saved_heads)))
    assert restored.heads == daemon.heads
    assert nb.cell_ids(restored) == [c, b]
    assert nb.read_cells(restored) == nb.read_cells(daemon)
    assert nb.get_metadata(restored) == {"kernelspec": {"name": "python3"}, "custom": 1}
    # snapshot alone is the old state
    old = Replica.load(snapshot)
    assert sources(old) == ["first"]
    # a loaded document keeps syncing with a fresh client
    client = nb.new_replica()
    Link(restored, client).sync()
    assert sources(client) == ["third", "second"]


def test_changes_since_current_heads_is_empty(daemon):
    nb.add_cell(daemon, "x")
    assert daemon.changes_since(daemon.heads) == []
    assert Replica.load(daemon.save() + b"".join(daemon.changes_since(daemon.heads))).heads == daemon.heads


def test_failed_transaction_rolls_back(daemon):
    version = daemon.version
    with pytest.raises(RuntimeError):
        with daemon.change() as tx:
            tx.put(ROOT, "junk", nb.Str, "x")
            raise RuntimeError("boom")
    assert daemon.get(ROOT, "junk") is None
    assert daemon.version == version


# --- runtime-state document -------------------------------------------------------------------------


@pytest.fixture
def state():
    """(writer on the daemon's replica, client replica, link)."""
    daemon = Replica()
    writer = rs.RuntimeStateWriter(daemon)
    client = Replica()
    return writer, client, Link(daemon, client)


def test_client_reads_defaults_before_and_after_first_sync(state):
    writer, client, link = state
    assert rs.read_kernel(client) == {"lifecycle": "not_started"}
    assert rs.queued_ids(client) == []
    assert rs.read_execution(client, "exec-1") is None
    link.sync()
    kernel = rs.read_kernel(client)
    assert kernel["lifecycle"] == "not_started"
    assert kernel["error"] is None and kernel["env_source"] is None


def test_read_kernel_round_trip(state):
    writer, client, link = state
    writer.set_kernel(lifecycle="running", activity="busy", kernel_type="python",
                      env_source="uv:prewarmed", progress=0.5)
    link.sync()
    assert rs.read_kernel(client) == {
        "lifecycle": "running",
        "activity": "busy",
        "error": None,
        "kernel_type": "python",
        "env_source": "uv:prewarmed",
        "progress": 0.5,
        "connection_file": None,
    }
    writer.set_kernel(lifecycle="error", error="kernel died", activity=None)
    link.sync()
    kernel = rs.read_kernel(client)
    assert (kernel["lifecycle"], kernel["error"], kernel["activity"]) == ("error", "kernel died", None)


def test_add_and_update_execution_round_trip(state):
    writer, client, link = state
    writer.add_execution("exec-1", "cell-1", "print('hi ü')")
    link.sync()
    expected = {
        "execution_id": "exec-1",
        "cell_id": "cell-1",
        "status": "queued",
        "source": "print('hi ü')",
        "execution_count": None,
        "success": None,
        "error": None,
        "outputs": [],
    }
    ex = rs.read_execution(client, "exec-1")
    assert {key: ex.get(key, "<missing>") for key in expected} == expected
    writer.update_execution("exec-1", status="running", execution_count=1)
    link.sync()
    ex = rs.read_execution(client, "exec-1")
    assert (ex["status"], ex["execution_count"]) == ("running", 1)
    writer.update_execution("exec-1", status="done", success=True)
    link.sync()
    ex = rs.read_execution(client, "exec-1")
    assert (ex["status"], ex["success"], ex["execution_count"]) == ("done", True, 1)
    writer.add_execution("exec-2", "cell-2", "1/0")
    writer.update_execution("exec-2", status="error", success=False, error="ZeroDivisionError")
    link.sync()
    ex = rs.read_execution(client, "exec-2")
    assert (ex["status"], ex["success"], ex["error"]) == ("error", False, "ZeroDivisionError")


def test_queue_order_survives_out_of_order_departures(state):
    writer, client, link = state
    ids = [f"exec-{i}" for i in range(6)]
    for eid in ids:
        writer.add_execution(eid, "cell-" + eid, "pass")
    link.sync()
    assert rs.queued_ids(client) == ids
    writer.update_execution("exec-3", status="running")  # leaves from the middle
    writer.update_execution("exec-0", status="running")  # from the front
    writer.update_execution("exec-5", status="error")  # from the back
    writer.update_execution("exec-1", execution_count=7)  # no status change: stays queued
    writer.update_execution("exec-2", status="queued")  # still queued
    link.sync()
    assert rs.queued_ids(client) == ["exec-1", "exec-2", "exec-4"]
    writer.add_execution("exec-6", "cell-6", "pass")
    writer.update_execution("exec-2", status="running")
    writer.update_execution("exec-3", status="done")  # already left: no double removal
    link.sync()
    assert rs.queued_ids(client) == ["exec-1", "exec-4", "exec-6"]
    assert rs.queued_ids(writer.replica) == ["exec-1", "exec-4", "exec-6"]


def _stream(writer, eid, index, name, *texts):
    from runtimed.outputs import StreamChunks

    writer.append_output(eid, index, {"output_type": "stream", "name": name})
    chunks = StreamChunks()
    for text in texts:
        chunks.append(text)
        writer.write_stream(eid, index, chunks.commit())
    return chunks


def test_outputs_appended_streamed_replaced_and_cleared(state):
    writer, client, link = state
    writer.add_execution("e", "cell-1", "code")
    _stream(writer, "e", 0, "stdout", "hello", " world\n", "\rHELLO")
    display = {"output_type": "display_data", "data": {"text/plain": "1"}, "metadata": {},
               "transient": {"display_id": "d"}}
    writer.append_output("e", 1, display)
    _stream(writer, "e", 2, "stderr", "warn")
    link.sync()
    outputs = rs.read_execution(client, "e")["outputs"]
    assert outputs == [
        {"output_type": "stream", "name": "stdout", "text": "hello world\nHELLO"},
        display,
        {"output_type": "stream", "name": "stderr", "text": "warn"},
    ]
    updated = {**display, "data": {"text/plain": "2"}}
    writer.replace_output("e", 1, updated)
    link.sync()
    assert rs.read_execution(client, "e")["outputs"][1] == updated
    error = {"output_type": "error", "ename": "E", "evalue": "v", "traceback": ["t"]}
    writer.append_output("e", 3, error)
    link.sync()
    assert rs.read_execution(client, "e")["outputs"][3] == error
    writer.clear_outputs("e")
    link.sync()
    assert rs.read_execution(client, "e")["outputs"] == []
    writer.clear_outputs("e")  # clearing nothing is fine
    _stream(writer, "e", 0, "stdout", "again")
    link.sync()
    assert rs.read_execution(client, "e")["outputs"] == [
        {"output_type": "stream", "name": "stdout", "text": "again"}
    ]


def test_stream_chunks_with_carriage_returns_reach_the_client(state):
    writer, client, link = state
    writer.add_execution("e", "cell-1", "code")
    chunks = _stream(writer, "e", 0, "stdout", "step 1\r", "step 2\r", "step 3 😀\n", "done")
    link.sync()
    assert rs.read_execution(client, "e")["outputs"][0]["text"] == "step 3 😀\ndone"
    # a long stream is a handful of chunks, not one operation per character
    for i in range(2000):
        chunks.append(f"line {i}\n")
    writer.write_stream("e", 0, chunks.commit())
    link.sync()
    text = rs.read_execution(client, "e")["outputs"][0]["text"]
    assert text.endswith("line 1999\n") and text.count("\n") == 2001
    assert len(chunks.chunks) <= 4


def test_outputs_of_different_executions_are_separate(state):
    writer, client, link = state
    writer.add_execution("a", "cell-1", "x")
    writer.add_execution("b", "cell-2", "y")
    _stream(writer, "a", 0, "stdout", "A")
    _stream(writer, "b", 0, "stdout", "B")
    writer.clear_outputs("a")
    link.sync()
    assert rs.read_execution(client, "a")["outputs"] == []
    assert rs.read_execution(client, "b")["outputs"][0]["text"] == "B"


def test_forget_execution(state):
    writer, client, link = state
    writer.add_execution("old", "cell-1", "x")
    writer.add_execution("queued", "cell-2", "y")
    writer.update_execution("old", status="done")
    writer.forget_execution("old")
    writer.forget_execution("queued")  # still queued: kept
    link.sync()
    assert rs.read_execution(client, "old") is None
    assert rs.read_execution(client, "queued")["status"] == "queued"
    assert rs.queued_ids(client) == ["queued"]
