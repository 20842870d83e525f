"""``env_source`` resolution: from a request to a concrete value, over the installed pools.

Sans-IO except for looking at the file system around the notebook. Nothing
here knows a family: every rule comes from what the pools declare
(:class:`~runtimed.pools.ProjectFile`, :class:`~runtimed.pools.InlineDependencies`,
:class:`~runtimed.pools.ScriptBlock`).

Request values: a concrete value (one of a pool's ``sources``), ``auto``,
``prewarmed`` (the default family's first source: its ready pool), or
``auto:<family>`` (auto within one family). ``auto`` looks, in order, for

1. the nearest declared project file walking up from the notebook (the closest
   directory wins; within one directory the lowest ``rank``; the walk stops
   at a ``.git`` boundary or the home directory);
2. inline dependencies in the notebook metadata (the default family's keys first);
3. a declared script block (PEP 723 syntax) in a code cell;
4. the default family's (or the named family's) first source.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimed.errors import EnvironmentFailed, InvalidRequest
from runtimed.pools import EnvPool, ProjectFile

# The reference regex from the PEP 723 specification (any block type).
SCRIPT_BLOCK = re.compile(r"(?m)^# /// (?P<type>[a-zA-Z0-9-]+)$\s(?P<content>(^#(| .*)$\s)+)^# ///$")


@dataclass(frozen=True)
class Resolution:
    """The concrete env_source and, for project-file sources, the file that decided it."""

    env_source: str
    project_file: Path | None = None


def find_project_file(notebook_path: Path | None, project_files: Iterable[ProjectFile],
                      home: Path | None = None) -> tuple[Path, ProjectFile] | None:
    """The nearest of ``project_files`` above ``notebook_path`` (and its declaration), or None."""
    if notebook_path is None:
        return None
    ranked = sorted(project_files, key=lambda p: (p.rank, p.name))
    if not ranked:
        return None
    home = (home or Path.home()).resolve()
    start = notebook_path.expanduser().resolve()
    directory = start if start.is_dir() else start.parent
    for folder in (directory, *directory.parents):
        for declared in ranked:
            candidate = folder / declared.name
            if candidate.is_file() and (declared.accepts is None or declared.accepts(candidate)):
                return candidate, declared
        if (folder / ".git").exists() or folder == home:
            return None
    return None


def script_block(sources: Iterable[str], block_type: str = "script") -> str | None:
    """The TOML of the first ``# /// <block_type>`` block in the given cell sources, if any."""
    for source in sources:
        for match in SCRIPT_BLOCK.finditer(source if source.endswith("\n") else source + "\n"):
            if match.group("type") == block_type:
                return "".join(line[2:] if line.startswith("# ") else line[1:]
                               for line in match.group("content").splitlines(keepends=True))
    return None


def pep723_block(sources: Iterable[str]) -> str | None:
    """The TOML of the first PEP 723 ``# /// script`` block in the given cell sources, if any."""
    return script_block(sources, "script")


def metadata_value(metadata: dict[str, Any], key: str) -> Any:
    """The value at a dotted ``key`` in notebook metadata, or None."""
    value: Any = metadata
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def inline_dependencies(metadata: dict[str, Any], key: str) -> list[str]:
    """The list of strings at a dotted metadata ``key`` (``runt.uv.dependencies``), or []."""
    deps = metadata_value(metadata, key)
    if deps is None:
        return []
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise InvalidRequest(f"metadata.{key} must be a list of strings")
    return deps


def resolve(request: str | None, *, pools: Sequence[type[EnvPool]], default_family: str | None,
            notebook_path: Path | None, metadata: dict[str, Any],
            cell_sources: Iterable[str]) -> Resolution:
    """Turn a requested env_source into a concrete one (see the module docstring).

    ``pools`` are the installed pool classes; ``default_family`` is the family
    ``auto`` and ``prewarmed`` fall back to (None when no pool may be the default).
    """
    value = (request or "auto").strip()
    by_family = {pool.family: pool for pool in pools}
    for pool in pools:
        if value in pool.sources:
            found = find_project_file(
                notebook_path, [p for p in pool.project_files if p.env_source == value])
            return Resolution(value, found[0] if found else None)
    if value == "prewarmed":
        return Resolution(_fallback(by_family, default_family, value))
    if value == "auto":
        scope = [by_family[default_family]] if default_family in by_family else []
        scope += [pool for pool in pools if pool.family != default_family]
        family = default_family
    elif value.startswith("auto:") and value[5:] in by_family:
        family = value[5:]
        scope = [by_family[family]]
    else:
        _unknown(value, by_family)
    found = find_project_file(notebook_path, [p for pool in scope for p in pool.project_files])
    if found is not None:
        return Resolution(found[1].env_source, found[0])
    for pool in scope:
        for inline in pool.inline_dependencies:
            if inline_dependencies(metadata, inline.key):
                return Resolution(inline.env_source)
    sources = list(cell_sources)
    for pool in scope:
        for block in pool.script_blocks:
            if script_block(sources, block.block_type) is not None:
                return Resolution(block.env_source)
    return Resolution(_fallback(by_family, family, value))


def _unknown(value: str, by_family: dict[str, type[EnvPool]]) -> None:
    family = value.split(":", 1)[0] if ":" in value else None
    if family == "auto":
        family = value.split(":", 1)[1]
    installed = ", ".join(by_family) or "none"
    if family and family not in by_family:
        raise EnvironmentFailed(
            f"env_source {value!r} needs a pool plugin for the {family!r} family, and none is "
            f"installed (installed families: {installed}; `runtimed plugins` lists the plugins)",
            env_source=value,
        )
    choices = ["auto", "prewarmed", *(f"auto:{f}" for f in by_family),
               *(s for pool in by_family.values() for s in pool.sources)]
    raise InvalidRequest(f"Unknown env_source {value!r}; use one of {', '.join(choices)}")


def _fallback(by_family: dict[str, type[EnvPool]], family: str | None, value: str) -> str:
    pool = by_family.get(family) if family else None
    if pool is None:
        raise InvalidRequest(
            f"env_source {value!r} needs a default environment family, and no installed pool "
            "plugin is one; install one, set RUNTIMED_DEFAULT_FAMILY, or pass a concrete env_source"
        )
    return pool.sources[0]
