"""CondaPool against the local test channel: real rattler solves and installs, real envs.

Each build takes about a second (packages are hard-linked from a session-wide
rattler cache; bytecode compilation is off except where a test checks it).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rattler
import yaml

from runtimed.errors import EnvironmentFailed
from runtimed.pools import EnvRequest, PoolStatus, PreparedEnv, no_progress
from runtimed.testing import ProgressRecorder as Recorder
from runtimed.testing import copy_ready_env, processes_mentioning, running
from runtimed.testing import wait_for as _wait_for
from runtimed_conda_pool import CondaPool
from runtimed_conda_pool.activation import ACTIVATION_NAME
from runtimed_conda_pool.build import Builder
from runtimed_conda_pool.hooks import runtimed_env_pools
from runtimed_conda_pool.lockfile import read_lock
from runtimed_conda_pool.pool import POOL_LOCK
from runtimed_conda_pool.testing import (
    ACTIVATED_VAR,
    ACTIVATION,
    ENV_VARS_VALUE,
    ENV_VARS_VAR,
    HELLO,
    LocalChannel,
    make_wheel,
)


async def wait_for(predicate: Callable[[], bool], timeout: float = 60) -> None:
    await _wait_for(predicate, timeout, interval=0.02)

PREWARMED = EnvRequest(env_source="conda:prewarmed", notebook_id="nb-1")
READY_PREFIX = "conda-prewarmed-"  # the conda pool's ready envs (Prewarmer.ready_prefix)
MakePool = Callable[..., CondaPool]


def inline_request(
    deps: list[str], notebook_path: Path | None = None, **section: object
) -> EnvRequest:
    return EnvRequest(
        "conda:inline",
        "nb-1",
        notebook_path=notebook_path,
        metadata={"runt": {"conda": {"dependencies": deps, **section}}},
    )


def acquire_once(pool: CondaPool, request: EnvRequest) -> PreparedEnv:
    """Start ``pool``, take one env for ``request``, stop the pool."""

    async def scenario() -> PreparedEnv:
        async with running(pool):
            return await pool.acquire(request, no_progress)

    return asyncio.run(scenario())


def ready_dirs(pool: CondaPool) -> list[Path]:
    return sorted(p for p in pool.envs_dir.glob(f"{READY_PREFIX}*") if (p / ".warmed").exists())


def on_disk(pool: CondaPool) -> list[str]:
    return sorted(p.name for p in pool.envs_dir.iterdir())


def marker(path: Path) -> dict[str, object]:
    return json.loads((path / ".warmed").read_text())


def run_in(env: PreparedEnv | Path, code: str) -> str:
    python = env.python if isinstance(env, PreparedEnv) else [str(env / "bin" / "python")]
    proc = subprocess.run(
        [*python, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def hello_version(env: PreparedEnv | Path) -> str:
    return run_in(env, "import runtimed_test_hello as h; print(h.__version__)")


# -- no builds -------------------------------------------------------------------------------------


def test_plugin_registers_conda_pool_through_its_entry_point() -> None:
    assert runtimed_env_pools() == [CondaPool]
    entry = {ep.name: ep for ep in importlib.metadata.entry_points(group="runtimed")}["conda_pool"]
    assert entry.load().runtimed_env_pools() == [CondaPool]
    assert CondaPool.family == "conda"
    assert CondaPool.sources == ("conda:prewarmed", "conda:inline", "conda:env_yml", "conda:pixi")


def test_acquire_refuses_other_sources_and_a_stopped_pool(make_pool: MakePool) -> None:
    pool = make_pool()

    async def scenario() -> None:
        with pytest.raises(EnvironmentFailed, match="uv:inline") as excinfo:
            await pool.acquire(EnvRequest("uv:inline", "nb"), no_progress)
        assert excinfo.value.env_source == "uv:inline"
        with pytest.raises(EnvironmentFailed, match="not running"):
            await pool.acquire(PREWARMED, no_progress)

    asyncio.run(scenario())
    assert pool.status() == PoolStatus(available=0, warming=0, target=1)


def test_the_test_channel_holds_what_the_tests_rely_on(conda_channel: LocalChannel) -> None:
    assert {"python", "ipykernel", "ipywidgets", "pip", HELLO} <= conda_channel.names
    assert conda_channel.url.startswith("file:///")
    assert (conda_channel.path / "noarch" / "repodata.json").is_file()
    versions = {f for f in conda_channel.files if f.startswith(HELLO)}
    assert versions == {f"{HELLO}-1.0.0-pyh_0.tar.bz2", f"{HELLO}-2.0.0-pyh_0.tar.bz2"}


# -- the prewarmed pool ----------------------------------------------------------------------------


@pytest.mark.slow
def test_pool_fills_hands_out_and_replenishes_from_its_lock_without_solving(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="runtimed.pools.conda")
    pool = make_pool(size=1, compile=True)

    async def scenario() -> tuple[PreparedEnv, PreparedEnv]:
        started = time.monotonic()
        await pool.start()
        assert time.monotonic() - started < 1, "start() must not wait for builds"
        assert pool.status() == PoolStatus(available=0, warming=1, target=1)
        await wait_for(lambda: pool.status().available == 1)
        assert pool.status() == PoolStatus(available=1, warming=0, target=1)
        [first_dir] = ready_dirs(pool)
        fields = marker(first_dir)
        assert fields["solved"] is True
        assert fields["specs"] == ["python", "ipykernel", "ipywidgets"]
        assert pool.builder.solves == 1
        assert pool.pool_lock.is_file(), "the first solve is kept for replenishing"

        progress = Recorder()
        first = await pool.acquire(PREWARMED, progress)
        assert progress.events == [], "a ready env is handed out without waiting"
        assert first.env_source == "conda:prewarmed"
        assert first.prefix == first_dir
        assert first.python == [str(first_dir / "bin" / "python")]
        assert first.env["CONDA_PREFIX"] == str(first_dir), "built elsewhere, moved with the env"
        assert pool.status() == PoolStatus(available=0, warming=1, target=1), (
            "taking starts a replacement"
        )

        await wait_for(lambda: pool.status().available == 1)
        [second_dir] = ready_dirs(pool)
        assert marker(second_dir)["solved"] is False, "the replacement was installed from the lock"
        assert pool.builder.solves == 1
        second = await pool.acquire(PREWARMED, no_progress)
        await pool.release(first)
        await pool.stop()
        return first, second

    first, second = asyncio.run(scenario())
    prefix = run_in(second, "import sys, ipykernel, ipywidgets; print(sys.prefix)")
    assert Path(prefix) == second.prefix
    assert (second.prefix / "conda-meta").is_dir() and list(
        (second.prefix / "conda-meta").glob("ipykernel-*.json")
    )
    # rattler writes no bytecode; the pool compiles it.
    site = (
        second.prefix
        / "lib"
        / f"python{sys.version_info.major}.{sys.version_info.minor}"
        / "site-packages"
    )
    assert list(site.glob("ipykernel/__pycache__/*.pyc"))
    lock = read_lock(second.prefix / "conda-lock.yml", "linux-64")
    assert {"python", "ipykernel", "ipywidgets"} <= lock.names
    assert not first.prefix.exists(), "release() deletes the env"
    assert not (second.prefix / ".warmed").exists(), "a handed-out env is never reused"
    assert "Conda pool: 1/1 available" in caplog.messages
    assert "Conda pool: 0/1 available" in caplog.messages


@pytest.mark.slow
def test_acquire_on_an_empty_pool_waits_and_reports_the_build(make_pool: MakePool) -> None:
    pool = make_pool(size=0)
    progress = Recorder()

    async def scenario() -> PreparedEnv:
        await pool.start()
        assert pool.status() == PoolStatus(available=0, warming=0, target=0)
        env = await pool.acquire(PREWARMED, progress)
        assert pool.status() == PoolStatus(available=0, warming=0, target=0)
        await pool.stop()
        return env

    env = asyncio.run(scenario())
    assert {phase for phase, _ in progress.events} == {"preparing_env"}
    messages = progress.messages
    assert messages[0] == "Waiting for the conda pool to warm an environment"
    for expected in (
        "Fetching repodata from file://",
        "Solving the conda pool's packages (3 specs)",
        "Downloading and installing ",
        "Linked ",
        "Importing ipykernel",
    ):
        assert any(m.startswith(expected) for m in messages), (expected, messages)
    assert on_disk(pool) == sorted([env.prefix.name, POOL_LOCK]), (
        "nothing is built beyond the request"
    )


@pytest.mark.slow
def test_flush_discards_ready_envs_and_the_lock_and_solves_again(make_pool: MakePool) -> None:
    pool = make_pool(size=1)

    async def scenario() -> tuple[Path, Path]:
        await pool.start()
        await wait_for(lambda: pool.status().available == 1)
        [old] = ready_dirs(pool)
        await pool.flush()
        assert not pool.pool_lock.exists()
        assert pool.status() == PoolStatus(available=0, warming=1, target=1)
        await wait_for(lambda: pool.status().available == 1)
        await pool.prewarmed.drain_deletions()
        [new] = ready_dirs(pool)
        assert marker(new)["solved"] is True
        assert pool.builder.solves == 2
        await pool.stop()
        return old, new

    old, new = asyncio.run(scenario())
    assert new != old
    assert on_disk(pool) == sorted([new.name, POOL_LOCK]), "flushed envs are deleted"


@pytest.mark.slow
def test_start_reuses_valid_envs_and_discards_stale_broken_and_foreign_ones(
    make_pool: MakePool, tmp_path: Path
) -> None:
    first = make_pool(size=1)

    async def fill() -> None:
        await first.start()
        await wait_for(lambda: first.status().available == 1)
        await first.stop()

    asyncio.run(fill())
    [kept] = ready_dirs(first)
    created = float(marker(kept)["created"])  # type: ignore[arg-type]
    envs = first.envs_dir
    stale = copy_ready_env(kept, READY_PREFIX, created=created - 3 * 24 * 3600)
    older = copy_ready_env(kept, READY_PREFIX, created=created - 3600)  # valid
    other_config = copy_ready_env(kept, READY_PREFIX, key="another-channel-or-package-list")
    # python runs, ipykernel is gone
    broken = copy_ready_env(kept, READY_PREFIX, only=("bin", "pyvenv.cfg", "conda-meta"))
    no_python = copy_ready_env(kept, READY_PREFIX, only=("conda-meta",))
    unmarked = envs / f"{READY_PREFIX}{uuid.uuid4().hex}"
    shutil.copytree(kept, unmarked, symlinks=True, copy_function=os.link)
    (unmarked / ".warmed").unlink()
    half_built = envs / f"conda-building-{uuid.uuid4().hex}"
    shutil.copytree(kept, half_built, symlinks=True, copy_function=os.link)

    second = make_pool(size=2)

    async def restart() -> PreparedEnv:
        await second.start()
        assert second.status() == PoolStatus(available=2, warming=0, target=2)
        env = await second.acquire(PREWARMED, no_progress)
        await second.stop()
        return env

    env = asyncio.run(restart())
    for gone in (stale, other_config, broken, no_python, unmarked, half_built):
        assert not gone.exists(), gone.name
    assert env.prefix == older, "the oldest valid env is handed out first"
    assert second.builder.solves == 0
    assert hello_free(env)


def hello_free(env: PreparedEnv) -> bool:
    return (
        run_in(env, "import importlib.util; print(importlib.util.find_spec('runtimed_test_hello'))")
        == "None"
    )


def test_repeated_build_failures_make_acquire_raise_naming_the_channel(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-channel"
    monkeypatch.setenv("RUNTIMED_CONDA_CHANNELS", missing.as_uri())
    pool = make_pool(size=1)

    async def scenario() -> EnvironmentFailed:
        await pool.start()
        started = time.monotonic()
        with pytest.raises(EnvironmentFailed) as excinfo:
            await pool.acquire(PREWARMED, no_progress)
        assert time.monotonic() - started < 30, "fails fast instead of waiting 120 s"
        await pool.stop()
        return excinfo.value

    error = asyncio.run(scenario())
    assert error.env_source == "conda:prewarmed"
    assert f"Could not fetch repodata from conda channel '{missing.as_uri()}'" in error.message
    assert "RUNTIMED_CONDA_CHANNELS=" in error.message
    assert on_disk(pool) == [], "failed builds leave nothing behind"


def test_an_unreachable_channel_shows_in_the_status_with_a_retry_not_as_warming(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    channel = f"http://127.0.0.1:{_closed_port()}/conda-forge"
    monkeypatch.setenv("RUNTIMED_CONDA_CHANNELS", channel)
    pool = make_pool(size=1)

    async def scenario() -> PoolStatus:
        async with running(pool):
            await wait_for(lambda: pool.status().error is not None, timeout=30)
            return pool.status()

    status = asyncio.run(scenario())
    assert (status.available, status.warming, status.target) == (0, 0, 1), "backing off, not warming"
    assert status.error is not None
    assert status.error.startswith(f"conda channel '{channel}' cannot be reached")
    assert "Connection refused" in status.error
    assert status.retry_in is not None and 0 < status.retry_in <= 5.0  # the first back-off


def test_rattler_runs_in_a_worker_process_and_its_progress_reaches_the_caller(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon keeps none of what rattler's solver and installer allocate: they run in a
    worker process per build (here, the in-process path would fail the build)."""

    async def not_here(self: object, request: object, progress: object) -> int:
        raise AssertionError("rattler ran in the daemon's process")

    monkeypatch.setattr(Builder, "conda_step", not_here)
    pool = make_pool(size=0)
    progress = Recorder()

    async def scenario() -> PreparedEnv:
        async with running(pool):
            return await pool.acquire(inline_request([f"{HELLO} 1.*"]), progress)

    env = asyncio.run(scenario())
    assert hello_version(env) == "1.0.0"
    assert (env.prefix / "conda-lock.yml").is_file() and pool.builder.solves == 1
    messages = progress.messages
    assert any(m.startswith("Fetching repodata from") for m in messages), messages
    assert any(m.startswith("Linking packages") or m.startswith("Linked ") for m in messages)


# -- cached envs: inline ---------------------------------------------------------------------------


@pytest.mark.slow
def test_inline_envs_are_built_once_and_reused(make_pool: MakePool) -> None:
    pool = make_pool(size=0)
    one = inline_request(["runtimed-test-hello 1.*"], python="3.11")
    two = inline_request(["runtimed-test-hello >=2"])

    async def scenario() -> tuple[list[PreparedEnv], PreparedEnv, PreparedEnv, Recorder]:
        await pool.start()
        progress = [Recorder(), Recorder()]
        concurrent = await asyncio.gather(
            pool.acquire(one, progress[0]), pool.acquire(one, progress[1])
        )
        assert pool.builder.solves == 1, "concurrent identical requests build once"
        assert (
            "Waiting for the same environment, already being built for another notebook" in progress[1].messages
        )
        assert any(m.startswith("Solving metadata.runt.conda") for m in progress[1].messages), (
            "the second requester sees the build's progress too"
        )
        started = time.monotonic()
        again = Recorder()
        reused = await pool.acquire(one, again)
        assert time.monotonic() - started < 0.5, "a cached env is reused at once"
        other = await pool.acquire(two, no_progress)
        await pool.release(reused)
        await pool.stop()
        return list(concurrent), reused, other, again

    (a, b), reused, other, again = asyncio.run(scenario())
    assert a.prefix == b.prefix == reused.prefix
    assert a.env_source == "conda:inline"
    assert a.prefix.name.startswith("conda-inline-")
    assert reused.extra["reused"] is True and again.events == []
    assert reused.prefix.exists(), "releasing a cached env keeps it"
    assert hello_version(reused) == "1.0.0"
    assert other.prefix != a.prefix and hello_version(other) == "2.0.0"
    assert pool.builder.solves == 2


@pytest.mark.slow
def test_envs_record_their_activation_and_hand_it_out(make_pool: MakePool) -> None:
    pool = make_pool(size=0)
    request = inline_request([ACTIVATION])

    async def scenario() -> tuple[PreparedEnv, PreparedEnv]:
        await pool.start()
        built = await pool.acquire(request, no_progress)
        # An env built before activations were recorded: computed (and stored) on acquire.
        (built.prefix / ACTIVATION_NAME).unlink()
        reused = await pool.acquire(request, no_progress)
        await pool.stop()
        return built, reused

    built, reused = asyncio.run(scenario())
    prefix = built.prefix
    assert prefix.name.startswith("conda-inline-"), "built in conda-building-*, then renamed"
    share = prefix / "share" / ACTIVATION
    assert built.env == {
        "CONDA_PREFIX": str(prefix),
        "CONDA_DEFAULT_ENV": str(prefix),
        "CONDA_SHLVL": "1",
        ACTIVATED_VAR: str(share),
        ENV_VARS_VAR: ENV_VARS_VALUE,
        "PATH": f"{share / 'bin'}:{prefix / 'bin'}",
    }
    assert reused.extra["reused"] is True and reused.env == built.env
    assert (prefix / ACTIVATION_NAME).is_file(), "stored again"


@pytest.mark.slow
def test_unsatisfiable_specs_quote_the_solver(make_pool: MakePool) -> None:
    pool = make_pool(size=0)

    async def attempt(deps: list[str]) -> str:
        with pytest.raises(EnvironmentFailed) as excinfo:
            await pool.acquire(inline_request(deps), no_progress)
        assert excinfo.value.env_source == "conda:inline"
        return excinfo.value.message

    async def scenario() -> tuple[str, str, str]:
        await pool.start()
        missing = await attempt(["runtimed-test-hello >=99"])
        unknown = await attempt(["runtimed-test-hello 1.*", "runtimed-test-hello-companion"])
        clash = await attempt(["runtimed-test-hello >=2", "runtimed-test-hello <2"])
        await pool.stop()
        return missing, unknown, clash

    missing, unknown, clash = asyncio.run(scenario())
    assert "The conda solver could not satisfy metadata.runt.conda" in missing
    assert "No candidates were found for runtimed-test-hello >=99" in missing
    assert "No candidates were found for runtimed-test-hello-companion" in unknown
    assert "runtimed-test-hello" in clash and ("incompatible" in clash or "No candidates" in clash)
    assert on_disk(pool) == [], "failed builds leave nothing behind"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_channel_is_named(make_pool: MakePool, tmp_path: Path) -> None:
    pool = make_pool(size=0)
    refused = f"http://127.0.0.1:{_closed_port()}/my-channel"
    missing = (tmp_path / "gone").as_uri()

    async def scenario() -> list[str]:
        await pool.start()
        messages = []
        for channel in (refused, missing):
            with pytest.raises(EnvironmentFailed) as excinfo:
                await pool.acquire(
                    inline_request(["runtimed-test-hello"], channels=[channel]), no_progress
                )
            messages.append(excinfo.value.message)
        await pool.stop()
        return messages

    refused_message, missing_message = asyncio.run(scenario())
    assert f"conda channel '{refused}' cannot be reached" in refused_message
    assert "Connection refused" in refused_message
    assert f"Could not fetch repodata from conda channel '{missing}'" in missing_message
    assert "No such file or directory" in missing_message


# -- lock files ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_every_env_records_its_solve_and_a_notebook_lock_rebuilds_it_without_solving(
    make_pool: MakePool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    conda_channel: LocalChannel,
    conda_lock_api: Any,
) -> None:
    pool = make_pool(size=0)
    project = tmp_path / "project"
    project.mkdir()
    (project / ".git").mkdir()
    notebook = project / "analysis.ipynb"

    built = acquire_once(pool, inline_request(["runtimed-test-hello 1.*"]))
    lock_path = built.prefix / "conda-lock.yml"
    # conda-lock's own reader accepts the file: it is conda-lock's format.
    parsed = conda_lock_api.lockfile.parse_conda_lock_file(lock_path)
    assert {p.name for p in parsed.package} >= {"python", "ipykernel", "ipywidgets", HELLO}
    assert parsed.metadata.platforms == ["linux-64"]
    assert [c.url for c in parsed.metadata.channels] == [conda_channel.url]
    hello = next(p for p in parsed.package if p.name == HELLO)
    assert hello.version == "1.0.0" and hello.hash.md5 and hello.hash.sha256

    # The same lock next to a notebook: the env comes from it, unpinned specs notwithstanding.
    shutil.copyfile(lock_path, project / "conda-lock.yml")

    async def no_solving(*args: object, **kwargs: object) -> None:
        raise AssertionError("a lock file must not be solved again")

    monkeypatch.setattr(rattler, "solve", no_solving)
    pool.builder.isolate = False  # rattler in this process, where the patch applies
    progress = Recorder()

    async def rebuild() -> PreparedEnv:
        await pool.start()
        env = await pool.acquire(
            inline_request(["runtimed-test-hello"], notebook_path=notebook), progress
        )
        prewarmed = await pool.acquire(
            EnvRequest("conda:prewarmed", "nb-2", notebook_path=notebook), no_progress
        )
        assert prewarmed.prefix == env.prefix, "the notebook's lock wins for every conda source"
        await pool.stop()
        return env

    env = asyncio.run(rebuild())
    assert env.extra["kind"] == "lock"
    assert env.prefix.name.startswith("conda-lock-")
    assert pool.builder.solves == 1, "only the first build solved"
    assert any(m.startswith(f"Using {project / 'conda-lock.yml'}") for m in progress.messages)
    assert hello_version(env) == "1.0.0", "the locked version, not the newest"
    rebuilt = read_lock(env.prefix / "conda-lock.yml", "linux-64")
    original = read_lock(lock_path, "linux-64")
    assert sorted(str(r) for r in rebuilt.records) == sorted(str(r) for r in original.records)


@pytest.mark.slow
def test_a_lock_without_the_kernel_packages_gets_them_solved_around_it(
    make_pool: MakePool, tmp_path: Path
) -> None:
    pool = make_pool(size=0)
    project = tmp_path / "project"
    project.mkdir()

    built = acquire_once(pool, inline_request(["runtimed-test-hello 1.*"]))
    data = yaml.safe_load((built.prefix / "conda-lock.yml").read_text())
    data["package"] = [p for p in data["package"] if p["name"] in ("python", HELLO)]
    (project / "conda-lock.yml").write_text(yaml.safe_dump(data))

    env = acquire_once(pool, EnvRequest("conda:prewarmed", "nb", notebook_path=project / "x.ipynb"))
    assert hello_version(env) == "1.0.0"
    assert run_in(env, "import ipykernel; print('ok')") == "ok"
    assert pool.builder.solves == 2


def test_a_broken_notebook_lock_is_named(make_pool: MakePool, tmp_path: Path) -> None:
    pool = make_pool(size=0)
    (tmp_path / "conda-lock.yml").write_text("version: 1\npackage: [unterminated\n")

    async def scenario() -> str:
        await pool.start()
        with pytest.raises(EnvironmentFailed) as excinfo:
            await pool.acquire(
                inline_request(["x"], notebook_path=tmp_path / "nb.ipynb"), no_progress
            )
        await pool.stop()
        return excinfo.value.message

    message = asyncio.run(scenario())
    assert f"{tmp_path / 'conda-lock.yml'}: cannot read the lock file" in message


# -- project files ---------------------------------------------------------------------------------


def _extra_wheel(directory: Path) -> Path:
    """A local wheel for pip sections: works offline; depends on traitlets, which conda provides."""
    return make_wheel(
        directory,
        "runtimed-test-pip-extra",
        "0.3.0",
        {"runtimed_test_pip_extra/__init__.py": "VALUE = 42\n"},
        requires=["traitlets>=5"],
    )


@pytest.mark.slow
def test_environment_yml_with_a_pip_section(
    make_pool: MakePool, tmp_path: Path, conda_channel: LocalChannel
) -> None:
    project = tmp_path / "project"
    (project / "notebooks").mkdir(parents=True)
    (project / ".git").mkdir()
    wheel = _extra_wheel(project / "wheels")
    env_yml = project / "environment.yml"
    env_yml.write_text(
        "name: analysis\n"
        f"channels:\n  - {conda_channel.url}\n"
        "dependencies:\n  - python=3.11\n  - runtimed-test-hello=1.0\n  - pip\n"
        f"  - pip:\n      - ./wheels/{wheel.name}\n"
    )
    pool = make_pool(size=0)
    notebook = project / "notebooks" / "nb.ipynb"
    request = EnvRequest("conda:env_yml", "nb", notebook_path=notebook)

    async def scenario() -> PreparedEnv:
        await pool.start()
        env = await pool.acquire(request, no_progress)
        again = await pool.acquire(request, no_progress)
        assert again.prefix == env.prefix and again.extra["reused"] is True
        await pool.stop()
        return env

    env = asyncio.run(scenario())
    assert env.env_source == "conda:env_yml"
    assert env.prefix.name.startswith("conda-env_yml-")
    assert (
        run_in(
            env,
            "import runtimed_test_pip_extra as m, runtimed_test_hello as h, sys; "
            "print(m.VALUE, h.__version__, sys.prefix)",
        )
        == f"42 1.0.0 {env.prefix}"
    )
    assert (env.prefix / "bin" / "pip").exists(), "the conda pip package, with its entry point"
    lock = read_lock(env.prefix / "conda-lock.yml", "linux-64")
    assert [(p.name, p.version, p.url) for p in lock.pip] == [
        ("runtimed-test-pip-extra", "0.3.0", wheel.as_uri())
    ]
    assert lock.pip[0].sha256
    assert "traitlets" in lock.names, "the pip package's dependency came from conda, not pip"

    # The env's lock next to environment.yml: the env is rebuilt from it, pip part included.
    shutil.copyfile(env.prefix / "conda-lock.yml", project / "conda-lock.yml")

    async def from_lock() -> PreparedEnv:
        await pool.start()
        rebuilt = await pool.acquire(request, no_progress)
        await pool.stop()
        return rebuilt

    rebuilt = asyncio.run(from_lock())
    assert rebuilt.prefix != env.prefix and rebuilt.extra["kind"] == "lock"
    assert run_in(rebuilt, "import runtimed_test_pip_extra as m; print(m.VALUE)") == "42"
    assert pool.builder.solves == 1


@pytest.mark.slow
def test_pixi_toml(make_pool: MakePool, tmp_path: Path, conda_channel: LocalChannel) -> None:
    project = tmp_path / "project"
    project.mkdir()
    wheel = _extra_wheel(project / "wheels")
    (project / "pixi.toml").write_text(
        f'[workspace]\nname = "demo"\nchannels = ["{conda_channel.url}"]\n'
        'platforms = ["linux-64"]\n\n'
        '[dependencies]\npython = "3.11.*"\nruntimed-test-hello = "2.*"\n\n'
        f'[pypi-dependencies]\nruntimed-test-pip-extra = {{ path = "wheels/{wheel.name}" }}\n'
    )
    pool = make_pool(size=0)

    async def scenario() -> PreparedEnv:
        await pool.start()
        env = await pool.acquire(
            EnvRequest(
                "conda:pixi",
                "nb",
                notebook_path=project / "nb.ipynb",
                project_file=project / "pixi.toml",
            ),
            no_progress,
        )
        await pool.stop()
        return env

    env = asyncio.run(scenario())
    assert env.env_source == "conda:pixi" and env.prefix.name.startswith("conda-pixi-")
    assert (
        run_in(
            env,
            "import runtimed_test_pip_extra as m, runtimed_test_hello as h; "
            "print(m.VALUE, h.__version__)",
        )
        == "42 2.0.0"
    )


@pytest.mark.slow
def test_bad_project_files_name_the_file_and_the_problem(
    make_pool: MakePool, tmp_path: Path
) -> None:
    yml_dir, pixi_dir, empty_dir = tmp_path / "yml", tmp_path / "pixi", tmp_path / "empty"
    for directory in (yml_dir, pixi_dir, empty_dir):
        directory.mkdir()
        (directory / ".git").mkdir()
    (yml_dir / "environment.yml").write_text("dependencies:\n  - numpy\n - scipy\n")
    (pixi_dir / "pixi.toml").write_text("[dependencies]\nnumpy = 1\n")
    pool = make_pool(size=0)

    async def attempt(source: str, directory: Path) -> str:
        with pytest.raises(EnvironmentFailed) as excinfo:
            await pool.acquire(
                EnvRequest(source, "nb", notebook_path=directory / "nb.ipynb"), no_progress
            )
        assert excinfo.value.env_source == source
        return excinfo.value.message

    async def scenario() -> list[str]:
        await pool.start()
        messages = [
            await attempt("conda:env_yml", yml_dir),
            await attempt("conda:pixi", pixi_dir),
            await attempt("conda:env_yml", empty_dir),
        ]
        await pool.stop()
        return messages

    yml, pixi, none = asyncio.run(scenario())
    assert yml.startswith(f"{yml_dir / 'environment.yml'}: not valid YAML (line 3, column 2)")
    assert pixi.startswith(
        f"{pixi_dir / 'pixi.toml'}: [dependencies] numpy: expected a version string"
    )
    assert none.startswith("conda:env_yml needs an environment.yml or environment.yaml")
    assert on_disk(pool) == []


@pytest.mark.slow
def test_stop_kills_a_running_build_and_cleans_up(make_pool: MakePool) -> None:
    pool = make_pool(size=1, compile=True)

    async def scenario() -> None:
        await pool.start()
        # Stop while compileall (the long step) runs inside the build directory.
        await wait_for(
            lambda: bool(processes_mentioning(f"compileall -q -j 0 {pool.envs_dir}")), timeout=30
        )
        started = time.monotonic()
        await pool.stop()
        # Without waiting for the compile (seconds); the time is mostly deleting the env's files.
        assert time.monotonic() - started < 10
        assert pool.status() == PoolStatus(available=0, warming=0, target=1)

    asyncio.run(scenario())
    assert processes_mentioning(str(pool.envs_dir)) == []
    assert on_disk(pool) == [], "the half-built env is deleted (no lock was written either)"
