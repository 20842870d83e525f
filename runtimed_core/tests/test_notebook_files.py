"""Notebook files through a real daemon and real kernels, as a user works with them."""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from nbformat import v4

import runtimed
from runtimed.pytest_plugin import DaemonProcess
from runtimed.testing import wait_until

pytestmark = pytest.mark.slow

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256))).decode()


def lab_notebook() -> nbformat.NotebookNode:
    """A notebook as JupyterLab writes one: text, an image, HTML, an error, markdown, raw."""
    nb = v4.new_notebook()
    nb.metadata.update({"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                        "a_tool_of_someone_else": {"keep": [1, 2.5, None]}})
    nb.cells = [
        v4.new_markdown_cell("# Analysis\n\nWith $e^{i\\pi} = -1$."),
        v4.new_code_cell("print('hello')", execution_count=1,
                         outputs=[v4.new_output("stream", name="stdout", text="hello\n")]),
        v4.new_code_cell(
            "import base64\nfrom IPython.display import HTML, Image, display\n"
            f"display(Image(data=base64.b64decode('{PNG}')))\n"
            "display(HTML('<table><tr><td>1</td></tr></table>'))",
            execution_count=2, outputs=[
                v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Image>"}),
                v4.new_output("display_data", data={"text/html": "<table><tr><td>1</td></tr></table>",
                                                    "text/plain": "<HTML>"})]),
        v4.new_code_cell("1/0", execution_count=3, metadata={"tags": ["raises-exception"]}, outputs=[
            v4.new_output("error", ename="ZeroDivisionError", evalue="division by zero",
                          traceback=["ZeroDivisionError: division by zero"])]),
        v4.new_raw_cell("raw, kept as it is\n"),
        v4.new_code_cell("6 * 7", execution_count=4, outputs=[
            v4.new_output("execute_result", data={"text/plain": "42"}, execution_count=4)]),
    ]
    return nb


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A daemon that autosaves quickly (0.3 s), with a hot kernel."""
    process = DaemonProcess(tmp_path_factory.mktemp("files-daemon"), pool_sizes={"uv": 1},
                            env={"RUNTIMED_AUTOSAVE_SECS": "0.3"}).start()
    try:
        yield process
    finally:
        process.stop()


def session(daemon: DaemonProcess, path: Path | str | None = None, **kw) -> runtimed.Session:
    s = runtimed.Session(path=path, socket_path=daemon.socket_path, **kw)
    s.connect()
    return s


def written(path: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(path, 4)
    nbformat.validate(nb)
    return nb


def test_a_lab_notebook_opens_runs_saves_and_reopens(daemon, tmp_path):
    path = tmp_path / "analysis.ipynb"
    nbformat.write(lab_notebook(), path)
    original = path.read_bytes()
    with session(daemon, path) as s:
        assert s.path == s.notebook_id == str(path)
        cells = s.get_cells()
        assert [c.cell_type for c in cells] == ["markdown", "code", "code", "code", "raw", "code"]
        assert cells[1].outputs[0].text == "hello\n" and cells[1].execution_count == 1
        assert cells[2].outputs[0].data["image/png"] == PNG, "byte-exact from the file"
        assert cells[3].outputs[0].ename == "ZeroDivisionError"
        assert cells[3].metadata == {"tags": ["raises-exception"]}
        assert json.loads(s.get_metadata("a_tool_of_someone_else")) == {"keep": [1, 2.5, None]}
        assert s.save() == str(path)
        assert path.read_bytes() == original, "opened and saved unchanged: byte-identical"

        results = s.run_all()
        assert [r.success for r in results] == [True, True, False, True]  # raises-exception goes on
        assert results[0].stdout == "hello\n" and results[3].outputs[0].data["text/plain"] == "42"
        assert s.save() == str(path)
        nb = written(path)
        assert nb.metadata["a_tool_of_someone_else"] == {"keep": [1, 2.5, None]}
        assert [c.get("execution_count") for c in nb.cells if c.cell_type == "code"] == [1, 2, 3, 4]
        assert nb.cells[2].outputs[0]["data"]["image/png"] == PNG
        assert "<table>" in nb.cells[2].outputs[1]["data"]["text/html"]
        assert nb.cells[3].outputs[0]["ename"] == "ZeroDivisionError"
        assert nb.cells[4].source == "raw, kept as it is\n"
    # reopened by its notebook id, in a second session, every output is there
    with session(daemon, notebook_id=str(path)) as again:
        outputs = [[o.output_type for o in c.outputs] for c in again.get_cells()]
        assert outputs == [[], ["stream"], ["display_data", "display_data"], ["error"], [],
                           ["execute_result"]]
    rooms = {r["notebook_id"]: r for r in daemon.client().list_rooms()}
    assert rooms[str(path)]["path"] == str(path)


def test_run_all_stops_at_the_first_error_and_follows_the_tags(daemon, tmp_path):
    path = tmp_path / "tags.ipynb"
    nb = v4.new_notebook()
    nb.cells = [v4.new_code_cell("x = 1"), v4.new_code_cell("   "),
                v4.new_code_cell("x = 100", metadata={"tags": ["skip-execution"]}),
                v4.new_code_cell("raise ValueError('stop')"), v4.new_code_cell("x = 2")]
    nbformat.write(nb, path)
    with session(daemon, path) as s:
        results = s.run_all()
        assert len(results) == 2 and results[-1].error.ename == "ValueError"
        assert s.run("print(x)").stdout == "1\n", "skip-execution and the cells after the error did not run"
        results = s.run_all(allow_errors=True)  # the print(x) cell run() added runs last
        assert len(results) == 4 and results[-1].stdout == "2\n"
        s.set_source(s.get_cells()[0].id, "import time; time.sleep(30)")
        with pytest.raises(runtimed.ExecutionTimeout):
            s.run_all(timeout_secs=1)
        s.interrupt()
        started = time.monotonic()
        results = s.run_all(timeout_secs=1, interrupt_on_timeout=True)
        assert time.monotonic() - started < 15
        assert len(results) == 1 and results[0].error.ename == "KeyboardInterrupt"


def test_two_sessions_and_an_editor_share_one_file(daemon, tmp_path):
    path = tmp_path / "shared.ipynb"
    nb = v4.new_notebook()
    nb.cells = [v4.new_code_cell("a = 1"), v4.new_markdown_cell("notes")]
    nbformat.write(nb, path)
    a, b = session(daemon, path), session(daemon, notebook_id=str(path))
    try:
        first = a.get_cells()[0].id
        a.set_source(first, "a = 2")
        wait_until(lambda: b.get_cells()[0].source == "a = 2", "B to see A's edit")
        wait_until(lambda: written(path).cells[0].source == "a = 2", "autosave of the edit")
        edited = written(path)  # another program edits the file
        edited.cells[1].source = "notes, edited in an editor"
        edited.cells.append(v4.new_code_cell("added = True"))
        nbformat.write(edited, path)
        for s in (a, b):
            wait_until(lambda s=s: [c.source for c in s.get_cells()][1:] ==
                       ["notes, edited in an editor", "added = True"], "the outside edit", timeout=1.5)
        assert a.get_cells()[0].source == "a = 2"
    finally:
        a.close()
        b.close()


def test_an_outside_edit_merges_with_unsaved_changes_and_keeps_a_copy(tmp_path, runtimed_daemon_factory,
                                                                      caplog):
    daemon = runtimed_daemon_factory(tmp_path / "d", pool_sizes={"uv": 0}, hot_kernels=0,
                                     env={"RUNTIMED_AUTOSAVE_SECS": "0"})  # nothing saves by itself
    path = tmp_path / "both.ipynb"
    nb = v4.new_notebook()
    nb.cells = [v4.new_code_cell("value = 1\nshown = value")]
    nbformat.write(nb, path)
    s = session(daemon, path)
    try:
        cell = s.get_cells()[0].id
        s.set_source(cell, "value = 10\nshown = value")  # unsaved, in the room
        s.clear_outputs()  # a request: answered once the daemon has the edit
        outside = written(path)
        outside.cells[0].source = "value = 1\nshown = value  # checked"
        with caplog.at_level(logging.WARNING, logger="runtimed.client"):
            nbformat.write(outside, path)
            wait_until(lambda: "# checked" in s.get_cells()[0].source, "the merge")
            wait_until(lambda: any("unsaved version" in r.getMessage() for r in caplog.records),
                       "the notice")
        assert s.get_cells()[0].source == "value = 10\nshown = value  # checked", "both edits kept"
        [copy] = (daemon.state_dir / "conflicts").glob("both-*.ipynb")
        assert written(copy).cells[0].source == "value = 10\nshown = value", "the room's version, aside"
        assert str(copy) in caplog.text
        s.save()
        assert written(path).cells[0].source == "value = 10\nshown = value  # checked"
    finally:
        s.close()


def test_a_deleted_file_stops_autosave_until_save(daemon, tmp_path, caplog):
    path = tmp_path / "gone.ipynb"
    s = session(daemon, path)  # a missing file is created
    try:
        assert written(path).cells == []
        with caplog.at_level(logging.WARNING, logger="runtimed.client"):
            path.unlink()
            wait_until(lambda: "deleted or renamed" in caplog.text, "the notice")
        s.create_cell("after = 'deletion'")
        time.sleep(1.0)  # three autosave periods: none may bring the file back
        assert not path.exists()
        s.save()
        assert written(path).cells[0].source == "after = 'deletion'"
    finally:
        s.close()


@pytest.mark.parametrize("content, problem", [
    ("{not json", "is not valid JSON"),
    ('{"cells": []}', "is not a Jupyter notebook"),
    ('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "code", "id": "a", '
     '"source": "", "metadata": {}, "outputs": [{"output_type": "weird"}], "execution_count": null}]}',
     "is not a valid notebook"),
    ('{"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [{"cell_type": "nope"}]}',
     "is not a notebook nbformat can read: The notebook is invalid"),
])
def test_bad_files_are_refused_naming_path_and_problem(daemon, tmp_path, content, problem):
    path = tmp_path / "bad.ipynb"
    path.write_text(content)
    with pytest.raises(runtimed.NotebookFileError, match=problem) as excinfo:
        session(daemon, path)
    assert excinfo.value.path == str(path) and path.read_text() == content, "never touched"
    with pytest.raises(runtimed.NotebookFileError, match="is a directory"):
        session(daemon, tmp_path)
    with pytest.raises(runtimed.NotebookFileError, match="does not exist"):
        session(daemon, tmp_path / "no" / "such" / "dir.ipynb")
    with session(daemon) as fine:  # the daemon keeps serving
        assert fine.run("1 + 1").outputs[0].data["text/plain"] == "2"


def test_cell_operations_reach_the_file(daemon, tmp_path):
    path = tmp_path / "ops.ipynb"
    with session(daemon, path) as s:
        ids = [s.create_cell(f"n = {i}") for i in range(3)]
        s.move_cell(ids[2], 0)
        s.set_cell_metadata(ids[0], "tags", '["parameters"]')
        s.run_all()
        s.clear_outputs(ids[1])
        assert [c.id for c in s.get_cells()] == [ids[2], ids[0], ids[1]]
        assert s.get_cell(ids[1]).execution_count is None and s.get_cell(ids[0]).execution_count
        s.save()
        nb = written(path)
        assert [c.source for c in nb.cells] == ["n = 2", "n = 0", "n = 1"]
        assert nb.cells[1].metadata == {"tags": ["parameters"]}
        assert nb.cells[2].execution_count is None
        s.run("print('out')")
        s.clear_outputs()
        s.save()
        assert all(not c.outputs and c.execution_count is None for c in written(path).cells)
        copy = tmp_path / "copy.ipynb"
        assert s.save(copy) == str(copy) and s.path == str(copy)
        s.create_cell("only_in_the_copy = 1")
        wait_until(lambda: len(written(copy).cells) == 5, "autosave into the copy")
        assert len(written(path).cells) == 4, "the original file is left as it was"


def test_kernels_start_next_to_the_file_from_its_kernelspec(daemon, tmp_path):
    folder = tmp_path / "project"
    folder.mkdir()
    (folder / "helper_module.py").write_text("WHERE = 'next to the notebook'\n")
    path = folder / "analysis.ipynb"
    nbformat.write(lab_notebook(), path)
    with session(daemon, path) as s:
        s.start_kernel()
        r = s.run("import os, helper_module\nprint(os.getcwd())\nprint(helper_module.WHERE)")
        assert r.stdout == f"{folder}\nnext to the notebook\n" and s.env_source == "uv:prewarmed"


def test_a_restarted_daemon_reopens_the_file_and_merges_what_changed(tmp_path, runtimed_daemon_factory):
    root = tmp_path / "d"
    daemon = runtimed_daemon_factory(root, pool_sizes={"uv": 0}, hot_kernels=0)
    path = tmp_path / "kept.ipynb"
    s = session(daemon, path)
    cell = s.create_cell("kept = 1")
    s.save()
    daemon.stop()
    outside = written(path)
    outside.cells.append(v4.new_markdown_cell("added while the daemon was down"))
    nbformat.write(outside, path)
    daemon.start()
    s.set_source(cell, "kept = 2")  # edited offline; the next request reconnects
    s.save()
    assert [c.source for c in s.get_cells()] == ["kept = 2", "added while the daemon was down"]
    assert [c.id for c in s.get_cells()][0] == cell, "one history: the room's persisted document"
    assert [c.source for c in written(path).cells] == ["kept = 2", "added while the daemon was down"]
    s.close()


def test_saves_are_never_half_written_even_when_killed(tmp_path, runtimed_daemon_factory):
    """SIGKILL the daemon and its nbformat process in the middle of saves of a large notebook,
    many times (half of them the moment a write's temporary file appears): the file is always
    a whole notebook, the old one or the new one."""
    path = tmp_path / "large.ipynb"
    nb = v4.new_notebook()
    nb.cells = [v4.new_code_cell(f"x = {i}", outputs=[v4.new_output("stream", name="stdout",
                                                                    text="y" * 20000)])
                for i in range(200)]  # about 4 MB
    nbformat.write(nb, path)
    daemon = runtimed_daemon_factory(tmp_path / "d", pool_sizes={"uv": 0}, hot_kernels=0,
                                     env={"RUNTIMED_AUTOSAVE_SECS": "0.01"})
    rng = random.Random(7)
    cut_short = 0
    for round_ in range(10):
        s = session(daemon, path)
        workers = _children(daemon.process.pid, "runtimed.formats.nbfile")  # it read the file
        for i in range(5):  # autosave writes while the cells change
            s.set_source(s.get_cells()[i].id, f"x = {round_}-{i}")
        if round_ % 2:
            time.sleep(rng.uniform(0.0, 0.4))  # anywhere in a save
        else:  # inside a write: its temporary file is there
            deadline = time.monotonic() + 10
            while not any(n.endswith(".tmp") for n in os.listdir(tmp_path)) and time.monotonic() < deadline:
                pass
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):  # it may have just exited
                os.kill(pid, signal.SIGKILL)
        daemon.kill()
        assert len(written(path).cells) == 200, f"round {round_}: the file is whole"
        cut_short += bool(list(tmp_path.glob(".large.ipynb.*.tmp")))
        s.close()
        daemon.start()
    session(daemon, path).close()
    assert cut_short >= 3, f"only {cut_short} of 10 kills landed inside a write"
    assert not list(tmp_path.glob(".large.ipynb.*.tmp")), "temporary files are cleaned up"


def _children(parent: int, text: str) -> list[int]:
    """The processes of ``parent`` whose command line holds ``text`` (other daemons' are not)."""
    found = []
    for pid in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if text in cmdline and ppid == parent:
            found.append(int(pid))
    return found


EXAMPLE = Path(__file__).parents[2] / "examples" / "squares.ipynb"


def _execute(daemon: DaemonProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtimed", "execute", *args,
                           "--socket", str(daemon.socket_path)], capture_output=True, text=True,
                          timeout=120)


def test_execute_runs_a_notebook_papermill_style(daemon, tmp_path):
    before = EXAMPLE.read_bytes()
    out = tmp_path / "out.ipynb"
    done = _execute(daemon, str(EXAMPLE), "-o", str(out), "-p", "n", "5")
    assert done.returncode == 0, done.stderr
    assert EXAMPLE.read_bytes() == before, "the input is left as it is"
    nb = written(out)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert [c.source for c in injected] == ["# Parameters\nn = 5\n"]
    assert nb.cells.index(injected[0]) == 2, "right after the cell tagged parameters"
    assert nb.cells[3].outputs[0]["text"] == "[0, 1, 4, 9, 16]\n"
    assert nb.cells[4].outputs[0]["data"]["text/plain"] == "30"
    again = _execute(daemon, str(out), "--inplace", "-p", "n", "2")  # re-run the output: one injected cell
    assert again.returncode == 0, again.stderr
    nb = written(out)
    assert [c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])] == [
        "# Parameters\nn = 2\n"]
    assert nb.cells[4].outputs[0]["data"]["text/plain"] == "1"


def test_execute_fails_naming_the_cell_and_still_writes(daemon, tmp_path):
    source = tmp_path / "failing.ipynb"
    nb = v4.new_notebook()
    nb.cells = [v4.new_code_cell("x = 1"), v4.new_code_cell("raise RuntimeError('no data')"),
                v4.new_code_cell("never = True")]
    nbformat.write(nb, source)
    out = tmp_path / "out.ipynb"
    failed = _execute(daemon, str(source), "-o", str(out))
    assert failed.returncode == 1
    assert f"cell {nb.cells[1].id} failed: RuntimeError: no data" in failed.stderr
    written_nb = written(out)
    assert written_nb.cells[1].outputs[0]["ename"] == "RuntimeError"
    assert written_nb.cells[2].outputs == [], "the run stopped at the error"
    allowed = _execute(daemon, str(source), "-o", str(out), "--allow-errors")
    assert allowed.returncode == 0 and written(out).cells[2].execution_count is not None
    usage = _execute(daemon, str(source))
    assert usage.returncode == 1 and usage.stderr.strip().splitlines() == [
        "runtimed: error: Give -o OUT.ipynb (where the executed notebook goes) or --inplace"]


def test_a_file_that_cannot_be_written_keeps_the_room_and_says_why(daemon, tmp_path, caplog):
    path = tmp_path / "locked.ipynb"
    with session(daemon, path) as s:
        s.create_cell("kept = 'in the room'")
        s.save()
        before = path.read_bytes()
        subprocess.run(["chattr", "+i", str(path)], check=True)  # not even root may replace it
        try:
            with caplog.at_level(logging.WARNING, logger="runtimed.client"):
                s.create_cell("more = 1")
                wait_until(lambda: "permission denied" in caplog.text, "the failed autosave's notice")
            with pytest.raises(runtimed.NotebookFileError, match="permission denied") as excinfo:
                s.save()
            assert excinfo.value.path == str(path) and path.read_bytes() == before
            with pytest.raises(runtimed.NotebookFileError, match="permission denied"):
                s.save("/sys/no-notebooks-here.ipynb")
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        assert [c.source for c in s.get_cells()] == ["kept = 'in the room'", "more = 1"]
        s.save()
        assert len(written(path).cells) == 2


def test_a_50_mb_notebook_opens_and_saves(daemon, tmp_path):
    path = tmp_path / "huge.ipynb"
    nb = v4.new_notebook()
    blob = base64.b64encode(os.urandom(500_000)).decode()  # ~0.67 MB of base64 per image
    nb.cells = [v4.new_code_cell(f"show({i})", execution_count=i + 1, outputs=[
        v4.new_output("display_data", data={"image/png": blob, "text/plain": f"<image {i}>"})])
        for i in range(75)]
    nbformat.write(nb, path)
    assert path.stat().st_size > 50_000_000
    with session(daemon, path) as s:
        cells = s.get_cells()
        assert len(cells) == 75 and cells[74].outputs[0].data["image/png"] == blob
        s.set_source(cells[0].id, "show('first')")
        s.save()
    again = written(path)
    assert again.cells[0].source == "show('first')" and again.cells[74].outputs[0].data["image/png"] == blob


def test_save_as_never_puts_two_live_rooms_on_one_file(daemon, tmp_path):
    taken = tmp_path / "taken.ipynb"
    with session(daemon, taken) as owner, session(daemon) as other:
        other.create_cell("mine = 1")
        with pytest.raises(runtimed.InvalidRequest, match="open in another session's room"):
            other.save(taken)
        owner.create_cell("theirs = 1")
        owner.save()
        assert [c.source for c in written(taken).cells] == ["theirs = 1"]
