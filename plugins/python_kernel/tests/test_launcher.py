"""The python launcher builds the right command and environment for a prepared env."""

from pathlib import Path

from runtimed.config import DaemonConfig
from runtimed.launchers import LaunchContext
from runtimed.pools import PreparedEnv
from runtimed_python_kernel import PythonKernelLauncher


def test_command_and_environment(tmp_path):
    env = PreparedEnv("uv:prewarmed", tmp_path / "env", [str(tmp_path / "env" / "bin" / "python")])
    ctx = LaunchContext(
        notebook_id="nb", connection_file=Path("/run/k.json"), cwd=tmp_path,
        env={"PATH": "/usr/bin", "PYTHONPATH": "/daemon/site", "PYTHONHOME": "/x"}, prepared_env=env,
    )
    launcher = PythonKernelLauncher(DaemonConfig())
    assert launcher.command(ctx) == [str(tmp_path / "env" / "bin" / "python"), "-m", "ipykernel_launcher",
                                     "-f", "/run/k.json"]
    kernel_env = launcher.environment(ctx)
    assert kernel_env["VIRTUAL_ENV"] == str(tmp_path / "env")
    assert kernel_env["PATH"].split(":")[0] == str(tmp_path / "env" / "bin")
    assert "PYTHONPATH" not in kernel_env and "PYTHONHOME" not in kernel_env  # the daemon's never leak
    assert launcher.kernelspec["language"] == "python"
