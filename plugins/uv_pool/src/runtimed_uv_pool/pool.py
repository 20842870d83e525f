"""The uv family: prewarmed envs, inline / PEP 723 envs, and pyproject projects.

``uv:prewarmed``: N ready virtual environments with ipykernel, built ahead of
time. ``uv:inline`` / ``uv:pep723``: an env per dependency set, built once and
cached (:mod:`runtimed_uv_pool.cache`), preferably from a prewarmed env (uv
then installs only the missing packages: about 1 s instead of about 5 s from
nothing). ``uv:pyproject``: the project's own env plus an ipykernel overlay
(:mod:`runtimed_uv_pool.project`).

Layout under ``config.cache_dir / "envs"``::

    uv-prewarmed-<hex>.partial/  an env being built (never handed out; deleted at start)
    uv-prewarmed-<hex>/          a ready env; ``.warmed`` holds JSON {created, python, packages}
                                 (an env handed to a kernel loses its marker: never reused)
    uv-inline-<key>/, uv-project-<key>/   cached envs, see :mod:`runtimed_uv_pool.cache`

The pool touches nothing else in that directory (other pools share it).

One background task (the *warmer*) builds envs one at a time until the pool
holds its target plus one per waiting :meth:`UvPool.acquire`. It sleeps on an
:class:`asyncio.Event` between builds; :meth:`UvPool.acquire` waiters sleep on a
"something changed" event the warmer sets after every build, success or failure.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from runtimed.config import DaemonConfig
from runtimed.errors import EnvironmentFailed
from runtimed.pools import EnvPool, EnvRequest, PoolStatus, PreparedEnv, Progress
from runtimed_uv_pool import project, specs, uv
from runtimed_uv_pool.cache import BuildAbandoned, EnvCache
from runtimed_uv_pool.project import Interpreter

log = logging.getLogger("runtimed.pools.uv")

READY_PREFIX = "uv-prewarmed-"
PARTIAL_SUFFIX = ".partial"
MARKER = ".warmed"
#: Packages every pool env gets, before ``config.default_packages``.
BASE_PACKAGES = ("ipykernel", "ipywidgets")
WARM_UP = "import ipykernel.kernelapp, ipywidgets"
INLINE_PREFIX = "uv-inline-"
PROJECT_PREFIX = "uv-project-"
#: uv's stderr lines worth showing as progress (the rest is detail).
_UV_PROGRESS = re.compile(
    r"^(Resolved|Prepared|Installed|Uninstalled|Audited|Bytecode compiled|Building|Built"
    r"|Creating virtual environment|Using CPython) "
)


class BuildFailed(Exception):
    """Building one env failed; the message says which step and quotes uv."""


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass
class _ReadyEnv:
    path: Path
    created: float

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


class UvPool(EnvPool):
    """The uv env family: the prewarmed pool plus cached inline / PEP 723 / project envs.

    See the module docstring.

    Tunables are plain attributes so the daemon (or a test) can change them
    after construction.
    """

    family = "uv"
    sources = ("uv:prewarmed", "uv:inline", "uv:pep723", "uv:pyproject")

    #: Longest :meth:`acquire` waits for the warmer, in seconds.
    acquire_timeout: float = 120.0
    #: :meth:`acquire` gives up early once this many builds in a row failed
    #: (at least one of them while it was waiting).
    give_up_after_failures: int = 2
    #: Ready envs older than this (seconds) are deleted and rebuilt.
    max_age: float = 2 * 24 * 3600
    #: Longest one build step (a ``uv`` command) may take, in seconds.
    step_timeout: float = 600.0
    #: Longest pause between retries while builds keep failing and nobody waits.
    max_retry_delay: float = 300.0
    #: Build inline / PEP 723 envs and project overlays from a ready pool env when
    #: one is ready (uv then installs only what is missing). Measured on 2 cores
    #: with a warm uv cache: about 1.2 s instead of about 5 s from nothing.
    build_from_pool: bool = True

    def __init__(self, config: DaemonConfig) -> None:
        super().__init__(config)
        self.envs_dir = Path(config.cache_dir) / "envs"
        self._ready: deque[_ReadyEnv] = deque()
        self._running = False
        self._warmer: asyncio.Task[None] | None = None
        self._building = False
        self._warmer_crashed = False
        self._waiters = 0
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._deletions: set[asyncio.Task[None]] = set()
        self._consecutive_failures = 0
        self._failures_total = 0
        self._last_error: str | None = None
        self._retry_at = 0.0
        self._logged_available: int | None = None
        #: Bumped by flush/stop: a pool env borrowed before is not put back after.
        self._generation = 0
        self.cache = EnvCache(
            self.envs_dir,
            self._discard,
            max_age=float(getattr(config, "inline_env_max_age_secs", 86400.0)),
            max_count=int(getattr(config, "inline_env_max_count", 10)),
        )
        self._collector: asyncio.Task[None] | None = None
        self._collect_wake = asyncio.Event()
        self._project_locks: dict[Path, asyncio.Lock] = {}
        self._interpreter_info: Interpreter | None = None

    # -- the EnvPool contract -------------------------------------------------

    @property
    def target(self) -> int:
        """How many ready envs the pool keeps (``config.pool_size("uv")``)."""
        return max(0, self.config.pool_size(self.family))

    @property
    def packages(self) -> list[str]:
        """What every env gets installed: ipykernel, ipywidgets, then the user's defaults."""
        return [*BASE_PACKAGES, *self.config.default_packages]

    async def start(self) -> None:
        """Reuse valid envs left on disk, delete the rest, and start warming in the background."""
        if self._running:
            return
        self._running = True
        self._consecutive_failures = 0
        self._last_error = None
        self._retry_at = 0.0
        # Fresh events: asyncio primitives bind to the loop that first waits on them.
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._collect_wake = asyncio.Event()
        self._project_locks.clear()
        self.envs_dir.mkdir(parents=True, exist_ok=True)
        reusable = await self._scan()  # newest first
        for env in reusable[self.target :]:
            self._discard(env.path)
        # Oldest first, like the envs the warmer appends: acquire() takes from the left.
        self._ready.extend(reversed(reusable[: self.target]))
        self._log_available()
        self.cache.clean_leftovers()
        self._start_warmer()
        self._collector = asyncio.create_task(self._collect_loop(), name="runtimed-uv-env-gc")

    async def stop(self) -> None:
        """Cancel the warmer (killing a running uv), wake waiters, finish deletions.

        Ready envs stay on disk for the next :meth:`start`. Safe to call twice.
        """
        self._running = False
        self._generation += 1
        await self._stop_warmer()
        await self.cache.cancel_builds()
        collector, self._collector = self._collector, None
        if collector is not None:
            collector.cancel()
            await asyncio.wait({collector})
        self._notify()
        self._ready.clear()
        self._logged_available = None
        while self._deletions:
            await asyncio.gather(*self._deletions)

    async def acquire(self, request: EnvRequest, progress: Progress) -> PreparedEnv:
        """An environment for one kernel, by ``request.env_source``.

        ``uv:prewarmed``: hand out one ready env (never twice) and start building
        its replacement; with none ready, report progress and wait up to
        :attr:`acquire_timeout` for the warmer (a pool size of 0 builds one for
        this request). ``uv:inline`` / ``uv:pep723``: the cached env for the
        notebook's dependency set, built first if needed. ``uv:pyproject``: the
        project's env (synced), with ipykernel from a cached overlay if it lacks
        it. Raises :class:`EnvironmentFailed` for a source this pool does not
        serve, a stopped pool, a failed build (naming the package and quoting
        uv), or the timeout.
        """
        if request.env_source not in self.sources:
            raise EnvironmentFailed(
                f"The uv pool provides {', '.join(self.sources)}, not {request.env_source!r}.",
                env_source=request.env_source,
            )
        if not self._running:
            raise EnvironmentFailed(
                "The uv pool is not running (the daemon is starting or stopping); try again.",
                env_source=request.env_source,
            )
        if request.env_source == "uv:pyproject":
            return await self._acquire_project(request, progress)
        if request.env_source in ("uv:inline", "uv:pep723"):
            return await self._acquire_inline(request, progress)
        env = self._take_ready()
        if env is None:
            progress("preparing_env", "Waiting for the uv pool to warm an environment")
            env = await self._wait_for_env(request.env_source)
        self._wake.set()  # build the replacement
        return PreparedEnv(
            env_source=self.sources[0],
            prefix=env.path,
            python=[str(env.python)],
            extra={"created": env.created},
        )

    async def release(self, env: PreparedEnv) -> None:
        """The kernel is gone: a prewarmed env is deleted, a cached one becomes collectable.

        A project's own env (a project that has ipykernel itself) is left alone.
        """
        prefix = Path(env.prefix)
        cached = env.extra.get("cached")
        if cached:
            if prefix != self.cache.path(cached):
                log.warning(
                    "UV pool: %s is not the cached env %s; ignoring its release", prefix, cached
                )
                return
            self.cache.unhold(cached)
            self._collect_garbage()
            return
        if env.extra.get("project_env"):
            return
        if prefix.parent != self.envs_dir or not prefix.name.startswith(READY_PREFIX):
            # Never delete a directory the pool did not create.
            log.warning("UV pool: not deleting %s, it is not one of the pool's envs", prefix)
            return
        if self._running:
            self._discard(prefix)
        else:
            await asyncio.to_thread(shutil.rmtree, prefix, True)

    def status(self) -> PoolStatus:
        """``available``: ready envs; ``warming``: the build running plus those still to build."""
        available = len(self._ready)
        warming = 1 if self._building else 0
        if self._warmer is not None and not self._warmer.done():
            warming = max(warming, self._wanted() - available)
        return PoolStatus(available=available, warming=warming, target=self.target)

    async def flush(self) -> None:
        """Delete every ready env, abandon a build in progress, and rebuild to the target.

        Cached inline / PEP 723 envs and project overlays stay: each is keyed by
        exactly what it was built from (dependencies, interpreter, base packages),
        so a flush would only force the same rebuilds; unused ones expire by the
        cache's age and count limits, and envs in use must stay anyway.
        """
        self._generation += 1
        while self._ready:
            self._discard(self._ready.popleft().path)
        self._consecutive_failures = 0
        self._last_error = None
        self._retry_at = 0.0
        self._log_available()
        await self._stop_warmer()
        if self._running and self._warmer is None:  # not stopped (or restarted) meanwhile
            self._start_warmer()

    # -- inline and PEP 723 envs -----------------------------------------------

    async def _acquire_inline(self, request: EnvRequest, progress: Progress) -> PreparedEnv:
        source = request.env_source
        if source == "uv:inline":
            spec = specs.inline_spec(request.metadata)
        else:
            spec = specs.pep723_spec(request.cell_sources)
        python = self.config.python
        if spec.requires_python:
            interpreter = await self._interpreter(source)
            if not specs.python_satisfies(interpreter.version, spec.requires_python):
                raise EnvironmentFailed(
                    f"{spec.where} asks for requires-python {spec.requires_python!r}, but the "
                    f"daemon's interpreter is Python {interpreter.version} ({python}); start "
                    "the daemon with RUNTIMED_PYTHON set to an interpreter that satisfies it.",
                    env_source=source,
                )
        name = INLINE_PREFIX + spec.cache_key(python, self.packages)
        return await self._cached_env(
            name,
            source,
            progress,
            reuse_message=f"Reusing the cached environment for {spec.describe()}",
            build=partial(self._build_inline, spec),
        )

    async def _build_inline(
        self, spec: specs.InlineSpec, tmp: Path, progress: Progress
    ) -> dict[str, Any]:
        """Fill ``tmp`` with an env for ``spec``: a borrowed pool env plus the extras, or a new one."""
        source = spec.env_source
        packages = [*self.packages, *spec.dependencies]
        generation = self._generation
        borrowed = self._borrow_ready()
        count = _plural(len(spec.dependencies), "package")
        if borrowed is not None:
            progress(
                "preparing_env",
                f"Installing {count} ({spec.describe()}) into a prewarmed environment",
            )
        else:
            progress(
                "preparing_env",
                f"Creating an environment with ipykernel, ipywidgets and {count} ({spec.describe()})",
            )
        base = await self._base_env(tmp, borrowed, self.config.python, source)
        argv = [
            self._uv_bin(source),
            "pip",
            "install",
            "--no-python-downloads",
            "--python",
            str(tmp / "bin" / "python"),
            "--compile-bytecode",
        ]
        if spec.prerelease:
            argv += ["--prerelease", spec.prerelease]
        lines: list[str] = []
        try:
            try:
                await self._uv_with_progress([*argv, *packages], progress, lines)
            except uv.CommandFailed as exc:
                if base is not None:
                    self._give_back(base, tmp, generation, lines)
                culprits = specs.named_in(spec.dependencies, exc.stderr) or list(spec.dependencies)
                raise EnvironmentFailed(
                    f"Could not install {', '.join(culprits) or 'the environment'} for {source} "
                    f"(from {spec.where}): {_uv_error(exc)}\n"
                    f"Fix the dependencies in {spec.where} and start the kernel again.",
                    env_source=source,
                ) from None
            if base is None or _replaced_any(lines):
                await self._warm_up(tmp, source, progress)
        finally:
            if base is not None:
                self._wake.set()  # the pool replaces the env this one was made from
        return {
            "kind": "inline",
            "env_source": source,
            "dependencies": list(spec.dependencies),
            "requires_python": spec.requires_python,
            "prerelease": spec.prerelease,
            "python": self.config.python,
            "packages": packages,
            "built_from": "prewarmed" if base is not None else "scratch",
        }

    # -- pyproject projects ---------------------------------------------------

    async def _acquire_project(self, request: EnvRequest, progress: Progress) -> PreparedEnv:
        source = request.env_source
        if request.project_file is None:
            where = (
                f" above {request.notebook_path}"
                if request.notebook_path
                else " (start_kernel was given no notebook_path)"
            )
            raise EnvironmentFailed(
                "env_source 'uv:pyproject' needs a pyproject.toml in the notebook's directory "
                f"or above it; there is none{where}.",
                env_source=source,
            )
        project_file = Path(request.project_file).resolve()
        data = specs.read_pyproject(project_file)
        if not specs.is_uv_project(data):
            raise EnvironmentFailed(
                f"{project_file} has no [project] table, so it is not a project uv can run "
                "(it only holds tool settings). Add a [project] table with the notebook's "
                "dependencies, or start the kernel with another env_source "
                "(uv:inline, uv:prewarmed).",
                env_source=source,
            )
        lock = self._project_locks.setdefault(project_file.parent, asyncio.Lock())
        async with lock:  # one `uv sync` per project at a time
            env = await self._sync_project(project_file, data, progress)
        if env.has_ipykernel:
            progress(
                "preparing_env", f"Using the project environment {env.prefix} (it has ipykernel)"
            )
            return PreparedEnv(
                env_source=source,
                prefix=env.prefix,
                python=[str(env.executable)],
                extra={"project_env": True, "project_file": str(project_file)},
            )
        name = PROJECT_PREFIX + specs.digest(project.overlay_identity(env, self.packages))
        return await self._cached_env(
            name,
            source,
            progress,
            reuse_message=f"Reusing the ipykernel overlay for the project environment {env.prefix}",
            build=partial(self._build_overlay, env, project_file),
            extra={"project_file": str(project_file), "project_env_prefix": str(env.prefix)},
        )

    async def _sync_project(
        self, project_file: Path, data: dict[str, Any], progress: Progress
    ) -> Interpreter:
        """``uv sync`` the project and return where its env's interpreter lives."""
        source = "uv:pyproject"
        uv_bin = self._uv_bin(source)
        interpreter = await self._interpreter(source)
        env = uv.subprocess_env(for_python=True)
        env.pop("VIRTUAL_ENV", None)  # a daemon started inside some venv must not confuse uv
        argv = project.sync_argv(
            uv_bin,
            project_file,
            data,
            python=self.config.python,
            python_version=interpreter.version,
            env=env,
        )
        progress("preparing_env", f"Syncing the project environment of {project_file.parent}")
        try:
            await self._uv_with_progress(argv, progress, [], cwd=project_file.parent, env=env)
        except uv.CommandFailed as exc:
            raise EnvironmentFailed(
                f"uv could not set up the environment of the project {project_file}: "
                f"{_uv_error(exc)}",
                env_source=source,
            ) from None
        try:
            out = await uv.output(
                project.probe_argv(uv_bin, project_file),
                cwd=project_file.parent,
                env=env,
                timeout=60,
            )
            return Interpreter.from_probe(out)
        except (uv.CommandFailed, ValueError, KeyError, IndexError) as exc:
            raise EnvironmentFailed(
                f"The environment of the project {project_file} was synced, but its python "
                f"does not run: {exc}",
                env_source=source,
            ) from None

    async def _build_overlay(
        self, env: Interpreter, project_file: Path, tmp: Path, progress: Progress
    ) -> dict[str, Any]:
        """Fill ``tmp`` with an ipykernel overlay whose ``.pth`` layers the project env below it."""
        source = "uv:pyproject"
        interpreter = await self._interpreter(source)
        borrowed = self._borrow_ready() if env.same_base(interpreter) else None
        if borrowed is not None:
            progress(
                "preparing_env",
                "Adding ipykernel to the project environment (from a prewarmed environment)",
            )
        else:
            progress(
                "preparing_env",
                f"Creating an ipykernel overlay for the project environment (Python {env.version})",
            )
        base = await self._base_env(tmp, borrowed, str(env.executable), source)
        if base is not None:
            self._wake.set()  # the pool replaces the env this one is made from
        else:
            argv = [
                self._uv_bin(source),
                "pip",
                "install",
                "--no-python-downloads",
                "--python",
                str(tmp / "bin" / "python"),
                "--compile-bytecode",
                *self.packages,
            ]
            try:
                await self._uv_with_progress(argv, progress, [])
            except uv.CommandFailed as exc:
                raise EnvironmentFailed(
                    f"Could not install ipykernel next to the project {project_file}: "
                    f"{_uv_error(exc)}",
                    env_source=source,
                ) from None
        site = sorted(tmp.glob("lib/python*/site-packages"))
        if len(site) != 1:
            raise EnvironmentFailed(
                f"The overlay for {project_file} has no single site-packages directory: {site}",
                env_source=source,
            )
        (site[0] / project.PTH_NAME).write_text(project.overlay_pth(env))
        if base is None:
            await self._warm_up(tmp, source, progress)
        return {
            "kind": "project-overlay",
            "project_file": str(project_file),
            "project_env": str(env.prefix),
            "python": env.version,
            "packages": self.packages,
            "built_from": "prewarmed" if base is not None else "scratch",
        }

    # -- shared by the cached kinds -----------------------------------------------

    async def _cached_env(
        self,
        name: str,
        env_source: str,
        progress: Progress,
        *,
        reuse_message: str,
        build: Callable[[Path, Progress], Any],
        extra: dict[str, Any] | None = None,
    ) -> PreparedEnv:
        """The cached env ``name``, built first (once, whoever else asks meanwhile) if missing."""
        self.cache.hold(name)  # before any await: the collector must not take it from here on
        try:
            path = self.cache.ready(name)
            if path is not None:
                progress("preparing_env", reuse_message)
            else:
                try:
                    path = await self.cache.build_once(name, progress, build)
                except BuildAbandoned:
                    raise EnvironmentFailed(
                        "The uv pool stopped while building the environment; try again.",
                        env_source=env_source,
                    ) from None
        except BaseException:
            self.cache.unhold(name)
            raise
        self.cache.touch(name)
        self._collect_garbage()
        return PreparedEnv(
            env_source=env_source,
            prefix=path,
            python=[str(path / "bin" / "python")],
            extra={"cached": name, **(extra or {})},
        )

    def _borrow_ready(self) -> _ReadyEnv | None:
        """A ready pool env to build on (its replacement is started once the build succeeds)."""
        if not self.build_from_pool:
            return None
        return self._take_ready()

    async def _base_env(
        self, tmp: Path, borrowed: _ReadyEnv | None, python: str, env_source: str
    ) -> _ReadyEnv | None:
        """Move ``borrowed`` to ``tmp``, or create a new venv there; return the env used, if any."""
        if borrowed is not None:
            try:
                borrowed.path.rename(tmp)  # relocatable: it works from its new path
                return borrowed
            except OSError:
                log.warning("UV pool: could not take over %s", borrowed.path, exc_info=True)
                self._discard(borrowed.path)
                self._wake.set()
        argv = [
            self._uv_bin(env_source),
            "venv",
            "--quiet",
            "--relocatable",
            "--no-python-downloads",
            "--python",
            python,
            str(tmp),
        ]
        try:
            await uv.run(
                argv, cwd=self.envs_dir, env=uv.subprocess_env(), timeout=self.step_timeout
            )
        except uv.CommandFailed as exc:
            raise EnvironmentFailed(
                f"Could not create a virtual environment with {python}: {_uv_error(exc)}",
                env_source=env_source,
            ) from None
        return None

    def _give_back(self, env: _ReadyEnv, tmp: Path, generation: int, lines: list[str]) -> None:
        """A build from ``env`` failed: return it to the pool if uv left it untouched."""
        reusable = (
            self._running and generation == self._generation and not _changed_installed(lines)
        )
        if reusable:
            try:
                marker = {
                    "created": env.created,
                    "python": self.config.python,
                    "packages": self.packages,
                }
                (tmp / MARKER).write_text(json.dumps(marker))
                tmp.rename(env.path)
            except OSError:
                log.warning("UV pool: could not return %s to the pool", env.path, exc_info=True)
            else:
                self._ready.appendleft(env)
                self._log_available()
                self._notify()
                return
        self._discard(tmp)
        self._wake.set()

    async def _uv_with_progress(
        self,
        argv: list[str],
        progress: Progress,
        lines: list[str],
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Run a uv command, forwarding its summary lines as progress and keeping all in ``lines``."""

        def on_line(line: str) -> None:
            lines.append(line)
            text = line.strip()
            if _UV_PROGRESS.match(text):
                progress("preparing_env", text)

        await uv.run(
            argv,
            cwd=cwd or self.envs_dir,
            env=env if env is not None else uv.subprocess_env(),
            timeout=self.step_timeout,
            on_line=on_line,
        )

    async def _warm_up(self, tmp: Path, env_source: str, progress: Progress) -> None:
        progress("preparing_env", "Checking that ipykernel imports")
        try:
            await uv.run(
                [str(tmp / "bin" / "python"), "-c", WARM_UP],
                cwd=self.envs_dir,
                env=uv.subprocess_env(for_python=True),
                timeout=self.step_timeout,
            )
        except uv.CommandFailed as exc:
            raise EnvironmentFailed(
                f"The {env_source} environment was built, but ipykernel does not import in it "
                f"(a dependency may conflict with it): {_uv_error(exc)}",
                env_source=env_source,
            ) from None

    def _uv_bin(self, env_source: str) -> str:
        try:
            return uv.find_uv()
        except uv.CommandFailed as exc:
            raise EnvironmentFailed(exc.tail(), env_source=env_source) from None

    async def _interpreter(self, env_source: str) -> Interpreter:
        """What ``config.python`` is (version, base prefix); asked once."""
        if self._interpreter_info is None:
            try:
                out = await uv.output(
                    [self.config.python, "-c", project.PROBE],
                    env=uv.subprocess_env(for_python=True),
                    timeout=60,
                )
                self._interpreter_info = Interpreter.from_probe(out)
            except (uv.CommandFailed, ValueError, KeyError, IndexError) as exc:
                raise EnvironmentFailed(
                    f"The daemon's interpreter {self.config.python} does not run: {exc}",
                    env_source=env_source,
                ) from None
        return self._interpreter_info

    # -- garbage collection of cached envs --------------------------------------

    def _collect_garbage(self) -> None:
        """Collect now, and let the collector recompute when the next env expires."""
        self.cache.collect()
        self._collect_wake.set()

    async def _collect_loop(self) -> None:
        """Delete cached envs as they expire (acquire and release collect as well)."""
        while True:
            self._collect_wake.clear()
            try:
                self.cache.collect()
                wait = self.cache.next_expiry()
            except Exception:  # a bug: keep the daemon up, try again later
                log.exception("UV pool: collecting cached environments failed")
                wait = 3600.0
            await _wait_event(self._collect_wake, None if wait is None else wait + 1.0)

    # -- handing envs out -----------------------------------------------------

    def _take_ready(self) -> _ReadyEnv | None:
        """Pop the oldest ready env that is still intact; discard broken ones on the way."""
        while self._ready:
            env = self._ready.popleft()
            marker = env.path / MARKER
            if env.python.exists() and marker.exists():
                marker.unlink(missing_ok=True)  # handed out: never reused after a restart
                self._log_available()
                return env
            log.warning("UV pool: discarding broken environment %s", env.path)
            self._discard(env.path)
        self._log_available()
        return None

    async def _wait_for_env(self, env_source: str) -> _ReadyEnv:
        """Wait for the warmer to produce an env; raise when it keeps failing or time runs out."""
        deadline = time.monotonic() + self.acquire_timeout
        failures_seen = self._failures_total
        self._waiters += 1
        self._wake.set()
        try:
            while True:
                changed = self._changed
                env = self._take_ready()
                if env is not None:
                    return env
                if not self._running or self._warmer_crashed:
                    raise EnvironmentFailed(
                        "The uv pool stopped before an environment was ready."
                        + self._last_error_hint(),
                        env_source=env_source,
                    )
                if (
                    self._failures_total > failures_seen
                    and self._consecutive_failures >= self.give_up_after_failures
                ):
                    raise EnvironmentFailed(
                        f"The uv pool could not build an environment "
                        f"({self._consecutive_failures} attempts in a row failed). "
                        f"{self._last_error}\n{self._fix_hint()}",
                        env_source=env_source,
                    )
                if not await _wait_event(changed, deadline - time.monotonic()):
                    raise EnvironmentFailed(
                        f"Timed out after {self.acquire_timeout:g} s waiting for the uv pool "
                        "to warm an environment." + self._last_error_hint(),
                        env_source=env_source,
                    ) from None
        finally:
            self._waiters -= 1

    def _last_error_hint(self) -> str:
        return f" Last build error: {self._last_error}" if self._last_error else ""

    def _fix_hint(self) -> str:
        extra = self.config.default_packages
        packages = f" (RUNTIMED_DEFAULT_PACKAGES={','.join(extra)})" if extra else ""
        return (
            f"Check the default packages{packages}, the interpreter "
            f"({self.config.python}) and access to the package index, then flush the pool."
        )

    # -- the warmer -----------------------------------------------------------

    def _wanted(self) -> int:
        """Ready envs the warmer aims for: the target plus one per waiting acquire."""
        return self.target + self._waiters

    def _start_warmer(self) -> None:
        self._warmer_crashed = False
        self._warmer = asyncio.create_task(self._warm(), name="runtimed-uv-pool-warmer")

    async def _stop_warmer(self) -> None:
        """Cancel the warmer and wait for it; concurrent callers wait for the same task."""
        warmer = self._warmer
        if warmer is None:
            return
        warmer.cancel()
        # asyncio.wait does not raise the warmer's CancelledError, only our own.
        await asyncio.wait({warmer})
        if self._warmer is warmer:
            self._warmer = None

    async def _warm(self) -> None:
        """Build envs one at a time until the pool holds what it should; then sleep until woken."""
        try:
            while True:
                self._wake.clear()
                self._prune_stale()
                now = time.monotonic()
                if len(self._ready) >= self._wanted():
                    await self._sleep(self._seconds_until_stale())
                elif self._retry_at > now and not self._waiters:
                    await self._sleep(self._retry_at - now)
                else:
                    await self._build_and_record()
        except Exception as exc:  # a bug, not a build failure: waiters must not hang
            log.exception("UV pool: the warmer crashed")
            self._warmer_crashed = True
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._notify()

    async def _build_and_record(self) -> None:
        self._building = True
        try:
            env = await self._build()
        except BuildFailed as exc:
            self._consecutive_failures += 1
            self._failures_total += 1
            self._last_error = str(exc)
            delay = min(self.max_retry_delay, 5.0 * 2 ** (self._consecutive_failures - 1))
            self._retry_at = time.monotonic() + delay
            log.warning("UV pool: building an environment failed: %s", exc)
        else:
            self._consecutive_failures = 0
            self._retry_at = 0.0
            self._ready.append(env)
            self._log_available()
        finally:
            self._building = False
            self._notify()

    async def _sleep(self, timeout: float | None) -> None:
        """Sleep until :attr:`_wake` is set or ``timeout`` seconds pass."""
        await _wait_event(self._wake, timeout)

    def _seconds_until_stale(self) -> float | None:
        if not self._ready:
            return None
        oldest = min(env.created for env in self._ready)
        return max(0.0, oldest + self.max_age - time.time())

    def _prune_stale(self) -> None:
        now = time.time()
        for env in [e for e in self._ready if now - e.created > self.max_age]:
            log.info(
                "UV pool: %s is older than %g h, rebuilding", env.path.name, self.max_age / 3600
            )
            self._ready.remove(env)
            self._discard(env.path)
        self._log_available()

    async def _build(self) -> _ReadyEnv:
        """Build one env into a temporary directory and move it into place once warmed."""
        name = uuid.uuid4().hex
        final = self.envs_dir / f"{READY_PREFIX}{name}"
        tmp = final.with_name(final.name + PARTIAL_SUFFIX)
        python = tmp / "bin" / "python"
        started = time.monotonic()
        log.debug("UV pool: building %s", final.name)
        try:
            try:
                uv_bin = uv.find_uv()
            except uv.CommandFailed as exc:
                raise BuildFailed(exc.tail()) from exc
            # --relocatable: scripts and activate files do not embed the temp path.
            await self._step(
                "Creating the venv",
                [
                    uv_bin,
                    "venv",
                    "--quiet",
                    "--relocatable",
                    "--no-python-downloads",
                    "--python",
                    self.config.python,
                    str(tmp),
                ],
            )
            await self._step(
                "Installing packages",
                [
                    uv_bin,
                    "pip",
                    "install",
                    "--quiet",
                    "--no-python-downloads",
                    "--python",
                    str(python),
                    "--compile-bytecode",
                    *self.packages,
                ],
            )
            await self._step("Importing ipykernel", [str(python), "-c", WARM_UP], for_python=True)
            created = time.time()
            marker = {"created": created, "python": self.config.python, "packages": self.packages}
            (tmp / MARKER).write_text(json.dumps(marker))
            tmp.rename(final)
        except BaseException:
            self._discard(tmp)
            raise
        log.debug("UV pool: built %s in %.1f s", final.name, time.monotonic() - started)
        return _ReadyEnv(final, created)

    async def _step(self, what: str, argv: list[str], *, for_python: bool = False) -> None:
        try:
            await uv.run(
                argv,
                cwd=self.envs_dir,
                env=uv.subprocess_env(for_python=for_python),
                timeout=self.step_timeout,
            )
        except uv.CommandFailed as exc:
            raise BuildFailed(f"{what} failed: {_uv_error(exc)}") from exc

    # -- disk -----------------------------------------------------------------

    async def _scan(self) -> list[_ReadyEnv]:
        """Envs on disk worth reusing, newest first; everything else is deleted."""
        candidates: list[_ReadyEnv] = []
        for path in sorted(self.envs_dir.iterdir()):
            if not path.name.startswith(READY_PREFIX):
                continue
            if path.name.endswith(PARTIAL_SUFFIX):
                self._discard(path)  # a build interrupted by a crash
            else:
                env = self._reusable(path)
                if env is None:
                    self._discard(path)
                else:
                    candidates.append(env)
        works = await asyncio.gather(*(self._imports_ipykernel(env) for env in candidates))
        reusable = []
        for env, ok in zip(candidates, works, strict=True):
            if ok:
                reusable.append(env)
            else:
                log.info("UV pool: discarding %s, its python no longer runs", env.path.name)
                self._discard(env.path)
        return sorted(reusable, key=lambda env: env.created, reverse=True)

    def _reusable(self, path: Path) -> _ReadyEnv | None:
        """A ready env from a marker that is fresh and matches the current config, else None."""
        try:
            marker: dict[str, Any] = json.loads((path / MARKER).read_text())
            created = float(marker["created"])
        except (OSError, ValueError, KeyError, TypeError):
            log.info("UV pool: discarding %s, it has no valid %s marker", path.name, MARKER)
            return None
        env = _ReadyEnv(path, created)
        if time.time() - created > self.max_age:
            reason = "it is stale"
        elif marker.get("python") != self.config.python or marker.get("packages") != self.packages:
            reason = "it was built for another interpreter or package list"
        elif not env.python.exists():
            reason = "its python is missing"
        else:
            return env
        log.info("UV pool: discarding %s, %s", path.name, reason)
        return None

    async def _imports_ipykernel(self, env: _ReadyEnv) -> bool:
        try:
            await uv.run(
                [str(env.python), "-c", "import ipykernel"],
                env=uv.subprocess_env(for_python=True),
                timeout=30,
            )
        except uv.CommandFailed:
            return False
        return True

    def _discard(self, path: Path) -> None:
        """Delete ``path`` in a background thread; :meth:`stop` waits for pending deletions."""
        task = asyncio.create_task(asyncio.to_thread(shutil.rmtree, path, True))
        self._deletions.add(task)
        task.add_done_callback(self._deletions.discard)

    # -- notifications --------------------------------------------------------

    def _notify(self) -> None:
        """Wake every :meth:`_wait_for_env`: swap in a fresh event and set the old one."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _log_available(self) -> None:
        available = len(self._ready)
        if available != self._logged_available:
            self._logged_available = available
            log.info("UV pool: %d/%d available", available, self.target)


def _changed_installed(lines: list[str]) -> bool:
    """Whether uv's output says it installed or removed anything (the env is no longer as it was)."""
    return any(line.strip().startswith(("Installed ", "Uninstalled ")) for line in lines)


def _replaced_any(lines: list[str]) -> bool:
    """Whether uv removed or replaced a package (so ipykernel's own dependencies may have moved)."""
    return any(line.strip().startswith("Uninstalled ") for line in lines)


def _uv_error(exc: uv.CommandFailed) -> str:
    """uv's failure, without its ``Using Python ... environment at: <temp dir>`` preamble."""
    kept = [
        line
        for line in exc.summary().splitlines()
        if not re.match(r"Using (C?Python|Python) \S+ (environment|interpreter) at", line)
    ]
    return "\n".join(kept)


async def _wait_event(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for ``event`` at most ``timeout`` seconds; return whether it was set.

    Unlike ``asyncio.wait_for`` on Python 3.10/3.11, never swallows a
    cancellation that arrives just as the event is set.
    """
    waiter = asyncio.ensure_future(event.wait())
    try:
        done, _ = await asyncio.wait({waiter}, timeout=None if timeout is None else max(timeout, 0))
    finally:
        waiter.cancel()
    return bool(done)
