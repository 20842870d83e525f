"""``env_source`` resolution (REFERENCE.md section 5): from a request to a concrete value.

Sans-IO except for looking at the file system around the notebook. Pools then
serve concrete values; which pool serves which value is the daemon's business.

Request values: a concrete value (``uv:inline``...), ``auto``, ``prewarmed``
(the default family's pool), or ``auto:<family>`` (auto within one family).
``auto`` order: the nearest project file walking up from the notebook
(closest wins; same-directory tie pyproject.toml > pixi.toml > environment.yml >
environment.yaml; the walk stops at a ``.git`` boundary or the home
directory), then inline dependencies, then a PEP 723 block, then the default
family's prewarmed pool.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimed.errors import InvalidRequest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONCRETE = (
    "uv:prewarmed", "uv:inline", "uv:pep723", "uv:pyproject",
    "conda:prewarmed", "conda:inline", "conda:env_yml", "conda:pixi",
)
FAMILIES = ("uv", "conda")
PROJECT_FILES = (
    ("pyproject.toml", "uv:pyproject"),
    ("pixi.toml", "conda:pixi"),
    ("environment.yml", "conda:env_yml"),
    ("environment.yaml", "conda:env_yml"),
)
# The reference regex from the PEP 723 specification.
PEP723_BLOCK = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")


@dataclass(frozen=True)
class Resolution:
    """The concrete env_source and, for project-file sources, the file that decided it."""

    env_source: str
    project_file: Path | None = None


def find_project_file(notebook_path: Path | None, family: str | None = None,
                      home: Path | None = None) -> tuple[Path, str] | None:
    """The nearest project file above ``notebook_path`` (and its env_source), or None."""
    if notebook_path is None:
        return None
    home = (home or Path.home()).resolve()
    start = notebook_path.expanduser().resolve()
    directory = start if start.is_dir() else start.parent
    for folder in (directory, *directory.parents):
        for name, source in PROJECT_FILES:
            if family and not source.startswith(family + ":"):
                continue
            candidate = folder / name
            if candidate.is_file() and (name != "pyproject.toml" or _is_uv_project(candidate)):
                return candidate, source
        if (folder / ".git").exists() or folder == home:
            return None
    return None


def _is_uv_project(pyproject: Path) -> bool:
    """A pyproject.toml that defines a project (not only tool settings, like ruff's or black's).

    An unreadable or malformed file counts as a project, so the uv pool reports the problem
    with the file path instead of the walk silently skipping it.
    """
    try:
        data = tomllib.loads(pyproject.read_text())
    except (OSError, ValueError):
        return True
    return "project" in data or "dependency-groups" in data or "workspace" in data.get("tool", {}).get("uv", {})


def pep723_block(sources: Iterable[str]) -> str | None:
    """The TOML of the first ``# /// script`` block in the given cell sources, if any."""
    for source in sources:
        for match in PEP723_BLOCK.finditer(source if source.endswith("\n") else source + "\n"):
            if match.group("type") == "script":
                return "".join(line[2:] if line.startswith("# ") else line[1:]
                               for line in match.group("content").splitlines(keepends=True))
    return None


def inline_dependencies(metadata: dict[str, Any], family: str) -> list[str]:
    """``metadata.runt.<family>.dependencies`` (a list of strings) or []."""
    runt = metadata.get("runt")
    section = runt.get(family) if isinstance(runt, dict) else None
    deps = section.get("dependencies") if isinstance(section, dict) else None
    if deps is None:
        return []
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise InvalidRequest(f"metadata.runt.{family}.dependencies must be a list of strings")
    return deps


def resolve(request: str | None, *, notebook_path: Path | None, metadata: dict[str, Any],
            cell_sources: Iterable[str], default_family: str = "uv") -> Resolution:
    """Turn a requested env_source into a concrete one."""
    value = (request or "auto").strip()
    if value in CONCRETE:
        project = None
        if value in ("uv:pyproject", "conda:pixi", "conda:env_yml"):
            family = value.split(":")[0]
            found = find_project_file(notebook_path, family)
            if found is not None and found[1] == value:
                project = found[0]
        return Resolution(value, project)
    if value == "prewarmed":
        return Resolution(f"{default_family}:prewarmed")
    if value == "auto":
        families = (default_family, *[f for f in FAMILIES if f != default_family])
        family = None
    elif value.startswith("auto:") and value[5:] in FAMILIES:
        family = value[5:]
        families = (family,)
    else:
        raise InvalidRequest(
            f"Unknown env_source {value!r}; use auto, prewarmed, auto:uv, auto:conda or one of "
            + ", ".join(CONCRETE)
        )
    found = find_project_file(notebook_path, family)
    if found is not None:
        return Resolution(found[1], found[0])
    for fam in families:
        if inline_dependencies(metadata, fam):
            return Resolution(f"{fam}:inline")
    if "uv" in families and pep723_block(cell_sources) is not None:
        return Resolution("uv:pep723")
    return Resolution(f"{family or default_family}:prewarmed")
