"""Fixtures: isolated daemons that build no Python environments, for the real Deno kernel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from runtimed.pytest_plugin import DaemonProcess


@pytest.fixture(scope="session")
def deno_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One DENO_DIR for the test session (Deno fills it on first use, offline)."""
    return tmp_path_factory.mktemp("deno-dir")


@pytest.fixture
def deno_daemon_factory(
    runtimed_daemon_factory: Callable[..., DaemonProcess],
) -> Callable[..., DaemonProcess]:
    """``factory(**env)``: a daemon with no uv or conda pool and no hot kernels, ``env`` on top.

    Deno needs no pool: had the daemon asked one for an environment, it would build it.
    """

    def factory(**env: str) -> DaemonProcess:
        return runtimed_daemon_factory(pool_sizes={"uv": 0}, hot_kernels=0, env=env)

    return factory


@pytest.fixture
def deno_daemon(deno_daemon_factory: Callable[..., DaemonProcess], deno_dir: Path) -> DaemonProcess:
    return deno_daemon_factory(DENO_DIR=str(deno_dir), NO_COLOR="1")
