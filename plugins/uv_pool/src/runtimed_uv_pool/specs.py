"""What a notebook asks the uv family for, read from its metadata, cells or project file.

Sans-IO except :func:`read_pyproject` (one file read): the pool turns an
:class:`InlineSpec` into a cached environment, and the cache key computed here
decides which notebooks share one.

Normalisation, so that equivalent lists share an env: every requirement is
parsed (PEP 508), its name canonicalised (PEP 503: ``Tomli_W`` is ``tomli-w``),
its extras sorted and its version specifiers put in a canonical order; then the
list is de-duplicated and sorted. A string that does not parse as PEP 508 (uv
also takes some that do not, e.g. local paths) is kept as written, stripped.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name

from runtimed.envsource import pep723_block
from runtimed.errors import EnvironmentFailed

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

#: ``--prerelease`` strategies uv accepts; metadata may also say ``true`` (allow) / ``false``.
PRERELEASE_STRATEGIES = (
    "disallow",
    "allow",
    "if-necessary",
    "explicit",
    "if-necessary-or-explicit",
)
#: Bump to give every cached env a new key (a change in how envs are built).
CACHE_FORMAT = 1


@dataclass(frozen=True)
class InlineSpec:
    """An inline (``uv:inline``) or PEP 723 (``uv:pep723``) environment request."""

    env_source: str
    #: Normalised, de-duplicated, sorted.
    dependencies: tuple[str, ...]
    requires_python: str | None = None
    #: A uv ``--prerelease`` strategy, or None for uv's default.
    prerelease: str | None = None

    @property
    def where(self) -> str:
        """Where the user declared it, for error messages."""
        if self.env_source == "uv:pep723":
            return "the `# /// script` block"
        return "metadata.runt.uv"

    def cache_key(self, python: str, packages: Sequence[str]) -> str:
        """The env's identity: dependencies, requires-python, prerelease, interpreter, base packages.

        Not the env_source: an inline list and a PEP 723 block asking for the
        same packages share one env.
        """
        return digest(
            {
                "format": CACHE_FORMAT,
                "dependencies": list(self.dependencies),
                "requires_python": self.requires_python,
                "prerelease": self.prerelease,
                "python": python,
                "packages": list(packages),
            }
        )

    def describe(self, limit: int = 4) -> str:
        """``six, idna`` (or ``no dependencies``), shortened after ``limit`` entries."""
        names = [requirement_name(dep) or dep for dep in self.dependencies]
        if not names:
            return "no dependencies"
        shown = ", ".join(names[:limit])
        return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def digest(identity: dict[str, Any]) -> str:
    """A short stable hex digest of a JSON-able identity."""
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def normalise_requirement(text: str) -> str:
    """One requirement in canonical form (see the module docstring)."""
    stripped = " ".join(text.split())
    try:
        req = Requirement(stripped)
    except InvalidRequirement:
        return stripped
    out = canonicalize_name(req.name)
    if req.extras:
        out += "[" + ",".join(sorted(canonicalize_name(e) for e in req.extras)) + "]"
    if req.url:
        out += f" @ {req.url}"
    elif req.specifier:
        out += ",".join(sorted(str(s) for s in req.specifier))
    if req.marker is not None:
        out += f" ; {req.marker}"
    return out


def normalise_requirements(texts: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({normalise_requirement(t) for t in texts if t.strip()}))


def requirement_name(text: str) -> str | None:
    """The canonical project name of a requirement, or None when it does not parse."""
    try:
        return canonicalize_name(Requirement(text).name)
    except InvalidRequirement:
        return None


def named_in(dependencies: Iterable[str], error: str) -> list[str]:
    """The dependencies (as written) whose name uv's error text mentions."""
    lowered = error.lower()
    found = []
    for dep in dependencies:
        name = requirement_name(dep)
        if name is None:
            if dep.lower() in lowered:
                found.append(dep)
            continue
        spellings = {name, name.replace("-", "_"), name.replace("-", ".")}
        if any(re.search(rf"(?<![\w.-]){re.escape(s)}(?![\w-])", lowered) for s in spellings):
            found.append(dep)
    return found


def python_satisfies(version: str, requires_python: str) -> bool:
    """Whether interpreter ``version`` (``3.11.7``) is allowed by a requires-python specifier."""
    return SpecifierSet(requires_python).contains(version, prereleases=True)


# -- reading the request ------------------------------------------------------


def inline_spec(metadata: dict[str, Any]) -> InlineSpec:
    """``metadata.runt.uv``: ``dependencies`` (required), ``requires-python``, ``prerelease``."""
    source = "uv:inline"
    runt = metadata.get("runt")
    section = runt.get("uv") if isinstance(runt, dict) else None
    if not isinstance(section, dict) or "dependencies" not in section:
        raise EnvironmentFailed(
            "env_source 'uv:inline' needs metadata.runt.uv.dependencies (a list of "
            "requirement strings); the notebook has none.",
            env_source=source,
        )
    return _spec(
        source,
        section.get("dependencies"),
        section.get("requires-python"),
        section.get("prerelease"),
        where="metadata.runt.uv",
    )


def pep723_spec(cell_sources: Iterable[str]) -> InlineSpec:
    """The first ``# /// script`` block in the notebook's code cells (PEP 723)."""
    source = "uv:pep723"
    block = pep723_block(cell_sources)
    if block is None:
        raise EnvironmentFailed(
            "env_source 'uv:pep723' needs a `# /// script` block (PEP 723) in a code cell; "
            "the notebook has none.",
            env_source=source,
        )
    try:
        data = tomllib.loads(block)
    except tomllib.TOMLDecodeError as exc:
        raise EnvironmentFailed(
            f"The `# /// script` block is not valid TOML: {exc}", env_source=source
        ) from None
    return _spec(
        source,
        data.get("dependencies", []),
        data.get("requires-python"),
        None,
        where="the `# /// script` block",
    )


def _spec(
    source: str, deps: Any, requires_python: Any, prerelease: Any, *, where: str
) -> InlineSpec:
    if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
        raise EnvironmentFailed(
            f"`dependencies` in {where} must be a list of strings, not {deps!r}",
            env_source=source,
        )
    if requires_python is not None:
        if not isinstance(requires_python, str):
            raise EnvironmentFailed(
                f"`requires-python` in {where} must be a string, not {requires_python!r}",
                env_source=source,
            )
        try:
            requires_python = str(SpecifierSet(requires_python))
        except InvalidSpecifier:
            raise EnvironmentFailed(
                f"`requires-python` in {where} is not a version specifier: {requires_python!r}",
                env_source=source,
            ) from None
    if prerelease is True:
        prerelease = "allow"
    elif prerelease is False or prerelease is None:
        prerelease = None
    elif prerelease not in PRERELEASE_STRATEGIES:
        raise EnvironmentFailed(
            f"`prerelease` in {where} must be true, false or one of "
            f"{', '.join(PRERELEASE_STRATEGIES)}; not {prerelease!r}",
            env_source=source,
        )
    return InlineSpec(source, normalise_requirements(deps), requires_python or None, prerelease)


def read_pyproject(path: Path) -> dict[str, Any]:
    """A project file's TOML; a missing, unreadable or broken file raises, naming the path."""
    source = "uv:pyproject"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise EnvironmentFailed(f"Cannot read {path}: {exc}", env_source=source) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise EnvironmentFailed(
            f"{path} is not valid TOML ({exc}); fix it and start the kernel again.",
            env_source=source,
        ) from None


def is_uv_project(data: dict[str, Any]) -> bool:
    """Whether uv can sync it: a ``[project]`` table, a uv workspace root, or dependency groups.

    A ``pyproject.toml`` holding only tool settings (``[tool.black]``...) is not
    a project: syncing it would create a ``.venv`` and an empty ``uv.lock`` in
    the user's directory for nothing.
    """
    tool = data.get("tool")
    uv_settings = tool.get("uv") if isinstance(tool, dict) else None
    return (
        isinstance(data.get("project"), dict)
        or (isinstance(uv_settings, dict) and "workspace" in uv_settings)
        or isinstance(data.get("dependency-groups"), dict)
    )


def looks_like_project(path: Path) -> bool:
    """For ``auto``: whether a found ``pyproject.toml`` is a project uv can run.

    An unreadable or malformed file counts as one, so the pool reports the
    problem with the file's path instead of ``auto`` silently passing it by.
    """
    try:
        return is_uv_project(read_pyproject(path))
    except EnvironmentFailed:
        return True


def project_requires_python(data: dict[str, Any]) -> str | None:
    """``project.requires-python`` when it is a valid specifier, else None."""
    project = data.get("project")
    value = project.get("requires-python") if isinstance(project, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return str(SpecifierSet(value))
    except InvalidSpecifier:
        return None
