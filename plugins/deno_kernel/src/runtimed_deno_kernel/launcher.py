"""Launch Deno's built-in Jupyter kernel (``deno jupyter --kernel``).

Deno needs no environment from a pool: the kernel is one binary. The binary is
a ``deno`` on ``PATH`` when it is 2.x or newer, else the one the ``deno``
package from PyPI installs (a dependency of this plugin).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import shutil
import subprocess
from typing import ClassVar

from runtimed.errors import KernelLaunchFailed
from runtimed.kernel_handles import KernelHandle
from runtimed.launchers import KernelLauncher, LaunchContext

log = logging.getLogger(__name__)

#: The oldest Deno major version whose ``deno jupyter --kernel`` this plugin drives.
MIN_MAJOR = 2
VERSION_TIMEOUT = 10.0

_VERSION = re.compile(r"^deno (\d+)\.(\d+)\.(\d+)", re.MULTILINE)


def deno_version(binary: str) -> tuple[int, int, int] | None:
    """The version ``binary --version`` reports, or None if it does not run or is not Deno."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT,
            env={**os.environ, "NO_COLOR": "1"}, stdin=subprocess.DEVNULL, check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    if match is None:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch


def _bundled_deno() -> str | None:
    """The binary of the ``deno`` PyPI package, if it is installed."""
    try:
        import deno
    except ImportError:
        return None
    try:
        return str(deno.find_deno_bin())
    except (OSError, AttributeError):  # FileNotFoundError: the package lost its binary
        return None


@functools.lru_cache(maxsize=8)
def find_deno(path: str | None) -> str:
    """The Deno binary to run, given the kernel's ``PATH``; cached (failures are not).

    A ``deno`` 2.x or newer on ``path`` wins, then the ``deno`` package's binary.
    Raises :class:`KernelLaunchFailed` saying what was tried.
    """
    tried: list[str] = []
    on_path = shutil.which("deno", path=path)
    if on_path is not None:
        version = deno_version(on_path)
        if version is not None and version[0] >= MIN_MAJOR:
            log.debug("Using deno %s from PATH: %s", ".".join(map(str, version)), on_path)
            return on_path
        found = "did not run" if version is None else "is " + ".".join(map(str, version))
        tried.append(f"{on_path} on PATH {found} (need {MIN_MAJOR}.x or newer)")
    else:
        tried.append("no deno on PATH")
    bundled = _bundled_deno()
    if bundled is not None:
        version = deno_version(bundled)
        if version is not None and version[0] >= MIN_MAJOR:
            log.debug("Using deno %s from the deno package: %s",
                      ".".join(map(str, version)), bundled)
            return bundled
        found = "did not run" if version is None else "is " + ".".join(map(str, version))
        tried.append(f"{bundled} from the deno package {found}")
    else:
        tried.append("the deno package (pip install deno) is not installed or has no binary")
    raise KernelLaunchFailed(
        f"Cannot start the deno kernel: no usable Deno {MIN_MAJOR}.x or newer "
        f"({'; '.join(tried)}). Install Deno, or the deno package from PyPI."
    )


class DenoKernelLauncher(KernelLauncher):
    """``deno jupyter --kernel --conn <connection file>``: TypeScript and JavaScript notebooks."""

    kernel_type = "deno"
    kernelspec_names = ("deno",)
    languages = ("typescript", "javascript")
    needs_env = False
    # SIGINT kills the Deno kernel; an interrupt_request stops a busy synchronous loop.
    interrupt_mode = "message"
    kernelspec: ClassVar[dict[str, str]] = {
        "name": "deno", "display_name": "Deno", "language": "typescript",
    }
    #: Deno publishes a cell's last outputs (stream, execute_result) a few milliseconds after
    #: its execute_reply and idle status; the daemon keeps routing the cell's IOPub this
    #: many seconds longer.
    output_grace: ClassVar[float] = 0.03

    def command(self, ctx: LaunchContext) -> list[str]:
        deno = find_deno(ctx.env.get("PATH"))
        return [deno, "jupyter", "--kernel", "--conn", str(ctx.connection_file)]

    def environment(self, ctx: LaunchContext) -> dict[str, str]:
        env = dict(ctx.env)
        env["NO_COLOR"] = "1"  # plain tracebacks and console output, no ANSI escapes
        if not env.get("DENO_DIR"):  # one module cache per daemon, unless the user chose one
            env["DENO_DIR"] = str(self.config.cache_dir / "deno")
        env.setdefault("DENO_NO_UPDATE_CHECK", "1")  # never reach out for a new release
        return env

    async def launch(self, ctx: LaunchContext) -> KernelHandle:
        # The first lookup runs ``deno --version``: keep it off the daemon's event loop.
        await asyncio.to_thread(find_deno, ctx.env.get("PATH"))
        return await super().launch(ctx)
