"""Run any installed Jupyter kernelspec as ``kernel_type="jupyter:<name>"``.

Kernelspecs are found where jupyter_client's ``KernelSpecManager`` finds them:
every ``kernels/<name>/kernel.json`` under the Jupyter data path
(``jupyter_core.paths.jupyter_path("kernels")``: ``JUPYTER_PATH``, the user
data dir, the environment's ``share/jupyter``, the system dirs). The first
directory on that path wins for a name, and names are lowercased. A
``kernel.json`` that does not parse, or has no ``argv`` list, is skipped with a
logged warning (and, as with jupyter_client, still hides the same name further down the path).

A kernel starts as jupyter_client's ``KernelManager`` would start it:

- ``argv`` with ``{connection_file}``, ``{resource_dir}``, ``{prefix}`` (this
  interpreter's ``sys.prefix``) and ``{cwd}`` filled in, other ``{fields}`` left as
  they are; an ``argv[0]`` of plain ``python``, ``python3`` or this version's ``python3.X`` is this
  interpreter (``sys.executable``). ``argv[0]`` is looked up on the kernel
  environment's ``PATH``, and a missing one fails the start naming the spec.
- the daemon's environment, with the spec's ``env`` on top (``${VAR}`` in a
  value is filled from the daemon's environment; unknown ones are kept), and
  ``JPY_PARENT_PID`` so that kernels which watch their parent exit with the daemon.
- ``interrupt_mode`` ``"signal"`` (SIGINT, the default) or ``"message"``
  (an ``interrupt_request``), as the spec says.

These kernels need no environment from a pool: each spec names its own program.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from string import Template
from typing import Any, Literal, cast

from runtimed.errors import InvalidRequest, KernelLaunchFailed
from runtimed.kernel_handles import KernelHandle, LocalKernel
from runtimed.launchers import KernelLauncher, LaunchContext

log = logging.getLogger(__name__)

KERNEL_FILE = "kernel.json"
#: Spec names jupyter_client accepts without a warning.
_VALID_NAME = re.compile(r"^[a-z0-9._\-]+$")
#: ``{field}`` in an argv entry.
_FIELD = re.compile(r"\{([A-Za-z0-9_]+)\}")
#: argv[0] values that mean "this interpreter" to jupyter_client.
_THIS_PYTHON = frozenset({"python", f"python{sys.version_info[0]}",
                          "python{}.{}".format(*sys.version_info[:2])})
#: Problems already logged, so a broken spec is reported once, not at every kernel start.
_reported: set[tuple[str, str]] = set()


class MalformedKernelspec(ValueError):
    """A ``kernel.json`` that cannot be used (the message says why)."""


def kernel_dirs() -> list[str]:
    """The ``kernels`` directories of the Jupyter data path, highest precedence first."""
    from jupyter_core.paths import jupyter_path  # lazily: the daemon's idle memory stays small

    return jupyter_path("kernels")


def _warn_once(path: Path, message: str) -> None:
    if (str(path), message) not in _reported:
        _reported.add((str(path), message))
        log.warning("%s", message)


def load_kernelspec(name: str, resource_dir: Path) -> dict[str, Any]:
    """The spec in ``resource_dir/kernel.json``, checked and completed: ``argv``, ``env``,
    ``display_name`` (default ``name``), ``language``, ``interrupt_mode`` and
    ``resource_dir``, plus whatever else the file holds. Raises :class:`MalformedKernelspec`."""
    try:
        raw = json.loads((resource_dir / KERNEL_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise MalformedKernelspec(f"cannot be read ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise MalformedKernelspec(f"is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise MalformedKernelspec("is not a JSON object")
    argv = raw.get("argv")
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) for a in argv)):
        raise MalformedKernelspec(f"has no argv list of strings (argv: {argv!r})")
    env = raw.get("env", {})
    if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
        raise MalformedKernelspec(f"has an env that is not an object of strings (env: {env!r})")
    for key in ("display_name", "language"):
        if not isinstance(raw.get(key, ""), str):
            raise MalformedKernelspec(f"has a {key} that is not a string ({raw[key]!r})")
    mode = raw.get("interrupt_mode", "signal")
    if not (isinstance(mode, str) and mode.lower() in ("signal", "message")):
        raise MalformedKernelspec(f"has interrupt_mode {mode!r} (not 'signal' or 'message')")
    return {
        **raw, "argv": list(argv), "env": dict(env),
        "display_name": raw.get("display_name") or name, "language": raw.get("language", ""),
        "interrupt_mode": mode.lower(), "resource_dir": str(resource_dir),
    }


def find_kernelspecs(dirs: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """``{name: spec}`` for every ``<dir>/<name>/kernel.json`` in ``dirs`` (default:
    :func:`kernel_dirs`), sorted by name; the first directory wins for a name (when its
    spec is malformed, the name is skipped: later ones do not stand in). Blocking
    (it reads files): from async code, run it in a thread."""
    found: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()  # a broken spec shadows later ones too, as with jupyter_client
    for directory in kernel_dirs() if dirs is None else dirs:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError:  # missing or unreadable: nothing there
            continue
        for entry in entries:
            name = entry.name.lower()
            resource_dir = Path(entry.path)
            if name in seen or not (resource_dir / KERNEL_FILE).is_file():
                continue
            seen.add(name)
            try:
                spec = load_kernelspec(name, resource_dir)
            except MalformedKernelspec as exc:
                spec_file = resource_dir / KERNEL_FILE
                _warn_once(spec_file, f"Skipped the Jupyter kernelspec {spec_file}: {exc}")
                continue
            if not _VALID_NAME.match(name):  # jupyter_client warns and serves it anyway
                _warn_once(resource_dir, f"The Jupyter kernelspec {resource_dir} has a name that "
                                         "is not only letters, digits and . _ - (served anyway)")
            found[name] = spec
    return dict(sorted(found.items()))


def format_argv(spec: dict[str, Any], *, connection_file: Path, cwd: Path) -> list[str]:
    """The spec's ``argv`` with its ``{fields}`` filled in (see the module docstring)."""
    argv = list(spec["argv"])
    if argv[0] in _THIS_PYTHON:
        argv[0] = sys.executable
    values = {
        "connection_file": os.path.realpath(connection_file),
        "resource_dir": spec["resource_dir"],
        "prefix": sys.prefix,
        "cwd": str(cwd),
    }
    return [_FIELD.sub(lambda m: values.get(m.group(1), m.group(0)), arg) for arg in argv]


def kernel_environment(spec: dict[str, Any], base: dict[str, str]) -> dict[str, str]:
    """``base`` with the spec's ``env`` on top (``${VAR}`` filled from ``base``)."""
    env = dict(base)
    env.update({key: Template(value).safe_substitute(base) for key, value in spec["env"].items()})
    if spec["language"].lower().startswith("python"):
        env.pop("PYTHONEXECUTABLE", None)  # it would make the kernel's Python someone else
    env["JPY_PARENT_PID"] = str(os.getpid())  # kernels that watch it exit with the daemon
    return env


def resolve_program(name: str, spec: dict[str, Any], *, path: str | None, cwd: Path) -> str:
    """The file ``argv[0]`` runs: a path (relative to ``cwd``) or a name on ``path``.
    Raises :class:`KernelLaunchFailed` naming the kernelspec when there is none."""
    where = f"The Jupyter kernelspec {spec['name']!r} ({Path(spec['resource_dir']) / KERNEL_FILE})"
    if os.sep in name or (os.altsep and os.altsep in name):
        program = cwd / name
        if not program.exists():
            raise KernelLaunchFailed(f"{where} runs {name!r}, which does not exist")
        if program.is_dir() or not os.access(program, os.X_OK):
            raise KernelLaunchFailed(f"{where} runs {name!r}, which is not an executable file")
        return str(program)
    found = shutil.which(name, path=path)
    if found is None:
        raise KernelLaunchFailed(f"{where} runs {name!r}, which is not on the kernel's PATH "
                                 f"({path or 'empty'})")
    return found


class JupyterKernelLauncher(KernelLauncher):
    """Every installed Jupyter kernelspec ``<name>``, as ``kernel_type="jupyter:<name>"``.

    ``kernel_type="auto"`` picks one for a notebook whose kernelspec name no other
    launcher declares.
    """

    kernel_type = "jupyter"
    needs_env = False

    async def kernelspecs(self) -> dict[str, dict[str, Any]]:
        return await asyncio.to_thread(find_kernelspecs)

    async def kernelspec_for(self, kernel_name: str | None) -> dict[str, Any]:
        if kernel_name is None:
            return {}
        name = kernel_name.lower()
        spec = (await self.kernelspecs()).get(name, {})
        return {"name": name, "display_name": spec.get("display_name", name),
                "language": spec.get("language", "")}

    async def _spec(self, ctx: LaunchContext) -> dict[str, Any]:
        specs = await self.kernelspecs()
        available = ", ".join(sorted(specs)) or "none"
        if not ctx.kernel_name:
            raise InvalidRequest(f"kernel_type 'jupyter' needs a kernelspec name: "
                                 f"'jupyter:<name>' (available: {available})")
        name = ctx.kernel_name.lower()
        if name not in specs:  # removed since the start was planned
            raise KernelLaunchFailed(f"The Jupyter kernelspec {name!r} is not installed "
                                     f"(available: {available})")
        return {**specs[name], "name": name}

    async def launch(self, ctx: LaunchContext) -> KernelHandle:
        spec = await self._spec(ctx)
        argv = format_argv(spec, connection_file=ctx.connection_file, cwd=ctx.cwd)
        env = kernel_environment(spec, ctx.env)
        argv[0] = resolve_program(argv[0], spec, path=env.get("PATH"), cwd=ctx.cwd)
        log.debug("Starting Jupyter kernel %s: %s", spec["name"], argv)
        return await LocalKernel.spawn(
            argv, cwd=ctx.cwd, env=env, connection_info=ctx.connection_info,
            connection_file=ctx.connection_file, stderr_path=ctx.stderr_path,
            interrupt_mode=cast(Literal["signal", "message"], spec["interrupt_mode"]),
        )
