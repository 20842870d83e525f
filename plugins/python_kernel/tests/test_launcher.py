"""The python launcher builds the right command and environment for a prepared env."""

from pathlib import Path

from runtimed.config import DaemonConfig
from runtimed.launchers import LaunchContext
from runtimed.pools import PreparedEnv
from runtimed_python_kernel import PythonKernelLauncher


def test_command_and_environment(tmp_path):
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "pyvenv.cfg").write_text("home = /usr/bin\n")  # a venv, as uv builds
    env = PreparedEnv("uv:prewarmed", tmp_path / "env", [str(tmp_path / "env" / "bin" / "python")])
    ctx = LaunchContext(
        notebook_id="nb", connection_file=Path("/run/k.json"), cwd=tmp_path,
        env={"PATH": "/usr/bin", "PYTHONPATH": "/daemon/site", "PYTHONHOME": "/x"}, prepared_env=env,
    )
    launcher = PythonKernelLauncher(DaemonConfig())
    assert launcher.command(ctx) == [str(tmp_path / "env" / "bin" / "python"), "-m", "ipykernel_launcher",
                                     "-f", "/run/k.json", "--HistoryManager.hist_file=:memory:"]
    kernel_env = launcher.environment(ctx)
    assert kernel_env["VIRTUAL_ENV"] == str(tmp_path / "env")
    assert kernel_env["PATH"] == f"{tmp_path / 'env' / 'bin'}:/usr/bin"
    assert "PYTHONPATH" not in kernel_env and "PYTHONHOME" not in kernel_env  # the daemon's never leak
    assert launcher.kernelspec["language"] == "python"


def test_a_conda_env_gets_its_activation_and_no_virtual_env(tmp_path):
    prefix = tmp_path / "conda-env"
    (prefix / "conda-meta").mkdir(parents=True)
    (prefix / "pyvenv.cfg").write_text("home = /usr/bin\n")  # as the test channel's python shim
    activation = {
        "CONDA_PREFIX": str(prefix),
        "CONDA_SHLVL": "1",
        "GDAL_DATA": f"{prefix}/share/gdal",
        "PATH": f"{prefix}/share/gdal/bin:{prefix}/bin",  # directories to put in front
    }
    env = PreparedEnv("conda:inline", prefix, [str(prefix / "bin" / "python")], env=activation)
    ctx = LaunchContext(
        notebook_id="nb", connection_file=Path("/run/k.json"), cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "VIRTUAL_ENV": "/daemon/.venv", "CONDA_SHLVL": "3"},
        prepared_env=env,
    )
    kernel_env = PythonKernelLauncher(DaemonConfig()).environment(ctx)
    assert "VIRTUAL_ENV" not in kernel_env  # neither the conda prefix nor the daemon's venv
    assert kernel_env["CONDA_PREFIX"] == str(prefix) and kernel_env["CONDA_SHLVL"] == "1"
    assert kernel_env["GDAL_DATA"] == f"{prefix}/share/gdal"
    # prefix/bin first, each directory once, then the daemon's PATH.
    assert kernel_env["PATH"].split(":") == [
        str(prefix / "bin"), f"{prefix}/share/gdal/bin", "/usr/bin", "/bin",
    ]
