"""Building one conda env with rattler (no conda binary): fetch repodata, solve, install, lock,
pip, activation, warm.

The rattler part (:meth:`Builder.conda_step`: repodata, solve, install, ``conda-lock.yml``)
runs in a worker process per build (:mod:`runtimed_conda_pool.worker`), so the
long-lived daemon does not keep what rattler's native code allocates; the rest runs
from the daemon, each tool a subprocess. :meth:`Builder.build` is the whole recipe for every kind of env (pool,
inline, environment.yml, pixi.toml, lock file); callers decide only the
:class:`~runtimed_conda_pool.specs.EnvSpec` and the directory. Every failure
is a :class:`~runtimed.prewarm.BuildFailed` whose message a user can
act on (the solver's explanation, the channel that could not be reached, the
command that failed).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import logging
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import PathDistribution
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from runtimed import procs
from runtimed.pools import Progress
from runtimed.prewarm import BuildFailed
from runtimed_conda_pool.activation import record_activation
from runtimed_conda_pool.lockfile import (
    LOCK_NAME, Locked, LockError, PipLocked, add_pip, read_lock, write_lock,
)
from runtimed_conda_pool.specs import KERNEL_PACKAGES, EnvSpec, spec_name


def find_uv() -> str:
    """uv, for ``pip:`` sections: the ``uv`` package's binary (a dependency), else on PATH."""
    def bundled() -> str:
        from uv import find_uv_bin

        return find_uv_bin()

    return procs.find_program("uv", bundled=bundled, hint="install it with `pip install uv`")

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

if TYPE_CHECKING:
    from rattler import RepoDataRecord

PHASE = "preparing_env"
#: Starts a progress line of the worker on stderr (JSON ``[phase, message]`` follows).
WORKER_PROGRESS = "runtimed-progress "
WARM_UP = "import ipykernel.kernelapp, ipywidgets"


@dataclass
class BuildResult:
    """What a build did, for the env's marker and for tests."""

    packages: int
    solved: bool
    pip: list[PipLocked] = field(default_factory=list)

    def marker(self) -> dict[str, Any]:
        return {"packages": self.packages, "solved": self.solved, "pip": [p.name for p in self.pip]}


@dataclass
class Builder:
    """Builds envs for one platform, sharing rattler's repodata and package caches."""

    #: rattler's cache: ``repodata/`` and ``pkgs/`` (hard-linked into envs on the same filesystem).
    cache_root: Path
    platform: str
    log: logging.Logger
    #: Run ``python -m compileall`` over site-packages (rattler writes no .pyc files).
    compile_bytecode: bool = True
    #: Longest one subprocess step (uv, compileall, the warm-up import) may take, in seconds.
    step_timeout: float = 600.0
    #: Longest the solver may take, in seconds.
    solve_timeout: float = 300.0
    #: How many builds solved (tests read it to prove a build did not solve).
    solves: int = 0
    #: Run the conda part of a build (:meth:`conda_step`: rattler's solve and install) in a
    #: worker process; False: in this process (the worker itself, or a test).
    isolate: bool = True

    async def build(
        self, spec: EnvSpec, dest: Path, progress: Progress, *, locked: Locked | None = None
    ) -> BuildResult:
        """Build ``spec`` into ``dest`` (which must not exist); from ``locked`` without solving.

        A lock that lacks the kernel packages is honoured too: its packages are
        pinned and only ipykernel/ipywidgets are solved around them. The env's
        activation variables are recorded in it (:mod:`runtimed_conda_pool.activation`).
        """
        started = time.monotonic()
        solve: dict[str, Any] | None = {"channels": list(spec.channels), "specs": list(spec.specs),
                                        "what": spec.describe(), "pinned": None}
        if locked is not None and set(KERNEL_PACKAGES) <= locked.names:
            solve = None
            progress(PHASE, f"Using {locked.path} ({len(locked.names)} packages, no solve)")
        elif locked is not None:
            missing = sorted(set(KERNEL_PACKAGES) - locked.names)
            progress(
                PHASE,
                f"{locked.path} lacks {', '.join(missing)}: "
                "solving them around the locked packages",
            )
            solve = {"channels": list(locked.channels or spec.channels),
                     "specs": sorted(locked.names) + missing,
                     "what": f"{locked.path} plus {', '.join(missing)}",
                     "pinned": str(locked.path)}
        channels = list(
            locked.channels if locked is not None and locked.channels else spec.channels
        )
        sources = (
            [str(spec.source)]
            if spec.source
            else ["metadata.runt.conda"]
            if spec.kind == "inline"
            else []
        )
        request = {
            "dest": str(dest), "solve": solve,
            "locked": str(locked.path) if locked is not None and solve is None else None,
            "lock": {"channels": channels, "key": spec.key, "kind": spec.kind, "sources": sources},
        }
        if solve is not None:
            self.solves += 1
        packages = await (self._conda_in_worker(request, progress) if self.isolate
                          else self.conda_step(request, progress))
        pip: list[PipLocked] = []
        if locked is not None and locked.pip:
            await self.pip_install_locked(dest, locked.pip, progress)
            pip = list(locked.pip)
        elif locked is None and spec.pip:
            pip = await self.pip_install(dest, spec, progress)
        if pip:
            await asyncio.to_thread(add_pip, dest / LOCK_NAME, pip, platform=self.platform)
        progress(PHASE, "Running the activation scripts")
        await record_activation(dest, self.log)
        await self.warm_up(dest, progress)
        self.log.debug("built %s env in %s in %.1f s", spec.kind, dest, time.monotonic() - started)
        return BuildResult(packages=packages, solved=solve is not None, pip=pip)

    # -- the conda part: solve (or take a lock's records), install, write the lock --------------

    async def conda_step(self, request: dict[str, Any], progress: Progress) -> int:
        """Solve (``request["solve"]``: channels, specs, what, a lock whose records are pinned)
        or take ``request["locked"]``'s records, install them into ``request["dest"]`` and write
        its ``conda-lock.yml`` (``request["lock"]``: channels, key, kind, sources). In this
        process: what the worker runs (:mod:`runtimed_conda_pool.worker`). Returns the number
        of packages."""
        dest = Path(request["dest"])
        solve = request.get("solve")
        try:
            if solve is None:
                records = read_lock(Path(request["locked"]), self.platform).records
            else:
                pinned = (read_lock(Path(solve["pinned"]), self.platform).records
                          if solve.get("pinned") else None)
                records = await self.solve(solve["channels"], solve["specs"], progress,
                                           what=solve["what"], pinned=pinned)
        except LockError as exc:
            raise BuildFailed(str(exc)) from None
        await self.install(records, dest, progress)
        lock = request["lock"]
        await asyncio.to_thread(
            write_lock, dest / LOCK_NAME, records, platform=self.platform,
            channels=lock["channels"], key=lock["key"], kind=lock["kind"], sources=lock["sources"],
        )
        return len(records)

    async def _conda_in_worker(self, request: dict[str, Any], progress: Progress) -> int:
        """:meth:`conda_step` in a worker process (``python -m runtimed_conda_pool.worker``):
        rattler's solver and installer allocate tens of MB the daemon would keep."""
        import json

        request = {**request, "cache_root": str(self.cache_root), "platform": self.platform,
                   "solve_timeout": self.solve_timeout}

        def on_line(line: str) -> None:
            if line.startswith(WORKER_PROGRESS):
                phase, message = json.loads(line[len(WORKER_PROGRESS):])
                progress(phase, message)
            elif line.strip():
                self.log.debug("conda worker: %s", line)

        with tempfile.TemporaryDirectory(prefix="runtimed-conda-worker-") as tmp:
            path = Path(tmp) / "request.json"
            path.write_text(json.dumps(request))
            try:
                out = await procs.output(
                    [sys.executable, "-m", "runtimed_conda_pool.worker", str(path)],
                    env=procs.subprocess_env(), on_line=on_line,
                    timeout=self.solve_timeout + self.step_timeout,
                )
            except procs.CommandFailed as exc:
                raise BuildFailed(f"The conda worker failed: {exc.summary()}") from exc
        lines = out.strip().splitlines()
        result = json.loads(lines[-1]) if lines else {}
        if "failed" in result:
            raise BuildFailed(result["failed"])
        if "packages" not in result:
            raise BuildFailed(f"The conda worker said nothing useful: {out[-500:]!r}")
        return int(result["packages"])

    # -- rattler --------------------------------------------------------------

    async def solve(
        self,
        channels: Sequence[str],
        specs: Sequence[str],
        progress: Progress,
        *,
        what: str,
        pinned: Sequence[RepoDataRecord] | None = None,
    ) -> list[RepoDataRecord]:
        """Fetch repodata channel by channel (so a failure names its channel), then solve."""
        import rattler
        from rattler import Channel, Gateway, VirtualPackage
        from rattler.exceptions import SolverError
        from rattler.platform import Subdir

        if not channels:
            raise BuildFailed(f"No conda channels configured for {what}")
        resolved = []
        for name in channels:
            try:
                resolved.append(Channel(name))
            except Exception as exc:  # noqa: BLE001 - rattler's errors share no base class
                raise BuildFailed(f"Invalid conda channel {name!r}: {_short(exc)}") from None
        gateway = Gateway(cache_dir=self.cache_root / "repodata")
        platforms = [Subdir(self.platform), Subdir("noarch")]
        names = sorted({spec_name(s) for s in specs})
        for name, channel in zip(channels, resolved):
            progress(PHASE, f"Fetching repodata from {name}")
            try:
                await gateway.query(
                    [channel], platforms, names, recursive=True, channel_relations="disabled"
                )
            except Exception as exc:  # noqa: BLE001 - GatewayError, InvalidChannelError, IoError...
                cause = _network_cause(str(exc))
                if cause is not None:
                    raise BuildFailed(
                        f"conda channel {name!r} cannot be reached ({channel.base_url}): {cause}"
                    ) from None
                raise BuildFailed(
                    f"Could not fetch repodata from conda channel {name!r} ({channel.base_url}): "
                    f"{_short(exc)}"
                ) from None
        try:
            virtual = VirtualPackage.detect()
        except Exception as exc:  # noqa: BLE001 - DetectVirtualPackageError and friends
            raise BuildFailed(
                f"Could not detect this machine's virtual packages: {_short(exc)}"
            ) from None
        progress(PHASE, f"Solving {what} ({len(specs)} specs)")
        started = time.monotonic()
        try:
            records = await rattler.solve(
                resolved,
                list(specs),
                gateway=gateway,
                platforms=platforms,
                virtual_packages=virtual,
                pinned_packages=list(pinned) if pinned else None,
                channel_relations="disabled",
                timeout=datetime.timedelta(seconds=self.solve_timeout),
            )
        except SolverError as exc:
            raise BuildFailed(
                f"The conda solver could not satisfy {what} (channels: {', '.join(channels)}):\n"
                f"{str(exc).strip()}"
            ) from None
        except Exception as exc:  # noqa: BLE001 - rattler's errors share no base class
            raise BuildFailed(f"Solving {what} failed: {_short(exc)}") from None
        self.log.debug(
            "solved %s: %d packages in %.2f s", what, len(records), time.monotonic() - started
        )
        return list(records)

    async def install(
        self, records: Sequence[RepoDataRecord], dest: Path, progress: Progress
    ) -> None:
        """Download (into the package cache) and link ``records`` into ``dest``.

        (No ``requested_specs``: py-rattler 0.28 passes its MatchSpec wrappers
        to the native layer unwrapped and fails.)
        """
        import rattler

        progress(PHASE, f"Downloading and installing {len(records)} packages")
        reporter = _Reporter(asyncio.get_running_loop(), progress, len(records))
        try:
            await rattler.install(
                list(records),
                dest,
                cache_dir=self.cache_root / "pkgs",
                show_progress=False,
                reporter=reporter,
                execute_link_scripts=False,
            )
        except Exception as exc:  # noqa: BLE001 - InstallerError, LinkError, IoError, TransactionError...
            raise BuildFailed(
                f"Installing {len(records)} conda packages failed: {_short(exc)}"
            ) from None
        progress(PHASE, f"Linked {len(records)} packages")

    # -- pip (with uv) --------------------------------------------------------

    async def pip_install(self, dest: Path, spec: EnvSpec, progress: Progress) -> list[PipLocked]:
        """Install ``spec.pip`` with uv into the prefix; return what it added, exactly pinned.

        The conda packages already there are passed as constraints, so pip
        never silently replaces one; a conflict fails with uv's explanation.
        """
        python = dest / "bin" / "python"
        before = installed(dest)
        progress(PHASE, f"Installing {len(spec.pip)} pip requirements with uv")
        args: list[str] = []
        for requirement in spec.pip:
            # Options ("-r file", "--index-url URL", "-e path") split like a shell would;
            # a requirement ("pkg @ file:///x", "numpy>=1; python_version>'3'") stays whole.
            args.extend(shlex.split(requirement) if requirement.startswith("-") else [requirement])
        with tempfile.TemporaryDirectory(prefix="runtimed-conda-pip-") as tmp:
            constraints = Path(tmp) / "conda-packages.txt"
            constraints.write_text(
                "".join(
                    f"{name}=={version}\n"
                    for name, (version, url) in sorted(before.items())
                    if url is None
                )
            )
            argv = [
                find_uv(),
                "pip",
                "install",
                "--quiet",
                "--no-python-downloads",
                "--python",
                str(python),
                "-c",
                str(constraints),
                *args,
            ]
            await self._uv(
                f"Installing the pip requirements of {spec.describe()}",
                argv,
                cwd=spec.pip_cwd or dest,
            )
        after = installed(dest)
        added = {name: after[name] for name in after if before.get(name) != after[name]}
        return await self._pin(dest, added)

    async def pip_install_locked(
        self, dest: Path, pip: Sequence[PipLocked], progress: Progress
    ) -> None:
        """Install locked pip entries exactly (no resolution: ``--no-deps``)."""
        progress(PHASE, f"Installing {len(pip)} locked pip packages with uv")
        hashed = all(dist.sha256 for dist in pip)
        lines = [dist.requirement() if hashed else f"{dist.name} @ {dist.url}" for dist in pip]
        with tempfile.TemporaryDirectory(prefix="runtimed-conda-pip-") as tmp:
            requirements = Path(tmp) / "requirements.txt"
            requirements.write_text("\n".join(lines) + "\n")
            argv = [
                find_uv(),
                "pip",
                "install",
                "--quiet",
                "--no-python-downloads",
                "--no-deps",
                "--python",
                str(dest / "bin" / "python"),
                "-r",
                str(requirements),
            ]
            await self._uv("Installing the locked pip packages", argv, cwd=dest)

    async def _pin(self, dest: Path, added: dict[str, tuple[str, str | None]]) -> list[PipLocked]:
        """Exact URLs (and hashes) of what uv installed, for the lock file."""
        pinned: dict[str, PipLocked] = {}
        from_index = []
        for name, (version, url) in sorted(added.items()):
            if url is not None:
                pinned[name] = PipLocked(name, version, url, _file_sha256(url))
            else:
                from_index.append(f"{name}=={version}")
        if from_index:
            # Ask uv which file it would install for these pins (same index, same interpreter).
            with tempfile.TemporaryDirectory(prefix="runtimed-conda-pip-") as tmp:
                requirements = Path(tmp) / "pins.in"
                requirements.write_text("\n".join(from_index) + "\n")
                out = Path(tmp) / "pylock.toml"
                argv = [
                    find_uv(),
                    "pip",
                    "compile",
                    "--quiet",
                    "--no-deps",
                    "--no-header",
                    "--format",
                    "pylock.toml",
                    "--python",
                    str(dest / "bin" / "python"),
                    "-o",
                    str(out),
                    str(requirements),
                ]
                await self._uv("Recording the pip packages' URLs", argv, cwd=dest)
                data = tomllib.loads(out.read_text())
            for package in data.get("packages", []):
                name = _normalize(package.get("name", ""))
                file = (
                    (package.get("wheels") or [None])[0]
                    or package.get("sdist")
                    or package.get("archive")
                )
                if name in added and isinstance(file, dict) and file.get("url"):
                    sha = (file.get("hashes") or {}).get("sha256")
                    pinned[name] = PipLocked(
                        name, str(package.get("version", added[name][0])), str(file["url"]), sha
                    )
            missing = sorted(set(added) - set(pinned))
            if missing:
                raise BuildFailed(
                    f"uv did not report where {', '.join(missing)} came from; "
                    "cannot record them in conda-lock.yml"
                )
        return [pinned[name] for name in sorted(pinned)]

    async def _uv(self, what: str, argv: list[str], *, cwd: Path) -> None:
        try:
            await procs.run(argv, cwd=cwd, env=procs.subprocess_env(), timeout=self.step_timeout)
        except procs.CommandFailed as exc:
            raise BuildFailed(f"{what} failed: {exc.summary()}") from exc

    # -- warm-up --------------------------------------------------------------

    async def warm_up(self, dest: Path, progress: Progress) -> None:
        """Compile bytecode (rattler writes none) and import ipykernel once."""
        python = str(dest / "bin" / "python")
        env = procs.subprocess_env(for_python=True)
        if self.compile_bytecode:
            progress(PHASE, "Compiling bytecode")
            for site in site_packages_dirs(dest):
                try:
                    await procs.run(
                        [python, "-m", "compileall", "-q", "-j", "0", str(site)],
                        env=env,
                        timeout=self.step_timeout,
                    )
                except procs.CommandFailed as exc:
                    # Some packages ship files that do not compile on purpose (py2 fixtures,
                    # templates); compileall then exits 1 but compiled everything else.
                    self.log.debug("compileall in %s reported: %s", dest, exc.summary())
        progress(PHASE, "Importing ipykernel")
        try:
            await procs.run([python, "-c", WARM_UP], env=env, timeout=self.step_timeout)
        except procs.CommandFailed as exc:
            raise BuildFailed(
                f"Importing ipykernel in the new env failed: {exc.summary()}"
            ) from exc


class _Reporter:
    """rattler's installer callbacks -> throttled ``progress`` calls on the event loop.

    rattler calls these from its own threads; every message is handed to the
    loop with ``call_soon_threadsafe``.
    """

    interval = 0.5

    def __init__(self, loop: asyncio.AbstractEventLoop, progress: Progress, total: int) -> None:
        self.loop = loop
        self.progress = progress
        self.total = total
        self.downloads = 0
        self.links = 0
        self.last = 0.0
        self.counter = 0

    def _post(self, message: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return
        self.last = now
        try:
            self.loop.call_soon_threadsafe(self.progress, PHASE, message)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            pass

    def _token(self) -> int:
        self.counter += 1
        return self.counter

    def on_transaction_start(self, total_operations: int) -> None:
        self.total = total_operations

    def on_populate_cache_start(self, operation: int, package_name: str) -> int:
        self.downloads += 1
        self._post(f"Downloading packages ({self.downloads}/{self.total}): {package_name}")
        return self._token()

    def on_link_start(self, operation: int, package_name: str) -> int:
        self.links += 1
        self._post(f"Linking packages ({self.links}/{self.total})", force=self.links == 1)
        return self._token()

    def __getattr__(self, name: str) -> Any:
        # Every other callback of rattler's InstallerReporter protocol: accept and ignore.
        if name.startswith("on_"):
            return self._ignore
        raise AttributeError(name)

    def _ignore(self, *args: Any) -> int:
        return self._token()


# -- helpers ---------------------------------------------------------------------------------------


def site_packages_dirs(prefix: Path) -> list[Path]:
    """``<prefix>/lib/python3.X/site-packages`` (usually exactly one)."""
    return sorted(p for p in prefix.glob("lib/python3*/site-packages") if p.is_dir())


def installed(prefix: Path) -> dict[str, tuple[str, str | None]]:
    """Distributions in the prefix: normalised name -> (version, direct URL or None)."""
    import json

    found: dict[str, tuple[str, str | None]] = {}
    for site in site_packages_dirs(prefix):
        for info in site.glob("*.dist-info"):
            dist = PathDistribution(info)
            name = dist.metadata["Name"] if dist.metadata else None
            if not name:
                continue
            url = None
            direct = dist.read_text("direct_url.json")
            if direct:
                try:
                    url = json.loads(direct).get("url")
                except ValueError:
                    url = None
            found[_normalize(name)] = (dist.version, url)
    return found


def _normalize(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _file_sha256(url: str) -> str | None:
    parsed = urlparse(url)
    if parsed.scheme != "file":
        return None
    path = Path(unquote(parsed.path))
    if not path.is_file():
        return None
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: What rattler's (reqwest's) errors say when a host cannot be reached at all.
_NETWORK_MARKERS = (
    "error sending request", "failed to lookup address", "dns error", "connection refused",
    "network is unreachable", "no route to host", "timed out", "connection reset",
)


def _network_cause(text: str) -> str | None:
    """The root cause if ``text`` (a repodata fetch error) says the channel is unreachable."""
    lowered = text.lower()
    if not any(marker in lowered for marker in _NETWORK_MARKERS):
        return None
    first = text.strip().splitlines()[0] if text.strip() else text
    causes = [line.removeprefix("Caused by:").strip() for line in text.splitlines()
              if line.strip().startswith("Caused by:")]
    cause = causes[-1] if causes else first
    # "error sending request for url (https://...): <the reason>": keep the reason
    return cause.rsplit("): ", 1)[-1].strip() or cause


def _short(exc: BaseException) -> str:
    """rattler's error chains are long: keep the first line and the root cause."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    causes = [line for line in lines if line.startswith("Caused by:")]
    if causes and causes[-1] != lines[0]:
        return f"{lines[0]}: {causes[-1].removeprefix('Caused by:').strip()}"
    return lines[0]
