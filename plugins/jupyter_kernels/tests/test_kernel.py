"""The real bash_kernel (from PyPI) through a real daemon: what a notebook user sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from runtimed import PluginError
from runtimed.errors import KernelLaunchFailed
from runtimed.pytest_plugin import DaemonProcess
from runtimed.testing import Background, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.network]  # bash_kernel comes from the package index

BASH_KERNELSPEC = {"name": "bash", "display_name": "Bash", "language": "bash"}


def test_bash_runs_as_jupyter_bash(jupyter_daemon: DaemonProcess):
    with jupyter_daemon.session() as s:
        s.start_kernel(kernel_type="jupyter:bash")
        assert s.env_source == "jupyter:bash"
        assert s.kernel_status()["kernel_type"] == "jupyter:bash"
        hello = s.run("echo hello")
        assert hello.success and hello.stdout == "hello\n"
        # it runs where the notebook is (the client's working directory here)
        assert s.run("pwd").stdout == os.path.realpath(os.getcwd()) + "\n"
        assert s.run("x=41; echo $((x + 1))").stdout == "42\n"
        failed = s.run("false")
        assert not failed.success  # a non-zero exit status fails the cell
        # the spec's name, display name and language are recorded in the new notebook
        assert json.loads(s.get_metadata("kernelspec") or "null") == BASH_KERNELSPEC
        assert s.run("echo $((x + 2))").stdout == "43\n"  # the same shell throughout
    assert jupyter_daemon.client().status()["uv_available"] == 0


def test_the_spec_env_is_filled_from_the_daemons(jupyter_daemon: DaemonProcess):
    with jupyter_daemon.session() as s:
        s.start_kernel(kernel_type="jupyter:bash-env")
        assert s.run("echo $RT_GREETING").stdout == "from the daemon\n"


def test_auto_picks_the_kernelspec_a_notebook_names(jupyter_daemon: DaemonProcess):
    with jupyter_daemon.session() as s:
        s.connect()
        s.set_metadata("kernelspec", json.dumps(BASH_KERNELSPEC))
        s.start_kernel(kernel_type="auto")
        assert s.env_source == "jupyter:bash"
        assert s.run("echo $BASH_VERSION").stdout.strip()


def test_interrupt_ends_a_sleep_and_the_next_cell_runs(jupyter_daemon: DaemonProcess):
    """bash_kernel turns the SIGINT into a Ctrl-C for its shell, and answers "abort"."""
    with jupyter_daemon.session() as s:
        s.start_kernel(kernel_type="jupyter:bash")
        s.run("kept='state survives'")
        sleeping = s.create_cell("echo started; sleep 60; echo finished")
        queued = s.create_cell("echo never")
        running = Background(s, sleeping, timeout_secs=90)
        wait_until(lambda: s.get_cell(sleeping).outputs != [], what="the sleep to start")
        s.queue_cell(queued)
        started = time.monotonic()
        s.interrupt()
        result = running.join(timeout=15)
        assert time.monotonic() - started < 10  # long before the sleep would have ended
        assert not result.success
        assert result.stdout.startswith("started\n") and "finished" not in result.stdout
        assert s.get_cell(queued).outputs == []  # the queued cell was cancelled, not run
        after = s.run("echo $kept")
        assert after.success and after.stdout == "state survives\n"


def test_an_unknown_kernelspec_lists_the_available_ones(jupyter_daemon: DaemonProcess):
    with jupyter_daemon.session() as s:
        with pytest.raises(PluginError) as info:
            s.start_kernel(kernel_type="jupyter:nope")
        message = str(info.value)
        assert "'nope'" in message and "bash, bash-env, ghost" in message
        # the malformed one is not offered, and the daemon log says why
        assert "broken" not in message
        with pytest.raises(PluginError, match="'broken'"):
            s.start_kernel(kernel_type="jupyter:broken")
    log = jupyter_daemon.log()
    assert "Skipped the Jupyter kernelspec" in log and "broken" in log


def test_a_missing_program_fails_the_start_and_the_daemon_keeps_serving(
    jupyter_daemon: DaemonProcess, extra_kernels_dir,
):
    with jupyter_daemon.session() as s:
        with pytest.raises(KernelLaunchFailed) as info:
            s.start_kernel(kernel_type="jupyter:ghost")
        spec_file = extra_kernels_dir / "kernels" / "ghost" / "kernel.json"
        assert str(info.value) == (f"The Jupyter kernelspec 'ghost' ({spec_file}) runs "
                                   "'/nonexistent/python', which does not exist")
        status = s.kernel_status()
        assert status["lifecycle"] == "error" and "/nonexistent/python" in status["error"]
        s.start_kernel(kernel_type="jupyter:bash")  # the same notebook, another kernel
        assert s.env_source == "jupyter:bash"
        assert s.run("echo recovered").stdout == "recovered\n"


def test_plugins_json_lists_the_kernelspecs(jupyter_path: str, bash_kernel_data_dir):
    done = subprocess.run(
        [sys.executable, "-m", "runtimed", "plugins", "--json"], capture_output=True, text=True,
        env={**os.environ, "JUPYTER_PATH": jupyter_path}, timeout=60, check=True,
    )
    plugins = {p["name"]: p for p in json.loads(done.stdout)}
    [declared] = plugins["jupyter_kernels"]["declares"]
    specs = declared["kernelspecs"]
    assert {"bash", "bash-env", "ghost"} <= set(specs) and "broken" not in specs
    assert specs["bash"]["display_name"] == "Bash" and specs["bash"]["language"] == "bash"
    assert specs["bash"]["resource_dir"] == str(bash_kernel_data_dir / "kernels" / "bash")
