"""The uv family: prewarmed envs, inline / PEP 723 envs, and pyproject projects.

``uv:prewarmed``: N ready virtual environments with ipykernel, built ahead of
time. ``uv:inline`` / ``uv:pep723``: an env per dependency set, built once and
cached (:mod:`runtimed.envcache`), preferably from a prewarmed env (uv
then installs only the missing packages: about 1 s instead of about 5 s from
nothing). ``uv:pyproject``: the project's own env plus an ipykernel overlay
(:mod:`runtimed_uv_pool.project`).

Layout under ``config.cache_dir / "envs"``::

    uv-prewarmed-<hex>.partial/  an env being built (never handed out; deleted at start)
    uv-prewarmed-<hex>/          a ready env; ``.warmed`` holds JSON {created, python, packages}
                                 (an env handed to a kernel loses its marker: never reused)
    uv-inline-<key>/, uv-project-<key>/   cached envs, see :mod:`runtimed.envcache`

The pool touches nothing else in that directory (other pools share it).

The prewarmed pool's rules (take, replenish, flush, stale and broken envs, the
warmer) are :class:`runtimed.prewarm.Prewarmer`'s; this module supplies the
build (``uv venv``, ``uv pip install``, import ipykernel) and the marker check.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from runtimed import procs
from runtimed.config import DaemonConfig
from runtimed.envcache import EnvCache
from runtimed.errors import EnvironmentFailed
from runtimed.pools import (
    EnvPool, EnvRequest, InlineDependencies, PoolStatus, PreparedEnv, Progress, ProjectFile,
    ScriptBlock,
)
from runtimed.prewarm import BuildFailed, Prewarmer, ReadyEnv
from runtimed.settings import Setting
from runtimed_uv_pool import project, specs
from runtimed_uv_pool.project import Interpreter

log = logging.getLogger("runtimed.pools.uv")

READY_PREFIX = "uv-prewarmed-"
PARTIAL_SUFFIX = ".partial"
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


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class _Tunable:
    """A :class:`Prewarmer` attribute, read and set through the pool (``pool.max_age = ...``)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, pool: UvPool | None, owner: type | None = None) -> Any:
        return getattr(Prewarmer if pool is None else pool.prewarmed, self.name)

    def __set__(self, pool: UvPool, value: Any) -> None:
        setattr(pool.prewarmed, self.name, value)



def venv_argv(uv: str, python: str, dest: Path) -> list[str]:
    """``uv venv`` for a pool env; --relocatable: scripts do not embed the (temporary) path."""
    return [uv, "venv", "--quiet", "--relocatable", "--no-python-downloads", "--python", python,
            str(dest)]


def pip_install_argv(uv: str, python: Path, *packages: str, quiet: bool = False) -> list[str]:
    """``uv pip install`` into the venv of ``python``, bytecode compiled (kernels start twice as fast)."""
    return [uv, "pip", "install", *(["--quiet"] if quiet else []), "--no-python-downloads",
            "--python", str(python), "--compile-bytecode", *packages]

class UvPool(EnvPool):
    """The uv env family: the prewarmed pool plus cached inline / PEP 723 / project envs.

    See the module docstring.

    Tunables are plain attributes so the daemon (or a test) can change them
    after construction.
    """

    family = "uv"
    sources = ("uv:prewarmed", "uv:inline", "uv:pep723", "uv:pyproject")
    project_files = (ProjectFile("pyproject.toml", "uv:pyproject", rank=10,
                                 accepts=specs.looks_like_project),)
    inline_dependencies = (InlineDependencies("runt.uv.dependencies", "uv:inline"),)
    script_blocks = (ScriptBlock("script", "uv:pep723"),)
    default_pool_size = 2
    default_rank = 0
    settings = (
        Setting("inline_env_max_age_secs", 86400.0, "cached inline / PEP 723 / project envs "
                "unused this long are removed", parse=float, env="RUNTIMED_INLINE_ENV_MAX_AGE_SECS"),
        Setting("inline_env_max_count", 10, "... and the least recently used beyond this many",
                parse=int, env="RUNTIMED_INLINE_ENV_MAX_COUNT"),
    )

    # The prewarmed pool's tunables (see :class:`Prewarmer`), settable here too.
    #: Longest :meth:`acquire` waits for the warmer, in seconds.
    acquire_timeout = _Tunable()
    #: :meth:`acquire` gives up early once this many builds in a row failed.
    give_up_after_failures = _Tunable()
    #: Ready envs older than this (seconds) are deleted and rebuilt.
    max_age = _Tunable()
    #: Longest pause between retries while builds keep failing and nobody waits.
    max_retry_delay = _Tunable()
    #: Longest one build step (a ``uv`` command) may take, in seconds.
    step_timeout: float = 600.0
    #: Build inline / PEP 723 envs and project overlays from a ready pool env when
    #: one is ready (uv then installs only what is missing). Measured on 2 cores
    #: with a warm uv cache: about 1.2 s instead of about 5 s from nothing.
    build_from_pool: bool = True

    def __init__(self, config: DaemonConfig) -> None:
        super().__init__(config)
        self.envs_dir = Path(config.cache_dir) / "envs"
        #: The ``uv:prewarmed`` pool (its tunables are also attributes of this pool).
        self.prewarmed = Prewarmer(
            family=self.family,
            label="uv pool",
            log_label="UV pool",
            envs_dir=self.envs_dir,
            target=lambda: self.pool_size,
            build=self._build,
            is_current=self._is_current,
            python=_python,
            fix_hint=self._fix_hint,
            log=log,
            building_prefix=READY_PREFIX,
            building_suffix=PARTIAL_SUFFIX,
            mismatch_reason="it was built for another interpreter or package list",
            built_log_level=logging.DEBUG,
        )
        self.cache = EnvCache(
            self.envs_dir,
            prefixes=(INLINE_PREFIX, PROJECT_PREFIX),
            max_age=float(self.setting("inline_env_max_age_secs")),
            max_count=int(self.setting("inline_env_max_count")),
            label="uv pool",
            log_label="UV pool",
            log=log,
        )
        self._project_locks: dict[Path, asyncio.Lock] = {}
        self._interpreter_info: Interpreter | None = None

    # -- the EnvPool contract -------------------------------------------------

    @property
    def target(self) -> int:
        """How many ready envs the pool keeps (the ``uv.pool_size`` setting)."""
        return self.prewarmed.target

    @property
    def packages(self) -> list[str]:
        """What every env gets installed: ipykernel, ipywidgets, then the user's defaults."""
        return [*BASE_PACKAGES, *self.config.default_packages]

    async def start(self) -> None:
        """Reuse valid envs left on disk, delete the rest, and start warming in the background."""
        if self.prewarmed.running:
            return
        self._project_locks.clear()
        await self.prewarmed.start()
        await self.cache.start()

    async def stop(self) -> None:
        """Cancel the warmer (killing a running uv), wake waiters, finish deletions.

        Ready envs stay on disk for the next :meth:`start`. Safe to call twice.
        """
        await self.prewarmed.stop()
        await self.cache.stop()
        await self.prewarmed.drain_deletions()

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
        if not self.prewarmed.running:
            raise EnvironmentFailed(
                "The uv pool is not running (the daemon is starting or stopping); try again.",
                env_source=request.env_source,
            )
        if request.env_source == "uv:pyproject":
            return await self._acquire_project(request, progress)
        if request.env_source in ("uv:inline", "uv:pep723"):
            return await self._acquire_inline(request, progress)
        env = await self.prewarmed.take(request.env_source, progress)
        return PreparedEnv(
            env_source=self.sources[0],
            prefix=env.path,
            python=[str(_python(env.path))],
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
            self.cache.release(cached)
            return
        if env.extra.get("project_env"):
            return
        # Never deletes a directory the pool did not create.
        await self.prewarmed.release(prefix)

    async def update(
        self, env: PreparedEnv, request: EnvRequest, progress: Progress
    ) -> PreparedEnv | None:
        """Dependencies added while a kernel runs: installed into its env in place, when that
        env is its alone (a prewarmed env, or one grown this way before).

        None (the daemon restarts the kernel into the ``uv:inline`` env for the new list)
        for a cached env (every notebook with the same dependencies shares it: changing
        it would change theirs), a project's env, a removed package (no uninstalling
        under a running kernel), or a ``requires-python`` / ``prerelease`` setting. A
        changed spec of a listed package (``six`` -> ``six>=1.16``) is installed in place.
        """
        if (
            request.env_source != "uv:inline"
            or "cached" in env.extra
            or env.extra.get("project_env")
            or not self.prewarmed.owns(Path(env.prefix))
        ):
            return None
        spec = specs.inline_spec(request.metadata)
        if spec.requires_python or spec.prerelease:
            return None
        installed = tuple(env.extra.get("dependencies", ()))
        names = {specs.requirement_name(d) or d for d in spec.dependencies}
        if any((specs.requirement_name(d) or d) not in names for d in installed):
            return None
        added = [d for d in spec.dependencies if d not in installed]  # new, or a new spec
        if not added:
            return env
        progress(
            "preparing_env",
            f"Installing {_plural(len(added), 'package')} ({', '.join(added)}) into the running "
            "kernel's environment",
        )
        python = Path(env.prefix) / "bin" / "python"
        argv = pip_install_argv(self._uv_bin(request.env_source), python)
        try:
            # the base packages stay required: uv must not move ipykernel to fit the new ones
            await self._uv_with_progress([*argv, *self.packages, *spec.dependencies], progress, [])
        except procs.CommandFailed as exc:
            culprits = specs.named_in(added, exc.stderr) or added
            raise EnvironmentFailed(
                f"Could not install {', '.join(culprits)} into the running kernel's environment: "
                f"{_uv_error(exc)}\nFix the dependencies in {spec.where} and sync again.",
                env_source=request.env_source,
            ) from None
        return PreparedEnv(
            env_source=request.env_source,
            prefix=env.prefix,
            python=list(env.python),
            env=dict(env.env),
            extra={**env.extra, "dependencies": list(spec.dependencies)},
        )

    def status(self) -> PoolStatus:
        """``available``: ready envs; ``warming``: the build running plus those still to build."""
        return self.prewarmed.status()

    async def flush(self) -> None:
        """Delete every ready env, abandon a build in progress, and rebuild to the target.

        Cached inline / PEP 723 envs and project overlays stay: each is keyed by
        exactly what it was built from (dependencies, interpreter, base packages),
        so a flush would only force the same rebuilds; unused ones expire by the
        cache's age and count limits, and envs in use must stay anyway.
        """
        await self.prewarmed.flush()

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
        generation = self.prewarmed.generation
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
        argv = pip_install_argv(self._uv_bin(source), tmp / "bin" / "python")
        if spec.prerelease:
            argv += ["--prerelease", spec.prerelease]
        lines: list[str] = []
        try:
            try:
                await self._uv_with_progress([*argv, *packages], progress, lines)
            except procs.CommandFailed as exc:
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
                self.prewarmed.wake()  # the pool replaces the env this one was made from
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
        env = procs.subprocess_env(for_python=True)
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
        except procs.CommandFailed as exc:
            raise EnvironmentFailed(
                f"uv could not set up the environment of the project {project_file}: "
                f"{_uv_error(exc)}",
                env_source=source,
            ) from None
        try:
            out = await procs.output(
                project.probe_argv(uv_bin, project_file),
                cwd=project_file.parent,
                env=env,
                timeout=60,
            )
            return Interpreter.from_probe(out)
        except (procs.CommandFailed, ValueError, KeyError, IndexError) as exc:
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
            self.prewarmed.wake()  # the pool replaces the env this one is made from
        else:
            argv = pip_install_argv(self._uv_bin(source), tmp / "bin" / "python", *self.packages)
            try:
                await self._uv_with_progress(argv, progress, [])
            except procs.CommandFailed as exc:
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
        path, _ = await self.cache.acquire(name, build, progress, env_source=env_source,
                                           reuse_message=reuse_message)
        return PreparedEnv(
            env_source=env_source,
            prefix=path,
            python=[str(path / "bin" / "python")],
            extra={"cached": name, **(extra or {})},
        )

    def _borrow_ready(self) -> ReadyEnv | None:
        """A ready pool env to build on (its replacement is started once the build succeeds)."""
        if not self.build_from_pool:
            return None
        return self.prewarmed.take_ready()

    async def _base_env(
        self, tmp: Path, borrowed: ReadyEnv | None, python: str, env_source: str
    ) -> ReadyEnv | None:
        """Move ``borrowed`` to ``tmp``, or create a new venv there; return the env used, if any."""
        if borrowed is not None:
            try:
                borrowed.path.rename(tmp)  # relocatable: it works from its new path
                return borrowed
            except OSError:
                log.warning("UV pool: could not take over %s", borrowed.path, exc_info=True)
                self.prewarmed.discard(borrowed.path)
                self.prewarmed.wake()
        argv = venv_argv(self._uv_bin(env_source), python, tmp)
        try:
            await procs.run(
                argv, cwd=self.envs_dir, env=procs.subprocess_env(), timeout=self.step_timeout
            )
        except procs.CommandFailed as exc:
            raise EnvironmentFailed(
                f"Could not create a virtual environment with {python}: {_uv_error(exc)}",
                env_source=env_source,
            ) from None
        return None

    def _give_back(self, env: ReadyEnv, tmp: Path, generation: int, lines: list[str]) -> None:
        """A build from ``env`` failed: return it to the pool if uv left it untouched."""
        if _changed_installed(lines):
            self.prewarmed.discard(tmp)
            self.prewarmed.wake()
        else:
            self.prewarmed.give_back(env, tmp, generation)

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

        await procs.run(
            argv,
            cwd=cwd or self.envs_dir,
            env=env if env is not None else procs.subprocess_env(),
            timeout=self.step_timeout,
            on_line=on_line,
        )

    async def _warm_up(self, tmp: Path, env_source: str, progress: Progress) -> None:
        progress("preparing_env", "Checking that ipykernel imports")
        try:
            await procs.run(
                [str(tmp / "bin" / "python"), "-c", WARM_UP],
                cwd=self.envs_dir,
                env=procs.subprocess_env(for_python=True),
                timeout=self.step_timeout,
            )
        except procs.CommandFailed as exc:
            raise EnvironmentFailed(
                f"The {env_source} environment was built, but ipykernel does not import in it "
                f"(a dependency may conflict with it): {_uv_error(exc)}",
                env_source=env_source,
            ) from None

    def _uv_bin(self, env_source: str) -> str:
        try:
            return find_uv()
        except procs.CommandFailed as exc:
            raise EnvironmentFailed(exc.tail(), env_source=env_source) from None

    async def _interpreter(self, env_source: str) -> Interpreter:
        """What ``config.python`` is (version, base prefix); asked once."""
        if self._interpreter_info is None:
            try:
                out = await procs.output(
                    [self.config.python, "-c", project.PROBE],
                    env=procs.subprocess_env(for_python=True),
                    timeout=60,
                )
                self._interpreter_info = Interpreter.from_probe(out)
            except (procs.CommandFailed, ValueError, KeyError, IndexError) as exc:
                raise EnvironmentFailed(
                    f"The daemon's interpreter {self.config.python} does not run: {exc}",
                    env_source=env_source,
                ) from None
        return self._interpreter_info

    def _fix_hint(self) -> str:
        extra = self.config.default_packages
        packages = f" (RUNTIMED_DEFAULT_PACKAGES={','.join(extra)})" if extra else ""
        return (
            f"Check the default packages{packages}, the interpreter "
            f"({self.config.python}) and access to the package index, then flush the pool."
        )

    # -- the prewarmed pool's build (the rules are Prewarmer's) -------------------

    async def _build(self, tmp: Path, progress: Progress) -> dict[str, Any]:
        """Build one pool env into ``tmp``; return its marker fields (python, packages)."""
        python = _python(tmp)
        try:
            uv_bin = find_uv()
        except procs.CommandFailed as exc:
            raise BuildFailed(exc.tail()) from exc
        await self._step("Creating the venv", venv_argv(uv_bin, self.config.python, tmp))
        await self._step("Installing packages",
                         pip_install_argv(uv_bin, python, *self.packages, quiet=True))
        await self._step("Importing ipykernel", [str(python), "-c", WARM_UP], for_python=True)
        return {"python": self.config.python, "packages": self.packages}

    async def _step(self, what: str, argv: list[str], *, for_python: bool = False) -> None:
        try:
            await procs.run(
                argv,
                cwd=self.envs_dir,
                env=procs.subprocess_env(for_python=for_python),
                timeout=self.step_timeout,
            )
        except procs.CommandFailed as exc:
            raise BuildFailed(f"{what} failed: {_uv_error(exc)}") from exc

    def _is_current(self, marker: dict[str, Any]) -> bool:
        """Whether a ready env on disk was built with this interpreter and package list."""
        return (
            marker.get("python") == self.config.python and marker.get("packages") == self.packages
        )


def find_uv() -> str:
    """The uv executable: the one the ``uv`` package (a dependency) ships, else ``uv`` on PATH."""
    def bundled() -> str:
        from uv import find_uv_bin

        return find_uv_bin()

    return procs.find_program("uv", bundled=bundled, hint="install it with `pip install uv`")


def _python(env: Path) -> Path:
    return env / "bin" / "python"


def _changed_installed(lines: list[str]) -> bool:
    """Whether uv's output says it installed or removed anything (the env is no longer as it was)."""
    return any(line.strip().startswith(("Installed ", "Uninstalled ")) for line in lines)


def _replaced_any(lines: list[str]) -> bool:
    """Whether uv removed or replaced a package (so ipykernel's own dependencies may have moved)."""
    return any(line.strip().startswith("Uninstalled ") for line in lines)


def _uv_error(exc: procs.CommandFailed) -> str:
    """uv's failure, without its ``Using Python ... environment at: <temp dir>`` preamble."""
    kept = [
        line
        for line in exc.summary().splitlines()
        if not re.match(r"Using (C?Python|Python) \S+ (environment|interpreter) at", line)
    ]
    return "\n".join(kept)
