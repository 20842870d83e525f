"""Fixtures for the conda pool's tests: a local ``file://`` test channel and pools that use it.

The channel (:mod:`runtimed_conda_pool.testing`) is built once per machine and
cached under the system temp directory; it is configured exactly as a real
channel would be, through ``RUNTIMED_CONDA_CHANNELS``.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtimed.config import DaemonConfig
from runtimed_conda_pool import CondaPool
from runtimed_conda_pool.testing import LocalChannel, local_channel


@pytest.fixture(scope="session")
def conda_channel() -> LocalChannel:
    """The local test channel (python shim, ipykernel, ipywidgets, pip, runtimed-test-hello)."""
    return local_channel()


@pytest.fixture(scope="session")
def conda_lock_api() -> Any:
    """conda-lock's lock-file API (a test dependency only: the tests cross-check our writer
    against it; its vendored conda warns while it imports)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import conda_lock.lockfile.v1.models as v1
        import conda_lock.lockfile.v2prelim.models as v2
        from conda_lock import lockfile
    return types.SimpleNamespace(lockfile=lockfile, v1=v1, v2=v2)


@pytest.fixture(scope="session")
def rattler_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One rattler package cache for the session, so only the first install extracts packages."""
    return tmp_path_factory.mktemp("rattler-cache")


@pytest.fixture
def conda_env(
    conda_channel: LocalChannel, rattler_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Point the conda pool at the test channel, the way a user would configure conda-forge."""
    env = {"RUNTIMED_CONDA_CHANNELS": conda_channel.url, "RATTLER_CACHE_DIR": str(rattler_cache)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def make_pool(conda_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., CondaPool]]:
    """``make_pool(size=1, compile=False, packages=None, cache_dir=None)``: a pool on the channel.

    Bytecode compilation is off unless asked for: it is the slowest step and one
    test covers it.
    """

    def factory(
        size: int = 1,
        *,
        compile: bool = False,
        packages: list[str] | None = None,
        cache_dir: Path | None = None,
    ) -> CondaPool:
        config = DaemonConfig(
            cache_dir=cache_dir or tmp_path / "cache",
            settings={"conda.pool_size": size},
            default_packages=packages or [],
        )
        pool = CondaPool(config)
        pool.builder.compile_bytecode = compile
        return pool

    yield factory
