"""session.stream(cell_id) and stdin= through a real daemon and kernel, as a script or a
terminal user sees them."""

from __future__ import annotations

import asyncio
import os
import pty
import re
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import runtimed
from runtimed.testing import wait_until

pytestmark = pytest.mark.slow

README = Path(__file__).parents[2] / "README.md"

#: 1,000 lines; a pause after line 499 (the first half must arrive during it) and at the end.
THOUSAND_LINES = (
    "import time\n"
    "for i in range(1000):\n"
    "    print(i, flush=(i % 100 == 99))\n"
    "    if i == 499:\n"
    "        time.sleep(0.4)\n"
    "time.sleep(0.3)\n"
)


def test_stream_delivers_outputs_in_order_as_they_happen(runtimed_session):
    s = runtimed_session
    s.start_kernel()
    cell_id = s.create_cell(THOUSAND_LINES)
    arrived: list[tuple[float, runtimed.ExecutionEvent]] = []
    for event in s.stream(cell_id):
        arrived.append((time.monotonic(), event))
    kinds = [e.kind for _, e in arrived]
    assert kinds[:2] == ["queued", "started"] and kinds[-1] == "done"
    assert set(kinds[2:-1]) == {"output"}
    text = "".join(e.output.text for _, e in arrived if e.kind == "output")
    assert text == "".join(f"{i}\n" for i in range(1000)), "every line, in order"
    line_at = {}
    for t, e in arrived:
        if e.kind == "output":
            for line in e.output.text.split():
                line_at.setdefault(int(line), t)
    done_at = arrived[-1][0]
    assert line_at[499] < line_at[500] - 0.25, "the first half arrived while the cell slept"
    assert line_at[999] < done_at - 0.15, "the last line arrived before the cell ended"
    done = arrived[-1][1]
    assert done.result.success and done.result.stdout == text
    assert arrived[0][1].execution_id == done.result.execution_id == done.execution_id
    assert arrived[1][1].execution_count == done.result.execution_count


def test_the_readme_stream_example(runtimed_daemon, monkeypatch, capsys):
    monkeypatch.setenv("RUNTIMED_SOCKET_PATH", str(runtimed_daemon.socket_path))
    section = README.read_text().split("### Streams, results by id, stdin", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    scope: dict = {}
    exec(compile(code, "README.md (streams)", "exec"), scope)
    printed = capsys.readouterr().out.splitlines()
    assert printed[:2] == ["queued ", "started "] and printed[-1] == "done "
    assert "output hi Ada" in printed
    assert scope["again"] == scope["result"] and scope["result"].stdout == "0\n1\n2\nhi Ada\n"


def test_stream_async_errors_and_early_exit(runtimed_daemon):
    async def main():
        async with runtimed.AsyncSession(socket_path=runtimed_daemon.socket_path) as s:
            await s.start_kernel()
            failing = await s.create_cell("print('before')\n1/0")
            events = [e async for e in s.stream(failing)]
            assert [e.kind for e in events] == ["queued", "started", "output", "output", "done"]
            assert events[3].output.output_type == "error" and events[3].output.ename == "ZeroDivisionError"
            assert not events[-1].result.success
            # leaving the loop early stops the following, not the cell
            slow = await s.create_cell("import time\nprint('a', flush=True)\ntime.sleep(0.5)\nprint('b')")
            async for event in s.stream(slow):
                if event.kind == "output":
                    break
            queued = await s.queue_cell(await s.create_cell("print('after')"))
            while (await s.get_result(queued)).status != "done":
                await asyncio.sleep(0.05)
            assert (await s.get_cell(slow)).outputs[0].text == "a\nb\n"
            with pytest.raises(runtimed.CellNotFound):
                async for _ in s.stream("no-such-cell"):
                    pass
            with pytest.raises(runtimed.ExecutionTimeout):
                async for _ in s.stream(await s.create_cell("import time; time.sleep(3)"), timeout_secs=0.5):
                    pass
            await s.interrupt()

    asyncio.run(main())


class Answers:
    """A stdin handler that answers from a list and remembers what it was asked."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, bool]] = []

    def __call__(self, prompt: str, password: bool) -> str:
        self.asked.append((prompt, password))
        return self.answers.pop(0)


def test_input_and_getpass_answered_by_the_handler(runtimed_daemon, runtimed_session):
    s = runtimed_session
    s.start_kernel()
    answers = Answers("Ada")
    result = s.run("name = input('name? ')\nprint('hi', name)", stdin=answers)
    assert result.success and result.stdout == "hi Ada\n"
    assert answers.asked == [("name? ", False)]
    secret = "pa55-" + os.urandom(6).hex()
    answers = Answers(secret)
    cell_id = s.create_cell("import getpass\npw = getpass.getpass('Password: ')\nprint(len(pw), pw[::-1] == pw)")
    result = s.execute_cell(cell_id, stdin=answers)
    assert result.stdout == f"{len(secret)} False\n" and answers.asked == [("Password: ", True)]
    assert s.run("print(pw[::-1])").stdout == secret[::-1] + "\n", "the kernel has it"
    # ...and nothing else: not the documents, the kept results, the daemon's files or its log
    s.run("del pw")
    for cell in s.get_cells():
        assert secret not in cell.source and all(secret not in str(o) for o in cell.outputs)
    kept = Path(runtimed_daemon.state_dir) / "executions"
    wait_until(lambda: (kept / f"{result.execution_id}.json").exists(), "the getpass cell's result on disk")
    places = [p for p in Path(runtimed_daemon.root).iterdir() if p != runtimed_daemon.cache_dir]
    files = [f for p in places for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()]
    assert [p for p in files if secret.encode() in p.read_bytes()] == []
    assert secret not in runtimed_daemon.log()
    # several input() calls in one cell, and a stream that asks too
    answers = Answers("1", "2")
    events = list(s.stream(s.create_cell("print(int(input('a')) + int(input('b')))"), stdin=answers))
    assert events[-1].result.stdout == "3\n" and [p for p, _ in answers.asked] == ["a", "b"]


def test_without_a_handler_input_is_not_implemented(runtimed_session):
    result = runtimed_session.run("input('x')")
    assert result.error.ename == "StdinNotImplementedError"


def test_a_failing_or_silent_handler_ends_the_cell_clearly(runtimed_session):
    s = runtimed_session
    s.start_kernel()

    def broken(prompt: str, password: bool) -> str:
        raise ValueError("no keyboard here")

    result = s.run("value = input('v? ')", stdin=broken)
    assert not result.success and result.error.ename == "EOFError"
    assert "the stdin handler failed (ValueError: no keyboard here)" in result.stderr
    assert s.run("print('kernel fine')").stdout == "kernel fine\n"

    result = s.run("input('v? ')", stdin=lambda prompt, password: 42)  # not a str
    assert result.error.ename == "EOFError" and "returned int, not a str" in result.stderr

    release = threading.Event()
    started = time.monotonic()
    result = s.run("value = input('v? ')", timeout_secs=1,
                   stdin=lambda prompt, password: release.wait(30) and "too late")
    release.set()
    assert time.monotonic() - started < 8
    assert result.error.ename == "EOFError"
    assert "nobody answered input() within 1 s" in result.stderr
    assert s.run("print('still fine')").stdout == "still fine\n"


def test_async_handler_and_two_clients_each_answer_their_own(runtimed_daemon):
    async def main():
        a = runtimed.AsyncSession(socket_path=runtimed_daemon.socket_path)
        await a.start_kernel()
        b = runtimed.AsyncSession(a.notebook_id, socket_path=runtimed_daemon.socket_path)
        other = runtimed.AsyncSession(socket_path=runtimed_daemon.socket_path)  # another room
        await b.connect()
        await other.start_kernel()
        asked: dict[str, list[str]] = {"a": [], "b": [], "other": []}

        def handler(name: str):
            async def answer(prompt: str, password: bool) -> str:
                asked[name].append(prompt)
                await asyncio.sleep(0.2)  # both wait at once
                return f"from {name}"
            return answer

        ra, rb, ro = await asyncio.gather(
            a.run("print(input('A? '))", stdin=handler("a")),
            b.run("print(input('B? '))", stdin=handler("b")),
            other.run("print(input('O? '))", stdin=handler("other")))
        assert (ra.stdout, rb.stdout, ro.stdout) == ("from a\n", "from b\n", "from other\n")
        assert asked == {"a": ["A? "], "b": ["B? "], "other": ["O? "]}
        for session in (b, other, a):
            await session.__aexit__(None, None, None)

    asyncio.run(main())


ASKER = """
import sys, runtimed
s = runtimed.Session(sys.argv[1], socket_path=sys.argv[2])
s.connect()
def handler(prompt, password):
    print("asked", flush=True)
    sys.stdin.readline()  # never answered: the test kills this process
s.run("answer = input('waiting? ')", stdin=handler, timeout_secs=120)
"""


def test_a_client_that_disconnects_while_its_cell_waits(runtimed_daemon, runtimed_session, tmp_path):
    s = runtimed_session
    s.start_kernel()
    script = tmp_path / "asker.py"
    script.write_text(ASKER)
    with subprocess.Popen([sys.executable, str(script), s.notebook_id, str(runtimed_daemon.socket_path)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as asker:
        try:
            assert asker.stdout.readline().strip() == "asked"
        finally:
            asker.kill()

    def outputs() -> list[runtimed.Output]:
        return [o for c in s.get_cells() if "waiting?" in c.source for o in c.outputs]

    def ended() -> bool:
        ids = [c.execution_id for c in s.get_cells() if "waiting?" in c.source and c.execution_id]
        return bool(ids) and s.get_result(ids[0]).status == "error"

    wait_until(ended, "the waiting cell to end")
    assert [o.ename for o in outputs() if o.output_type == "error"] == ["EOFError"]
    assert "disconnected while input() waited" in "".join(o.text or "" for o in outputs())
    assert s.run("print('kernel usable')").stdout == "kernel usable\n"


def _pty_run(argv: list[str], answers: dict[str, str], timeout: float = 90) -> str:
    """Run ``argv`` on a pseudo-terminal; type ``answers[prompt]`` when ``prompt`` shows."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, stdin=follower, stdout=follower, stderr=follower, close_fds=True)
    os.close(follower)
    seen, pending = b"", dict(answers)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(leader, 4096)
                except OSError:
                    break  # the process closed the terminal
                if not chunk:
                    break
                seen += chunk
                for prompt in list(pending):
                    if seen.decode(errors="replace").endswith(prompt):
                        os.write(leader, pending.pop(prompt).encode() + b"\n")
            elif proc.poll() is not None:
                break
        proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    return seen.decode(errors="replace").replace("\r\n", "\n")


def test_runtimed_exec_asks_on_the_terminal(runtimed_daemon):
    base = [sys.executable, "-m", "runtimed", "exec", "--socket", str(runtimed_daemon.socket_path)]
    out = _pty_run([*base, "print('welcome'); name = input('name? '); print('hi', name)"],
                   {"name? ": "Grace"})
    assert out.index("welcome") < out.index("name? ") < out.index("hi Grace")
    out = _pty_run([*base, "import getpass; p = getpass.getpass('pw: '); print(len(p), 'chars')"],
                   {"pw: ": "hunter2"})
    assert "7 chars" in out and "hunter2" not in out, "typed without echo"
