"""Fixtures: the real bash_kernel from PyPI, installed as a kernelspec in a temporary prefix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from runtimed.pytest_plugin import DaemonProcess

INSTALL_TIMEOUT = 300


@pytest.fixture(scope="session")
def bash_kernel_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data dir (for JUPYTER_PATH) whose ``kernels/bash`` is bash_kernel, installed
    in a venv of its own; never the user's Jupyter dirs."""
    from uv import find_uv_bin

    root = tmp_path_factory.mktemp("bash-kernel")
    uv, venv, prefix = find_uv_bin(), root / "bk", root / "jprefix"
    python = venv / "bin" / "python"
    steps = [
        [uv, "venv", str(venv), "--python", sys.executable, "--quiet"],
        [uv, "pip", "install", "--python", str(python), "--quiet", "bash_kernel"],
        [str(python), "-m", "bash_kernel.install", "--prefix", str(prefix)],
    ]
    for argv in steps:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
        assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    data_dir = prefix / "share" / "jupyter"
    assert (data_dir / "kernels" / "bash" / "kernel.json").is_file()
    return data_dir


@pytest.fixture(scope="session")
def extra_kernels_dir(tmp_path_factory: pytest.TempPathFactory, bash_kernel_data_dir: Path) -> Path:
    """A second Jupyter data dir: ``bash-env`` (bash_kernel with an ``env`` that refers to the
    daemon's), ``ghost`` (a program that does not exist) and ``broken`` (not JSON)."""
    data_dir = tmp_path_factory.mktemp("extra-kernels")
    bash = json.loads((bash_kernel_data_dir / "kernels" / "bash" / "kernel.json").read_text())
    specs = {
        "bash-env": json.dumps({**bash, "display_name": "Bash (env)",
                                "env": {**bash.get("env", {}), "RT_GREETING": "from ${RT_WHO}"}}),
        "ghost": json.dumps({"argv": ["/nonexistent/python", "-f", "{connection_file}"],
                             "display_name": "Ghost", "language": "python"}),
        "broken": '{"argv": ["bash", ',
    }
    for name, text in specs.items():
        (data_dir / "kernels" / name).mkdir(parents=True)
        (data_dir / "kernels" / name / "kernel.json").write_text(text)
    return data_dir


@pytest.fixture
def jupyter_path(bash_kernel_data_dir: Path, extra_kernels_dir: Path) -> str:
    return os.pathsep.join([str(bash_kernel_data_dir), str(extra_kernels_dir)])


@pytest.fixture
def jupyter_daemon(runtimed_daemon_factory: Callable[..., DaemonProcess],
                   jupyter_path: str) -> DaemonProcess:
    """A daemon that sees these kernelspecs, with no Python environments and no hot kernels:
    had it asked a pool for one, it would have had to build it."""
    return runtimed_daemon_factory(pool_sizes={"uv": 0}, hot_kernels=0,
                                   env={"JUPYTER_PATH": jupyter_path, "RT_WHO": "the daemon"})
