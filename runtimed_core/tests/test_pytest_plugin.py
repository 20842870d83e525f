"""The pytest plugin as a third party uses it: the README's example test file, run by pytest in
a process of its own, with the user's own daemon out of reach."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import runtimed

README = Path(__file__).parents[2] / "README.md"

pytestmark = pytest.mark.slow


def _readme_test_file() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    [code] = [b for b in blocks if b.startswith("# tests/test_wordcount.py")]
    return code


def _pytest(tmp_path: Path, code: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_wordcount.py").write_text(code)
    # "your own daemon": somewhere the code under test must never go (and no auto-start)
    env = {**os.environ, "RUNTIMED_SOCKET_PATH": str(tmp_path / "users-own.sock"),
           "RUNTIMED_NO_AUTOSTART": "1"}
    env.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(tmp_path / "test_wordcount.py")],
                          capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)


def test_the_readme_example_passes_against_the_test_daemon(tmp_path):
    result = _pytest(tmp_path, _readme_test_file())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
    assert not (tmp_path / "users-own.sock").exists()


def test_without_runtimed_isolated_the_code_under_test_goes_elsewhere(tmp_path):
    """The control: the same test without the fixture reaches the 'user's' socket."""
    code = _readme_test_file().replace("(runtimed_isolated)", "(runtimed_daemon)")
    result = _pytest(tmp_path, code)
    assert result.returncode == 1 and "1 failed, 1 passed" in result.stdout
    assert f"DaemonNotRunning: No runtimed daemon is running at {tmp_path / 'users-own.sock'}" in result.stdout


def test_runtimed_isolated_names_the_test_daemon(runtimed_isolated):
    assert os.environ["RUNTIMED_SOCKET_PATH"] == str(runtimed_isolated.socket_path)
    assert os.environ["RUNTIMED_CACHE_DIR"] == str(runtimed_isolated.cache_dir)
    assert os.environ["RUNTIMED_CONFIG_FILE"] == str(runtimed_isolated.config_file)
    assert runtimed.DaemonClient().info()["pid"] == runtimed_isolated.process.pid
