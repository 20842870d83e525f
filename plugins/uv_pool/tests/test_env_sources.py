"""uv:inline, uv:pep723 and uv:pyproject at the pool level, against real uv and PyPI.

Ready pool envs come from the ``seed_pool`` fixture (a hard-linked copy of one
env built per session), so a test only pays for what it is about.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runtimed.config import DaemonConfig
from runtimed.errors import EnvironmentFailed
from runtimed.pools import EnvRequest, PreparedEnv, no_progress
from runtimed.testing import ProgressRecorder as Recorder
from runtimed.testing import running, wait_for
from runtimed_uv_pool import UvPool, project, specs

MISSING = "runtimed-no-such-package-xyz"
PEP723_CELL = (
    '# /// script\n# requires-python = ">=3.10"\n# dependencies = ["idna"]\n# ///\nimport idna\n'
)


def make_pool(tmp_path: Path, size: int = 1, **config: Any) -> UvPool:
    return UvPool(
        DaemonConfig(
            cache_dir=tmp_path / "cache",
            settings={"uv.pool_size": size, **{f"uv.{k}": v for k, v in config.items()}},
            python=sys.executable,
            default_packages=[],
        )
    )


def metadata(deps: Any, **extra: Any) -> dict[str, Any]:
    return {"runt": {"uv": {"dependencies": deps, **extra}}}


def inline(notebook_id: str, *deps: str, **extra: Any) -> EnvRequest:
    return EnvRequest("uv:inline", notebook_id, metadata=metadata(list(deps), **extra))


async def run_in_env(env: PreparedEnv, code: str) -> list[str]:
    proc = await asyncio.to_thread(
        subprocess.run, [*env.python, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()


def cached(pool: UvPool, prefix: str = "uv-inline-") -> list[str]:
    return sorted(
        p.name for p in pool.envs_dir.iterdir() if p.name.startswith(prefix) and "." not in p.name
    )


def build_info(env: PreparedEnv) -> dict[str, Any]:
    return json.loads((env.prefix / ".runtimed-env.json").read_text())


# -- requests, keys and arguments (no builds) ----------------------------------


def test_equivalent_dependency_lists_share_one_cache_key() -> None:
    python, packages = sys.executable, ["ipykernel", "ipywidgets"]
    a = specs.inline_spec(
        metadata(["Six", "idna>=2,<4", "tomli_w[Extra]; python_version >= '3.8'"])
    )
    b = specs.inline_spec(
        metadata([" idna <4, >=2", "six", "SIX", 'Tomli-W[extra] ; python_version>="3.8"'])
    )
    assert (
        a.dependencies
        == b.dependencies
        == (
            "idna<4,>=2",
            "six",
            'tomli-w[extra] ; python_version >= "3.8"',
        )
    )
    key = a.cache_key(python, packages)
    assert b.cache_key(python, packages) == key
    # A PEP 723 block asking for the same thing shares the env.
    block = "# /// script\n# dependencies = ['six', 'idna >=2, <4', 'tomli-w[extra]; python_version>=\"3.8\"']\n# ///"
    assert specs.pep723_spec([block]).cache_key(python, packages) == key
    # Anything that changes what gets installed changes the key.
    others = [
        specs.inline_spec(metadata(["six"])).cache_key(python, packages),
        specs.inline_spec(metadata(list(a.dependencies), prerelease=True)).cache_key(
            python, packages
        ),
        specs.inline_spec(
            metadata(list(a.dependencies), **{"requires-python": ">=3.10"})
        ).cache_key(python, packages),
        a.cache_key("/other/python", packages),
        a.cache_key(python, [*packages, "numpy"]),
    ]
    assert len({key, *others}) == 6


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (
            EnvRequest("uv:inline", "nb", metadata={"runt": {"uv": {}}}),
            "needs metadata.runt.uv.dependencies",
        ),
        (inline("nb", "six", prerelease="sometimes"), "`prerelease` in metadata.runt.uv"),
        (inline("nb", "six", **{"requires-python": "banana"}), "not a version specifier"),
        (EnvRequest("uv:inline", "nb", metadata=metadata("six")), "must be a list of strings"),
        (
            EnvRequest("uv:pep723", "nb", cell_sources=["import six"]),
            "needs a `# /// script` block",
        ),
        (
            EnvRequest("uv:pep723", "nb", cell_sources=["# /// script\n# dependencies = [\n# ///"]),
            "not valid TOML",
        ),
    ],
)
def test_malformed_requests_fail_before_any_build(
    tmp_path: Path, request_: EnvRequest, message: str
) -> None:
    pool = make_pool(tmp_path, size=0)

    async def scenario() -> None:
        async with running(pool):
            with pytest.raises(EnvironmentFailed, match=message) as excinfo:
                await pool.acquire(request_, no_progress)
            assert excinfo.value.env_source == request_.env_source

    asyncio.run(scenario())
    assert os.listdir(pool.envs_dir) == []


def test_requires_python_the_daemon_cannot_meet_fails_before_building(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, size=0)

    async def scenario() -> None:
        async with running(pool):
            with pytest.raises(EnvironmentFailed, match="RUNTIMED_PYTHON") as excinfo:
                await pool.acquire(inline("nb", "six", **{"requires-python": "<3"}), no_progress)
            assert "requires-python '<3'" in excinfo.value.message

    asyncio.run(scenario())
    assert os.listdir(pool.envs_dir) == []


def test_pyproject_without_a_project_file_fails_clearly(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, size=0)
    request = EnvRequest("uv:pyproject", "nb", notebook_path=tmp_path / "nb.ipynb")

    async def scenario() -> None:
        async with running(pool):
            with pytest.raises(EnvironmentFailed, match=r"needs a pyproject\.toml") as excinfo:
                await pool.acquire(request, no_progress)
            assert str(tmp_path / "nb.ipynb") in excinfo.value.message

    asyncio.run(scenario())


def test_a_pyproject_with_only_tool_settings_is_refused_untouched(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text("[tool.black]\nline-length = 88\n")
    pool = make_pool(tmp_path, size=0)
    request = EnvRequest("uv:pyproject", "nb", project_file=pyproject)

    async def scenario() -> None:
        async with running(pool):
            with pytest.raises(EnvironmentFailed, match="has no \\[project\\] table") as excinfo:
                await pool.acquire(request, no_progress)
            assert excinfo.value.message.startswith(str(pyproject))

    asyncio.run(scenario())
    assert sorted(os.listdir(tmp_path)) == ["cache", "pyproject.toml"], "no .venv, no uv.lock"


def test_uv_errors_are_traced_to_the_dependency_they_name() -> None:
    error = (
        "error: No solution found when resolving dependencies\n  cause: Because "
        f"{MISSING} was not found in the package registry and you require {MISSING}, ..."
    )
    assert specs.named_in(["six", MISSING, "idna>=3"], error) == [MISSING]
    assert specs.named_in(["Tomli_W==99"], "Because tomli-w==99 has no wheels") == ["Tomli_W==99"]
    assert specs.named_in(["six"], "Because sixty was not found") == []


def test_uv_sync_keeps_the_users_lock_and_interpreter(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    data = {"project": {"name": "p", "requires-python": ">=3.10"}}
    env: dict[str, str] = {}

    def argv(**overrides: Any) -> list[str]:
        kwargs: dict[str, Any] = {"python": "/py", "python_version": "3.11.7", "env": env}
        return project.sync_argv("uv", pyproject, overrides.pop("data", data), **kwargs)

    fresh = argv()
    assert fresh[:4] == ["uv", "sync", "--project", str(tmp_path)]
    assert "--inexact" in fresh and "--compile-bytecode" in fresh
    assert "--locked" not in fresh and fresh[-2:] == ["--python", "/py"]
    old_python = argv(data={"project": {"requires-python": ">=3.12"}})
    assert "--python" not in old_python, "never force an interpreter the project excludes"
    (tmp_path / "uv.lock").write_text("")
    assert "--locked" in argv(), "an existing lock is never rewritten"
    (tmp_path / ".venv").mkdir()
    assert "--python" not in argv(), "an existing project env keeps its interpreter"


# -- inline and PEP 723 envs ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.network
def test_inline_env_is_built_from_a_pool_env_then_reused_instantly(
    tmp_path: Path, seed_pool: Callable[[Path], Path]
) -> None:
    pool = make_pool(tmp_path, size=1)
    lent = seed_pool(pool.envs_dir)

    async def scenario() -> tuple[PreparedEnv, float, float]:
        async with running(pool):
            assert pool.status().available == 1
            progress = Recorder()
            started = time.monotonic()
            env = await pool.acquire(inline("nb-1", "six"), progress)
            first = time.monotonic() - started
            assert env.env_source == "uv:inline"
            assert env.prefix.parent == pool.envs_dir and env.prefix.name.startswith("uv-inline-")
            assert env.python == [str(env.prefix / "bin" / "python")]
            assert not lent.exists(), "the pool env became the inline env"
            assert {phase for phase, _ in progress.events} == {"preparing_env"}
            assert progress.messages[0] == "Installing 1 package (six) into a prewarmed environment"
            assert any(m.startswith("Resolved ") for m in progress.messages), progress.messages
            info = build_info(env)
            assert info["built_from"] == "prewarmed" and info["dependencies"] == ["six"]

            code = "import sys, six, ipykernel, ipywidgets; print(sys.prefix); print(six.__file__)"
            prefix, six_file = await run_in_env(env, code)
            assert Path(prefix) == env.prefix
            assert Path(six_file).is_relative_to(env.prefix)
            assert list(env.prefix.glob("lib/python3*/site-packages/__pycache__/six.*.pyc"))
            await wait_for(lambda: pool.status().available == 1)  # the lent env is replaced

            # Another notebook, the same set spelled differently: no build at all.
            again = Recorder()
            started = time.monotonic()
            env2 = await pool.acquire(inline("nb-2", " SIX"), again)
            second = time.monotonic() - started
            assert env2.prefix == env.prefix
            assert again.events == [("preparing_env", "Reusing the cached environment for six")]
            assert build_info(env2) == info, "not rebuilt"
            assert pool.cache.in_use[env.prefix.name] == 2
            await pool.release(env)
            await pool.release(env2)
            assert pool.cache.in_use[env.prefix.name] == 0
        return env, first, second

    env, first, second = asyncio.run(scenario())
    print(f"\ninline env from a pool env: {first:.2f} s; second acquire: {second * 1000:.1f} ms")
    assert second < 0.5
    assert env.prefix.exists(), "released envs stay cached"


@pytest.mark.slow
@pytest.mark.network
def test_pep723_env_shares_the_cache_and_pool_based_builds_beat_scratch_builds(
    tmp_path: Path, seed_pool: Callable[[Path], Path]
) -> None:
    pool = make_pool(tmp_path, size=1)
    seed_pool(pool.envs_dir)
    request = EnvRequest("uv:pep723", "nb", cell_sources=["x = 1", PEP723_CELL])

    async def scenario() -> tuple[float, float]:
        async with running(pool):
            pool.build_from_pool = False  # the path a pool of size 0 (or an empty pool) takes
            progress = Recorder()
            env = await pool.acquire(request, progress)
            assert env.env_source == "uv:pep723"
            assert progress.messages[0] == (
                "Creating an environment with ipykernel, ipywidgets and 1 package (idna)"
            )
            assert "Checking that ipykernel imports" in progress.messages
            assert pool.status().available == 1, "the pool was not touched"
            scratch = build_info(env)
            assert scratch["built_from"] == "scratch" and scratch["requires_python"] == ">=3.10"
            [prefix, encoded] = await run_in_env(
                env, "import sys, idna; print(sys.prefix); print(idna.encode('bücher.example'))"
            )
            assert Path(prefix) == env.prefix and encoded == "b'xn--bcher-kva.example'"

            # The same set declared inline: the same cached env.
            same = Recorder()
            twin = inline("nb-2", "idna", **{"requires-python": ">= 3.10"})
            assert (await pool.acquire(twin, same)).prefix == env.prefix
            assert same.messages == ["Reusing the cached environment for idna"]

            # The same kind of build (one small package), starting from a pool env.
            pool.build_from_pool = True
            env3 = await pool.acquire(inline("nb-3", "tomli-w", prerelease=True), no_progress)
            pooled = build_info(env3)
            assert pooled["built_from"] == "prewarmed" and pooled["prerelease"] == "allow"
            assert await run_in_env(env3, "import tomli_w; print(tomli_w.dumps({'a': 1}))") == [
                "a = 1"
            ]
        return scratch["build_secs"], pooled["build_secs"]

    scratch_secs, pooled_secs = asyncio.run(scenario())
    print(f"\nbuild from scratch: {scratch_secs:.2f} s; from a pool env: {pooled_secs:.2f} s")
    assert pooled_secs < scratch_secs


@pytest.mark.slow
@pytest.mark.network
def test_bad_dependencies_fail_naming_them_and_leave_the_pool_and_other_envs_alone(
    tmp_path: Path, seed_pool: Callable[[Path], Path]
) -> None:
    pool = make_pool(tmp_path, size=1)
    lent = seed_pool(pool.envs_dir)
    # A local package whose build backend fails (no network needed to fail).
    broken = tmp_path / "brokenpkg"
    broken.mkdir()
    (broken / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n\n'
        '[project]\nname = "brokenpkg"\nversion = "1.0"\n'
    )
    (broken / "backend.py").write_text(
        "def _fail(*args, **kwargs):\n"
        "    raise RuntimeError('brokenpkg refuses to build')\n"
        "build_wheel = build_sdist = prepare_metadata_for_build_wheel = _fail\n"
    )

    async def scenario() -> None:
        async with running(pool):
            other = _fake_cached_env(pool, "other-notebooks-dep")
            other_env = await pool.acquire(inline("other", "other-notebooks-dep"), no_progress)

            with pytest.raises(EnvironmentFailed) as missing:
                await pool.acquire(inline("nb", "six", MISSING), no_progress)
            error = missing.value
            assert error.env_source == "uv:inline"
            assert error.message.startswith(f"Could not install {MISSING} for uv:inline")
            assert f"Because {MISSING} was not found in the package registry" in error.message
            assert "Fix the dependencies in metadata.runt.uv" in error.message
            assert ".partial" not in error.message, "no temporary paths in the message"

            with pytest.raises(EnvironmentFailed) as unbuildable:
                await pool.acquire(inline("nb", f"brokenpkg @ {broken.as_uri()}"), no_progress)
            assert unbuildable.value.message.startswith("Could not install brokenpkg @ file:")
            assert "brokenpkg refuses to build" in unbuildable.value.message

            # The pool got its lent env back untouched; the other notebook's env is as it
            # was; nothing is left behind.
            assert pool.status().available == 1
            assert (lent / ".warmed").exists()
            await wait_for(lambda: not list(pool.envs_dir.glob("*.partial-*")))
            assert cached(pool) == [other.name]
            assert dict(pool.cache.in_use) == {other.name: 1}
            await pool.release(other_env)

            # Fixing the metadata and retrying works.
            fixed = await pool.acquire(inline("nb", "six", "idna"), no_progress)
            assert await run_in_env(fixed, "import six, idna; print('ok')") == ["ok"]

    asyncio.run(scenario())


@pytest.mark.slow
@pytest.mark.network
def test_concurrent_requests_for_a_new_set_build_it_once(
    tmp_path: Path, seed_pool: Callable[[Path], Path]
) -> None:
    pool = make_pool(tmp_path, size=1)
    seed_pool(pool.envs_dir)

    async def scenario() -> None:
        async with running(pool):
            one, two = Recorder(), Recorder()
            env1, env2 = await asyncio.gather(
                pool.acquire(inline("a", "tomli-w"), one),
                pool.acquire(inline("b", "tomli_w"), two),
            )
            assert env1.prefix == env2.prefix
            firsts = sorted([one.messages[0], two.messages[0]])
            assert firsts == [
                "Installing 1 package (tomli-w) into a prewarmed environment",
                "Waiting for the same environment, already being built for another notebook",
            ]
            # The waiter sees the build's own progress too.
            assert any(m.startswith("Installed ") for m in one.messages)
            assert any(m.startswith("Installed ") for m in two.messages)
            assert cached(pool) == [env1.prefix.name]
            assert not list(pool.envs_dir.glob("*.partial-*"))
            assert pool.cache.in_use[env1.prefix.name] == 2

    asyncio.run(scenario())


@pytest.mark.slow
@pytest.mark.network
def test_stop_abandons_an_inline_build_and_cleans_up(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, size=0)

    async def scenario() -> None:
        await pool.start()
        try:
            acquiring = asyncio.create_task(pool.acquire(inline("nb", "tomli-w"), no_progress))
            await wait_for(lambda: bool(list(pool.envs_dir.glob("uv-inline-*.partial-*"))), 30)
        finally:
            await pool.stop()
        with pytest.raises(EnvironmentFailed, match="stopped while building"):
            await acquiring

    asyncio.run(scenario())
    assert os.listdir(pool.envs_dir) == []


# -- garbage collection ------------------------------------------------------------


def _fake_cached_env(pool: UvPool, dep: str) -> Path:
    """A complete-looking cached env for ``[dep]`` (its python is this interpreter)."""
    spec = specs.inline_spec(metadata([dep]))
    path = pool.envs_dir / f"uv-inline-{spec.cache_key(sys.executable, pool.packages)}"
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").symlink_to(sys.executable)
    (path / ".runtimed-env.json").write_text("{}")
    (path / ".last-used").touch()
    return path


def _idle_for(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path / ".last-used", (then, then))


def test_gc_by_age_and_count_never_touches_an_env_in_use(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, size=0, inline_env_max_age_secs=3600, inline_env_max_count=2)
    envs = pool.envs_dir
    envs.mkdir(parents=True)
    leftovers = [envs / "uv-inline-abc.partial-123", envs / "uv-inline-abc.trash-456"]
    for path in leftovers:
        path.mkdir()
    incomplete = envs / "uv-inline-def"  # no completion marker: never finished
    (incomplete / "bin").mkdir(parents=True)
    not_ours = envs / "conda-inline-0123"
    not_ours.mkdir()

    async def scenario() -> None:
        async with running(pool):
            await wait_for(lambda: not any(p.exists() for p in [*leftovers, incomplete]), 10)
            in_use = _fake_cached_env(pool, "in-use")
            progress = Recorder()
            env = await pool.acquire(inline("nb", "in-use"), progress)
            assert env.prefix == in_use
            assert progress.messages == ["Reusing the cached environment for in-use"]
            old, mid, new = (_fake_cached_env(pool, name) for name in ("old", "mid", "new"))

            _idle_for(in_use, 10 * 3600)  # a kernel that has been running for ten hours
            _idle_for(old, 2 * 3600)
            _idle_for(mid, 600)
            _idle_for(new, 60)
            removed = pool.cache.collect()
            # Age: `old` (unused > 1 h) goes, the older env in use stays. Count: three
            # remain for a limit of two, so the least recently used idle one goes too.
            assert sorted(removed) == sorted([old.name, mid.name])
            assert in_use.exists() and new.exists() and not old.exists() and not mid.exists()

            pool.cache.max_count = 0
            assert pool.cache.collect() == [new.name], "never the env in use"
            assert in_use.exists()
            await pool.release(env)  # now unused, and beyond the count of 0
            assert not in_use.exists()
        assert not_ours.exists()

    asyncio.run(scenario())


def test_the_collector_deletes_envs_as_they_expire(tmp_path: Path) -> None:
    pool = make_pool(tmp_path, size=0, inline_env_max_age_secs=1.0)
    pool.envs_dir.mkdir(parents=True)
    idle = _fake_cached_env(pool, "idle")

    async def scenario() -> None:
        async with running(pool):
            assert idle.exists(), "not expired yet"
            # No acquire or release happens: the collector wakes up by itself.
            await wait_for(lambda: not idle.exists(), timeout=10)

    asyncio.run(scenario())


# -- pyproject projects ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.network
def test_pyproject_runs_in_the_project_env_with_an_ipykernel_overlay(
    tmp_path: Path, seed_pool: Callable[[Path], Path], tiny_project: Path
) -> None:
    pool = make_pool(tmp_path, size=1)
    seed_pool(pool.envs_dir)
    pyproject = tiny_project / "pyproject.toml"
    request = EnvRequest(
        "uv:pyproject", "nb", notebook_path=tiny_project / "nb.ipynb", project_file=pyproject
    )
    declared = pyproject.read_bytes()

    async def scenario() -> None:
        async with running(pool):
            progress = Recorder()
            env = await pool.acquire(request, progress)
            assert env.env_source == "uv:pyproject"
            assert env.prefix.parent == pool.envs_dir and env.prefix.name.startswith("uv-project-")
            assert progress.messages[0] == f"Syncing the project environment of {tiny_project}"
            assert (
                "Adding ipykernel to the project environment (from a prewarmed environment)"
                in progress.messages
            )
            code = (
                "import sys, six, tinyproj, ipykernel\n"
                "print(sys.prefix); print(tinyproj.__file__); print(six.__file__)"
            )
            prefix, own, dep = await run_in_env(env, code)
            assert Path(prefix) == env.prefix, "the overlay's python is the one that runs"
            assert Path(own) == tiny_project / "src" / "tinyproj" / "__init__.py"
            assert Path(dep).is_relative_to(tiny_project / ".venv")
            # ipykernel came from the overlay; the user's files never mention it.
            assert pyproject.read_bytes() == declared
            lock = (tiny_project / "uv.lock").read_text()
            assert 'name = "six"' in lock and "ipykernel" not in lock
            assert not list((tiny_project / ".venv").glob("lib/python*/site-packages/ipykernel"))

            again = Recorder()
            env2 = await pool.acquire(request, again)
            assert env2.prefix == env.prefix
            assert again.messages[-1].startswith("Reusing the ipykernel overlay")
            assert not any("Adding ipykernel" in m for m in again.messages)
            await pool.release(env)
            await pool.release(env2)

            # A dependency added to pyproject.toml without `uv lock`: the lock is not rewritten.
            pyproject.write_text(declared.decode().replace('["six"]', '["six", "idna"]'))
            with pytest.raises(EnvironmentFailed) as stale:
                await pool.acquire(request, no_progress)
            assert str(pyproject) in stale.value.message and "uv lock" in stale.value.message
            assert (tiny_project / "uv.lock").read_text() == lock

            # A broken pyproject.toml: the message names the file.
            pyproject.write_text("[project\nname = 'tinyproj'\n")
            with pytest.raises(EnvironmentFailed) as broken:
                await pool.acquire(request, no_progress)
            assert broken.value.message.startswith(f"{pyproject} is not valid TOML")
            assert broken.value.env_source == "uv:pyproject"

    asyncio.run(scenario())


@pytest.mark.slow
@pytest.mark.network
def test_a_project_that_has_ipykernel_runs_its_own_env(tmp_path: Path, tiny_project: Path) -> None:
    # Stand-in for a project depending on ipykernel: its own package provides the module.
    (tiny_project / "src" / "ipykernel").mkdir()
    (tiny_project / "src" / "ipykernel" / "__init__.py").write_text("")
    pyproject = tiny_project / "pyproject.toml"
    pyproject.write_text(
        pyproject.read_text()
        + '\n[tool.hatch.build.targets.wheel]\npackages = ["src/tinyproj", "src/ipykernel"]\n'
    )
    pool = make_pool(tmp_path, size=0)
    request = EnvRequest("uv:pyproject", "nb", project_file=pyproject)

    async def scenario() -> PreparedEnv:
        async with running(pool):
            env = await pool.acquire(request, no_progress)
            await pool.release(env)
        return env

    env = asyncio.run(scenario())
    assert env.prefix == tiny_project / ".venv" and env.python == [
        str(env.prefix / "bin" / "python")
    ]
    assert env.prefix.exists(), "release leaves the project's env alone"
    assert os.listdir(pool.envs_dir) == [], "no overlay needed"
