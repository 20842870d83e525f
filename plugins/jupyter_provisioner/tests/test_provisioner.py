"""Jupyter tools on runtimed's kernels: `runtimed kernelspec install`, then jupyter_client and
nbclient with kernel_name="runtimed-python", against a real daemon and a plain python3
kernelspec."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat import v4

from runtimed.pytest_plugin import DaemonProcess
from runtimed.testing import wait_until

pytestmark = pytest.mark.slow

CELLS = [
    "import os, sys\nprint('hello')\nprint(os.path.basename(os.getcwd()))",
    "6 * 7",
    "from IPython.display import HTML, display\ndisplay(HTML('<b>bold</b>'))",
    "print('to stderr', file=sys.stderr)",
    "x = 41\nx + 1",
    "1 / 0",
]


def runtimed(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runtimed", *args], capture_output=True, text=True,
                          timeout=60, env={**os.environ, **(env or {})}, check=False)


@pytest.fixture(scope="session")
def python3_kernels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data dir whose ``kernels/python3`` is ipykernel in a venv of its own (what
    `python -m ipykernel install` gives a user): the baseline."""
    from uv import find_uv_bin

    root = tmp_path_factory.mktemp("python3-kernel")
    uv, venv = find_uv_bin(), root / "venv"
    for argv in ([uv, "venv", str(venv), "--python", sys.executable, "--quiet"],
                 [uv, "pip", "install", "--python", str(venv / "bin" / "python"), "--quiet",
                  "ipykernel"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, done.stderr
    spec = root / "data" / "kernels" / "python3"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [str(venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f",
                 "{connection_file}"],
        "display_name": "Python 3", "language": "python"}))
    return root / "data"


@pytest.fixture
def jupyter_path(runtimed_daemon: DaemonProcess, python3_kernels: Path, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Path:
    """JUPYTER_PATH with `runtimed-python` (for the shared test daemon) and `python3`."""
    done = runtimed("kernelspec", "install", "--prefix", str(tmp_path / "prefix"), "--socket",
                    str(runtimed_daemon.socket_path))
    assert done.returncode == 0, done.stderr
    data = tmp_path / "prefix" / "share" / "jupyter"
    assert done.stdout.strip() == str(data / "kernels" / "runtimed-python")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([str(data), str(python3_kernels)]))
    runtimed_daemon.wait_for_pool(1)
    return data


def test_kernelspec_install_writes_a_spec_jupyter_finds(tmp_path: Path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.provisioning import KernelProvisionerFactory

    done = runtimed("kernelspec", "install", "--user", "--name", "rt-test",
                    "--env-source", "uv:prewarmed",
                    env={"JUPYTER_DATA_DIR": str(tmp_path / "data")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / "data" / "kernels" / "rt-test")
    specs = KernelSpecManager(kernel_dirs=[str(tmp_path / "data" / "kernels")])
    spec = specs.get_kernel_spec("rt-test")
    assert spec.display_name == "Python (runtimed)" and spec.language == "python"
    assert spec.metadata["kernel_provisioner"] == {
        "provisioner_name": "runtimed",
        "config": {"kernel_type": "auto", "env_source": "uv:prewarmed"}}
    assert KernelProvisionerFactory.instance().is_provisioner_available(spec)
    # a tool without provisioners would run argv: it exits saying why
    ran = subprocess.run([a.replace("{connection_file}", "x") for a in spec.argv],
                         capture_output=True, text=True, timeout=30, check=False)
    assert ran.returncode == 1 and "kernel provisioner" in ran.stderr


def test_kernelspec_install_refuses_a_name_jupyter_would_not_take(tmp_path: Path):
    done = runtimed("kernelspec", "install", "--prefix", str(tmp_path), "--name", "Runtimed Python")
    assert done.returncode == 1
    assert "Kernelspec name 'Runtimed Python'" in done.stderr and not list(tmp_path.iterdir())
    both = runtimed("kernelspec", "install", "--user", "--prefix", str(tmp_path))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def _notebook(path: Path) -> nbformat.NotebookNode:
    nb = v4.new_notebook()
    nb.cells = [v4.new_code_cell(source) for source in CELLS]
    nbformat.write(nb, path)
    return nb


def _execute(path: Path, kernel_name: str) -> list[list[dict]]:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, kernel_name=kernel_name, allow_errors=True, timeout=60,
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return [cell.outputs for cell in nb.cells]


def test_nbclient_gets_the_same_outputs_as_with_python3(jupyter_path, tmp_path: Path,
                                                       runtimed_daemon: DaemonProcess):
    folder = tmp_path / "analysis"
    folder.mkdir()
    _notebook(folder / "nb.ipynb")
    expected = _execute(folder / "nb.ipynb", "python3")
    got = _execute(folder / "nb.ipynb", "runtimed-python")
    assert got == expected
    assert got[0][0]["text"] == "hello\nanalysis\n"  # it ran where the notebook is
    assert got[5][0]["ename"] == "ZeroDivisionError"
    claimed = [line for line in runtimed_daemon.log().splitlines()
               if ": python kernel claimed" in line and "jupyter-" in line]
    assert claimed, "the kernel was a hot one"


def test_the_kernel_is_the_daemons_while_in_use_and_given_back(jupyter_path,
                                                             runtimed_daemon: DaemonProcess):
    from jupyter_client.manager import AsyncKernelManager

    client = runtimed_daemon.client()

    def room(kernel_id: str) -> dict | None:
        rows = [r for r in client.list_rooms() if r["notebook_id"] == f"jupyter-{kernel_id}"]
        return rows[0] if rows else None

    async def use() -> str:
        km = AsyncKernelManager(kernel_name="runtimed-python")
        await km.start_kernel()
        kc = km.client()
        kc.start_channels()
        try:
            await kc.wait_for_ready(timeout=30)
            row = room(km.kernel_id)
            assert row is not None and row["has_kernel"] and row["active_peers"] == 1
            assert (row["kernel_type"], row["env_source"]) == ("python", "uv:prewarmed")
            assert await km.is_alive()
            reply = await kc.execute_interactive("kept = 1", timeout=30)
            assert reply["content"]["status"] == "ok"
            # interrupt: a long sleep ends at once
            sleeping = kc.execute("import time; time.sleep(60)")
            await asyncio.sleep(0.3)  # (the test's own pacing: let the cell reach the kernel)
            started = time.monotonic()
            await km.interrupt_kernel()
            interrupted = await kc._async_recv_reply(sleeping, timeout=10)
            assert interrupted["content"]["ename"] == "KeyboardInterrupt"
            assert time.monotonic() - started < 2
            # restart: a new kernel in the same room, on new ports (as with newports=True:
            # clients connect again, as jupyter_server's do)
            kc.stop_channels()
            await km.restart_kernel()
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready(timeout=30)
            gone = await kc.execute_interactive("kept", timeout=30)
            assert gone["content"]["ename"] == "NameError"
            assert room(km.kernel_id)["has_kernel"]
        finally:
            kc.stop_channels()
            await km.shutdown_kernel()
        row = room(km.kernel_id)
        assert row is None or (not row["has_kernel"] and row["active_peers"] == 0)
        assert not await km.is_alive()
        return km.kernel_id

    kernel_id = asyncio.run(use())
    deaths = [line for line in runtimed_daemon.log().splitlines()
              if f"jupyter-{kernel_id}" in line and "died" in line]
    assert deaths == []  # every exit of its kernels was one the daemon expected


def test_jupyter_execute_with_the_kernelspec(jupyter_path, tmp_path: Path):
    """What a user types: nbclient's `jupyter execute` with the installed kernelspec."""
    _notebook(tmp_path / "nb.ipynb")
    done = subprocess.run([str(Path(sys.executable).parent / "jupyter-execute"),
                           "--kernel_name=runtimed-python", "--allow-errors", "--output", "out",
                           str(tmp_path / "nb.ipynb")], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    out = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    assert out.cells[1].outputs[0]["data"] == {"text/plain": "42"}


def test_no_daemon_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from jupyter_client.manager import KernelManager

    from runtimed import DaemonUnavailable

    done = runtimed("kernelspec", "install", "--prefix", str(tmp_path), "--socket",
                    str(tmp_path / "nobody.sock"))
    assert done.returncode == 0, done.stderr
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share" / "jupyter"))
    monkeypatch.setenv("RUNTIMED_NO_AUTOSTART", "1")
    km = KernelManager(kernel_name="runtimed-python")
    with pytest.raises(DaemonUnavailable):
        km.start_kernel()
    wait_until(lambda: not km.has_kernel, "the provisioner to let go")
