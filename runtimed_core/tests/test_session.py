"""The seed API end to end: a real daemon, real uv pool envs, real ipykernel."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

import runtimed
from runtimed.testing import wait_until

pytestmark = pytest.mark.slow


def test_quick_start_sync(runtimed_daemon, monkeypatch):
    monkeypatch.setenv("RUNTIMED_SOCKET_PATH", str(runtimed_daemon.socket_path))
    with runtimed.Session() as session:
        session.start_kernel()
        cell_id = session.create_cell("print('hello')")
        result = session.execute_cell(cell_id)
        assert result.stdout == "hello\n"
        assert result.success and result.error is None
        assert session.env_source == "uv:prewarmed"
        assert session.kernel_started and session.is_connected
        notebook_id = session.notebook_id
    rooms = {r["notebook_id"]: r for r in runtimed_daemon.client().list_rooms()}
    assert notebook_id not in rooms or not rooms[notebook_id]["has_kernel"]


def test_quick_start_async(runtimed_daemon):
    async def main():
        async with runtimed.AsyncSession(socket_path=runtimed_daemon.socket_path) as session:
            await session.start_kernel()
            cell_id = await session.create_cell("print('hello async')")
            result = await session.execute_cell(cell_id)
            assert await session.env_source() == "uv:prewarmed"
            assert await session.kernel_started()
            return result.stdout

    assert asyncio.run(main()) == "hello async\n"


def test_results_outputs_and_counts(runtimed_session):
    s = runtimed_session
    s.start_kernel()
    r1 = s.run("x = 42")
    r2 = s.run("import sys\nprint(x)\nprint('warn', file=sys.stderr)\nx + 1")
    assert r2.stdout == "42\n"
    assert r2.stderr == "warn\n"
    assert r2.execution_count == r1.execution_count + 1
    [result] = r2.display_data
    assert result.output_type == "execute_result" and result.data["text/plain"] == "43"
    err = s.run("1/0")
    assert not err.success
    assert err.error.ename == "ZeroDivisionError"
    assert any("ZeroDivisionError" in line for line in err.error.traceback)
    # the kernel keeps working after an error
    assert s.run("print('after')").stdout == "after\n"


def test_document_first_editing(runtimed_session):
    s = runtimed_session
    cid = s.create_cell("x = 10")
    s.set_source(cid, "x = 20")
    md = s.create_cell("# Title", cell_type="markdown")
    result = s.execute_cell(cid)
    assert result.success
    assert s.run("print(x)").stdout == "20\n"
    cell = s.get_cell(cid)
    assert cell.source == "x = 20" and cell.execution_count == result.execution_count
    assert [c.id for c in s.get_cells()][:2] == [cid, md]
    with pytest.raises(runtimed.InvalidRequest, match="markdown"):
        s.execute_cell(md)
    s.delete_cell(md)
    assert md not in [c.id for c in s.get_cells()]
    with pytest.raises(runtimed.CellNotFound, match="Cell not found: nonexistent-cell-id"):
        s.execute_cell("nonexistent-cell-id")
    with pytest.raises(runtimed.RuntimedError, match="Cell not found"):
        s.set_source("nope", "x")


def test_streams_merge_and_carriage_returns(runtimed_session):
    s = runtimed_session
    r = s.run(
        "import sys, time\n"
        "for i in range(3):\n    print(i, flush=True); time.sleep(0.05)\n"
        "print('10%', end='\\r', flush=True); time.sleep(0.05); print('100%')\n"
        "sys.stderr.write('\\x1b[31mred\\x1b[0m\\n')"
    )
    streams = [o for o in r.outputs if o.output_type == "stream"]
    assert [o.name for o in streams] == ["stdout", "stderr"]  # consecutive chunks merged
    assert r.stdout == "0\n1\n2\n100%\n"
    assert r.stderr == "\x1b[31mred\x1b[0m\n"  # ANSI colours kept


def test_clear_output_and_update_display(runtimed_session):
    s = runtimed_session
    r = s.run(
        "from IPython.display import display, clear_output\n"
        "print('gone')\nclear_output()\nprint('kept')\n"
        "h = display({'text/plain': 'v1'}, raw=True, display_id=True)\n"
    )
    assert r.stdout == "kept\n"
    s.run("h.update({'text/plain': 'v2'}, raw=True)")
    cell = s.get_cell(r.cell_id)
    assert [o.data["text/plain"] for o in cell.outputs if o.output_type == "display_data"] == ["v2"]


def test_metadata(runtimed_session):
    s = runtimed_session
    s.set_metadata("runt", json.dumps({"uv": {"dependencies": ["six"]}}))
    assert json.loads(s.get_metadata("runt")) == {"uv": {"dependencies": ["six"]}}
    whole = json.loads(s.get_metadata("notebook_metadata"))
    assert whole["runt"]["uv"]["dependencies"] == ["six"]
    s.set_metadata("notebook_metadata", json.dumps({"language_info": {"name": "python"}}))
    assert json.loads(s.get_metadata("notebook_metadata")) == {"language_info": {"name": "python"}}
    assert s.get_metadata("runt") is None
    with pytest.raises(runtimed.InvalidRequest, match="not valid JSON"):
        s.set_metadata("runt", "{broken")
    with pytest.raises(runtimed.InvalidRequest, match="JSON object"):
        s.set_metadata("notebook_metadata", "[1, 2]")


def test_two_sessions_share_document_and_kernel(runtimed_session_factory, runtimed_daemon):
    s1 = runtimed_session_factory("shared-notebook")
    s1.start_kernel()
    cid = s1.create_cell("x = 42")
    s1.execute_cell(cid)
    s2 = runtimed_session_factory("shared-notebook")
    s2.start_kernel()  # reuses the running kernel
    assert cid in [c.id for c in s2.get_cells()]
    cid2 = s2.create_cell("print(x)")
    assert s2.execute_cell(cid2).stdout == "42\n"
    # s1 sees s2's cell and its outputs, and source edits flow both ways
    deadline = time.monotonic() + 5
    while cid2 not in [c.id for c in s1.get_cells()] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s1.get_cell(cid2).outputs[0].text == "42\n"
    s1.set_source(cid2, "print(x * 2)")
    while s2.get_cell(cid2).source != "print(x * 2)" and time.monotonic() < deadline:
        time.sleep(0.01)
    assert s2.get_cell(cid2).source == "print(x * 2)"
    [room] = [r for r in runtimed_daemon.client().list_rooms() if r["notebook_id"] == "shared-notebook"]
    assert room["active_peers"] == 2
    assert room["has_kernel"] and room["kernel_type"] == "python"
    assert room["env_source"] == "uv:prewarmed"
    assert room["kernel_status"] == "idle"


def test_interrupt_stops_a_long_cell_and_clears_the_queue(runtimed_session):
    s = runtimed_session
    s.start_kernel()
    slow = s.create_cell("import time; time.sleep(60)")
    queued = s.create_cell("print('never')")
    slow_run = s.queue_cell(slow)
    s.queue_cell(queued)
    time.sleep(0.5)
    started = time.monotonic()
    s.interrupt()  # returns once the running cell has ended
    assert time.monotonic() - started < 2
    cell = s.get_cell(slow)
    assert cell.execution_id == slow_run
    [error] = [o for o in cell.outputs if o.output_type == "error"]
    assert error.ename == "KeyboardInterrupt"
    assert s.get_cell(queued).outputs == [] and s.get_cell(queued).execution_count is None
    assert s.run("print('next')").stdout == "next\n"


def test_queue_is_fifo_idempotent_and_stops_on_error(runtimed_session):
    s = runtimed_session
    s.start_kernel()
    a = s.create_cell("import time; time.sleep(0.3); order = ['a']")
    b = s.create_cell("order.append('b'); 1/0")
    c = s.create_cell("order.append('c')")
    first = s.queue_cell(a)
    assert s.queue_cell(a) == first  # re-queue returns the same execution
    s.queue_cell(b)
    queued_c = s.queue_cell(c)
    assert s.execute_cell(a).success
    assert s.execute_cell(b).error.ename == "ZeroDivisionError"
    # c was cancelled by b's error: it never ran
    assert s.get_cell(c).execution_id == queued_c and s.get_cell(c).execution_count is None
    assert s.run("print(order)").stdout == "['a', 'b']\n"
    # executing c again runs it (one by one, cells keep working after an error)
    assert s.execute_cell(c).success
    assert s.run("print(order)").stdout == "['a', 'b', 'c']\n"


def test_execution_timeout(runtimed_session):
    s = runtimed_session
    s.start_kernel()
    cid = s.create_cell("import time; time.sleep(3)")
    with pytest.raises(runtimed.ExecutionTimeout, match="Execution timed out after 0.5 seconds"):
        s.execute_cell(cid, timeout_secs=0.5)
    s.interrupt()


def test_kernel_death_fails_cells_and_sets_error(runtimed_session):
    s = runtimed_session
    s.start_kernel()
    cid = s.create_cell("import os; os._exit(3)")
    with pytest.raises(runtimed.KernelDied, match="died"):
        s.execute_cell(cid)
    status = s.kernel_status()
    assert status["lifecycle"] == "error" and "exit code 3" in status["error"]
    with pytest.raises(runtimed.KernelDied):
        s.run("1")
    s.restart_kernel()
    assert s.run("print('alive')").stdout == "alive\n"


def test_shutdown_then_execute_says_no_kernel(runtimed_session):
    s = runtimed_session
    s.start_kernel()
    s.shutdown_kernel()
    assert not s.kernel_started
    with pytest.raises(runtimed.NoKernel, match="shut down"):
        s.run("1")
    s.start_kernel()
    assert s.run("1 + 1").display_data[0].data["text/plain"] == "2"


def test_restart_clears_state(runtimed_session):
    s = runtimed_session
    s.start_kernel()
    s.run("x = 1")
    s.restart_kernel()
    r = s.run("print('x' in dir())")
    assert r.stdout == "False\n"


def test_execute_starts_a_kernel_when_none_runs(runtimed_session):
    s = runtimed_session
    assert not s.kernel_started
    assert s.run("print('auto')").stdout == "auto\n"
    assert s.kernel_started and s.env_source == "uv:prewarmed"


def test_not_connected_errors(runtimed_daemon):
    s = runtimed_daemon.session()
    with pytest.raises(runtimed.NotConnected, match="Not connected"):
        s.create_cell("x")
    with pytest.raises(runtimed.NotConnected, match="Not connected"):
        s.execute_cell("cell-x")
    assert not s.is_connected


def test_daemon_client(runtimed_daemon):
    client = runtimed_daemon.client()
    assert client.ping() and client.is_running()
    stats = client.status()
    assert set(stats) >= {"uv_available", "uv_warming", "conda_available", "conda_warming"}
    assert stats["conda_available"] == 0 and stats["conda_warming"] == 0
    assert stats["uv_available"] + stats["uv_warming"] >= 1


def test_env_source_without_its_plugin_fails_clearly(runtimed_daemon_factory, tmp_path):
    daemon = runtimed_daemon_factory(tmp_path / "d", pool_sizes={"uv": 1}, hot_kernels=0,
                                     env={"RUNTIMED_DISABLE_PLUGINS": "conda_pool"})
    s = daemon.session()
    for request in ("conda:prewarmed", "auto:conda"):  # never a silent fallback to another family
        with pytest.raises(runtimed.EnvironmentFailed,
                           match=r"needs a pool plugin for the 'conda' family, and none is installed"):
            s.start_kernel(env_source=request)
    with pytest.raises(runtimed.InvalidRequest, match="Unknown env_source 'uv:magic'"):
        s.start_kernel(env_source="uv:magic")
    assert s.kernel_status()["lifecycle"] == "error"
    s.start_kernel(env_source="uv:prewarmed")  # the room recovers
    assert s.env_source == "uv:prewarmed"
    s.__exit__(None, None, None)


def test_hot_kernel_claim_moves_to_the_notebook_directory(runtimed_daemon_factory, tmp_path):
    daemon = runtimed_daemon_factory(tmp_path / "d", pool_sizes={"uv": 1}, hot_kernels=1)
    deadline = time.monotonic() + 120
    while "Hot kernels: 1/1 ready" not in daemon.log():
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.1)
    project = tmp_path / "project"
    project.mkdir()
    (project / "helper_mod.py").write_text("VALUE = 'local import works'\n")
    s = daemon.session()
    s.start_kernel(notebook_path=str(project / "analysis.ipynb"))
    assert "kernel claimed" in daemon.log()
    r = s.run("import os, helper_mod\nprint(os.getcwd())\nprint(helper_mod.VALUE)")
    assert r.stdout == f"{project}\nlocal import works\n"
    assert r.execution_count == 1  # the claim left no trace in history
    assert s.env_source == "uv:prewarmed"
    s2 = daemon.session()  # a second notebook gets its own kernel, never the claimed one
    s2.start_kernel()
    assert s2.run("import os; print(os.getpid())").stdout != s.run("import os; print(os.getpid())").stdout
    s2.__exit__(None, None, None)
    s.__exit__(None, None, None)


def test_runtime_state_is_renewed_without_losing_anything(runtimed_daemon_factory, tmp_path):
    # A tiny history limit: the runtime-state document is started afresh every few runs,
    # also in the middle of a cell's streaming output.
    daemon = runtimed_daemon_factory(tmp_path / "d", pool_sizes={"uv": 1},
                                     env={"RUNTIMED_STATE_HISTORY_LIMIT": "25"})
    a, b = daemon.session("renewed"), daemon.session("renewed")
    a.start_kernel()
    b.connect()
    for i in range(30):
        assert a.run(f"print({i})").stdout == f"{i}\n"
    streamed = a.run("import time\nfor i in range(300):\n    print(i, flush=True)\n    time.sleep(0.002)")
    assert streamed.stdout == "".join(f"{i}\n" for i in range(300))
    assert daemon.log().count("runtime-state document renewed") >= 5
    expected = [f"{i}\n" for i in range(30)] + [streamed.stdout]

    def stdout_of_cells(session) -> list[str]:
        return ["".join(o.text or "" for o in c.outputs) for c in session.get_cells()]

    wait_until(lambda: stdout_of_cells(b) == expected, "B (connected throughout) to see every output")
    late = daemon.session("renewed")
    late.connect()
    assert stdout_of_cells(late) == expected
    assert b.run("6 * 7").outputs[0].data["text/plain"] == "42"
    assert a.kernel_status()["lifecycle"] == "running"
    for s in (a, b, late):
        s.close()
