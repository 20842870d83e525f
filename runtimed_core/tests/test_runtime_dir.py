"""Kernels' connection files live in one directory per daemon socket; kernels and files left by a
daemon that was killed are cleaned up by the next one."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtimed.daemon import runtime_dir
from runtimed.testing import process_running, processes_mentioning, wait_until


def _kernel_files(directory: Path, name: str) -> subprocess.Popen[bytes]:
    """A kernel's files in ``directory``, with a process standing in for the kernel."""
    directory.mkdir(parents=True, exist_ok=True)
    conn = directory / f"{name}.json"
    conn.write_text("{}")
    kernel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", str(conn)],
                              start_new_session=True)
    (directory / f"{name}.pid").write_text(str(kernel.pid))
    # until it has exec'd, its command line is still this process's
    wait_until(lambda: bool(processes_mentioning(str(conn))), "the stand-in kernel to start")
    return kernel


def test_one_directory_per_socket():
    a = runtime_dir.directory_for(Path("/run/x"), Path("/home/u/.cache/runt/runtimed.sock"))
    assert a == runtime_dir.directory_for(Path("/run/x"), Path("/home/u/.cache/runt/runtimed.sock"))
    assert a.parent == Path("/run/x") and a.name.startswith(runtime_dir.PREFIX)
    assert a != runtime_dir.directory_for(Path("/run/x"), Path("/tmp/other.sock"))


def test_sweep_kills_orphans_of_dead_daemons_only(tmp_path):
    dead = tmp_path / f"{runtime_dir.PREFIX}dead"
    orphan = _kernel_files(dead, "kernel-a")
    (dead / runtime_dir.OWNER).write_text("12345")  # nobody holds it: its daemon is gone
    live = tmp_path / f"{runtime_dir.PREFIX}live"
    living = _kernel_files(live, "kernel-b")
    held = os.open(live / runtime_dir.OWNER, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)  # as a running daemon holds its own
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                                 start_new_session=True)
    (dead / "kernel-c.pid").write_text(str(unrelated.pid))  # a recycled pid: not its kernel
    try:
        assert runtime_dir.sweep(tmp_path) == 1
        assert orphan.wait(10) == -9 and not dead.exists()
        assert living.poll() is None and live.exists()
        assert unrelated.poll() is None
        assert [p.name for p in tmp_path.iterdir()] == [live.name], "no tombstone left"
    finally:
        os.close(held)
        for proc in (orphan, living, unrelated):
            proc.kill()
            proc.wait()


def test_a_daemon_claims_its_directory_from_a_killed_predecessor(tmp_path):
    path = runtime_dir.directory_for(tmp_path, tmp_path / "d.sock")
    leftover = _kernel_files(path, "kernel-old")
    (path / "kernel-old.log").write_text("its stderr")
    claimed = runtime_dir.RuntimeDir(path)
    try:
        assert claimed.claim() == 1
        assert leftover.wait(10) == -9
        assert sorted(p.name for p in path.iterdir()) == [runtime_dir.OWNER]
        assert (path / runtime_dir.OWNER).read_text() == str(os.getpid())
        assert oct(path.stat().st_mode & 0o777) == "0o700"
        assert runtime_dir.sweep(tmp_path) == 0 and path.exists(), "a live daemon's is left alone"
    finally:
        claimed.release()
        if leftover.poll() is None:
            leftover.kill()
    assert not path.exists()


@pytest.mark.slow
def test_killed_daemon_leaves_no_kernel_running(runtimed_daemon_factory, tmp_path):
    daemon = runtimed_daemon_factory(tmp_path / "d", pool_sizes={"uv": 1}, hot_kernels=0)
    s = daemon.session("crash")
    s.start_kernel()
    kernel_pid = int(s.run("import os; os.getpid()").outputs[0].data["text/plain"])
    connection_file = Path(s.connection_file)
    assert connection_file.parent.parent == daemon.runtime_dir and connection_file.is_file()
    daemon.kill()
    daemon.start()
    wait_until(lambda: not process_running(kernel_pid), "the killed daemon's kernel to end", timeout=15)
    assert not connection_file.exists()
    assert connection_file.parent.is_dir(), "the same directory, now the new daemon's"
    s.close()
    daemon.stop()
    assert not connection_file.parent.exists(), "a daemon that stops cleanly removes it"
