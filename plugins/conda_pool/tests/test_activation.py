"""The activation of a conda prefix: rattler's script run once with bash, what it changed kept.

These run on hand-made prefixes (activation needs no python in them), so they
take milliseconds; the pool and daemon tests cover envs the pool builds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import pytest

from runtimed_conda_pool.activation import (
    ACTIVATION_NAME,
    ActivationFailed,
    activation_env,
    basic_activation,
    compute_activation,
    read_activation,
    record_activation,
)

log = logging.getLogger("runtimed.pools.conda")


def make_prefix(path: Path, scripts: dict[str, str] | None = None) -> Path:
    """A conda prefix with activation files: an env_vars.d file, conda-meta/state, scripts."""
    (path / "conda-meta").mkdir(parents=True)
    (path / "conda-meta" / "state").write_text(json.dumps({"env_vars": {"FROM_STATE": "s"}}))
    env_vars = path / "etc" / "conda" / "env_vars.d"
    env_vars.mkdir(parents=True)
    (env_vars / "tool.json").write_text(json.dumps({"TOOL_HOME": "/opt/tool", "SPACED": "a b"}))
    activate_d = path / "etc" / "conda" / "activate.d"
    activate_d.mkdir(parents=True)
    for name, text in (scripts or {}).items():
        (activate_d / name).write_text(text)
    return path


GDAL_LIKE = (
    'export GDAL_DATA="$CONDA_PREFIX/share/gdal"\n'
    'export PATH="$CONDA_PREFIX/share/gdal/bin:$PATH"\n'
    "declare -x DECLARED=yes\n"  # at the top level, as conda sources it: not a local
    "NOT_EXPORTED=1\n"
    'echo "activate.d scripts may print"\n'
)


def test_activation_sets_what_conda_activate_would_and_nothing_of_the_daemons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = make_prefix(tmp_path / "env", {"gdal.sh": GDAL_LIKE})
    # The daemon runs inside another conda env, with a BASH_ENV and variables of its own.
    bash_env = tmp_path / "bash_env.sh"
    bash_env.write_text("export FROM_BASH_ENV=1\n")
    monkeypatch.setenv("BASH_ENV", str(bash_env))
    monkeypatch.setenv("CONDA_PREFIX", "/opt/conda/envs/daemon")
    monkeypatch.setenv("CONDA_SHLVL", "2")
    monkeypatch.setenv("RUNTIMED_DAEMON_ONLY", "x")

    activation = asyncio.run(compute_activation(prefix))

    assert activation.env == {
        "CONDA_PREFIX": str(prefix),
        "CONDA_DEFAULT_ENV": str(prefix),
        "CONDA_SHLVL": "1",
        "FROM_STATE": "s",
        "TOOL_HOME": "/opt/tool",
        "SPACED": "a b",
        "GDAL_DATA": f"{prefix}/share/gdal",
        "DECLARED": "yes",
    }
    assert activation.path == [f"{prefix}/share/gdal/bin", f"{prefix}/bin"]
    assert activation.warning is None
    assert activation.kernel_env()["PATH"] == os.pathsep.join(activation.path)


def test_without_activation_files_an_env_gets_the_basic_variables(tmp_path: Path) -> None:
    prefix = tmp_path / "env"
    (prefix / "conda-meta").mkdir(parents=True)
    activation = asyncio.run(compute_activation(prefix))
    assert (activation.env, activation.path) == (
        basic_activation(prefix).env,
        basic_activation(prefix).path,
    )


def test_the_stored_activation_follows_the_env_when_it_is_renamed(tmp_path: Path) -> None:
    building = make_prefix(tmp_path / "conda-building-1234", {"gdal.sh": GDAL_LIKE})
    recorded = asyncio.run(record_activation(building, log))
    stored = json.loads((building / ACTIVATION_NAME).read_text())
    assert stored["prefix"] == str(building) and stored["env"] == recorded.env

    ready = building.rename(tmp_path / "conda-inline-abcd")
    moved = read_activation(ready)
    assert moved is not None and moved.prefix == ready
    assert moved.env["CONDA_PREFIX"] == str(ready)
    assert moved.env["GDAL_DATA"] == f"{ready}/share/gdal"
    assert moved.path == [f"{ready}/share/gdal/bin", f"{ready}/bin"]
    assert str(building) not in json.dumps(asyncio.run(activation_env(ready, log)))


def test_an_env_without_a_stored_activation_gets_it_computed_and_stored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    prefix = make_prefix(tmp_path / "built-by-an-older-version", {"gdal.sh": GDAL_LIKE})
    env = asyncio.run(activation_env(prefix, log))
    assert env["GDAL_DATA"] == f"{prefix}/share/gdal"
    assert env["PATH"] == os.pathsep.join([f"{prefix}/share/gdal/bin", f"{prefix}/bin"])
    assert (prefix / ACTIVATION_NAME).is_file()
    assert f"has no {ACTIVATION_NAME}: computing it" in caplog.text
    # An unreadable file (another format version) is replaced the same way.
    (prefix / ACTIVATION_NAME).write_text('{"version": 0}')
    assert asyncio.run(activation_env(prefix, log)) == env


@pytest.mark.parametrize(
    ("body", "how"),
    [
        ("exit 3\n", "ended the shell (exit status 3)"),
        ("exec true\n", "ended the shell"),
    ],
    ids=["exit", "exec"],
)
def test_a_failing_activation_script_is_named_and_the_env_keeps_the_basic_variables(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, body: str, how: str
) -> None:
    prefix = make_prefix(
        tmp_path / "env", {"a-fine.sh": "export FINE=1\n", "proj-broken.sh": body}
    )
    with pytest.raises(ActivationFailed) as excinfo:
        asyncio.run(compute_activation(prefix))
    assert excinfo.value.message.startswith(
        f"the activation script etc/conda/activate.d/proj-broken.sh {how}"
    )

    activation = asyncio.run(record_activation(prefix, log))
    basic = basic_activation(prefix)
    assert (activation.env, activation.path) == (basic.env, basic.path)
    assert activation.warning == excinfo.value.message
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "etc/conda/activate.d/proj-broken.sh" in record.getMessage()
    assert "its kernels get only CONDA_PREFIX" in record.getMessage()
    assert read_activation(prefix) == activation, "stored, so the kernels do not rerun it"


def test_a_script_returning_non_zero_is_named_and_what_was_set_is_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    body = "export PROJ_DATA=$CONDA_PREFIX/share/proj\necho 'proj: cannot find proj.db' >&2\nfalse\n"
    prefix = make_prefix(tmp_path / "env", {"a-fine.sh": "export FINE=1\n", "proj.sh": body})
    activation = asyncio.run(record_activation(prefix, log))
    assert activation.env["FINE"] == "1" and activation.env["PROJ_DATA"] == f"{prefix}/share/proj"
    assert activation.env["CONDA_PREFIX"] == str(prefix)
    assert activation.warning is not None and activation.warning.startswith(
        "the activation script etc/conda/activate.d/proj.sh returned exit status 1")
    assert "proj: cannot find proj.db" in activation.warning
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "etc/conda/activate.d/proj.sh returned exit status 1" in record.getMessage()


def test_a_hanging_activation_script_times_out_naming_it(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path / "env", {"slow.sh": "sleep 30\n"})
    with pytest.raises(ActivationFailed) as excinfo:
        asyncio.run(compute_activation(prefix, timeout=0.5))
    assert excinfo.value.message == (
        "the activation script etc/conda/activate.d/slow.sh did not finish within 0.5 s"
    )
