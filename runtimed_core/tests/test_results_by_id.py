"""Results by execution id (kept after the room and the daemon are gone), and the kernel's
completion and inspection."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest

import runtimed
from runtimed.daemon.execution_store import ExecutionStore
from runtimed.errors import ConfigError
from runtimed.pytest_plugin import DaemonProcess
from runtimed.testing import wait_until


def _record(n: int, size: int = 100) -> dict:
    eid = f"exec-{n:08x}-0000-4000-8000-000000000000"
    return {"execution_id": eid, "cell_id": f"c{n}", "status": "done", "success": True,
            "source": "x", "execution_count": n, "error": None, "failure": None,
            "outputs": [{"output_type": "stream", "name": "stdout", "text": "y" * size}]}


def test_store_keeps_records_within_age_and_size(tmp_path: Path):
    async def main() -> None:
        store = ExecutionStore(tmp_path / "executions", max_age=3600, max_bytes=3000)
        await store.start()
        for n in range(1, 4):
            store.keep("nb", _record(n, size=500))
        got = await store.get(_record(2)["execution_id"])  # served while (or after) it is written
        assert got["outputs"][0]["text"] == "y" * 500 and got["notebook_id"] == "nb"
        await store.close()
        # an old one is swept at start; the rest stays
        old = tmp_path / "executions" / f"{_record(1)['execution_id']}.json"
        os.utime(old, (time.time() - 7200, time.time() - 7200))
        store = ExecutionStore(tmp_path / "executions", max_age=3600, max_bytes=3000)
        await store.start()
        with pytest.raises(runtimed.ExecutionNotFound, match="older than"):
            await store.get(_record(1)["execution_id"])
        assert (await store.get(_record(3)["execution_id"]))["execution_count"] == 3
        # beyond the size bound the oldest go first
        for n in range(4, 12):
            store.keep("nb", _record(n, size=500))
            await asyncio.sleep(0.01)  # distinct mtimes
        await store.close()
        store._sweep()
        kept = sorted(p.name for p in (tmp_path / "executions").glob("*.json"))
        assert kept and sum(p.stat().st_size for p in (tmp_path / "executions").glob("*.json")) <= 3000
        assert f"{_record(11)['execution_id']}.json" in kept and f"{_record(3)['execution_id']}.json" not in kept
        with pytest.raises(runtimed.InvalidRequest, match="not an execution id"):
            await store.get("../../etc/passwd")

    asyncio.run(main())


def test_store_bounds_come_from_the_environment(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("RUNTIMED_RESULTS_MAX_AGE_SECS", "60")
    monkeypatch.setenv("RUNTIMED_RESULTS_MAX_BYTES", "1000")
    store = ExecutionStore(tmp_path)
    assert (store.max_age, store.max_bytes) == (60, 1000)
    monkeypatch.setenv("RUNTIMED_RESULTS_MAX_BYTES", "lots")
    with pytest.raises(ConfigError, match="RUNTIMED_RESULTS_MAX_BYTES"):
        ExecutionStore(tmp_path)


@pytest.mark.slow
def test_results_by_id_survive_eviction_and_a_restart(runtimed_daemon_factory, tmp_path):
    root = tmp_path / "d"
    daemon = runtimed_daemon_factory(root, pool_sizes={"uv": 1}, keep_alive_secs=0.5)
    s = daemon.session()
    s.start_kernel()
    done = s.run("import sys; print('kept'); print('warn', file=sys.stderr); 6 * 7")
    assert s.get_result(done.execution_id) == done
    assert daemon.client().get_result(done.execution_id).stdout == "kept\n"
    running = s.queue_cell(s.create_cell("import time\nprint('partial', flush=True)\ntime.sleep(1)\n'end'"))
    wait_until(lambda: s.get_result(running).stdout == "partial\n", "the running cell's first output")
    assert s.get_result(running).status == "running" and not s.get_result(running).success
    wait_until(lambda: s.get_result(running).status == "done", "the cell to end")
    notebook_id = s.notebook_id
    s.__exit__(None, None, None)
    wait_until(lambda: notebook_id not in [r["notebook_id"] for r in daemon.client().list_rooms()],
               "the room's eviction")
    again = daemon.client().get_result(done.execution_id)
    assert (again.stdout, again.stderr, again.display_data[0].data["text/plain"]) == ("kept\n", "warn\n", "42")
    daemon.stop()
    restarted = DaemonProcess(root, pool_sizes={"uv": 1}).start()
    try:
        later = restarted.client().get_result(running)
        assert later.success and later.stdout == "partial\n" and later.display_data[0].data["text/plain"] == "'end'"
        with pytest.raises(runtimed.ExecutionNotFound, match="never ran it"):
            restarted.client().get_result("exec-00000000-0000-4000-8000-000000000000")
        with pytest.raises(runtimed.InvalidRequest, match="not an execution id"):
            restarted.client().get_result("nope")
        assert restarted.client().ping(), "the daemon serves on"
    finally:
        restarted.stop()


@pytest.mark.slow
def test_complete_and_inspect_through_the_kernel(runtimed_session):
    s = runtimed_session
    s.run("alpha_value = 41\nalpha_other = 'x'")
    reply = s.complete("alpha_")
    assert {"alpha_value", "alpha_other"} <= set(reply["matches"])
    assert (reply["cursor_start"], reply["cursor_end"]) == (0, 6)
    reply = s.complete("print(alpha_v)", cursor_pos=len("print(alpha_v"))
    assert reply["matches"] == ["alpha_value"] and reply["cursor_start"] == len("print(")
    bundle = s.inspect("len")
    assert "Return the number of items" in bundle["text/plain"]
    assert s.inspect("no_such_name_anywhere") is None
    assert "41" in s.inspect("alpha_value")["text/plain"]
    with pytest.raises(runtimed.InvalidRequest, match="cursor_pos must be between 0 and 3"):
        s.complete("abc", cursor_pos=10)
    assert s.run("print(alpha_value + 1)").stdout == "42\n", "the kernel is unchanged"


@pytest.mark.slow
def test_a_kept_result_is_one_json_file(runtimed_daemon):
    with runtimed_daemon.session() as s:
        result = s.run("print('on disk')")
        path = Path(runtimed_daemon.state_dir) / "executions" / f"{result.execution_id}.json"
        wait_until(path.exists, "the result on disk")
        entry = json.loads(path.read_text())
        assert entry["notebook_id"] == s.notebook_id
        assert entry["record"]["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "on disk\n"}]
