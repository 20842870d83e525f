"""Running commands as asyncio subprocesses, for pool plugins (an installer, an env's python...).

Everything here is pool-agnostic: :func:`run` starts one command, captures its
output, and on cancellation or timeout kills the command's whole process group
(installers spawn helpers, e.g. for bytecode compilation) before re-raising, so no
process or pipe outlives the call. :class:`CommandFailed` quotes the tail of
the command's stderr; :func:`subprocess_env` passes the daemon's environment
through; :func:`find_program` finds an executable (one a Python package
ships, else on PATH).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger("runtimed.procs")

#: Variables that would make an environment's interpreter import something else.
_LEAKY_PYTHON_VARS = ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")


class CommandFailed(Exception):
    """A command exited non-zero, timed out, or could not be started."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(self.summary())

    def tail(self, lines: int = 15, chars: int = 2000) -> str:
        """The last lines of the command's stderr: where installers put the reason they failed."""
        text = "\n".join(self.stderr.strip().splitlines()[-lines:])
        return text[-chars:]

    def summary(self) -> str:
        """``<command> exited with <code>: <stderr tail>`` on one paragraph."""
        words = [Path(self.argv[0]).name]
        rest = self.argv[1:]
        if rest[:1] == ["-m"]:  # `python -m pip install`: the module is the command
            words.append(" ".join(rest[:2]))
            rest = rest[2:]
        for arg in rest[:2]:  # the subcommand: `<tool> venv`, `<tool> pip install`
            if arg.startswith("-"):
                break
            words.append(arg)
        name = " ".join(words)
        how = "timed out" if self.returncode is None else f"exited with {self.returncode}"
        tail = self.tail()
        return f"`{name}` {how}" + (f":\n{tail}" if tail else "")


def find_program(name: str, *, bundled: Callable[[], str] | None = None, hint: str = "") -> str:
    """An executable: what ``bundled()`` returns (a binary a Python package ships), else
    ``name`` on PATH.

    ``bundled`` may raise ImportError or OSError (the package or its binary is
    missing). Raises :class:`CommandFailed` (ending with ``hint``) when there is neither.
    """
    if bundled is not None:
        try:
            return bundled()
        except (ImportError, OSError):
            pass
    found = shutil.which(name)
    if found:
        return found
    raise CommandFailed([name], 127, f"{name} not found" + (f"; {hint}" if hint else ""))


def subprocess_env(*, for_python: bool = False) -> dict[str, str]:
    """The daemon's environment, passed through (installers need ``SSL_CERT_FILE`` and proxies).

    With ``for_python``, drop variables that would make an environment's own
    interpreter import code from outside it.
    """
    env = dict(os.environ)
    if for_python:
        for var in _LEAKY_PYTHON_VARS:
            env.pop(var, None)
    return env


async def run(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Run ``argv`` to completion and return its stderr (installers log there).

    ``on_line`` is called with each line of stderr as it arrives (installers
    report ``Resolved N packages``, ``Installed N packages``... there); its exceptions
    are logged, never raised. Raises :class:`CommandFailed` on a non-zero exit,
    a timeout, or a missing executable. Cancelling the caller kills the
    command's process group.
    """
    _, stderr = await _run(argv, cwd=cwd, env=env, timeout=timeout, on_line=on_line)
    return stderr


async def output(
    argv: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    on_line: Callable[[str], None] | None = None,
) -> str:
    """Like :func:`run`, but return the command's stdout (``on_line`` still gets stderr's lines)."""
    stdout, _ = await _run(argv, cwd=cwd, env=env, timeout=timeout, on_line=on_line)
    return stdout


async def _run(
    argv: Sequence[str],
    *,
    cwd: Path | None,
    env: Mapping[str, str] | None,
    timeout: float | None,
    on_line: Callable[[str], None] | None,
) -> tuple[str, str]:
    spawn = asyncio.ensure_future(
        asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    )
    try:
        # Shielded: on CPython <= 3.11 a cancellation while the subprocess is being
        # set up leaves it waiting forever for pipes that never connect.
        proc = await asyncio.shield(spawn)
    except asyncio.CancelledError:
        await asyncio.wait({spawn})
        if not spawn.cancelled() and spawn.exception() is None:
            started = spawn.result()
            await _kill(started, asyncio.ensure_future(started.communicate()))
        raise
    except OSError as exc:
        raise CommandFailed(argv, 127, str(exc)) from exc
    # asyncio.wait, not wait_for: on Python 3.10/3.11 wait_for can swallow a
    # cancellation that arrives as the command finishes.
    communicate = asyncio.ensure_future(_communicate(proc, on_line))
    try:
        done, _ = await asyncio.wait({communicate}, timeout=timeout)
    except BaseException:
        await _kill(proc, communicate)
        raise
    if not done:
        await _kill(proc, communicate)
        raise CommandFailed(argv, None, f"no result after {timeout} s")
    stdout_bytes, stderr_bytes = communicate.result()
    stdout = stdout_bytes.decode(errors="replace")
    stderr = stderr_bytes.decode(errors="replace")
    if proc.returncode != 0:
        raise CommandFailed(
            argv, proc.returncode, "\n".join(s for s in (stdout, stderr) if s.strip())
        )
    return stdout, stderr


async def _communicate(
    proc: asyncio.subprocess.Process, on_line: Callable[[str], None] | None
) -> tuple[bytes, bytes]:
    """``proc.communicate()``, calling ``on_line`` for every stderr line on the way."""
    if on_line is None:
        return await proc.communicate()
    assert proc.stdout is not None and proc.stderr is not None
    stderr_pipe = proc.stderr

    async def read_stderr() -> bytes:
        # Chunks, not readline(): a very long line must not hit StreamReader's limit.
        received = bytearray()
        pending = b""
        while chunk := await stderr_pipe.read(65536):
            received += chunk
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                _emit(on_line, line)
        if pending:
            _emit(on_line, pending)
        return bytes(received)

    stdout, stderr = await asyncio.gather(proc.stdout.read(), read_stderr())
    await proc.wait()
    return stdout, stderr


def _emit(on_line: Callable[[str], None], line: bytes) -> None:
    text = line.decode(errors="replace").rstrip("\r")
    try:
        on_line(text)
    except Exception:
        log.exception("output callback failed on %r", text)


async def _kill(proc: asyncio.subprocess.Process, communicate: asyncio.Future[Any]) -> None:
    """Kill ``proc``'s process group, then let ``communicate`` drain the pipes and reap it."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    # With the group dead the pipes reach EOF promptly; finishing communicate()
    # closes the transport (no ResourceWarning) and leaves no zombie.
    await asyncio.wait({communicate})
