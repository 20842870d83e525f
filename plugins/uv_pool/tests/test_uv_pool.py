"""UvPool against the real uv and package index (builds take a few seconds with a warm uv cache)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from runtimed import procs
from runtimed.config import DaemonConfig
from runtimed.errors import EnvironmentFailed
from runtimed.pools import EnvRequest, PoolStatus, PreparedEnv, no_progress
from runtimed.testing import ProgressRecorder as Recorder
from runtimed.testing import copy_ready_env, processes_mentioning, running, wait_for
from runtimed_uv_pool import UvPool
from runtimed_uv_pool.hooks import runtimed_env_pools
from runtimed_uv_pool.pool import READY_PREFIX

REQUEST = EnvRequest(env_source="uv:prewarmed", notebook_id="nb-1")
MISSING_PACKAGE = "runtimed-no-such-package-xyz"


def make_pool(tmp_path: Path, size: int = 1, packages: list[str] | None = None) -> UvPool:
    config = DaemonConfig(
        cache_dir=tmp_path / "cache",
        settings={"uv.pool_size": size},
        python=sys.executable,
        default_packages=packages or [],
    )
    return UvPool(config)


def ready_dirs(pool: UvPool) -> list[Path]:
    """Env dirs carrying a ``.warmed`` marker, as seen on disk."""
    return sorted(p for p in pool.envs_dir.glob("uv-prewarmed-*") if (p / ".warmed").exists())


def on_disk(pool: UvPool) -> list[str]:
    return sorted(p.name for p in pool.envs_dir.iterdir())


async def run_in_env(env: PreparedEnv, code: str) -> str:
    proc = await asyncio.to_thread(
        subprocess.run, [*env.python, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# -- no builds -----------------------------------------------------------------


def test_plugin_registers_uv_pool_through_its_entry_point() -> None:
    assert runtimed_env_pools() == [UvPool]
    entry = {ep.name: ep for ep in importlib.metadata.entry_points(group="runtimed")}["uv_pool"]
    assert entry.load().runtimed_env_pools() == [UvPool]
    assert UvPool.family == "uv"
    assert UvPool.sources == ("uv:prewarmed", "uv:inline", "uv:pep723", "uv:pyproject")


def test_acquire_refuses_other_sources_and_a_stopped_pool(tmp_path: Path) -> None:
    pool = make_pool(tmp_path)

    async def scenario() -> None:
        with pytest.raises(EnvironmentFailed, match="conda:inline") as excinfo:
            await pool.acquire(EnvRequest("conda:inline", "nb"), no_progress)
        assert excinfo.value.env_source == "conda:inline"
        for source in UvPool.sources:
            with pytest.raises(EnvironmentFailed, match="not running"):
                await pool.acquire(EnvRequest(source, "nb"), no_progress)

    asyncio.run(scenario())
    assert pool.status() == PoolStatus(available=0, warming=0, target=1)


def test_run_reports_a_failing_command_with_its_stderr() -> None:
    code = "import sys; print('step one'); sys.exit('error: the reason it failed')"
    with pytest.raises(procs.CommandFailed) as excinfo:
        asyncio.run(procs.run([sys.executable, "-c", code]))
    assert excinfo.value.returncode == 1
    assert excinfo.value.tail().endswith("error: the reason it failed")
    assert excinfo.value.summary().startswith(f"`{Path(sys.executable).name}` exited with 1:")


def test_run_kills_the_whole_process_group_on_cancel_and_timeout() -> None:
    tag = f"runtimed-test-{uuid.uuid4().hex}"
    # A command that starts a grandchild, like uv does when it compiles bytecode.
    code = (
        "import subprocess, sys, time; "
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', '{tag}']); "
        "time.sleep(60)"
    )

    async def scenario() -> None:
        task = asyncio.create_task(procs.run([sys.executable, "-c", code, tag]))
        await wait_for(lambda: len(processes_mentioning(tag)) == 2, timeout=10)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - started < 2
        await wait_for(lambda: processes_mentioning(tag) == [], timeout=2)

        with pytest.raises(procs.CommandFailed, match="timed out"):
            await procs.run([sys.executable, "-c", code, tag], timeout=0.5)
        await wait_for(lambda: processes_mentioning(tag) == [], timeout=2)

    asyncio.run(scenario())


# -- real builds ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.network
def test_pool_fills_and_hands_out_working_distinct_envs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runtimed.pools.uv")
    pool = make_pool(tmp_path, size=1)

    async def scenario() -> tuple[PreparedEnv, PreparedEnv]:
        started = time.monotonic()
        async with running(pool):
            assert time.monotonic() - started < 1, "start() must not wait for builds"
            assert pool.status() == PoolStatus(available=0, warming=1, target=1)

            await wait_for(lambda: pool.status().available == 1)
            assert pool.status() == PoolStatus(available=1, warming=0, target=1)
            [first_dir] = ready_dirs(pool)
            assert re.fullmatch(r"uv-prewarmed-[0-9a-f]{32}", first_dir.name)
            marker = json.loads((first_dir / ".warmed").read_text())
            assert marker["packages"] == ["ipykernel", "ipywidgets"]
            assert abs(marker["created"] - time.time()) < 120

            progress = Recorder()
            first = await pool.acquire(REQUEST, progress)
            assert progress.events == [], "a ready env is handed out without waiting"
            assert first.env_source == "uv:prewarmed"
            assert first.prefix == first_dir
            assert first.python == [str(first_dir / "bin" / "python")]
            # Taking the env starts its replacement.
            assert pool.status() == PoolStatus(available=0, warming=1, target=1)

            code = "import sys, ipykernel, ipywidgets; print(sys.prefix)"
            assert Path(await run_in_env(first, code)) == first_dir
            assert list(first_dir.glob("lib/python3*/site-packages/ipykernel/__pycache__/*.pyc"))

            await wait_for(lambda: pool.status().available == 1)
            second = await pool.acquire(REQUEST, no_progress)
            assert second.prefix != first.prefix
            await pool.release(first)
        return first, second

    first, second = asyncio.run(scenario())
    assert not first.prefix.exists(), "release() deletes the env"
    assert second.prefix.exists(), "an env in use is left alone"
    assert not (second.prefix / ".warmed").exists(), "a handed-out env is never reused"
    assert not list(pool.envs_dir.glob("*.partial"))
    assert "UV pool: 1/1 available" in caplog.messages
    assert "UV pool: 0/1 available" in caplog.messages


@pytest.mark.slow
@pytest.mark.network
def test_acquire_on_an_empty_pool_waits_for_the_warmer(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, size=1)
    progress = Recorder()

    async def scenario() -> None:
        async with running(pool):
            env = await pool.acquire(REQUEST, progress)
            assert await run_in_env(env, "import ipykernel; print('ok')") == "ok"

    asyncio.run(scenario())
    assert progress.events == [("preparing_env", "Waiting for the uv pool to warm an environment")]


@pytest.mark.slow
@pytest.mark.network
def test_pool_size_zero_builds_one_env_per_request(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, size=0)
    progress = Recorder()

    async def scenario() -> PreparedEnv:
        async with running(pool):
            assert pool.status() == PoolStatus(available=0, warming=0, target=0)
            env = await pool.acquire(REQUEST, progress)
            assert pool.status() == PoolStatus(available=0, warming=0, target=0)
        return env

    env = asyncio.run(scenario())
    assert progress.events and progress.events[0][0] == "preparing_env"
    assert on_disk(pool) == [env.prefix.name], "nothing is built beyond the request"


@pytest.mark.slow
@pytest.mark.network
def test_acquire_gives_up_after_its_timeout(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, size=1)
    pool.acquire_timeout = 0.2

    async def scenario() -> None:
        async with running(pool):
            started = time.monotonic()
            with pytest.raises(EnvironmentFailed, match=r"Timed out after 0\.2 s"):
                await pool.acquire(REQUEST, no_progress)
            assert time.monotonic() - started < 2

    asyncio.run(scenario())


@pytest.mark.slow
@pytest.mark.network
def test_flush_discards_ready_and_in_progress_envs_and_rebuilds(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, size=1)

    async def scenario() -> tuple[Path, Path]:
        async with running(pool):
            waiting = asyncio.create_task(pool.acquire(REQUEST, no_progress))
            await asyncio.sleep(0.3)  # the build the acquire waits for is under way
            await pool.flush()
            taken = await waiting  # served by the rebuilt pool, not failed by the flush
            await pool.release(taken)

            await wait_for(lambda: pool.status().available == 1)
            [old] = ready_dirs(pool)
            await pool.flush()
            assert pool.status() == PoolStatus(available=0, warming=1, target=1)
            await wait_for(lambda: pool.status().available == 1)
            [new] = ready_dirs(pool)
            env = await pool.acquire(REQUEST, no_progress)
            assert env.prefix == new
        return old, new

    old, new = asyncio.run(scenario())
    assert new != old
    assert on_disk(pool) == [new.name], "flushed, released and abandoned envs are deleted"


@pytest.mark.slow
@pytest.mark.network
def test_start_reuses_valid_envs_and_deletes_the_rest(tmp_path: Path) -> None:
    first = make_pool(tmp_path, size=1)

    async def fill() -> None:
        async with running(first):
            await wait_for(lambda: first.status().available == 1)

    asyncio.run(fill())
    [kept] = ready_dirs(first)
    created = json.loads((kept / ".warmed").read_text())["created"]
    envs = first.envs_dir
    older = copy_ready_env(kept, READY_PREFIX, created=created - 3600)  # valid, an hour older
    stale = copy_ready_env(kept, READY_PREFIX, created=created - 3 * 24 * 3600)
    other_packages = copy_ready_env(kept, READY_PREFIX,
                                    packages=["ipykernel", "ipywidgets", "numpy"])
    # python runs, ipykernel is missing
    broken = copy_ready_env(kept, READY_PREFIX, only=("bin", "pyvenv.cfg"))
    no_python = copy_ready_env(kept, READY_PREFIX, only=("pyvenv.cfg",))
    unmarked = envs / f"uv-prewarmed-{uuid.uuid4().hex}"
    shutil.copytree(kept, unmarked, symlinks=True, copy_function=os.link)
    (unmarked / ".warmed").unlink()
    half_built = envs / f"uv-prewarmed-{uuid.uuid4().hex}.partial"
    shutil.copytree(kept, half_built, symlinks=True, copy_function=os.link)

    not_ours = envs / "conda-prewarmed-0123"  # another pool's env
    not_ours.mkdir()

    # A pool of 3 keeps the two valid envs, deletes everything else, builds the third.
    second = make_pool(tmp_path, size=3)

    async def restart() -> None:
        async with running(second):
            assert second.status() == PoolStatus(available=2, warming=1, target=3)

    asyncio.run(restart())
    for gone in (stale, other_packages, broken, no_python, unmarked, half_built):
        assert not gone.exists(), gone.name
    assert on_disk(second) == sorted([kept.name, older.name, not_ours.name])

    # A pool of 1 keeps the newest valid env and hands it out without building.
    third = make_pool(tmp_path, size=1)
    progress = Recorder()

    async def restart_smaller() -> PreparedEnv:
        async with running(third):
            assert third.status() == PoolStatus(available=1, warming=0, target=1)
            return await third.acquire(REQUEST, progress)

    env = asyncio.run(restart_smaller())
    assert env.prefix == kept
    assert progress.events == []
    assert on_disk(third) == sorted([kept.name, not_ours.name])


@pytest.mark.slow
@pytest.mark.network
def test_a_failing_build_makes_acquire_raise_with_uvs_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runtimed.pools.uv")
    pool = make_pool(tmp_path, size=1, packages=[MISSING_PACKAGE])

    async def scenario() -> EnvironmentFailed:
        async with running(pool):
            started = time.monotonic()
            with pytest.raises(EnvironmentFailed) as excinfo:
                await pool.acquire(REQUEST, no_progress)
            assert time.monotonic() - started < 60, "fails fast instead of waiting 120 s"
            assert pool.status().available == 0
        return excinfo.value

    error = asyncio.run(scenario())
    assert error.env_source == "uv:prewarmed"
    assert MISSING_PACKAGE in error.message
    assert "uv pip install" in error.message
    assert f"RUNTIMED_DEFAULT_PACKAGES={MISSING_PACKAGE}" in error.message
    assert on_disk(pool) == [], "failed builds leave nothing behind"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(MISSING_PACKAGE in message for message in warnings)


@pytest.mark.slow
@pytest.mark.network
def test_stop_kills_a_running_build_and_cleans_up(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, size=1)

    async def scenario() -> None:
        await pool.start()
        # Stop while `uv pip install` (the long step) runs inside the build directory.
        installing = f"pip install --quiet --no-python-downloads --python {pool.envs_dir}"
        await wait_for(lambda: bool(processes_mentioning(installing)), timeout=10)
        started = time.monotonic()
        await pool.stop()
        assert time.monotonic() - started < 5
        assert pool.status() == PoolStatus(available=0, warming=0, target=1)

    asyncio.run(scenario())
    assert processes_mentioning(str(pool.envs_dir)) == []
    assert on_disk(pool) == []
