"""Kernels and connection files left by a daemon that was killed are cleaned up by the next one."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from runtimed.daemon import runtime_dir
from runtimed.testing import process_running, wait_until


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _orphan(tmp_path: Path, owner: int, name: str = "kernel-a") -> tuple[subprocess.Popen[bytes], Path]:
    """A directory as a daemon ``owner`` leaves it, with a process standing in for its kernel."""
    directory = tmp_path / f"{runtime_dir.PREFIX}{owner}-xyz"
    directory.mkdir(exist_ok=True)
    conn = directory / f"{name}.json"
    conn.write_text("{}")
    kernel = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", str(conn)],
                              start_new_session=True)
    (directory / f"{name}.pid").write_text(str(kernel.pid))
    return kernel, directory


def test_sweep_kills_orphans_of_dead_daemons_only(tmp_path):
    orphan, dead_dir = _orphan(tmp_path, _dead_pid())
    living, live_dir = _orphan(tmp_path, os.getpid(), "kernel-b")
    unrelated = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
    (dead_dir / "kernel-c.pid").write_text(str(unrelated.pid))  # a recycled pid: not its kernel
    try:
        assert runtime_dir.sweep(tmp_path) == 1
        assert orphan.wait(10) == -9 and not dead_dir.exists()
        assert living.poll() is None and live_dir.exists()  # its daemon (this process) is alive
        assert unrelated.poll() is None
    finally:
        for proc in (orphan, living, unrelated):
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_killed_daemon_leaves_no_kernel_running(runtimed_daemon_factory, tmp_path):
    daemon = runtimed_daemon_factory(tmp_path / "d", pool_sizes={"uv": 1}, hot_kernels=0)
    s = daemon.session("crash")
    s.start_kernel()
    kernel_pid = int(s.run("import os; os.getpid()").outputs[0].data["text/plain"])
    daemon_pid = daemon.process.pid
    left = list(Path(tempfile.gettempdir()).glob(f"{runtime_dir.PREFIX}{daemon_pid}-*"))
    assert left
    daemon.kill()
    daemon.start()
    wait_until(lambda: not process_running(kernel_pid), "the killed daemon's kernel to end", timeout=15)
    assert not any(d.exists() for d in left)
    s.close()
