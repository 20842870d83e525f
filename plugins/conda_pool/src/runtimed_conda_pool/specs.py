"""What a conda env should contain: parsed from metadata, environment.yml and pixi.toml.

Sans-IO apart from reading no files at all: callers pass file contents in.
Every parser returns an :class:`EnvSpec` or raises :class:`SpecError` with a
message that names the file (or metadata key) and the problem.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

#: Packages every conda env of the pool gets.
BASE_SPECS = ("python", "ipykernel", "ipywidgets")
#: Names :data:`BASE_SPECS` must provide for a locked env to run a kernel.
KERNEL_PACKAGES = ("ipykernel", "ipywidgets")
#: Bump when the way envs are built changes, so cached envs are rebuilt.
BUILD_VERSION = 1

_BARE_VERSION = re.compile(r"^\d+(\.\d+)*$")


class SpecError(Exception):
    """A request or project file does not describe a valid conda env; the message says why."""


@dataclass(frozen=True)
class EnvSpec:
    """A conda env to build: channels, conda match specs and pip requirements.

    ``kind`` is ``prewarmed``, ``inline``, ``env_yml``, ``pixi`` or ``lock``
    (an env installed from a ``conda-lock.yml``, ``lock_file``).
    """

    kind: str
    channels: tuple[str, ...]
    specs: tuple[str, ...]
    pip: tuple[str, ...] = ()
    #: Where relative pip requirements (``./pkg``, ``-r requirements.txt``) resolve.
    pip_cwd: Path | None = None
    #: The file it came from, for messages and the lock file's ``sources``.
    source: Path | None = None
    lock_file: Path | None = None
    #: Bytes that decide the env beyond the fields above (a file's content).
    content: bytes = b""
    platform: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """A hash of everything that decides the env: equal keys, interchangeable envs."""
        payload = json.dumps(
            {
                "build": BUILD_VERSION,
                "kind": self.kind,
                "channels": list(self.channels),
                "specs": sorted(self.specs),
                "pip": list(self.pip),
                "platform": self.platform,
                "content": hashlib.sha256(self.content).hexdigest(),
                "pip_cwd": str(self.pip_cwd) if self.pip and self.pip_cwd else None,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def describe(self) -> str:
        """``environment.yml at /x/environment.yml``-style phrase for messages."""
        if self.kind == "inline":
            return "metadata.runt.conda"
        if self.source is not None:
            return str(self.source)
        return "the conda pool's packages"


def with_base(specs: Iterable[str], extra: Iterable[str] = ()) -> tuple[str, ...]:
    """``specs`` (all kept, in order) plus the kernel packages and ``extra`` they do not name."""
    result = list(specs)
    seen = {spec_name(spec) for spec in result}
    for spec in [*BASE_SPECS, *extra]:
        name = spec_name(spec)
        if name not in seen:
            seen.add(name)
            result.append(spec)
    return tuple(result)


def spec_name(spec: str) -> str:
    """The package name of a match spec string (``conda-forge::numpy >=1`` -> ``numpy``)."""
    head = spec.strip().split("::")[-1]
    return re.split(r"[\s=<>!~\[;]", head, maxsplit=1)[0].lower()


def validate_specs(specs: Iterable[str], where: str) -> None:
    """Raise :class:`SpecError` naming ``where`` for the first spec rattler cannot parse."""
    from rattler import MatchSpec

    for spec in specs:
        try:
            MatchSpec(spec)
        except Exception as exc:  # noqa: BLE001 - InvalidMatchSpecError and friends
            raise SpecError(f"{where}: invalid conda spec {spec!r}: {exc}") from None


# -- the four sources -----------------------------------------------------------------------------


def prewarmed_spec(
    channels: Sequence[str], default_packages: Sequence[str], platform: str
) -> EnvSpec:
    """The pool env: python, ipykernel, ipywidgets and the configured default packages."""
    named = {spec_name(spec) for spec in default_packages}
    specs = (*[b for b in BASE_SPECS if spec_name(b) not in named], *default_packages)
    validate_specs(specs, "RUNTIMED_DEFAULT_PACKAGES")
    return EnvSpec("prewarmed", tuple(channels), specs, platform=platform)


def inline_spec(metadata: Mapping[str, Any], channels: Sequence[str], platform: str) -> EnvSpec:
    """``metadata.runt.conda``: ``dependencies`` (list), optional ``channels`` and ``python``."""
    from runtimed.envsource import inline_dependencies
    from runtimed.errors import InvalidRequest

    try:
        deps = inline_dependencies(dict(metadata), "runt.conda.dependencies")
    except InvalidRequest as exc:
        raise SpecError(exc.message) from None
    runt = metadata.get("runt")
    section = runt.get("conda") if isinstance(runt, Mapping) else None
    section = section if isinstance(section, Mapping) else {}
    own_channels = section.get("channels")
    if own_channels is not None:
        if not isinstance(own_channels, list) or not all(
            isinstance(c, str) and c for c in own_channels
        ):
            raise SpecError("metadata.runt.conda.channels must be a list of channel names or URLs")
        channels = own_channels
    python = section.get("python")
    specs = list(deps)
    if python is not None:
        if not isinstance(python, str) or not python.strip():
            raise SpecError('metadata.runt.conda.python must be a version string such as "3.11"')
        specs.insert(0, python_spec(python))
    if not specs:
        raise SpecError(
            "conda:inline needs metadata.runt.conda.dependencies (a list of conda specs)"
        )
    validate_specs(specs, "metadata.runt.conda.dependencies")
    return EnvSpec("inline", tuple(channels), with_base(specs), platform=platform)


def python_spec(version: str) -> str:
    """``"3.11"`` -> ``python=3.11`` (any 3.11.x); ``">=3.10"`` -> ``python >=3.10``."""
    version = version.strip()
    if _BARE_VERSION.match(version):
        return f"python={version}"
    return f"python {version}"


def env_yml_spec(path: Path, text: str, channels: Sequence[str], platform: str) -> EnvSpec:
    """An ``environment.yml``: ``channels``, ``dependencies`` and a ``pip:`` sub-list."""
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(
            f"{path}: expected a mapping with 'channels' and 'dependencies', "
            f"got {type(data).__name__}"
        )
    own_channels = data.get("channels")
    if own_channels is not None:
        if not isinstance(own_channels, list) or not all(
            isinstance(c, str) and c for c in own_channels
        ):
            raise SpecError(f"{path}: 'channels' must be a list of channel names or URLs")
        # "nodefaults" is conda's marker for "no default channels"; there are none here anyway.
        picked = [c for c in own_channels if c != "nodefaults"]
        if picked:
            channels = picked
    deps = data.get("dependencies", [])
    if deps is None:
        deps = []
    if not isinstance(deps, list):
        raise SpecError(f"{path}: 'dependencies' must be a list")
    specs: list[str] = []
    pip: list[str] = []
    for index, item in enumerate(deps):
        if isinstance(item, (str, int, float)) and not isinstance(item, bool) and str(item).strip():
            specs.append(str(item).strip())
        elif isinstance(item, dict) and set(item) == {"pip"}:
            entries = item["pip"] or []
            if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
                raise SpecError(
                    f"{path}: dependencies[{index}]: 'pip' must be a list of requirements"
                )
            pip.extend(e.strip() for e in entries if e.strip())
        else:
            raise SpecError(
                f"{path}: dependencies[{index}]: expected a conda spec or a 'pip:' list, "
                f"got {item!r}"
            )
    validate_specs(specs, f"{path}: dependencies")
    return EnvSpec(
        "env_yml",
        tuple(channels),
        with_base(specs),
        pip=tuple(pip),
        pip_cwd=path.parent,
        source=path,
        content=text.encode(),
        platform=platform,
    )


def pixi_spec(path: Path, text: str, channels: Sequence[str], platform: str) -> EnvSpec:
    """A ``pixi.toml``: ``[dependencies]`` as conda specs, ``[pypi-dependencies]`` via uv.

    Channels come from ``[workspace]`` (or the older ``[project]``) ``channels``;
    ``[target.<platform>.dependencies]`` for this platform are merged in.
    Features and environments are not supported (the default environment is built).
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{path}: not valid TOML: {exc}") from None
    table = data.get("workspace", data.get("project", {}))
    if not isinstance(table, dict):
        raise SpecError(f"{path}: [workspace] must be a table")
    own_channels = table.get("channels")
    if own_channels is not None:
        if not isinstance(own_channels, list):
            raise SpecError(f"{path}: [workspace] channels must be a list")
        picked = []
        for entry in own_channels:
            name = entry.get("channel") if isinstance(entry, dict) else entry
            if not isinstance(name, str) or not name:
                raise SpecError(f"{path}: [workspace] channels: unsupported entry {entry!r}")
            picked.append(name)
        if picked:
            channels = picked
    sections: list[tuple[str, Any, Any]] = [
        ("", data.get("dependencies", {}), data.get("pypi-dependencies", {}))
    ]
    target = data.get("target", {})
    if isinstance(target, dict) and isinstance(target.get(platform), dict):
        own = target[platform]
        sections.append(
            (f"target.{platform}.", own.get("dependencies", {}), own.get("pypi-dependencies", {}))
        )
    conda: dict[str, str] = {}
    pypi: dict[str, str] = {}
    for prefix, deps, pypi_deps in sections:
        if not isinstance(deps, dict):
            raise SpecError(f"{path}: [{prefix}dependencies] must be a table")
        if not isinstance(pypi_deps, dict):
            raise SpecError(f"{path}: [{prefix}pypi-dependencies] must be a table")
        for name, value in deps.items():
            conda[name] = _pixi_conda_spec(path, f"{prefix}dependencies", name, value)
        for name, value in pypi_deps.items():
            pypi[name] = _pixi_pypi_requirement(path, f"{prefix}pypi-dependencies", name, value)
    specs = list(conda.values())
    validate_specs(specs, f"{path}: [dependencies]")
    return EnvSpec(
        "pixi",
        tuple(channels),
        with_base(specs),
        pip=tuple(pypi.values()),
        pip_cwd=path.parent,
        source=path,
        content=text.encode(),
        platform=platform,
    )


def _pixi_conda_spec(path: Path, section: str, name: str, value: Any) -> str:
    if isinstance(value, str):
        version, build, channel = value, None, None
    elif isinstance(value, dict):
        unknown = set(value) - {"version", "build", "channel"}
        if unknown:
            raise SpecError(
                f"{path}: [{section}] {name}: unsupported keys {sorted(unknown)} "
                "(version, build and channel are supported)"
            )
        version, build, channel = (
            value.get("version", "*"),
            value.get("build"),
            value.get("channel"),
        )
    else:
        raise SpecError(
            f"{path}: [{section}] {name}: expected a version string or a table, got {value!r}"
        )
    if (
        not isinstance(version, str)
        or (build is not None and not isinstance(build, str))
        or (channel is not None and not isinstance(channel, str))
    ):
        raise SpecError(f"{path}: [{section}] {name}: version, build and channel must be strings")
    spec = name if version.strip() in ("", "*") else f"{name} {version.strip()}"
    if build:
        spec = f"{name} {version.strip() or '*'} {build}"
    if channel:
        spec = f"{channel}::{spec}"
    return spec


def _pixi_pypi_requirement(path: Path, section: str, name: str, value: Any) -> str:
    if isinstance(value, str):
        return name if value.strip() in ("", "*") else f"{name}{value.strip()}"
    if not isinstance(value, dict):
        raise SpecError(
            f"{path}: [{section}] {name}: expected a version string or a table, got {value!r}"
        )
    extras = value.get("extras") or []
    if not isinstance(extras, list) or not all(isinstance(e, str) for e in extras):
        raise SpecError(f"{path}: [{section}] {name}: extras must be a list of strings")
    head = f"{name}[{','.join(extras)}]" if extras else name
    if "path" in value:
        target = (path.parent / str(value["path"])).resolve()
        if value.get("editable"):
            return f"-e {target}"
        return f"{head} @ {target.as_uri()}"
    if "url" in value:
        return f"{head} @ {value['url']}"
    if "git" in value:
        ref = value.get("rev") or value.get("tag") or value.get("branch")
        return f"{head} @ git+{value['git']}" + (f"@{ref}" if ref else "")
    version = value.get("version", "*")
    if not isinstance(version, str):
        raise SpecError(f"{path}: [{section}] {name}: version must be a string")
    return head if version.strip() in ("", "*") else f"{head}{version.strip()}"


def lock_spec(path: Path, content: bytes, channels: Sequence[str], platform: str) -> EnvSpec:
    """An env installed from a ``conda-lock.yml`` (the lock decides; nothing is solved)."""
    return EnvSpec(
        "lock",
        tuple(channels),
        BASE_SPECS,
        source=path,
        lock_file=path,
        content=content,
        platform=platform,
    )
