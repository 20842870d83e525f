"""The execution queue against a fake kernel handle: no process, no sockets, no daemon.

The fake speaks the Jupyter message flow an ipykernel does (busy, execute_input,
outputs, idle, reply) through its own :class:`KernelChannels`, so this also
checks that a kernel whose channels are not ZMQ sockets works end to end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtimed.config import DaemonConfig
from runtimed.daemon.executor import KernelRunner
from runtimed.daemon.kernel import Kernel
from runtimed.daemon.plugin_sinks import PluginSinks
from runtimed.daemon.provisioning import Lease
from runtimed.document.replica import Replica
from runtimed.document.runtime_state import RuntimeStateWriter, read_execution, read_kernel
from runtimed.errors import KernelDied, KernelLaunchFailed
from runtimed.kernel_handles import Deliver, KernelChannels, KernelHandle
from runtimed.launchers import KernelLauncher
from runtimed.sinks import ExecutionContext, OutputSink


class FakeKernel(KernelChannels):
    """A kernel in-process: ``print:<text>`` prints, ``fail`` raises, ``wait`` runs until
    interrupted, anything else returns its length."""

    def __init__(self) -> None:
        self.deliver: Deliver | None = None
        self.count = 0
        self.serial = 0
        self.waiting: dict[str, Any] | None = None
        self.closed = False

    def open(self, deliver: Deliver) -> None:
        self.deliver = deliver

    def close(self) -> None:
        self.closed = True

    def _msg(self, parent: str, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        return {"header": {"msg_type": msg_type}, "parent_header": {"msg_id": parent},
                "metadata": {}, "content": content, "msg_type": msg_type, "buffers": []}

    def _publish(self, parent: str, msg_type: str, content: dict[str, Any], channel: str = "iopub") -> None:
        assert self.deliver is not None
        self.deliver(channel, self._msg(parent, msg_type, content))

    def send(self, channel: str, msg_type: str, content: dict[str, Any]) -> str:
        self.serial += 1
        msg_id = f"fake-{self.serial}"
        asyncio.get_running_loop().call_soon(self._handle, msg_id, msg_type, content)
        return msg_id

    def _handle(self, msg_id: str, msg_type: str, content: dict[str, Any]) -> None:
        if self.closed:
            return
        if msg_type == "kernel_info_request":
            self._publish(msg_id, "status", {"execution_state": "idle"})
            self._publish(msg_id, "kernel_info_reply", {"status": "ok", "language_info": {"name": "fake"}},
                          "shell")
            return
        assert msg_type == "execute_request"
        self.count += 1
        code = content["code"]
        self._publish(msg_id, "status", {"execution_state": "busy"})
        self._publish(msg_id, "execute_input", {"code": code, "execution_count": self.count})
        if code == "wait":
            self.waiting = {"msg_id": msg_id}
            return
        if code == "fail":
            self._error(msg_id, "ValueError", "bad")
            return
        if code.startswith("print:"):
            for line in code[6:].split(","):
                self._publish(msg_id, "stream", {"name": "stdout", "text": line + "\n"})
        else:
            self._publish(msg_id, "execute_result", {"data": {"text/plain": str(len(code))},
                                                     "metadata": {}, "execution_count": self.count})
        self._reply(msg_id, {"status": "ok", "execution_count": self.count})

    def _error(self, msg_id: str, ename: str, evalue: str) -> None:
        error = {"ename": ename, "evalue": evalue, "traceback": [f"{ename}: {evalue}"]}
        self._publish(msg_id, "error", error)
        self._reply(msg_id, {"status": "error", "execution_count": self.count, **error})

    def _reply(self, msg_id: str, content: dict[str, Any]) -> None:
        self._publish(msg_id, "status", {"execution_state": "idle"})
        self._publish(msg_id, "execute_reply", content, "shell")

    def interrupt(self) -> None:
        if self.waiting is not None:
            msg_id, self.waiting = self.waiting["msg_id"], None
            self._error(msg_id, "KeyboardInterrupt", "")


class FakeHandle(KernelHandle):
    """A kernel handle with no process: it lives until :meth:`die` or :meth:`kill`."""

    def __init__(self) -> None:
        self.fake = FakeKernel()
        self.gone: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.cleaned = False

    @property
    def connection_info(self) -> dict[str, Any]:
        return {}

    def channels(self) -> KernelChannels:
        return self.fake

    def is_alive(self) -> bool:
        return not self.gone.done()

    async def wait(self) -> int | None:
        return await asyncio.shield(self.gone)

    async def interrupt(self) -> None:
        self.fake.interrupt()

    async def kill(self) -> None:
        self.die(-9)

    def die(self, code: int) -> None:
        if not self.gone.done():
            self.gone.set_result(code)

    @property
    def exit_code(self) -> int | None:
        return self.gone.result() if self.gone.done() else None

    def log_tail(self) -> str:
        return "fake kernel panic" if self.exit_code == 3 else ""

    async def cleanup(self) -> None:
        self.cleaned = True


class FakeLauncher(KernelLauncher):
    kernel_type = "fake"

    def command(self, ctx):  # pragma: no cover - never launched: the tests hand over a handle
        raise AssertionError


class FakeHost:
    """The room, as the kernel side sees it (:class:`runtimed.daemon.host.RoomHost`)."""

    notebook_id = "nb"

    def __init__(self) -> None:
        self.writer = RuntimeStateWriter(Replica())
        self.pending: list[Callable[[], None]] = []
        self.cells: dict[str, tuple[str, int | None]] = {}
        self.finished: list[str] = []

    def schedule_flush(self, delay: float = 0.0) -> None:
        pass

    def flush(self) -> None:
        pending, self.pending = self.pending, []
        for write in pending:
            write()

    def before_flush(self, write: Callable[[], None]) -> None:
        self.pending.append(write)

    def offload_output(self, output: dict[str, Any]) -> dict[str, Any]:
        return output

    def put_blob(self, raw: bytes, content_type: str) -> str | None:
        return None

    def broadcast(self, event: dict[str, Any]) -> None:
        pass

    def annotate_cell(self, cell_id: str, execution_id: str, execution_count: int | None,
                      delay: float = 0.0) -> None:
        self.cells[cell_id] = (execution_id, execution_count)

    def notebook_metadata(self) -> dict[str, Any]:
        return {}

    def keep_widgets(self) -> None:
        pass

    def code_sources(self) -> list[str]:
        return []

    def set_default_kernelspec(self, kernelspec: dict[str, Any]) -> None:
        pass

    def notebook_path(self) -> Path | None:
        return None

    def current_executions(self) -> set[str]:
        return {eid for eid, _ in self.cells.values()}

    def execution_finished(self, execution_id: str) -> None:
        self.finished.append(execution_id)


class RecordingSink(OutputSink):
    def __init__(self, config: DaemonConfig) -> None:
        super().__init__(config)
        self.events: list[tuple[Any, ...]] = []

    def on_execution_started(self, ctx: ExecutionContext, execution_count: int | None) -> None:
        self.events.append(("started", ctx.cell_id, execution_count))

    def on_output(self, ctx: ExecutionContext, msg_type: str, content: dict[str, Any]) -> None:
        self.events.append(("output", ctx.cell_id, msg_type, ctx))

    def on_execution_finished(self, ctx: ExecutionContext, success: bool) -> None:
        self.events.append(("finished", ctx.cell_id, success))


class FailingSink(RecordingSink):
    def on_output(self, ctx: ExecutionContext, msg_type: str, content: dict[str, Any]) -> None:
        raise RuntimeError("this sink always fails")


async def _lease(tmp_path: Path) -> Lease:
    handle = FakeHandle()
    kernel = await Kernel.connect(handle, "fake", cwd=tmp_path)
    return Lease(kernel, FakeLauncher(DaemonConfig()), "fake", None, "fake", None, None)


class Setup:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.host = FakeHost()
        self.good = RecordingSink(DaemonConfig())
        self.bad = FailingSink(DaemonConfig())
        self.released: list[Lease] = []
        self.restarts = 0

    async def runner(self) -> KernelRunner:
        async def restart(lease: Lease) -> Lease:
            self.restarts += 1
            await lease.kernel.kill()
            return await _lease(self.tmp_path)

        async def release(lease: Lease) -> None:
            self.released.append(lease)
            await lease.kernel.kill()

        sinks = PluginSinks([("bad_plugin", self.bad), ("good_plugin", self.good)])
        runner = KernelRunner(self.host, await _lease(self.tmp_path), sinks=sinks,
                              restart=restart, release=release)
        runner.start()
        return runner

    def execution(self, eid: str) -> dict[str, Any]:
        self.host.flush()
        found = read_execution(self.host.writer.replica, eid)
        assert found is not None
        return found


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_a_cell_runs_and_every_sink_sees_it_despite_a_failing_one(tmp_path, caplog):
    s = Setup(tmp_path)

    async def scenario() -> None:
        runner = await s.runner()
        ex = runner.queue_cell("c1", "print:a,b,c")
        await ex.done
        out = s.execution(ex.id)
        assert out["status"] == "done" and out["success"] is True and out["execution_count"] == 1
        assert [o["text"] for o in out["outputs"]] == ["a\nb\nc\n"]  # one stream output
        assert s.host.cells["c1"] == (ex.id, 1)
        started, *outputs, finished = s.good.events
        assert started == ("started", "c1", 1) and finished == ("finished", "c1", True)
        assert [e[2] for e in outputs] == ["stream"] * 3
        ctx = outputs[0][3]
        assert (ctx.notebook_id, ctx.cell_id, ctx.source, ctx.kernel_type) == (
            "nb", "c1", "print:a,b,c", "fake")
        second = runner.queue_cell("c2", "1+1")
        await second.done
        assert s.execution(second.id)["outputs"][0]["data"] == {"text/plain": "3"}
        await runner.shutdown()

    with caplog.at_level(logging.ERROR, logger="runtimed.daemon.plugin_sinks"):
        _run(scenario())
    failures = [r for r in caplog.records if "FailingSink" in r.getMessage()]
    assert len(failures) == 2, "once per execution, not once per output"
    assert "'bad_plugin'" in failures[0].getMessage()
    assert s.bad.events[-1] == ("finished", "c2", True), "the failing sink's other calls still run"


def test_an_error_cancels_what_was_queued_behind_it(tmp_path):
    s = Setup(tmp_path)

    async def scenario() -> None:
        runner = await s.runner()
        failing, behind = runner.queue_cell("c1", "fail"), runner.queue_cell("c2", "print:x")
        await asyncio.gather(failing.done, behind.done)
        assert (failing.status, failing.error) == ("error", "ValueError: bad")
        assert behind.failure == "cancelled" and "c1" in (behind.error or "")
        assert s.execution(failing.id)["outputs"][0]["ename"] == "ValueError"
        again = runner.queue_cell("c2", "print:x")  # cells run one by one keep working
        await again.done
        assert again.success
        await runner.shutdown()

    _run(scenario())


def test_interrupt_ends_the_running_cell_and_cancels_the_queue(tmp_path):
    s = Setup(tmp_path)

    async def scenario() -> None:
        runner = await s.runner()
        running = runner.queue_cell("c1", "wait")
        queued = runner.queue_cell("c2", "print:x")
        assert runner.queue_cell("c1", "wait") is running, "queueing a running cell returns it"
        while runner.lease.kernel.handle.fake.waiting is None:  # the kernel is in the cell
            await asyncio.sleep(0)
        await runner.interrupt()
        assert running.done.done() and running.error == "KeyboardInterrupt"
        assert queued.failure == "interrupted"
        after = runner.queue_cell("c3", "print:ok")
        await after.done
        assert after.success
        await runner.shutdown()

    _run(scenario())


def test_a_dying_kernel_fails_its_cells_and_says_why(tmp_path):
    s = Setup(tmp_path)

    async def scenario() -> None:
        runner = await s.runner()
        running = runner.queue_cell("c1", "wait")
        queued = runner.queue_cell("c2", "print:x")
        while runner.running is None:
            await asyncio.sleep(0)
        runner.lease.kernel.handle.die(3)
        await asyncio.gather(running.done, queued.done)
        assert running.failure == queued.failure == "kernel_died"
        assert running.error == "The fake kernel died (exit code 3). Its stderr ends with:\nfake kernel panic"
        kernel = read_kernel(s.host.writer.replica)
        assert kernel["lifecycle"] == "error" and "exit code 3" in kernel["error"]
        with pytest.raises(KernelDied, match="exit code 3"):
            runner.queue_cell("c3", "1")
        await runner.restart()  # recovers with a new kernel
        after = runner.queue_cell("c3", "print:back")
        await after.done
        assert after.success and s.restarts == 1
        assert read_kernel(s.host.writer.replica)["lifecycle"] == "running"
        await runner.shutdown()

    _run(scenario())


def test_restart_and_shutdown(tmp_path):
    s = Setup(tmp_path)

    async def scenario() -> None:
        runner = await s.runner()
        running = runner.queue_cell("c1", "wait")
        while runner.running is None:
            await asyncio.sleep(0)
        first = runner.lease
        await runner.restart()
        assert running.failure == "restarted" and running.error == "Kernel restarted"
        assert runner.lease is not first and not first.kernel.alive
        assert first.kernel.handle.cleaned, "the old kernel's leftovers are cleaned up"
        ex = runner.queue_cell("c2", "print:new")
        await ex.done
        assert s.execution(ex.id)["execution_count"] == 1, "a fresh kernel counts from 1"
        await runner.shutdown()
        await runner.shutdown()
        assert s.released == [runner.lease], "released once"
        assert not runner.alive

    _run(scenario())


def test_what_a_cell_shows_is_never_forgotten(tmp_path, monkeypatch):
    """Old executions are dropped from the runtime state, but never one a cell still shows
    (a notebook of many cells keeps every cell's outputs)."""
    from runtimed.daemon import executor

    monkeypatch.setattr(executor, "KEEP_FINISHED", 4)
    s = Setup(tmp_path)

    async def scenario() -> None:
        runner = await s.runner()
        shown = []
        for i in range(20):  # 20 cells, each run once: each shows its run
            ex = runner.queue_cell(f"c{i}", f"print:{i}")
            await ex.done
            shown.append(ex.id)
        reruns = []
        for _ in range(20):  # one cell run again and again: its old runs are superseded
            ex = runner.queue_cell("c0", "print:again")
            await ex.done
            reruns.append(ex.id)
        kept = set(s.host.writer.execution_ids())
        assert set(shown[1:]) <= kept, "every cell's latest run stays"
        assert reruns[-1] in kept and set(reruns[-4:]) <= kept, "and the most recent ones"
        assert not set(reruns[:8]) & kept and shown[0] not in kept, "superseded runs are dropped"
        await runner.shutdown()

    _run(scenario())


def test_code_another_client_runs_in_the_kernel_is_recorded(tmp_path):
    """A Jupyter client attached with the connection file: its executions (and only those,
    not its kernel_info requests) land in the runtime state with their outputs, no cell."""
    from runtimed.document.runtime_state import execution_ids

    s = Setup(tmp_path)

    async def scenario() -> None:
        runner = await s.runner()
        fake = runner.lease.kernel.handle.fake
        loop = asyncio.get_running_loop()
        loop.call_soon(fake._handle, "console-1", "kernel_info_request", {})
        loop.call_soon(fake._handle, "console-2", "execute_request", {"code": "print:from,console"})
        loop.call_soon(fake._handle, "console-3", "execute_request", {"code": "fail"})
        ours = runner.queue_cell("c1", "print:ours")
        await ours.done
        replica = s.host.writer.replica
        await asyncio.sleep(0)  # the console's messages were handled before ours (FIFO)
        s.host.flush()
        records = [read_execution(replica, eid) for eid in execution_ids(replica)]
        external = sorted((r for r in records if r["origin"] == "external"),
                          key=lambda r: r["execution_count"])
        assert [(r["source"], r["status"], r["success"], r["cell_id"]) for r in external] == [
            ("print:from,console", "done", True, ""), ("fail", "error", False, "")]
        assert external[0]["outputs"][0]["text"] == "from\nconsole\n"
        assert external[1]["outputs"][0]["ename"] == "ValueError"
        assert s.execution(ours.id)["execution_count"] == 3  # the kernel's count went on
        assert set(s.host.cells) == {"c1"}, "no cell is made up for the console's code"
        assert read_kernel(replica)["activity"] == "idle"
        assert [e[:2] for e in s.good.events if e[1] == ""] == [
            ("started", ""), ("output", ""), ("output", ""), ("finished", ""),  # two prints
            ("started", ""), ("output", ""), ("finished", "")]
        await runner.shutdown()

    _run(scenario())


class PortTakenHandle(FakeHandle):
    """A kernel that died binding a port another process took first."""

    def __init__(self) -> None:
        super().__init__()
        self.die(1)

    def log_tail(self) -> str:
        return "zmq.error.ZMQError: Address already in use (addr='tcp://127.0.0.1:34977')"


class PortRaceLauncher(FakeLauncher):
    """Hands out ``taken`` dead kernels, then a live one; records the ports it was given."""

    def __init__(self, taken: int) -> None:
        super().__init__(DaemonConfig())
        self.taken = taken
        self.ports: list[int] = []

    async def launch(self, ctx):
        self.ports.append(ctx.connection_info["shell_port"])
        if len(self.ports) <= self.taken:
            return PortTakenHandle()
        return FakeHandle()


@pytest.mark.parametrize("taken", [1, 2])
def test_a_kernel_whose_port_was_taken_starts_again_with_fresh_ports(tmp_path, taken):
    async def main():
        launcher = PortRaceLauncher(taken)
        kernel = await Kernel.launch(launcher, kernel_type="fake", kernel_name=None,
                                     runtime_dir=tmp_path, notebook_id="nb", cwd=tmp_path, env=None)
        assert len(launcher.ports) == taken + 1 and len(set(launcher.ports)) == taken + 1
        await kernel.kill()

    _run(main())


def test_a_kernel_whose_ports_keep_being_taken_fails_clearly(tmp_path):
    async def main():
        launcher = PortRaceLauncher(taken=10)
        with pytest.raises(KernelLaunchFailed, match="Address already in use"):
            await Kernel.launch(launcher, kernel_type="fake", kernel_name=None,
                                runtime_dir=tmp_path, notebook_id="nb", cwd=tmp_path, env=None)
        assert len(launcher.ports) == 3  # the first try and two more

    _run(main())
