"""A third party adds an env family and an output sink without touching runtimed.

The distribution in ``third_party/runtimed_test_venv`` (the ``venv`` family,
built with the standard library's venv and pip, and a sink that always fails)
is installed into a temporary directory, never into the workspace venv, and
reaches only the daemons and commands started here, through ``PYTHONPATH``: its
entry points are its whole registration. Everything is then used as a user
would, through ``runtimed.Session``, ``DaemonClient`` and the ``runtimed`` command.
"""

from __future__ import annotations

import contextlib
import ensurepip
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from uv import find_uv_bin

import runtimed
from runtimed.pytest_plugin import DaemonProcess
from runtimed.testing import wait_until

DISTRIBUTION = Path(__file__).parent / "third_party" / "runtimed_test_venv"
SEED_STATUS_KEYS = ("uv_available", "uv_warming", "conda_available", "conda_warming")
MISSING = "runtimed-no-such-package-xyz"


def command_output(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Run a command to completion; its stdout, or a failure quoting its stderr."""
    done = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"{shlex.join(argv)} exited with {done.returncode}:\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The distribution, installed (entry points and all) into a directory of its own."""
    site = tmp_path_factory.mktemp("third-party") / "site"
    command_output([find_uv_bin(), "pip", "install", "--no-deps", "--target", str(site),
                    str(DISTRIBUTION)])
    return site


def with_plugin(site: Path, *, disabled: str) -> dict[str, str]:
    """Environment variables that make a process see the distribution, minus one of its plugins."""
    return {"PYTHONPATH": str(site), "RUNTIMED_DISABLE_PLUGINS": disabled}


def runtimed_command(site: Path, *args: str) -> str:
    """Run ``runtimed <args>`` with the distribution installed; return its stdout."""
    return command_output([sys.executable, "-m", "runtimed", *args],
                          env={**os.environ, **with_plugin(site, disabled="")})


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ipykernel and six as wheels, downloaded once, so the venv builds need no package index.

    pip runs from the wheel the standard library bundles (``python pip.whl/pip``):
    no venv is needed to download.
    """
    wheels = tmp_path_factory.mktemp("wheelhouse")
    [pip] = Path(ensurepip.__file__).parent.glob("_bundled/pip-*.whl")
    command_output([sys.executable, f"{pip}/pip", "download", "--disable-pip-version-check",
                    "--dest", str(wheels), "ipykernel", "six"])
    return wheels


@pytest.fixture(scope="module")
def venv_daemon(tmp_path_factory: pytest.TempPathFactory, plugin_site: Path,
                wheelhouse: Path) -> Iterator[DaemonProcess]:
    """A daemon with the venv family (one ready venv, pip offline) and no uv envs or hot kernels."""
    env = {
        **with_plugin(plugin_site, disabled="failing_sink"),
        "RUNTIMED_VENV_PIP_ARGS": shlex.join(["--no-index", "--find-links", str(wheelhouse)]),
    }
    daemon = DaemonProcess(tmp_path_factory.mktemp("venv-daemon"), pool_sizes={"uv": 0, "venv": 1},
                           hot_kernels=0, env=env).start()
    try:
        yield daemon
    finally:
        daemon.stop()


def project(root: Path, requirements: str) -> Path:
    """A folder with ``requirements.txt`` (and ``.git``, where the walk up stops); its notebook."""
    (root / ".git").mkdir(parents=True)
    (root / "requirements.txt").write_text(requirements)
    return root / "analysis.ipynb"


def printed(session: runtimed.Session, code: str) -> list[str]:
    result = session.run(code)
    assert result.success, result.error
    return result.stdout.split()


# -- registration: what `runtimed` shows ---------------------------------------------------------


def test_runtimed_plugins_lists_the_venv_family(plugin_site: Path) -> None:
    plugins = {p["name"]: p for p in json.loads(runtimed_command(plugin_site, "plugins", "--json"))}

    venv = plugins["venv_pool"]
    assert venv["distribution"] == "runtimed-test-venv-pool"
    assert venv["provides"] == {"runtimed_env_pools": ["runtimed_test_venv.pool.VenvPool"]}
    [declared] = venv["declares"]
    assert declared["family"] == "venv"
    assert declared["sources"] == ["venv:prewarmed", "venv:requirements"]
    assert declared["project_files"] == ["requirements.txt"]
    assert {s["env"] for s in declared["settings"]} >= {"RUNTIMED_VENV_POOL_SIZE",
                                                        "RUNTIMED_VENV_PIP_ARGS"}
    assert plugins["failing_sink"]["provides"] == {
        "runtimed_output_sinks": ["runtimed_test_venv.sink.FailingSink"]}
    assert "uv_pool" in plugins, "the built-in plugins are still there"


def test_runtimed_run_accepts_the_venv_settings_as_flags(plugin_site: Path) -> None:
    help_text = runtimed_command(plugin_site, "run", "--help")

    assert "--venv-pool-size" in help_text and "RUNTIMED_VENV_POOL_SIZE" in help_text
    assert "--venv-pip-args" in help_text and "RUNTIMED_VENV_PIP_ARGS" in help_text


# -- the venv family through a real daemon --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.network
def test_status_reports_the_venv_pool_next_to_the_seed_keys(venv_daemon: DaemonProcess) -> None:
    venv_daemon.wait_for_pool(1, family="venv", timeout=120)

    status = venv_daemon.client().status()
    assert status["venv_available"] == 1
    assert "venv_warming" in status
    assert set(SEED_STATUS_KEYS) <= set(status)
    assert status["uv_available"] == 0


@pytest.mark.slow
@pytest.mark.network
def test_a_kernel_runs_in_a_prewarmed_venv(venv_daemon: DaemonProcess) -> None:
    venv_daemon.wait_for_pool(1, family="venv", timeout=120)

    with venv_daemon.session() as session:
        started = time.monotonic()
        session.start_kernel(env_source="venv:prewarmed")
        elapsed = time.monotonic() - started
        assert session.env_source == "venv:prewarmed"
        [prefix] = printed(session, "import sys; print(sys.prefix)")
    print(f"\nstart_kernel from a ready venv: {elapsed:.2f} s")

    env = Path(prefix)
    assert env.parent == venv_daemon.cache_dir / "envs"
    assert env.name.startswith("venv-prewarmed-")
    assert "-m venv" in (env / "pyvenv.cfg").read_text(), "made by the standard library's venv"
    wait_until(lambda: not env.exists(), "the pool to delete the venv the kernel used")


@pytest.mark.slow
@pytest.mark.network
def test_auto_picks_requirements_txt_and_a_second_notebook_reuses_its_venv(
    venv_daemon: DaemonProcess, tmp_path: Path
) -> None:
    first_notebook = project(tmp_path / "first", "six\n")
    second_notebook = project(tmp_path / "second", "six\n")

    with venv_daemon.session("requirements-1") as first:
        started = time.monotonic()
        first.start_kernel(notebook_path=str(first_notebook))
        built_in = time.monotonic() - started
        assert first.env_source == "venv:requirements"
        [name, prefix] = printed(first, "import six, sys; print(six.__name__, sys.prefix)")
        assert name == "six"
        env = Path(prefix)
        assert env.parent == venv_daemon.cache_dir / "envs"
        assert env.name.startswith("venv-requirements-")

        with venv_daemon.session("requirements-2") as second:
            started = time.monotonic()
            second.start_kernel(notebook_path=str(second_notebook))
            reused_in = time.monotonic() - started
            assert second.env_source == "venv:requirements"
            assert printed(second, "import six, sys; print(sys.prefix)") == [prefix]
    print(f"\nstart_kernel building the requirements venv: {built_in:.2f} s, "
          f"reusing it: {reused_in:.2f} s")

    log = venv_daemon.log()
    assert "requirements-2: Reusing the cached venv for the requirements in" in log
    assert "requirements-2: pip install" not in log, "not built twice"
    assert reused_in < built_in
    assert env.is_dir(), "the cached venv outlives its kernels"


@pytest.mark.slow
@pytest.mark.network
def test_a_requirement_pip_cannot_install_fails_with_pips_error(
    venv_daemon: DaemonProcess, tmp_path: Path
) -> None:
    notebook = project(tmp_path / "broken", f"six\n{MISSING}\n")

    with venv_daemon.session() as session, pytest.raises(runtimed.EnvironmentFailed) as failed:
        session.start_kernel(notebook_path=str(notebook))

    message = failed.value.message
    assert message.startswith(f"pip could not install {notebook.parent / 'requirements.txt'}")
    assert f"No matching distribution found for {MISSING}" in message
    envs = venv_daemon.cache_dir / "envs"
    wait_until(lambda: not list(envs.glob("venv-requirements-*.partial-*")),
               "the failed build to be deleted")


# -- the failing sink ----------------------------------------------------------------------------

CHATTY_CELL = """\
from IPython.display import HTML, display
for i in range(50):
    print(f"line {i}", flush=True)
display(HTML("<b>shown</b>"))
6 * 7
"""


@pytest.mark.slow
def test_a_failing_sink_costs_the_cell_nothing_and_is_logged_once_per_execution(
    runtimed_daemon_factory: Callable[..., DaemonProcess], plugin_site: Path
) -> None:
    daemon = runtimed_daemon_factory(pool_sizes={"uv": 1}, hot_kernels=0,
                                     env=with_plugin(plugin_site, disabled="venv_pool"))

    def sink_failures(execution_id: str | None) -> int:
        return sum(1 for line in daemon.log().splitlines()
                   if "output sink FailingSink of plugin 'failing_sink' failed" in line
                   and f"execution {execution_id}" in line)

    with daemon.session() as session:
        session.connect()
        cell = session.create_cell(CHATTY_CELL)
        result = session.execute_cell(cell)

        assert result.success, result.error
        assert result.stdout == "".join(f"line {i}\n" for i in range(50))
        assert [o.data for o in result.display_data] == [
            {"text/html": "<b>shown</b>", "text/plain": "<IPython.core.display.HTML object>"},
            {"text/plain": "42"},
        ]
        with contextlib.closing(daemon.session(session.notebook_id)) as viewer:
            viewer.connect()
            wait_until(lambda: viewer.get_cell(cell).outputs == result.outputs,
                       "a second session to see every output")

        following = session.run("print('still fine')")
        assert following.success and following.stdout == "still fine\n"

    wait_until(lambda: sink_failures(following.execution_id) == 1, "the second failure's log line")
    assert sink_failures(result.execution_id) == 1, "one line for all the cell's outputs"
    assert daemon.log().count("RuntimeError: this sink always fails") == 2
