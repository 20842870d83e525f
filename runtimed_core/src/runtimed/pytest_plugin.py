"""pytest fixtures for testing against a real, isolated runtimed daemon.

Registered through ``pytest11`` and passive: nothing happens unless a test asks
for a fixture. Every daemon gets its own socket, cache, state and log
directories under pytest's temporary directory, and is stopped afterwards.

Fixtures:

``runtimed_daemon`` (session scope)
    One isolated daemon shared by the test session (2 ready environments of the
    default family, none of the others).
``runtimed_daemon_factory``
    Start extra daemons with your own options; all are stopped after the test.
``runtimed_session_factory``
    ``factory(notebook_id=None)`` returns connected :class:`runtimed.Session` objects
    on ``runtimed_daemon``; their kernels are shut down and sessions closed afterwards.
``runtimed_session``
    One connected session on ``runtimed_daemon``.
``runtimed_isolated``
    Points the code under test at ``runtimed_daemon``: for the test's duration the
    ``RUNTIMED_*`` variables (socket, directories, configuration file, pool sizes) name
    it, so a plain ``runtimed.Session()`` or ``DaemonClient()`` in the code under test
    reaches the test daemon (and one it may auto-start is just as isolated), never the
    user's. ``CONDUCTOR_WORKSPACE_PATH`` is unset. Restored after the test. Returns the
    daemon.
``runtimed_async_session_factory``, ``runtimed_async_session``
    The same as the sync ones, with connected :class:`runtimed.AsyncSession` objects, for
    ``async def`` tests (with pytest-asyncio; or anyio's plugin where pytest-asyncio is not
    installed); their kernels are shut down and sessions closed afterwards.

Test daemons read no configuration file but their own (``<root>/runtimed.toml``, absent
unless a test writes it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtimed.client.async_session import AsyncSession
from runtimed.client.sync import DaemonClient, Session
from runtimed.errors import RuntimedError
from runtimed.plugins import Registry
from runtimed.settings import Setting

START_TIMEOUT = 60.0

try:  # async fixtures run in pytest-asyncio's loop when it is installed, else anyio's
    from pytest_asyncio import fixture as _async_fixture
except ImportError:  # pragma: no cover - depends on what the user installed
    _async_fixture = pytest.fixture


def pool_size_env(pool_sizes: dict[str, int] | None = None) -> dict[str, str]:
    """Environment variables that size the pools: ``pool_sizes[family]`` (also for a family
    only the daemon can see, e.g. from its own ``PYTHONPATH``), else 2 for the default family
    and 0 for the others installed here (a test asks for what it needs)."""
    registry = Registry.load()
    default = registry.default_family(os.environ.get("RUNTIMED_DEFAULT_FAMILY"))
    sizes = {family: 2 if family == default else 0 for family in registry.pools}
    sizes.update(pool_sizes or {})
    size_setting = Setting("pool_size", 0)
    return {size_setting.env_var(family): str(size) for family, size in sizes.items()}


class DaemonProcess:
    """A daemon started for tests: its directories, process, and clients bound to it."""

    def __init__(self, root: Path, *, pool_sizes: dict[str, int] | None = None,
                 hot_kernels: int = 1, keep_alive_secs: float = 2.0,
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        """``pool_sizes``: ready environments per family (default: 2 of the default family,
        0 of the others); ``extra_args`` go to ``runtimed run``, ``env`` to its environment."""
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        self.socket_path = root / "runtimed.sock"
        self.cache_dir = root / "cache"
        self.state_dir = root / "state"
        self.blob_store_dir = root / "blobs"
        self.runtime_dir = root / "run"
        #: The daemon's configuration file (absent unless a test writes it before start).
        self.config_file = root / "runtimed.toml"
        self.log_path = root / "daemon.log"
        #: How the daemon is started: ``<command> run <args>``.
        self.command = [sys.executable, "-m", "runtimed"]
        self._hot_kernels, self._keep_alive_secs = hot_kernels, keep_alive_secs
        self.args = [
            "--socket", str(self.socket_path), "--cache-dir", str(self.cache_dir),
            "--state-dir", str(self.state_dir), "--blob-store-dir", str(self.blob_store_dir),
            "--hot-kernels", str(hot_kernels),
            "--keep-alive-secs", str(keep_alive_secs),
            "--log-level", "debug", *(extra_args or []),
        ]
        self._pool_env = pool_size_env(pool_sizes)
        self.env = {**os.environ, "RUNTIMED_LOG_DIR": str(root / "logs"),
                    "RUNTIMED_RUNTIME_DIR": str(self.runtime_dir),
                    "RUNTIMED_CONFIG_FILE": str(self.config_file), **self._pool_env, **(env or {})}
        self.env.pop("CONDUCTOR_WORKSPACE_PATH", None)
        self.process: subprocess.Popen[bytes] | None = None

    def environ(self) -> dict[str, str]:
        """Environment variables that make a client (or a daemon it auto-starts) use this
        daemon: its socket, directories, configuration file and pool sizes."""
        return {
            "RUNTIMED_SOCKET_PATH": str(self.socket_path), "RUNTIMED_CACHE_DIR": str(self.cache_dir),
            "RUNTIMED_STATE_DIR": str(self.state_dir),
            "RUNTIMED_BLOB_STORE_DIR": str(self.blob_store_dir),
            "RUNTIMED_LOG_DIR": self.env["RUNTIMED_LOG_DIR"],
            "RUNTIMED_RUNTIME_DIR": self.env["RUNTIMED_RUNTIME_DIR"],
            "RUNTIMED_CONFIG_FILE": self.env["RUNTIMED_CONFIG_FILE"],
            "RUNTIMED_HOT_KERNELS": str(self._hot_kernels),
            "RUNTIMED_KEEP_ALIVE_SECS": str(self._keep_alive_secs), **self._pool_env,
        }

    def start(self) -> DaemonProcess:
        """Start the process and wait until it answers pings."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [*self.command, "run", *self.args],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=self.env, start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not self.client().ping():
            if self.process.poll() is not None:
                raise RuntimedError(f"Test daemon exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimedError(f"Test daemon did not answer within {START_TIMEOUT} s:\n{self.log()}")
            time.sleep(0.05)
        return self

    def client(self) -> DaemonClient:
        return DaemonClient(socket_path=self.socket_path)

    def session(self, notebook_id: str | None = None) -> Session:
        return Session(notebook_id, socket_path=self.socket_path)

    def async_session(self, notebook_id: str | None = None) -> AsyncSession:
        return AsyncSession(notebook_id, socket_path=self.socket_path)

    def wait_for_pool(self, available: int = 1, family: str | None = None,
                      timeout: float = 300.0) -> None:
        """Block until the pool of ``family`` (default: the default family) has ``available``
        ready environments."""
        family = family or Registry.load().default_family(os.environ.get("RUNTIMED_DEFAULT_FAMILY"))
        deadline = time.monotonic() + timeout
        while self.client().status().get(f"{family}_available", 0) < available:
            if time.monotonic() > deadline:
                raise RuntimedError(f"{family} pool did not fill within {timeout} s:\n{self.log()}")
            time.sleep(0.1)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL the daemon (and nothing else: its kernels are orphaned as in a real crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful stop (SIGTERM), then SIGKILL of the whole process group if needed."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.process = None


@pytest.fixture(scope="session")
def runtimed_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """A shared isolated daemon for the test session."""
    daemon = DaemonProcess(tmp_path_factory.mktemp("runtimed-daemon")).start()
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture
def runtimed_daemon_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., DaemonProcess]]:
    """``factory(**options)`` starts an isolated daemon; all are stopped after the test."""
    started: list[DaemonProcess] = []

    def factory(root: Path | None = None, **options: Any) -> DaemonProcess:
        daemon = DaemonProcess(root or tmp_path_factory.mktemp("runtimed-daemon"), **options)
        started.append(daemon)
        return daemon.start()

    try:
        yield factory
    finally:
        for daemon in started:
            daemon.stop()


@pytest.fixture
def runtimed_session_factory(runtimed_daemon: DaemonProcess) -> Iterator[Callable[..., Session]]:
    """``factory(notebook_id=None)``: connected sessions on the shared daemon, cleaned up after."""
    sessions: list[Session] = []

    def factory(notebook_id: str | None = None, *, daemon: DaemonProcess | None = None) -> Session:
        session = (daemon or runtimed_daemon).session(notebook_id)
        sessions.append(session)
        session.connect()
        return session

    try:
        yield factory
    finally:
        for session in reversed(sessions):
            with contextlib.suppress(RuntimedError):
                session.__exit__(None, None, None)


@pytest.fixture
def runtimed_session(runtimed_session_factory: Callable[..., Session]) -> Session:
    """A connected session on the shared daemon (kernel shut down afterwards)."""
    return runtimed_session_factory()


@pytest.fixture
def runtimed_isolated(runtimed_daemon: DaemonProcess) -> Iterator[DaemonProcess]:
    """The code under test reaches ``runtimed_daemon`` through the environment (see the
    module docstring); the variables are restored after the test."""
    with pytest.MonkeyPatch.context() as mp:
        for name, value in runtimed_daemon.environ().items():
            mp.setenv(name, value)
        mp.delenv("CONDUCTOR_WORKSPACE_PATH", raising=False)
        yield runtimed_daemon


@_async_fixture
async def runtimed_async_session_factory(runtimed_daemon: DaemonProcess
                                         ) -> AsyncIterator[Callable[..., Awaitable[AsyncSession]]]:
    """``await factory(notebook_id=None)``: connected async sessions on the shared daemon,
    cleaned up after the test (in the test's event loop)."""
    sessions: list[AsyncSession] = []

    async def factory(notebook_id: str | None = None, *,
                      daemon: DaemonProcess | None = None) -> AsyncSession:
        session = (daemon or runtimed_daemon).async_session(notebook_id)
        sessions.append(session)
        await session.connect()
        return session

    try:
        yield factory
    finally:
        for session in reversed(sessions):
            with contextlib.suppress(RuntimedError):
                await session.__aexit__(None, None, None)


@_async_fixture
async def runtimed_async_session(
    runtimed_async_session_factory: Callable[..., Awaitable[AsyncSession]]) -> AsyncSession:
    """A connected async session on the shared daemon (kernel shut down afterwards)."""
    return await runtimed_async_session_factory()
