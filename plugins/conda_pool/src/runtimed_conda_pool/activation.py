"""A conda env's activation variables: what ``conda activate`` would set, computed once per env.

Activating a conda env sets ``CONDA_PREFIX``, ``CONDA_DEFAULT_ENV`` and
``CONDA_SHLVL``, the variables of ``etc/conda/env_vars.d/*.json`` and
``conda-meta/state``, puts ``<prefix>/bin`` in front of PATH and sources
``etc/conda/activate.d/*.sh`` (gdal, proj, openssl... set variables there).
There is no conda binary here: rattler writes the bash activation script
(:func:`rattler.shell.activate`), bash runs it once, and the environment
after it is compared with the one before, as pixi does. What changed is kept:
the variables it set, and the directories it put on PATH (as
:attr:`Activation.path`, a list to put in front of the kernel's PATH, since a
whole PATH would carry the daemon's own).

:func:`record_activation` runs when an env is built and stores the result as
``.activation.json`` in the env; :func:`activation_env` reads it when a kernel
gets the env (and computes it if an env built by an older version lacks it).
Values are stored for the prefix they were computed in and moved to the env's
current path on reading (envs are built in a temporary directory and renamed).

An activation script that fails (a non-zero status, or ending the shell) is
logged as a warning naming it, and the env gets the basic variables only
(:func:`basic_activation`): the kernel still starts.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runtimed import procs
from runtimed.errors import RuntimedError

#: The file in an env's directory that holds its activation (JSON).
ACTIVATION_NAME = ".activation.json"
FORMAT_VERSION = 1
#: Longest the activation scripts may take, in seconds.
TIMEOUT = 60.0

#: Variables bash sets by itself (and exported functions): never part of an activation.
_SHELL_OWN = frozenset({"PWD", "OLDPWD", "SHLVL", "_"})
#: Variables of the daemon's environment the activation shell must not see: a
#: ``BASH_ENV`` would run at its start, and the daemon's own conda state would
#: make the env look nested (``CONDA_SHLVL=2``).
_NOT_INHERITED = ("BASH_ENV", "ENV")
_NOT_INHERITED_PREFIX = "CONDA_"


class ActivationFailed(RuntimedError):
    """Running an env's activation failed; the message names the script and quotes its error."""


@dataclass
class Activation:
    """What activating the env at :attr:`prefix` changes."""

    #: The prefix the values were computed for (they mention it, e.g. ``CONDA_PREFIX``).
    prefix: Path
    #: Variables the activation set (PATH excluded).
    env: dict[str, str]
    #: Directories the activation put in front of PATH, first first.
    path: list[str] = field(default_factory=list)
    #: What went wrong running the activation scripts (a script that returned non-zero:
    #: the variables are kept; one that ended the shell: only the basic ones), else None.
    warning: str | None = None

    def moved_to(self, prefix: Path) -> Activation:
        """The same activation for the env now at ``prefix`` (built elsewhere, then renamed)."""
        old, new = str(self.prefix), str(prefix)
        if old == new:
            return self
        return Activation(
            prefix=prefix,
            env={k: v.replace(old, new) for k, v in self.env.items()},
            path=[p.replace(old, new) for p in self.path],
            warning=self.warning,
        )

    def kernel_env(self) -> dict[str, str]:
        """For :attr:`runtimed.pools.PreparedEnv.env`: the variables, and PATH as the
        directories to put in front of the kernel's PATH."""
        env = dict(self.env)
        if self.path:
            env["PATH"] = os.pathsep.join(self.path)
        return env

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": FORMAT_VERSION,
                "prefix": str(self.prefix),
                "env": self.env,
                "path": self.path,
                "warning": self.warning,
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str) -> Activation | None:
        """The activation in ``text``, or None if it is not one this version wrote."""
        try:
            data: Any = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            return None
        env, path = data.get("env"), data.get("path")
        if not isinstance(env, dict) or not isinstance(path, list):
            return None
        return cls(
            prefix=Path(str(data.get("prefix"))),
            env={str(k): str(v) for k, v in env.items()},
            path=[str(p) for p in path],
            warning=data.get("warning"),
        )


def basic_activation(prefix: Path, warning: str | None = None) -> Activation:
    """What every activation sets: CONDA_PREFIX, CONDA_DEFAULT_ENV, CONDA_SHLVL=1, PATH prefix/bin.

    (conda names an env outside its envs directories by its path in
    ``CONDA_DEFAULT_ENV``; every runtimed env is one.)
    """
    return Activation(
        prefix=prefix,
        env={"CONDA_PREFIX": str(prefix), "CONDA_DEFAULT_ENV": str(prefix), "CONDA_SHLVL": "1"},
        path=[str(prefix / "bin")],
        warning=warning,
    )


# -- computing -------------------------------------------------------------------------------------


async def compute_activation(prefix: Path, *, timeout: float = TIMEOUT) -> Activation:
    """Run the activation of ``prefix`` once with bash and return what it changed.

    A script that returns a non-zero status is named in :attr:`Activation.warning`
    (what the scripts set is kept, as conda does). Raises :class:`ActivationFailed`
    naming the script that ended the shell (``exit``, ``exec``) or hung, with the
    tail of its error output.
    """
    bash = shutil.which("bash")
    if bash is None:
        raise ActivationFailed(f"bash, which runs the activation of {prefix}, is not on PATH")
    base = _base_env()
    script = await asyncio.to_thread(_rattler_script, prefix, base["PATH"])
    with tempfile.TemporaryDirectory(prefix="runtimed-conda-activation-") as tmp:
        events, dump = Path(tmp) / "events", Path(tmp) / "env"
        try:
            stderr = await procs.run(
                [bash, "--noprofile", "--norc", "-c", _driver(script, events, dump)],
                cwd=prefix,
                env=base,
                timeout=timeout,
            )
        except procs.CommandFailed as exc:
            if exc.returncode is None:
                raise _failure(prefix, events, f"did not finish within {timeout:g} s", "") from None
            raise _failure(
                prefix, events, f"ended the shell (exit status {exc.returncode})", exc.stderr
            ) from None
        if not dump.is_file():  # a script exec'ed something, which exited 0
            raise _failure(prefix, events, "ended the shell", stderr)
        failed = [(path, status) for path, status in _read_events(events)[0] if status != 0]
        after = _parse_env(dump.read_bytes())
    activation = _diff(prefix, base, after)
    if failed:  # like conda: a script's status does not undo what it and the others set
        path, status = failed[0]
        activation.warning = (
            f"the activation script {_name(path, prefix)} returned exit status {status}"
            + _tail(stderr)
        )
    return activation


def _failure(prefix: Path, events: Path, what: str, stderr: str) -> ActivationFailed:
    """The activation shell ended early: name the script that was running, if one was."""
    running = _read_events(events)[1]
    who = (
        f"the activation script {_name(running, prefix)}"
        if running is not None
        else f"the activation of {prefix}"
    )
    return ActivationFailed(f"{who} {what}{_tail(stderr)}")


def _base_env() -> dict[str, str]:
    """The daemon's environment, minus what would disturb the activation (see _NOT_INHERITED)."""
    env = {
        k: v
        for k, v in procs.subprocess_env(for_python=True).items()
        if k not in _NOT_INHERITED and not k.startswith(_NOT_INHERITED_PREFIX)
    }
    env["PATH"] = env.get("PATH") or os.defpath  # scripts run commands (dirname, uname...)
    return env


def _rattler_script(prefix: Path, path: str) -> str:
    from rattler.shell import ActivationVariables, Shell, activate

    try:
        variables = ActivationVariables(None, path.split(os.pathsep))
        return activate(prefix, variables, Shell.bash).script
    except Exception as exc:  # noqa: BLE001 - rattler's errors share no base class
        raise ActivationFailed(
            f"rattler could not write the activation script of {prefix}: {exc}"
        ) from None


def _driver(script: str, events: Path, dump: Path) -> str:
    """rattler's script, each ``. <activate.d script>`` line logged with its exit status to
    ``events``, then the resulting environment written to ``dump`` (``env -0``).

    Scripts are sourced at the top level, as conda does (in a function, their
    ``declare`` would be local).
    """
    log = shlex.quote(str(events))
    lines = []
    for line in script.splitlines():
        sourced = _sourced(line)
        if sourced is None:
            lines.append(line)
            continue
        quoted = shlex.quote(sourced)
        lines.append(
            f"printf 'start\\0%s\\0' {quoted} >> {log}; . {quoted}; "
            f"printf 'done\\0%s\\0%s\\0' {quoted} \"$?\" >> {log}"
        )
    lines.append(f"command -p env -0 > {shlex.quote(str(dump))}")
    return "\n".join(lines) + "\n"


def _sourced(line: str) -> str | None:
    """The script a ``. <script>`` (or ``source <script>``) line runs, else None."""
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    if len(words) == 2 and words[0] in (".", "source"):
        return words[1]
    return None


def _read_events(events: Path) -> tuple[list[tuple[str, int]], str | None]:
    """``([(script, exit status), ...], the script still running when the shell ended or None)``."""
    try:
        words = events.read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return [], None
    statuses: list[tuple[str, int]] = []
    running = None
    i = 0
    while i < len(words):
        if words[i] == "start" and i + 1 < len(words):
            running = words[i + 1]
            i += 2
        elif words[i] == "done" and i + 2 < len(words):
            statuses.append((words[i + 1], int(words[i + 2]) if words[i + 2].isdigit() else 1))
            running = None
            i += 3
        else:
            i += 1
    return statuses, running


def _parse_env(data: bytes) -> dict[str, str]:
    env = {}
    for entry in data.decode(errors="replace").split("\0"):
        name, sep, value = entry.partition("=")
        if sep and name:
            env[name] = value
    return env


def _diff(prefix: Path, before: dict[str, str], after: dict[str, str]) -> Activation:
    """What the activation changed: variables set, and directories put on PATH."""
    changed = {
        k: v
        for k, v in after.items()
        if k != "PATH"
        and k not in _SHELL_OWN
        and not k.startswith("BASH_FUNC_")
        and before.get(k) != v
    }
    old_path = set(before.get("PATH", "").split(os.pathsep))
    added = [p for p in after.get("PATH", "").split(os.pathsep) if p and p not in old_path]
    basic = basic_activation(prefix)
    return Activation(prefix=prefix, env={**basic.env, **changed}, path=list(dict.fromkeys(added)))


def _name(script: str, prefix: Path) -> str:
    """An activation script as a log reader wants it: ``etc/conda/activate.d/x.sh``."""
    try:
        return str(Path(script).relative_to(prefix))
    except ValueError:
        return script


def _tail(stderr: str, lines: int = 10, chars: int = 1500) -> str:
    text = "\n".join(stderr.strip().splitlines()[-lines:])[-chars:]
    return f":\n{text}" if text else ""


# -- storing ---------------------------------------------------------------------------------------


async def activate(prefix: Path, log: logging.Logger) -> Activation:
    """:func:`compute_activation`, or the basic variables if an activation script fails.

    The failure is logged as a warning naming the script (and kept in
    :attr:`Activation.warning`): the env stays usable.
    """
    try:
        activation = await compute_activation(prefix)
    except ActivationFailed as exc:
        log.warning(
            "Conda env %s: its kernels get only CONDA_PREFIX, CONDA_DEFAULT_ENV, CONDA_SHLVL "
            "and PATH, because %s",
            prefix.name,
            exc.message,
        )
        return basic_activation(prefix, warning=exc.message)
    if activation.warning is not None:
        log.warning("Conda env %s: %s", prefix.name, activation.warning)
    return activation


async def record_activation(prefix: Path, log: logging.Logger) -> Activation:
    """:func:`activate` ``prefix`` and store the result in ``prefix/.activation.json``."""
    activation = await activate(prefix, log)
    await asyncio.to_thread(_write, prefix / ACTIVATION_NAME, activation.to_json())
    return activation


def read_activation(prefix: Path) -> Activation | None:
    """The stored activation of ``prefix`` (moved to its current path), or None if there is none."""
    try:
        text = (prefix / ACTIVATION_NAME).read_text()
    except OSError:
        return None
    activation = Activation.from_json(text)
    return activation.moved_to(prefix) if activation is not None else None


async def activation_env(prefix: Path, log: logging.Logger) -> dict[str, str]:
    """:attr:`runtimed.pools.PreparedEnv.env` for the env at ``prefix``: the stored activation,
    else (an env built before activations were recorded) computed and stored now."""
    activation = await asyncio.to_thread(read_activation, prefix)
    if activation is None:
        log.info("Conda env %s has no %s: computing it", prefix.name, ACTIVATION_NAME)
        activation = await activate(prefix, log)
        try:
            await asyncio.to_thread(_write, prefix / ACTIVATION_NAME, activation.to_json())
        except OSError as exc:  # a read-only env still runs kernels
            log.warning("Conda env %s: cannot store %s: %s", prefix.name, ACTIVATION_NAME, exc)
    return activation.kernel_env()


def _write(path: Path, text: str) -> None:
    """Write ``path`` atomically: a new file renamed over it, never an existing file edited."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
