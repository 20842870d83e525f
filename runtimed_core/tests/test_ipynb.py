"""``.ipynb`` to and from the documents, and nbformat's side (the child process's functions),
without a daemon."""

from __future__ import annotations

import base64
import json
import os

import nbformat
import pytest
from nbformat import v4

from runtimed.document import notebook
from runtimed.document.replica import Replica
from runtimed.document.runtime_state import RuntimeStateWriter
from runtimed.formats import ipynb, nbfile

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4).decode()


def rich_notebook() -> nbformat.NotebookNode:
    """What JupyterLab writes: every cell type and output type, unknown metadata, attachments."""
    nb = v4.new_notebook()
    nb.metadata.update({
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python", "version": "3.11.7"},
        "some_tool": {"nested": [1, 2.5, None, True, "x"], "empty": {}},
    })
    nb.cells = [
        v4.new_markdown_cell("# Title\n\nSome $x^2$ maths.", attachments={
            "dot.png": {"image/png": PNG}}),
        v4.new_code_cell("print('hello')\nimport sys\nprint('oops', file=sys.stderr)",
                         execution_count=1, metadata={"tags": ["parameters"], "collapsed": False},
                         outputs=[v4.new_output("stream", name="stdout", text="hello\n"),
                                  v4.new_output("stream", name="stderr", text="oops\n")]),
        v4.new_code_cell("display(table)", execution_count=2, outputs=[
            v4.new_output("display_data", data={"text/html": "<table><tr><td>1</td></tr></table>",
                                                "text/plain": "table"}, metadata={"isolated": True}),
            v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"},
                          metadata={"image/png": {"width": 10}}),
            v4.new_output("execute_result", data={"text/plain": "42"}, execution_count=2),
        ]),
        v4.new_code_cell("1/0", execution_count=3, outputs=[v4.new_output(
            "error", ename="ZeroDivisionError", evalue="division by zero",
            traceback=["\x1b[0;31mZeroDivisionError\x1b[0m: division by zero"])]),
        v4.new_raw_cell("raw text\n", metadata={"format": "text/restructuredtext"}),
        v4.new_code_cell("", execution_count=None),
    ]
    return nb


def documents(nb: dict) -> tuple[Replica, RuntimeStateWriter]:
    doc, writer = notebook.new_replica(), RuntimeStateWriter(Replica())
    ipynb.fill_documents(doc, writer, nb)
    return doc, writer


def test_a_notebook_round_trips_through_the_documents():
    nb = json.loads(json.dumps(rich_notebook()))
    doc, writer = documents(nb)
    assert ipynb.to_notebook(doc, writer.replica) == nb
    cells = notebook.read_cells(doc)
    assert [c.cell_type for c in cells] == ["markdown", "code", "code", "code", "raw", "code"]
    assert cells[1].metadata == {"tags": ["parameters"], "collapsed": False}
    assert cells[0].attachments == {"dot.png": {"image/png": PNG}}


def test_nbformat_write_of_the_documents_is_byte_identical(tmp_path):
    path = tmp_path / "rich.ipynb"
    nbformat.write(rich_notebook(), path)
    loaded = nbfile.read(path)
    doc, writer = documents(json.loads(json.dumps(loaded["nb"])))
    assert nbfile.render(ipynb.to_notebook(doc, writer.replica)) == path.read_bytes()
    assert loaded["had_ids"] and loaded["version"] == [4, 5]
    assert loaded["fingerprint"]["size"] == path.stat().st_size


def test_older_files_are_upgraded_and_get_ids(tmp_path):
    path = tmp_path / "old.ipynb"
    nb = rich_notebook()
    nb.nbformat_minor = 4
    for cell in nb.cells:
        del cell["id"]
    path.write_text(json.dumps(nb))
    loaded = nbfile.read(path)
    assert not loaded["had_ids"] and loaded["version"] == [4, 4]
    ids = [c["id"] for c in loaded["nb"]["cells"]]
    assert len(set(ids)) == len(ids) == 6 and loaded["nb"]["nbformat_minor"] == 5
    base = [{"id": f"b{i}", "cell_type": c.cell_type, "source": c.source} for i, c in enumerate(nb.cells)]
    again = nbfile.read(path)["nb"]["cells"]
    again[2]["source"] = "display(other)"  # one changed cell still matches by position
    ipynb.align_ids(base, again)
    assert [c["id"] for c in again] == [f"b{i}" for i in range(6)]


@pytest.mark.parametrize("content, kind, says", [
    (b"{bad json", "json", "is not valid JSON"),
    (b"\xff\xfe\x00junk", "encoding", "is not UTF-8"),
    (b"[1, 2]", "notebook", "is not a Jupyter notebook"),
    (b'{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "code", '
     b'"id": "a", "source": "", "metadata": {}, "outputs": [{"output_type": "weird"}], '
     b'"execution_count": null}]}', "invalid", "is not a valid notebook"),
    (b'{"nbformat": 99, "cells": []}', "notebook", "not a notebook nbformat can read"),
])
def test_files_that_are_not_notebooks_are_named_with_the_problem(tmp_path, content, kind, says):
    path = tmp_path / "broken.ipynb"
    path.write_bytes(content)
    with pytest.raises(nbfile.FileProblem) as excinfo:
        nbfile.read(path)
    assert excinfo.value.kind == kind
    assert str(path) in excinfo.value.message and says in excinfo.value.message


def test_io_problems(tmp_path):
    with pytest.raises(nbfile.FileProblem, match="no such file") as missing:
        nbfile.read(tmp_path / "none.ipynb")
    assert missing.value.kind == "missing"
    with pytest.raises(nbfile.FileProblem, match="is a directory") as directory:
        nbfile.read(tmp_path)
    assert directory.value.kind == "directory"
    with pytest.raises(nbfile.FileProblem, match="is a directory"):
        nbfile.write(tmp_path, ipynb.new_notebook())
    with pytest.raises(nbfile.FileProblem, match="not valid, not saved"):
        nbfile.write(tmp_path / "x.ipynb", {"nbformat": 4, "nbformat_minor": 5, "cells": "no"})
    assert not (tmp_path / "x.ipynb").exists()


def test_writes_are_atomic_and_keep_the_mode(tmp_path):
    path = tmp_path / "nb.ipynb"
    nbfile.write(path, ipynb.new_notebook())
    os.chmod(path, 0o640)
    nb = json.loads(json.dumps(rich_notebook()))
    found = nbfile.write(path, nb)
    assert path.stat().st_mode & 0o777 == 0o640
    assert nbformat.read(path, 4) == nb and found["size"] == path.stat().st_size
    assert [p.name for p in tmp_path.iterdir()] == ["nb.ipynb"], "no temporary file left"


def test_outside_edits_apply_as_edits_and_merge_with_local_ones():
    nb = json.loads(json.dumps(rich_notebook()))
    doc, writer = documents(nb)
    base = doc.heads
    ids = [c["id"] for c in nb["cells"]]
    # the room edits cell 1 meanwhile
    notebook.set_source(doc, ids[1], "print('hello, room')\nimport sys\nprint('oops', file=sys.stderr)")
    # the file: cell 1 edited elsewhere in its text, cell 3 removed, a new cell, cell 4 moved up
    outside = json.loads(json.dumps(nb))
    outside["cells"][1]["source"] += "\nprint('from the editor')"
    new = v4.new_code_cell("new = 1")
    outside["cells"] = [outside["cells"][i] for i in (0, 4, 1, 2)] + [json.loads(json.dumps(new))]
    outside["metadata"]["some_tool"] = {"changed": True}
    fork = doc.fork_at(base)
    ipynb.apply_notebook(fork, outside)
    assert ipynb.to_notebook(fork, writer.replica)["cells"][4]["source"] == "new = 1"
    doc.merge(fork)
    cells = notebook.read_cells(doc)
    assert [c.id for c in cells] == [ids[0], ids[4], ids[1], ids[2], new["id"]]
    assert cells[2].source == ("print('hello, room')\nimport sys\nprint('oops', file=sys.stderr)"
                               "\nprint('from the editor')"), "both edits are kept"
    assert notebook.get_metadata(doc)["some_tool"] == {"changed": True}
    assert notebook.cell_ids(Replica.load(doc.save())) == [c.id for c in cells], "a fresh replica agrees"


def test_moves_keep_most_positions():
    assert ipynb._increasing(["a", "c", "b", "d"]) in ({0, 1, 3}, {0, 2, 3})
    positions = ipynb._positions(["a1", None, "a0", "a2"])
    assert positions == sorted(positions) and len(set(positions)) == 4
    kept = [new for old, new in zip(["a1", None, "a0", "a2"], positions) if new == old]
    assert len(kept) == 2, "the longest run already in order keeps its keys; the others move"


def test_a_cancelled_request_does_not_stall_the_nbformat_process(tmp_path):
    """A room that closes while its file is being read cancels the read: the next request
    must still get its own reply (not the cancelled one's, not none)."""
    import asyncio

    from runtimed.daemon.nbformat_worker import NbformatWorker

    big = json.loads(json.dumps(rich_notebook()))
    big["cells"] = big["cells"] * 300  # a reply larger than a pipe's buffer
    for i, cell in enumerate(big["cells"]):
        cell["id"] = f"c{i}"
    path = tmp_path / "big.ipynb"
    nbfile.write(path, big)

    async def scenario() -> None:
        worker = NbformatWorker()
        try:
            await worker.read(path)  # started
            for _ in range(3):
                reading = asyncio.ensure_future(worker.read(path))
                await asyncio.sleep(0.01)
                reading.cancel()
            small = tmp_path / "small.ipynb"
            found = await asyncio.wait_for(worker.write(small, ipynb.new_notebook()), 20)
            assert found["size"] == small.stat().st_size
            assert len((await asyncio.wait_for(worker.read(path), 20))["nb"]["cells"]) == 1800
        finally:
            await worker.close()

    asyncio.run(scenario())
