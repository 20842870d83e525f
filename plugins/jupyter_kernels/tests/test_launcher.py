"""The launcher without a daemon: which kernelspecs it finds, and how it starts one."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from runtimed.config import DaemonConfig
from runtimed.errors import InvalidRequest, KernelLaunchFailed
from runtimed.launchers import LaunchContext
from runtimed.plugins import Registry, describe_plugins, get_plugin_manager
from runtimed_jupyter_kernels import JupyterKernelLauncher, find_kernelspecs
from runtimed_jupyter_kernels.hooks import runtimed_kernel_launchers
from runtimed_jupyter_kernels.launcher import format_argv, kernel_environment

LOGGER = "runtimed_jupyter_kernels.launcher"


def write_spec(kernels: Path, name: str, spec: dict[str, Any] | str) -> Path:
    """``kernels/<name>/kernel.json`` holding ``spec`` (a str is written as is)."""
    resource_dir = kernels / name
    resource_dir.mkdir(parents=True)
    text = spec if isinstance(spec, str) else json.dumps(spec)
    (resource_dir / "kernel.json").write_text(text)
    return resource_dir


def spec(display_name: str = "Echo", **extra: Any) -> dict[str, Any]:
    return {"argv": ["echo-kernel", "-f", "{connection_file}"], "display_name": display_name,
            "language": "echo", **extra}


@pytest.fixture
def jupyter_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Two data dirs on JUPYTER_PATH, first one first; returns their ``kernels`` dirs."""
    data = [tmp_path / "first", tmp_path / "second"]
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join(map(str, data)))
    return [d / "kernels" for d in data]


@pytest.fixture
def launcher(tmp_path: Path) -> JupyterKernelLauncher:
    return JupyterKernelLauncher(DaemonConfig(cache_dir=tmp_path / "cache"))


def kernelspecs(launcher: JupyterKernelLauncher) -> dict[str, dict[str, Any]]:
    return asyncio.run(launcher.kernelspecs())


def context(tmp_path: Path, kernel_name: str | None, env: dict[str, str] | None = None,
            ) -> LaunchContext:
    runtime = tmp_path / "runtime"
    runtime.mkdir(exist_ok=True)
    cwd = tmp_path / "notebooks"
    cwd.mkdir(exist_ok=True)
    return LaunchContext(
        notebook_id="nb", connection_file=runtime / "kernel-1.json", cwd=cwd,
        env={"PATH": os.environ["PATH"], **(env or {})}, kernel_type=f"jupyter:{kernel_name}",
        kernel_name=kernel_name, stderr_path=runtime / "kernel-1.log",
    )


def test_registered_through_the_entry_point(jupyter_path):
    write_spec(jupyter_path[0], "echo", spec())
    pm = get_plugin_manager()
    assert Registry.load(pm).launchers["jupyter"] is JupyterKernelLauncher
    assert runtimed_kernel_launchers() == [JupyterKernelLauncher]
    described = {p["name"]: p for p in describe_plugins(pm)}["jupyter_kernels"]
    assert described["distribution"] == "runtimed-jupyter-kernels"
    [declared] = described["declares"]
    assert declared["kernel_type"] == "jupyter" and declared["needs_env"] is False
    assert declared["kernelspec_names"] == [] and declared["languages"] == []  # served by name
    assert declared["kernelspecs"]["echo"]["display_name"] == "Echo"
    json.dumps(declared)  # `runtimed plugins --json` prints it


def test_discovers_specs_on_jupyter_path(jupyter_path, launcher):
    echo = write_spec(jupyter_path[0], "echo", spec(env={"A": "1"}, metadata={"x": 1}))
    write_spec(jupyter_path[1], "MyKernel", spec("Mine", interrupt_mode="Message"))
    write_spec(jupyter_path[1], "plain", {"argv": ["plain-kernel"]})
    (jupyter_path[1] / "no-spec-here").mkdir()
    (jupyter_path[1] / "README").write_text("not a kernel")
    found = kernelspecs(launcher)
    assert found["echo"] == {
        "argv": ["echo-kernel", "-f", "{connection_file}"], "display_name": "Echo",
        "language": "echo", "env": {"A": "1"}, "metadata": {"x": 1},
        "interrupt_mode": "signal", "resource_dir": str(echo),
    }
    assert found["mykernel"]["display_name"] == "Mine"  # names are lowercased, as Jupyter does
    assert found["mykernel"]["interrupt_mode"] == "message"
    assert "MyKernel" not in found
    # what a minimal spec gets by default
    assert (found["plain"]["display_name"], found["plain"]["language"]) == ("plain", "")
    assert found["plain"]["env"] == {} and found["plain"]["interrupt_mode"] == "signal"
    assert "no-spec-here" not in found and "readme" not in found


def test_the_first_directory_wins_for_a_name(jupyter_path, launcher):
    first = write_spec(jupyter_path[0], "echo", spec("From first"))
    write_spec(jupyter_path[1], "ECHO", spec("From second"))
    found = kernelspecs(launcher)
    assert found["echo"]["display_name"] == "From first"
    assert found["echo"]["resource_dir"] == str(first)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "is not valid JSON"),
        (json.dumps(["argv"]), "is not a JSON object"),
        (json.dumps({"display_name": "No argv"}), "has no argv list"),
        (json.dumps({"argv": "echo-kernel {connection_file}"}), "has no argv list"),
        (json.dumps({"argv": []}), "has no argv list"),
        (json.dumps({"argv": ["k", 3]}), "has no argv list"),
        (json.dumps({"argv": ["k"], "env": {"N": 1}}), "has an env that is not"),
        (json.dumps({"argv": ["k"], "interrupt_mode": "kill"}), "has interrupt_mode 'kill'"),
    ],
    ids=["bad-json", "not-object", "no-argv", "argv-string", "argv-empty", "argv-non-str",
         "env-non-str", "bad-interrupt-mode"],
)
def test_a_malformed_spec_is_skipped_with_a_warning(jupyter_path, launcher, caplog, content,
                                                    problem):
    broken = write_spec(jupyter_path[0], "broken", content)
    write_spec(jupyter_path[1], "echo", spec())
    write_spec(jupyter_path[1], "broken", spec("Shadowed"))  # a broken spec still shadows
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        found = kernelspecs(launcher)
        assert "echo" in found and "broken" not in found
        kernelspecs(launcher)  # logged once, not at every kernel start
    [record] = [r for r in caplog.records if r.name == LOGGER]
    assert str(broken / "kernel.json") in record.getMessage()
    assert problem in record.getMessage()


def test_an_unusual_name_is_served_with_a_warning(jupyter_path, launcher, caplog):
    odd = write_spec(jupyter_path[0], "My Kernel", spec("Odd"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        assert kernelspecs(launcher)["my kernel"]["display_name"] == "Odd"  # as Jupyter does
    assert any(str(odd) in r.getMessage() and "served anyway" in r.getMessage()
               for r in caplog.records)


def test_an_unreadable_or_missing_directory_is_no_error(tmp_path):
    assert find_kernelspecs([str(tmp_path / "missing"), str(tmp_path)]) == {}


def test_argv_substitution(tmp_path):
    resource_dir = tmp_path / "kernels" / "echo"
    real_runtime = tmp_path / "real-runtime"
    real_runtime.mkdir()
    (tmp_path / "runtime").symlink_to(real_runtime)
    spec = {"argv": ["{resource_dir}/run", "-f", "{connection_file}", "--prefix={prefix}",
                     "--cwd", "{cwd}", "{unknown}", "{connection_file}{connection_file}"],
            "resource_dir": str(resource_dir)}
    argv = format_argv(spec, connection_file=tmp_path / "runtime" / "k.json", cwd=tmp_path / "nb")
    conn = str(real_runtime / "k.json")  # the real path, as jupyter_client passes it
    assert argv == [f"{resource_dir}/run", "-f", conn, f"--prefix={sys.prefix}",
                    "--cwd", str(tmp_path / "nb"), "{unknown}", conn + conn]


@pytest.mark.parametrize("python", ["python", f"python{sys.version_info[0]}",
                                    "python{}.{}".format(*sys.version_info[:2])])
def test_a_plain_python_is_this_interpreter(tmp_path, python):
    spec = {"argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "resource_dir": str(tmp_path)}
    argv = format_argv(spec, connection_file=tmp_path / "k.json", cwd=tmp_path)
    assert argv[0] == sys.executable
    other = format_argv({**spec, "argv": ["/opt/py/bin/python", "-V"]},
                        connection_file=tmp_path / "k.json", cwd=tmp_path)
    assert other == ["/opt/py/bin/python", "-V"]


def test_spec_env_on_top_of_the_kernel_env():
    base = {"HOME": "/home/u", "PATH": "/bin", "PYTHONEXECUTABLE": "/x/python", "KEEP": "k"}
    bash = {"language": "bash", "env": {"PATH": "/opt/k/bin:${PATH}", "GREETING": "hi $HOME",
                                        "RAW": "${NOT_SET} $$ ${HOME}"}}
    env = kernel_environment(bash, base)
    assert env["PATH"] == "/opt/k/bin:/bin"
    assert env["GREETING"] == "hi /home/u"
    assert env["RAW"] == "${NOT_SET} $ /home/u"  # unknown references are left as they are
    assert env["KEEP"] == "k" and env["PYTHONEXECUTABLE"] == "/x/python"
    assert env["JPY_PARENT_PID"] == str(os.getpid())
    assert "GREETING" not in base  # the base is not modified
    python = kernel_environment({"language": "Python", "env": {}}, base)
    assert "PYTHONEXECUTABLE" not in python  # as jupyter_client does for Python kernels


def test_a_missing_program_fails_naming_the_spec_and_the_path(jupyter_path, launcher, tmp_path):
    ghost = write_spec(jupyter_path[0], "ghost", spec(argv=["/nonexistent/python", "-f",
                                                            "{connection_file}"]))
    with pytest.raises(KernelLaunchFailed) as info:
        asyncio.run(launcher.launch(context(tmp_path, "ghost")))
    assert str(info.value) == (f"The Jupyter kernelspec 'ghost' ({ghost / 'kernel.json'}) runs "
                               "'/nonexistent/python', which does not exist")
    assert not (tmp_path / "runtime" / "kernel-1.pid").exists()  # nothing was started


def test_a_program_not_on_path_fails_naming_the_path(jupyter_path, launcher, tmp_path):
    write_spec(jupyter_path[0], "nopath", spec(argv=["no-such-kernel-binary", "{connection_file}"]))
    with pytest.raises(KernelLaunchFailed, match=r"'nopath' .* runs 'no-such-kernel-binary', "
                                                 r"which is not on the kernel's PATH \(/nowhere\)"):
        asyncio.run(launcher.launch(context(tmp_path, "nopath", {"PATH": "/nowhere"})))


def test_a_program_that_is_not_executable_fails(jupyter_path, launcher, tmp_path):
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\n")
    write_spec(jupyter_path[0], "noexec", spec(argv=[str(script)]))
    with pytest.raises(KernelLaunchFailed, match="which is not an executable file"):
        asyncio.run(launcher.launch(context(tmp_path, "noexec")))


@pytest.mark.skipif(os.name != "posix", reason="a shell-script kernel")
def test_launch_runs_the_spec(jupyter_path, launcher, tmp_path):
    """A fake kernel that records its argv, cwd and env shows what the spec started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "record"
    fake = bin_dir / "fake-kernel"
    fake.write_text(f'#!/bin/sh\n{{ printf "%s\\n" "$@"; pwd; echo "$GREETING"; }} > "{record}"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    resource_dir = write_spec(jupyter_path[0], "fake", {
        "argv": ["fake-kernel", "--conn", "{connection_file}", "--res", "{resource_dir}"],
        "env": {"GREETING": "hello ${WHO}"}, "interrupt_mode": "message",
    })
    ctx = context(tmp_path, "FAKE", {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "WHO": "you"})

    async def start_and_wait():
        handle = await launcher.launch(ctx)
        try:
            assert await asyncio.wait_for(handle.wait(), 10) == 0
        finally:
            await handle.kill()
        return handle

    handle = asyncio.run(start_and_wait())
    assert handle.interrupt_mode == "message"  # from the spec
    assert record.read_text().splitlines() == [
        "--conn", os.path.realpath(ctx.connection_file), "--res", str(resource_dir),
        str(ctx.cwd), "hello you",
    ]


def test_kernelspec_for_a_notebook(jupyter_path, launcher):
    write_spec(jupyter_path[0], "echo", spec("Echo 1.0", language="echo"))
    write_spec(jupyter_path[0], "bare", {"argv": ["bare"]})
    assert asyncio.run(launcher.kernelspec_for("echo")) == {
        "name": "echo", "display_name": "Echo 1.0", "language": "echo",
    }
    assert asyncio.run(launcher.kernelspec_for("bare")) == {
        "name": "bare", "display_name": "bare", "language": "",
    }
    assert asyncio.run(launcher.kernelspec_for(None)) == {}  # nothing to record


def test_jupyter_without_a_name_is_refused(jupyter_path, launcher, tmp_path):
    write_spec(jupyter_path[0], "echo", spec())
    with pytest.raises(InvalidRequest, match=r"'jupyter:<name>' \(available: .*echo"):
        asyncio.run(launcher.launch(context(tmp_path, None)))
