"""Seed details (repr, auto ids) and Jupyter tools attaching to a runtimed kernel through its
connection file: what they run shows up in the room's runtime state, for every peer."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import runtimed
from runtimed.document.runtime_state import execution_ids, read_execution
from runtimed.testing import wait_until

pytestmark = pytest.mark.slow


def test_repr_and_auto_ids(runtimed_session_factory):
    session = runtimed.Session(notebook_id="x")
    assert repr(session) == "<Session notebook_id='x' disconnected>"
    auto = runtimed.Session().notebook_id
    assert auto.startswith("agent-session-") and uuid.UUID(auto.removeprefix("agent-session-")).version == 4
    assert runtimed.AsyncSession().notebook_id.startswith("agent-session-")
    connected = runtimed_session_factory("repr-x")
    assert repr(connected) == "<Session notebook_id='repr-x' connected>"
    connected.start_kernel()
    assert repr(connected) == "<Session notebook_id='repr-x' connected kernel=python idle>"
    connected.close()
    assert repr(connected) == "<Session notebook_id='repr-x' disconnected>"


@pytest.mark.asyncio
async def test_async_repr_and_connection_file(runtimed_async_session):
    session = runtimed_async_session
    assert re.fullmatch(r"<AsyncSession notebook_id='agent-session-[0-9a-f-]{36}' connected>", repr(session))
    assert await session.connection_file() is None  # no kernel yet
    await session.start_kernel()
    assert repr(session).endswith(" connected kernel=python idle>")
    path = Path(await session.connection_file())
    info = json.loads(path.read_text())
    assert {"shell_port", "iopub_port", "key", "signature_scheme"} <= set(info)
    assert oct(path.stat().st_mode & 0o777) == "0o600", "it holds the kernel's HMAC key"
    await session.shutdown_kernel()
    assert await session.connection_file() is None and not path.exists()


@pytest.mark.asyncio
async def test_a_jupyter_client_attached_with_the_connection_file_shows_in_the_room(
        runtimed_async_session_factory, runtimed_daemon):
    mine = await runtimed_async_session_factory("attach")
    other = await runtimed_async_session_factory("attach")  # another peer of the room
    await mine.start_kernel()
    await mine.run("shared = 41")
    path = await mine.connection_file()
    rooms = json.loads(subprocess.run(
        [sys.executable, "-m", "runtimed", "list-rooms", "--json", "--socket",
         str(runtimed_daemon.socket_path)], capture_output=True, text=True, check=True, timeout=60).stdout)
    assert [r["connection_file"] for r in rooms if r["notebook_id"] == "attach"] == [path]

    # what `jupyter console --existing <path>` does, in a process of its own
    attach = f"""
import json
from jupyter_client import BlockingKernelClient
kc = BlockingKernelClient()
kc.load_connection_file({path!r})
kc.start_channels()
kc.wait_for_ready(30)
reply = kc.execute_interactive("print('from jupyter', shared + 1)", timeout=30, output_hook=print)
kc.stop_channels()
print(json.dumps(reply["content"]))
"""
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", attach],
                                   capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    reply = json.loads(done.stdout.splitlines()[-1])
    assert reply["status"] == "ok" and "from jupyter 42" in done.stdout

    def external(session: runtimed.AsyncSession) -> list[dict]:
        records = [read_execution(session.state, eid) for eid in execution_ids(session.state)]
        return [r for r in records if r and r["origin"] == "external" and r["status"] == "done"]

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not external(other):  # the other peer gets it by sync, as any output
        assert loop.time() < deadline, "the attached client's execution never reached the room"
        await asyncio.sleep(0.05)
    [record] = external(other)
    assert record["source"] == "print('from jupyter', shared + 1)" and record["cell_id"] == ""
    assert record["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "from jupyter 42\n"}]
    assert record["success"] is True and record["execution_count"] == reply["execution_count"]
    # and the room's own cells go on in the same kernel
    assert (await other.run("print(shared)")).stdout == "41\n"


def test_the_sync_connection_file_property(runtimed_session):
    assert runtimed_session.connection_file is None
    runtimed_session.start_kernel()
    path = runtimed_session.connection_file
    assert path is not None and Path(path).is_file()
    wait_until(lambda: Path(path).parent.name.startswith("kernels-"), "the per-daemon directory")
