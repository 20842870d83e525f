"""Launch ``ipykernel`` from a prepared environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from runtimed.launchers import KernelLauncher, LaunchContext
from runtimed.settings import Setting, flag_bool


def is_venv(prefix: Path) -> bool:
    """A virtual environment (``pyvenv.cfg``), not a conda prefix (``conda-meta/``)."""
    return (prefix / "pyvenv.cfg").is_file() and not (prefix / "conda-meta").is_dir()


def path_entries(path: str) -> list[str]:
    """The non-empty entries of a PATH-like string."""
    return [entry for entry in path.split(os.pathsep) if entry]


class PythonKernelLauncher(KernelLauncher):
    """``<env python> -m ipykernel_launcher -f <connection file>``."""

    kernel_type = "python"
    kernelspec_names = ("python3", "python")
    languages = ("python",)
    needs_env = True
    interrupt_mode = "signal"
    hot = True
    default_rank = 0
    kernelspec: ClassVar[dict[str, str]] = {
        "name": "python3", "display_name": "Python 3", "language": "python",
    }
    settings = (
        Setting("history", False, "keep IPython's input history in its SQLite file across kernels "
                "(off: in memory, as nbclient does; each execution's commit to that file costs ~4 ms)",
                parse=flag_bool),
    )

    def command(self, ctx: LaunchContext) -> list[str]:
        assert ctx.prepared_env is not None, "the python launcher needs a prepared environment"
        argv = [*ctx.prepared_env.python, "-m", "ipykernel_launcher", "-f", str(ctx.connection_file)]
        if not self.setting("history"):
            argv.append("--HistoryManager.hist_file=:memory:")
        return argv

    def environment(self, ctx: LaunchContext) -> dict[str, str]:
        env = dict(ctx.env)
        # Never let the daemon's own interpreter settings leak into the kernel's.
        for var in ("PYTHONHOME", "PYTHONPATH", "PYTHONEXECUTABLE"):
            env.pop(var, None)
        prepared = ctx.prepared_env
        if prepared is not None:
            # prepared.env's PATH lists directories to put in front (a conda activation's).
            activation = dict(prepared.env)
            front = [str(prepared.prefix / "bin"), *path_entries(activation.pop("PATH", ""))]
            env.update(activation)
            if is_venv(prepared.prefix):
                env["VIRTUAL_ENV"] = str(prepared.prefix)
            else:  # e.g. a conda env: nor may the daemon's own venv leak in
                env.pop("VIRTUAL_ENV", None)
            env["PATH"] = os.pathsep.join([*dict.fromkeys(front), env.get("PATH", "")])
        env["JPY_PARENT_PID"] = str(os.getpid())  # the kernel exits if the daemon is killed
        env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        env.setdefault("JPY_SESSION_NAME", ctx.notebook_id)
        return env

    def claim_code(self, ctx: LaunchContext, launched_in: Path) -> str | None:
        # Move the hot kernel to the notebook's directory, as if it had been started there.
        return (
            "import os as __rt_os, sys as __rt_sys\n"
            f"__rt_os.chdir({str(ctx.cwd)!r})\n"
            f"if __rt_sys.path and __rt_sys.path[0] in ('', {str(launched_in)!r}):\n"
            f"    __rt_sys.path[0] = {str(ctx.cwd)!r}\n"
            f"__rt_os.environ['JPY_SESSION_NAME'] = {ctx.notebook_id!r}\n"
            "del __rt_os, __rt_sys\n"
        )
