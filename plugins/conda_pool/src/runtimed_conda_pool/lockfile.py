"""``conda-lock.yml``: every env's exact solve, and how an env is rebuilt from one.

Written with conda-lock's own models (``conda_lock.lockfile``), so the file is
what ``conda-lock install`` and ``conda-lock render`` expect (``version: 1``).
Read with rattler (``rattler.LockFile.from_path``), which turns the conda
entries straight into installable records; the ``pip`` entries are read from
the YAML.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rattler import RepoDataRecord

LOCK_NAME = "conda-lock.yml"
#: ``metadata.custom_metadata`` keys runtimed writes.
KEY_FIELD = "runtimed_key"
KIND_FIELD = "runtimed_kind"


class LockError(Exception):
    """A lock file cannot be read or does not cover this platform; the message names the file."""


@dataclass(frozen=True)
class PipLocked:
    """One pip-installed distribution: exact name, version and where it came from."""

    name: str
    version: str
    url: str
    sha256: str | None = None

    def requirement(self) -> str:
        """A requirements.txt line that installs exactly this distribution."""
        line = f"{self.name} @ {self.url}"
        return f"{line} --hash=sha256:{self.sha256}" if self.sha256 else line


@dataclass(frozen=True)
class Locked:
    """A lock file's content for one platform."""

    path: Path
    platform: str
    records: list[RepoDataRecord]
    pip: list[PipLocked] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    custom: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> set[str]:
        return {record.name.normalized for record in self.records}


def _conda_lock() -> Any:
    """Import conda-lock's lockfile API (its vendored conda warns on import; not our business)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import conda_lock.lockfile.v1.models as v1
        import conda_lock.lockfile.v2prelim.models as v2
        from conda_lock import lockfile
    return lockfile, v1, v2


def write_lock(
    path: Path,
    records: Sequence[RepoDataRecord],
    *,
    platform: str,
    channels: Sequence[str],
    key: str,
    kind: str,
    sources: Sequence[str] = (),
    pip: Sequence[PipLocked] = (),
) -> None:
    """Write ``records`` (and ``pip``) as a conda-lock v1 file at ``path`` (atomically)."""
    lockfile, v1, v2 = _conda_lock()
    packages = []
    for record in records:
        dependencies: dict[str, str] = {}
        for dep in record.depends:
            name, _, spec = dep.strip().partition(" ")
            dependencies[name] = spec.strip()
        packages.append(
            v2.LockedDependency(
                name=record.name.normalized,
                version=str(record.version),
                manager="conda",
                platform=platform,
                dependencies=dependencies,
                # rattler's own types fail pydantic validation: pass plain strings.
                url=str(record.url),
                hash=v1.HashModel(md5=_hex(record.md5), sha256=_hex(record.sha256)),
                categories={"main"},
                build=str(record.build),
            )
        )
    for dist in pip:
        packages.append(
            v2.LockedDependency(
                name=dist.name,
                version=dist.version,
                manager="pip",
                platform=platform,
                dependencies={},
                url=dist.url,
                hash=v1.HashModel(sha256=dist.sha256),
                categories={"main"},
            )
        )
    metadata = v1.LockMeta(
        content_hash={platform: key},
        channels=list(channels),
        platforms=[platform],
        sources=list(sources),
        time_metadata=v1.TimeMeta.create(),
        custom_metadata={KEY_FIELD: key, KIND_FIELD: kind},
    )
    tmp = path.with_name(f".{path.name}.tmp")
    lockfile.write_conda_lock_file(
        v2.Lockfile(package=packages, metadata=metadata), tmp, metadata_choices=None
    )
    tmp.replace(path)


def read_lock(path: Path, platform: str) -> Locked:
    """The records (and pip entries) of ``path`` for ``platform``; raises :class:`LockError`."""
    import yaml
    from rattler import LockFile

    try:
        text = path.read_text()
        raw = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise LockError(f"{path}: cannot read the lock file: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("package"), list):
        raise LockError(f"{path}: not a conda-lock file (no 'package' list)")
    try:
        environment = LockFile.from_path(path).default_environment()
    except Exception as exc:  # noqa: BLE001 - rattler's ParseCondaLockError and friends
        raise LockError(f"{path}: not a valid conda-lock file: {exc}") from None
    if environment is None:
        raise LockError(f"{path}: the lock file holds no environment")
    by_platform = {str(k): v for k, v in environment.conda_repodata_records().items()}
    if platform not in by_platform:
        found = ", ".join(sorted(by_platform)) or "none"
        raise LockError(f"{path}: the lock file has no packages for {platform} (it has: {found})")
    pip = []
    for entry in raw["package"]:
        if (
            isinstance(entry, dict)
            and entry.get("manager") == "pip"
            and entry.get("platform") == platform
        ):
            hashes = entry.get("hash") or {}
            pip.append(
                PipLocked(
                    str(entry["name"]),
                    str(entry["version"]),
                    str(entry["url"]),
                    hashes.get("sha256") if isinstance(hashes, dict) else None,
                )
            )
    metadata = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    channels = []
    for channel in metadata.get("channels") or []:
        url = channel.get("url") if isinstance(channel, dict) else channel
        if isinstance(url, str):
            channels.append(url)
    custom = metadata.get("custom_metadata") or {}
    return Locked(
        path=path,
        platform=platform,
        records=list(by_platform[platform]),
        pip=pip,
        channels=channels,
        custom=custom if isinstance(custom, dict) else {},
    )


def _hex(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.hex() if isinstance(value, (bytes, bytearray)) else str(value)
