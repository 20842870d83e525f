"""``uv:pyproject``: the project's own environment, synced by uv, plus ipykernel from an overlay.

The kernel must import the project's dependencies and its own package, and
must not need ipykernel in the project: nothing is added to the user's
``pyproject.toml`` or ``uv.lock``. So:

1. ``uv sync --inexact`` in the project directory brings the project env
   (``.venv``, or wherever uv keeps it) up to date, exactly as ``uv run`` would,
   except that an existing ``uv.lock`` is never rewritten (``--locked``: a stale
   lock is an error that says to run ``uv lock``). A project without a lock gets
   one created by uv, as any uv command in it would.
2. :data:`PROBE` asks the project env's interpreter where it lives.
3. If the project env already has ipykernel, the kernel runs its python
   directly. Otherwise the kernel runs the python of an *overlay*: a cached
   relocatable venv with ipykernel and ipywidgets whose ``.pth`` file
   (:func:`overlay_pth`) adds the project env's site-packages (and so its
   editable install) after its own, the same layering ``uv run --with
   ipykernel`` uses. The overlay is built once per project env and reused.

Why not ``[uv, "run", "--with", "ipykernel", "python"]`` as the kernel argv:
uv builds that ``--with`` layer in a throwaway directory on every run (about
0.5 s, more with bytecode compilation), stays the kernel's parent process (so
``SIGINT`` goes through uv), and the kernel's ``sys.prefix`` would be a
temporary directory nobody can name in advance.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimed_uv_pool import specs

#: Prints where an interpreter lives, as JSON (runs in the project env and in config.python).
PROBE = (
    "import importlib.util, json, sys, sysconfig\n"
    "print(json.dumps({'prefix': sys.prefix, 'executable': sys.executable,"
    " 'version': '.'.join(map(str, sys.version_info[:3])), 'base_prefix': sys.base_prefix,"
    " 'site': sorted({sysconfig.get_path('purelib'), sysconfig.get_path('platlib')}),"
    " 'ipykernel': importlib.util.find_spec('ipykernel') is not None}))"
)
#: The overlay's file that layers the project env below it.
PTH_NAME = "_runtimed_project.pth"


@dataclass(frozen=True)
class Interpreter:
    """What :data:`PROBE` reports about one interpreter or environment."""

    prefix: Path
    executable: Path
    version: str
    base_prefix: str
    site: tuple[str, ...]
    has_ipykernel: bool

    @classmethod
    def from_probe(cls, stdout: str) -> Interpreter:
        lines = [line for line in stdout.splitlines() if line.strip()]
        data: dict[str, Any] = json.loads(lines[-1])
        return cls(
            prefix=Path(data["prefix"]),
            executable=Path(data["executable"]),
            version=str(data["version"]),
            base_prefix=str(data["base_prefix"]),
            site=tuple(data["site"]),
            has_ipykernel=bool(data["ipykernel"]),
        )

    def same_base(self, other: Interpreter) -> bool:
        """Whether both run the same base interpreter (so one's site-packages suit the other)."""
        return self.version == other.version and os.path.realpath(
            self.base_prefix
        ) == os.path.realpath(other.base_prefix)


def sync_argv(
    uv_bin: str,
    project_file: Path,
    data: dict[str, Any],
    *,
    python: str,
    python_version: str,
    env: dict[str, str],
) -> list[str]:
    """``uv sync`` for the project of ``project_file`` (see the module docstring).

    ``--python <python>`` (the daemon's interpreter; uv cannot download one here)
    only when the project has no env and no interpreter pin yet, and the
    interpreter satisfies ``requires-python``: an existing env is never
    recreated with another interpreter.
    """
    directory = project_file.parent
    argv = [
        uv_bin,
        "sync",
        "--project",
        str(directory),
        "--inexact",
        "--compile-bytecode",
        "--no-python-downloads",
    ]
    if (directory / "uv.lock").exists():
        argv.append("--locked")
    pinned = (
        (directory / ".venv").exists()
        or (directory / ".python-version").exists()
        or "UV_PYTHON" in env
        or "UV_PROJECT_ENVIRONMENT" in env
    )
    requires = specs.project_requires_python(data)
    if not pinned and (requires is None or specs.python_satisfies(python_version, requires)):
        argv += ["--python", python]
    return argv


def probe_argv(uv_bin: str, project_file: Path) -> list[str]:
    """Run :data:`PROBE` in the project env, found the way ``uv run`` finds it (no sync)."""
    return [
        uv_bin,
        "run",
        "--project",
        str(project_file.parent),
        "--no-sync",
        "--no-python-downloads",
        "python",
        "-c",
        PROBE,
    ]


def overlay_pth(project_env: Interpreter) -> str:
    """The overlay's ``.pth``: ``site.addsitedir`` also runs the project env's own ``.pth`` files."""
    return "".join(
        f"import site; site.addsitedir({directory!r})\n" for directory in project_env.site
    )


def overlay_identity(project_env: Interpreter, packages: list[str]) -> dict[str, Any]:
    """What makes one overlay: the project env (path and interpreter) and the overlay packages."""
    return {
        "format": specs.CACHE_FORMAT,
        "kind": "project-overlay",
        "project_env": os.path.realpath(project_env.prefix),
        "version": project_env.version,
        "base_prefix": os.path.realpath(project_env.base_prefix),
        "site": list(project_env.site),
        "packages": packages,
    }
