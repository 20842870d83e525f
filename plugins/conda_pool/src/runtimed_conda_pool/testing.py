"""A small local ``file://`` conda channel for tests: **a test channel, not a conda distribution**.

conda-forge is not reachable from every machine that runs the tests (CI here
has no route to it), so the conda pool is tested against a channel built on
the spot, and configured exactly as a real channel would be
(``RUNTIMED_CONDA_CHANNELS=file:///...``), so index, repodata, solve, install,
lock files, entry-point generation and noarch-python linking are all the real
rattler code paths. What the channel holds:

``python``
    A *venv-style shim* of the test interpreter (``linux-64``, build ``shim_0``):
    ``pyvenv.cfg`` whose ``home`` is the interpreter's ``bin`` directory, and
    ``bin/python3.X`` linking to it. No CPython files are copied, so an env is
    only as good as the interpreter it points at, and the channel only works on
    the machine that built it.
ipykernel, ipywidgets and their dependencies
    Converted from PyPI wheels (downloaded once with ``pip download`` and cached
    under the system temp directory): pure wheels become ``noarch: python``
    packages (rattler places them in ``site-packages`` and writes their console
    scripts), binary wheels become ``linux-64`` packages for the interpreter's
    Python version. Dependencies come from ``Requires-Dist`` with markers
    evaluated for the interpreter; extras are dropped. Names are PEP 503
    normalised (``jupyter-client``, where conda-forge says ``jupyter_client``),
    so tests should only name packages whose names agree (``python``,
    ``ipykernel``, ``ipywidgets``).
``runtimed-test-hello`` 1.0.0 and 2.0.0
    A tiny ``noarch: python`` package (module ``runtimed_test_hello``, console
    script ``runtimed-test-hello``) to declare as an inline, environment.yml or
    pixi dependency; two versions so tests can tell a pinned solve from a fresh one.
``runtimed-test-activation`` 1.0.0
    A ``noarch: generic`` package with activation files, as gdal or proj ship them:
    ``etc/conda/activate.d/runtimed-test-activation.sh`` exports
    ``RUNTIMED_TEST_ACTIVATED=$CONDA_PREFIX/share/runtimed-test-activation`` and puts
    ``$CONDA_PREFIX/share/runtimed-test-activation/bin`` in front of PATH;
    ``etc/conda/env_vars.d/runtimed-test-activation.json`` sets
    ``RUNTIMED_TEST_ENV_VAR=from env_vars.d``.

:func:`make_wheel` writes a tiny wheel, for ``pip:`` sections that must work offline.

Entry points: :func:`local_channel` (cached, what the pytest fixture uses) and
:func:`build_local_channel` (always builds).
"""

from __future__ import annotations

import asyncio
import base64
import csv
import email.parser
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: What the channel is built from: the packages every conda pool env needs, and pip
#: (environment.yml files with a ``pip:`` section usually list it).
REQUIREMENTS = ("ipykernel", "ipywidgets", "pip")
#: The tiny package tests declare as a dependency.
HELLO = "runtimed-test-hello"
HELLO_VERSIONS = ("1.0.0", "2.0.0")
#: The package with activation scripts, and the variables it sets.
ACTIVATION = "runtimed-test-activation"
ACTIVATED_VAR = "RUNTIMED_TEST_ACTIVATED"
ENV_VARS_VAR, ENV_VARS_VALUE = "RUNTIMED_TEST_ENV_VAR", "from env_vars.d"
#: conda's prefix placeholder, replaced by the real prefix at link time.
PREFIX_PLACEHOLDER = "/opt/anaconda1anaconda2anaconda3"


@dataclass(frozen=True)
class LocalChannel:
    """A built test channel: where it is and what it holds."""

    path: Path
    #: A ``python`` version the channel's shim provides, e.g. ``"3.11.7"``.
    python_version: str
    #: Package file names, e.g. ``("ipykernel-7.4.0-pypi_0.tar.bz2", ...)``.
    files: tuple[str, ...] = field(default=())

    @property
    def url(self) -> str:
        """The channel as ``RUNTIMED_CONDA_CHANNELS`` and environment.yml want it."""
        return self.path.resolve().as_uri()

    @property
    def names(self) -> set[str]:
        """Package names in the channel."""
        return {_split_file_name(name)[0] for name in self.files}


# -- public entry points ---------------------------------------------------------------------------


def local_channel(
    python: str = sys.executable,
    *,
    requirements: Sequence[str] = REQUIREMENTS,
    cache_root: Path | None = None,
) -> LocalChannel:
    """The test channel for ``python``, built once and cached under the system temp directory.

    The cache key covers this module's source, the interpreter and the
    requirements, so an edit to either builds a fresh channel. Building is
    atomic (a temporary directory renamed into place), so concurrent test runs
    are safe. The downloaded wheels are cached separately and survive a
    rebuild.
    """
    root = cache_root or default_cache_root()
    info = interpreter_info(python)
    key = _digest(Path(__file__).read_bytes(), json.dumps(info, sort_keys=True), *requirements)
    final = root / f"channel-{key[:16]}"
    if (final / ".complete").is_file():
        os.utime(final / ".complete")  # in use: not pruned
        return _load(final, info)
    root.mkdir(parents=True, exist_ok=True)
    _prune(root)
    tmp = root / f".building-{uuid.uuid4().hex}"
    try:
        build_local_channel(
            tmp,
            python,
            requirements=requirements,
            wheel_dir=root / f"wheels-{info['tag']}-{_digest(*requirements)[:12]}",
        )
        (tmp / ".complete").write_text(str(time.time()))
        try:
            tmp.rename(final)
        except OSError:  # another run got there first
            if not (final / ".complete").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load(final, info)


def _prune(root: Path, max_age: float = 7 * 24 * 3600) -> None:
    """Delete channels unused for ``max_age`` (older versions of this module) and stale builds."""
    now = time.time()
    for path in root.iterdir():
        if path.name.startswith("channel-"):
            stamp, limit = path / ".complete", max_age
        elif path.name.startswith(".building-"):
            stamp, limit = path, 3600.0
        else:
            continue
        try:
            age = now - stamp.stat().st_mtime
        except OSError:
            age = limit + 1  # an incomplete channel
        if age > limit:
            shutil.rmtree(path, ignore_errors=True)


def default_cache_root() -> Path:
    """``$RUNTIMED_TEST_CHANNEL_CACHE`` or ``<tmp>/runtimed-conda-test-channel``."""
    override = os.environ.get("RUNTIMED_TEST_CHANNEL_CACHE")
    return (
        Path(override) if override else Path(tempfile.gettempdir()) / "runtimed-conda-test-channel"
    )


def build_local_channel(
    dest: Path,
    python: str = sys.executable,
    *,
    requirements: Sequence[str] = REQUIREMENTS,
    wheel_dir: Path | None = None,
) -> LocalChannel:
    """Build the channel into ``dest`` (created) and index it with ``rattler.index.index_fs``."""
    info = interpreter_info(python)
    subdir = info["subdir"]
    (dest / "noarch").mkdir(parents=True, exist_ok=True)
    (dest / subdir).mkdir(parents=True, exist_ok=True)
    wheels = download_wheels(requirements, python, wheel_dir or dest / ".wheels")
    python_package(dest / subdir, info)
    for wheel in wheels:
        wheel_to_conda(wheel, dest, info)
    for version in HELLO_VERSIONS:
        hello_package(dest / "noarch", version)
    activation_package(dest / "noarch")
    _index(dest)
    shutil.rmtree(dest / ".wheels", ignore_errors=True)
    return _load(dest, info)


# -- the interpreter -------------------------------------------------------------------------------

_INFO_SCRIPT = """
import json, os, platform, sys, sysconfig
print(json.dumps({
    "version": "%d.%d.%d" % sys.version_info[:3],
    "short": "%d.%d" % sys.version_info[:2],
    "tag": "cp%d%d" % sys.version_info[:2],
    "base_executable": os.path.realpath(getattr(sys, "_base_executable", sys.executable)),
    "machine": platform.machine(),
    "system": platform.system(),
}))
"""


def interpreter_info(python: str) -> dict[str, str]:
    """Version, base executable and conda subdir of ``python``."""
    out = subprocess.run(
        [python, "-I", "-c", _INFO_SCRIPT], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    info: dict[str, str] = json.loads(out)
    arch = {"x86_64": "64", "aarch64": "aarch64", "arm64": "arm64"}.get(
        info["machine"], info["machine"]
    )
    system = {"Linux": "linux", "Darwin": "osx"}.get(info["system"], info["system"].lower())
    info["subdir"] = f"{system}-{arch}"
    return info


def _marker_environment(info: dict[str, str]) -> dict[str, str]:
    return {
        "python_version": info["short"],
        "python_full_version": info["version"],
        "implementation_name": "cpython",
        "implementation_version": info["version"],
        "platform_python_implementation": "CPython",
        "os_name": "posix",
        "sys_platform": "linux" if info["system"] == "Linux" else info["system"].lower(),
        "platform_system": info["system"],
        "platform_machine": info["machine"],
        "platform_release": "",
        "platform_version": "",
        "extra": "",
    }


# -- wheels ----------------------------------------------------------------------------------------


def download_wheels(requirements: Sequence[str], python: str, dest: Path) -> list[Path]:
    """Binary wheels of ``requirements`` and their dependencies for ``python``, cached in ``dest``.

    Runs ``pip download --only-binary=:all:`` with the target interpreter (pip
    from that interpreter if it has one, else through ``uv tool run``). A
    completed download is reused without touching the network.
    """
    done = dest / ".complete"
    if done.is_file():
        return sorted(dest.glob("*.whl"))
    dest.mkdir(parents=True, exist_ok=True)
    args = [
        "download",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(dest),
        *requirements,
    ]
    has_pip = (
        subprocess.run([python, "-c", "import pip"], capture_output=True, check=False).returncode
        == 0
    )
    if has_pip:
        argv = [python, "-m", "pip", *args]
    else:
        from uv import find_uv_bin

        argv = [
            find_uv_bin(),
            "tool",
            "run",
            "--quiet",
            "--python",
            python,
            "--from",
            "pip",
            "pip",
            *args,
        ]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"`pip download {' '.join(requirements)}` failed:\n{proc.stderr[-3000:]}"
        )
    done.write_text("\n".join(requirements))
    return sorted(dest.glob("*.whl"))


def make_wheel(
    dest: Path, name: str, version: str, modules: dict[str, str], requires: Iterable[str] = ()
) -> Path:
    """Write a minimal pure-Python wheel (``{"pkg/__init__.py": source}``) and return its path."""
    dist = name.replace("-", "_")
    dist_info = f"{dist}-{version}.dist-info"
    files = {path: text.encode() for path, text in modules.items()}
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {req}" for req in requires]
    files[f"{dist_info}/METADATA"] = ("\n".join(meta) + "\n").encode()
    files[f"{dist_info}/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: runtimed-conda-pool-testing\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n"
    )
    record = io.StringIO()
    writer = csv.writer(record, lineterminator="\n")
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        writer.writerow([path, f"sha256={digest}", len(data)])
    writer.writerow([f"{dist_info}/RECORD", "", ""])
    files[f"{dist_info}/RECORD"] = record.getvalue().encode()
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name_in_zip, data in files.items():
            zf.writestr(name_in_zip, data)
    return path


def wheel_to_conda(wheel: Path, channel: Path, info: dict[str, str]) -> Path:
    """Convert one wheel into a ``.tar.bz2`` package in ``channel/<subdir>``; return its path."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        dist_info = next(
            n.split("/")[0]
            for n in names
            if n.split("/")[0].endswith(".dist-info") and n.endswith("/METADATA")
        )
        metadata = email.parser.Parser().parsestr(zf.read(f"{dist_info}/METADATA").decode())
        wheel_meta = email.parser.Parser().parsestr(zf.read(f"{dist_info}/WHEEL").decode())
        entry_points = (
            zf.read(f"{dist_info}/entry_points.txt").decode()
            if f"{dist_info}/entry_points.txt" in names
            else ""
        )
        contents = {n: zf.read(n) for n in names if not n.endswith("/")}
    name = canonicalize_name(metadata["Name"])
    version = metadata["Version"]
    tags = wheel_meta.get_all("Tag") or []
    pure = wheel_meta.get("Root-Is-Purelib", "").strip().lower() == "true" and all(
        t.endswith("-none-any") for t in tags
    )
    env = _marker_environment(info)
    depends = []
    requires_python = metadata.get("Requires-Python")
    if pure:
        depends.append(f"python {conda_version_spec(requires_python)}".strip())
    else:
        depends.append(f"python {info['short']}.*")
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        depends.append(
            f"{canonicalize_name(req.name)} {conda_version_spec(str(req.specifier))}".strip()
        )

    site = "site-packages" if pure else f"lib/python{info['short']}/site-packages"
    data_prefix = f"{dist_info[: -len('.dist-info')]}.data/"
    files: dict[str, bytes] = {}
    for path, data in contents.items():
        if path.startswith(data_prefix):
            kind, _, rest = path[len(data_prefix) :].partition("/")
            if kind in ("purelib", "platlib"):
                files[f"{site}/{rest}"] = data
            elif kind == "scripts":
                files[f"python-scripts/{rest}" if pure else f"bin/{rest}"] = data
            elif kind == "data":
                files[rest] = data
            # headers: not needed by anything here
        else:
            files[f"{site}/{path}"] = data
    files[f"{site}/{dist_info}/INSTALLER"] = b"conda\n"
    scripts = _console_scripts(entry_points)
    placeholders: set[str] = set()
    if not pure:
        for script, target in scripts:
            module, _, func = target.partition(":")
            files[f"bin/{script}"] = (
                f"#!{PREFIX_PLACEHOLDER}/bin/python{info['short']}\n"
                f"import sys\nfrom {module} import {func.split('.')[0]}\n"
                f"if __name__ == '__main__':\n    sys.exit({func}())\n"
            ).encode()
            placeholders.add(f"bin/{script}")
    subdir = "noarch" if pure else info["subdir"]
    build = "pypi_0" if pure else f"py{info['tag'][2:]}_pypi_0"
    index: dict[str, Any] = {
        "name": name,
        "version": version,
        "build": build,
        "build_number": 0,
        "depends": depends,
        "subdir": subdir,
        "timestamp": int(time.time() * 1000),
        "license": metadata.get("License-Expression") or "unknown",
    }
    link = None
    if pure:
        index["noarch"] = "python"
        link = {
            "noarch": {"type": "python", "entry_points": [f"{s} = {t}" for s, t in scripts]},
            "package_metadata_version": 1,
        }
    else:
        arch = info["machine"]
        index.update(platform=info["subdir"].split("-")[0], arch=arch)
    return _write_package(channel / subdir, index, files, link=link, placeholders=placeholders)


def _console_scripts(entry_points: str) -> list[tuple[str, str]]:
    """``[(name, "module:func"), ...]`` from an ``entry_points.txt`` (console and gui scripts)."""
    import configparser

    parser = configparser.ConfigParser(delimiters=("=",), interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(entry_points)
    scripts = []
    for section in ("console_scripts", "gui_scripts"):
        if parser.has_section(section):
            for script, target in parser.items(section):
                scripts.append((script.strip(), target.split("[")[0].strip()))
    return scripts


def conda_version_spec(specifier: str | None) -> str:
    """A PEP 440 specifier set (``>=1.0,!=1.2``) as a conda version spec (``>=1.0,!=1.2``)."""
    if not specifier:
        return ""
    parts = []
    for item in str(specifier).split(","):
        item = item.strip().replace(" ", "")
        if item.startswith("==="):
            item = "==" + item[3:]
        elif item.startswith("==") and item.endswith(".*"):
            item = item[2:]
        parts.append(item)
    return ",".join(parts)


# -- hand-made packages ----------------------------------------------------------------------------


def python_package(subdir_dir: Path, info: dict[str, str]) -> Path:
    """The venv-style ``python`` shim package for the interpreter ``info`` describes."""
    base = Path(info["base_executable"])
    short = info["short"]
    pyvenv = (
        f"home = {base.parent}\ninclude-system-site-packages = false\n"
        f"version = {info['version']}\nexecutable = {base}\n"
    )
    files: dict[str, bytes | tuple[str, str]] = {
        "pyvenv.cfg": pyvenv.encode(),
        f"bin/python{short}": ("symlink", str(base)),
        "bin/python3": ("symlink", f"python{short}"),
        "bin/python": ("symlink", f"python{short}"),
    }
    index = {
        "name": "python",
        "version": info["version"],
        "build": "shim_0",
        "build_number": 0,
        "depends": [],
        "subdir": info["subdir"],
        "platform": info["subdir"].split("-")[0],
        "arch": info["machine"],
        "timestamp": int(time.time() * 1000),
        "license": "PSF-2.0",
    }
    return _write_package(subdir_dir, index, files)


def hello_package(noarch_dir: Path, version: str) -> Path:
    """``runtimed-test-hello <version>``: module ``runtimed_test_hello`` and a console script."""
    module = (
        '"""A tiny package from the runtimed conda test channel."""\n\n'
        f'__version__ = "{version}"\n\n\n'
        'def greet() -> str:\n    return "hello from the runtimed test channel"\n\n\n'
        "def main() -> None:\n    print(greet(), __version__)\n"
    )
    dist_info = f"runtimed_test_hello-{version}.dist-info"
    files: dict[str, bytes | tuple[str, str]] = {
        "site-packages/runtimed_test_hello/__init__.py": module.encode(),
        f"site-packages/{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {HELLO}\nVersion: {version}\n".encode()
        ),
        f"site-packages/{dist_info}/INSTALLER": b"conda\n",
    }
    index = {
        "name": HELLO,
        "version": version,
        "build": "pyh_0",
        "build_number": 0,
        "depends": ["python"],
        "noarch": "python",
        "subdir": "noarch",
        "timestamp": int(time.time() * 1000),
        "license": "BSD-3-Clause",
    }
    link = {
        "noarch": {"type": "python", "entry_points": [f"{HELLO} = runtimed_test_hello:main"]},
        "package_metadata_version": 1,
    }
    return _write_package(noarch_dir, index, files, link=link)


def activation_package(noarch_dir: Path) -> Path:
    """``runtimed-test-activation 1.0.0``: an ``activate.d`` script and an ``env_vars.d`` file."""
    share = f"$CONDA_PREFIX/share/{ACTIVATION}"
    script = (
        "# The runtimed conda test channel's activation script.\n"
        f'export {ACTIVATED_VAR}="{share}"\n'
        f'export PATH="{share}/bin:$PATH"\n'
    )
    files: dict[str, bytes | tuple[str, str]] = {
        f"etc/conda/activate.d/{ACTIVATION}.sh": script.encode(),
        f"etc/conda/env_vars.d/{ACTIVATION}.json": json.dumps(
            {ENV_VARS_VAR: ENV_VARS_VALUE}
        ).encode(),
        f"share/{ACTIVATION}/README": b"Installed by the runtimed conda test channel.\n",
    }
    index = {
        "name": ACTIVATION,
        "version": "1.0.0",
        "build": "h_0",
        "build_number": 0,
        "depends": [],
        "noarch": "generic",
        "subdir": "noarch",
        "timestamp": int(time.time() * 1000),
        "license": "BSD-3-Clause",
    }
    return _write_package(noarch_dir, index, files)


def _write_package(
    out_dir: Path,
    index: dict[str, Any],
    files: dict[str, Any],
    *,
    link: dict[str, Any] | None = None,
    placeholders: set[str] = frozenset(),  # type: ignore[assignment]
) -> Path:
    """Write ``<name>-<version>-<build>.tar.bz2``: ``info/index.json``, ``paths.json``, ``files``.

    ``files`` maps a prefix-relative path to bytes, or to ``("symlink", target)``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for path in sorted(files):
        value = files[path]
        if isinstance(value, tuple):
            paths.append({"_path": path, "path_type": "softlink"})
        else:
            entry: dict[str, Any] = {
                "_path": path,
                "path_type": "hardlink",
                "sha256": hashlib.sha256(value).hexdigest(),
                "size_in_bytes": len(value),
            }
            if path in placeholders:
                entry.update(prefix_placeholder=PREFIX_PLACEHOLDER, file_mode="text")
            paths.append(entry)
    info = {
        "info/index.json": json.dumps(index, indent=2).encode(),
        "info/paths.json": json.dumps({"paths": paths, "paths_version": 1}, indent=2).encode(),
        "info/files": ("\n".join(sorted(files)) + "\n").encode(),
    }
    if placeholders:
        info["info/has_prefix"] = "".join(
            f"{PREFIX_PLACEHOLDER} text {p}\n" for p in sorted(placeholders)
        ).encode()
    if link is not None:
        info["info/link.json"] = json.dumps(link, indent=2).encode()
    target = out_dir / f"{index['name']}-{index['version']}-{index['build']}.tar.bz2"
    mtime = time.time()
    with tarfile.open(target, "w:bz2", compresslevel=1) as tar:
        for path, value in [*info.items(), *files.items()]:
            member = tarfile.TarInfo(path)
            member.mtime = int(mtime)
            if isinstance(value, tuple):
                member.type = tarfile.SYMTYPE
                member.linkname = value[1]
                member.mode = 0o777
                tar.addfile(member)
            else:
                member.size = len(value)
                executable = path.startswith(("bin/", "python-scripts/")) or path.endswith(".so")
                member.mode = 0o755 if executable else 0o644
                tar.addfile(member, io.BytesIO(value))
    return target


# -- indexing and loading --------------------------------------------------------------------------


def _index(channel: Path) -> None:
    from rattler.index import index_fs

    async def run() -> None:
        await index_fs(channel, write_zst=False, write_shards=False)

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(run())
        return
    # Called from inside a running loop (an async test): index on a fresh loop in a thread.
    import threading

    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(run())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def _load(path: Path, info: dict[str, str]) -> LocalChannel:
    files = sorted(p.name for p in path.glob("*/*.tar.bz2"))
    return LocalChannel(path=path, python_version=info["version"], files=tuple(files))


def _split_file_name(file_name: str) -> tuple[str, str, str]:
    stem = file_name.removesuffix(".tar.bz2").removesuffix(".conda")
    name, version, build = stem.rsplit("-", 2)
    return name, version, build


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()
