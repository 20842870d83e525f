"""The ``venv`` env family: a complete small pool, built with the standard library's venv and pip.

``venv:prewarmed``: N ready venvs with ipykernel, built ahead of time
(:class:`runtimed.prewarm.Prewarmer` keeps them). ``venv:requirements``: the
nearest ``requirements.txt`` above the notebook, installed once per file content
into a cached venv that every notebook with the same file shares
(:class:`runtimed.envcache.EnvCache`; the venv is named by the file's content, not
by files it includes with ``-r``).

Layout under ``config.cache_dir / "envs"`` (other pools share the directory)::

    venv-building-<hex>/        a prewarmed env being built
    venv-prewarmed-<hex>/       a ready env
    venv-requirements-<hash>/   the env of one requirements.txt content
"""

from __future__ import annotations

import hashlib
import logging
import shlex
from pathlib import Path
from typing import Any

from runtimed import procs
from runtimed.config import DaemonConfig
from runtimed.envcache import EnvCache
from runtimed.errors import EnvironmentFailed
from runtimed.pools import EnvPool, EnvRequest, PoolStatus, PreparedEnv, Progress, ProjectFile
from runtimed.prewarm import BuildFailed, Prewarmer
from runtimed.settings import Setting

log = logging.getLogger("runtimed.pools.venv")

#: What every env gets, besides a notebook's requirements.
KERNEL_PACKAGES = ["ipykernel"]
REQUIREMENTS_PREFIX = "venv-requirements-"
#: Longest one command (venv, pip) may take, in seconds.
STEP_TIMEOUT = 600.0


def python_of(env: Path) -> Path:
    return env / "bin" / "python"


class VenvPool(EnvPool):
    """Venvs made with ``python -m venv`` and filled by pip; see the module docstring."""

    family = "venv"
    sources = ("venv:prewarmed", "venv:requirements")
    project_files = (ProjectFile("requirements.txt", "venv:requirements", rank=50),)
    default_pool_size = 1
    settings = (
        Setting("pip_args", [], "extra `pip install` arguments, split like a shell command "
                "(e.g. '--no-index --find-links DIR')", parse=shlex.split),
        Setting("cached_envs", 5, "requirements envs kept; the least recently used beyond "
                "this many are removed", parse=int),
    )

    def __init__(self, config: DaemonConfig) -> None:
        super().__init__(config)
        envs_dir = Path(config.cache_dir) / "envs"
        self.prewarmed = Prewarmer(
            family=self.family,
            label="venv pool",
            envs_dir=envs_dir,
            target=lambda: self.pool_size,
            build=self._build_prewarmed,
            is_current=lambda marker: marker.get("python") == config.python,
            fix_hint=lambda: "Check RUNTIMED_VENV_PIP_ARGS and access to the package index, "
                             "then flush the pool.",
            log=log,
        )
        self.cache = EnvCache(envs_dir, prefixes=(REQUIREMENTS_PREFIX,), max_age=86400.0,
                              max_count=int(self.setting("cached_envs")), label="venv pool",
                              log=log)

    # -- the EnvPool contract ---------------------------------------------------------------

    async def start(self) -> None:
        await self.prewarmed.start()
        await self.cache.start()

    async def stop(self) -> None:
        await self.prewarmed.stop()
        await self.cache.stop()

    async def acquire(self, request: EnvRequest, progress: Progress) -> PreparedEnv:
        """A ready venv (``venv:prewarmed``) or the cached venv of the notebook's
        requirements.txt (``venv:requirements``, built first if needed)."""
        if request.env_source == "venv:requirements":
            return await self._acquire_requirements(request, progress)
        if request.env_source != "venv:prewarmed":
            raise EnvironmentFailed(f"The venv pool provides {', '.join(self.sources)}, "
                                    f"not {request.env_source!r}.", env_source=request.env_source)
        env = await self.prewarmed.take(request.env_source, progress)
        return PreparedEnv(request.env_source, prefix=env.path, python=[str(python_of(env.path))])

    async def release(self, env: PreparedEnv) -> None:
        """A prewarmed venv is deleted; a requirements venv stays cached for the next notebook."""
        if "cached" in env.extra:
            self.cache.release(env.extra["cached"])
        else:
            await self.prewarmed.release(env.prefix)

    def status(self) -> PoolStatus:
        return self.prewarmed.status()

    async def flush(self) -> None:
        await self.prewarmed.flush()

    # -- building -------------------------------------------------------------------------------

    async def _build_prewarmed(self, directory: Path, progress: Progress) -> dict[str, Any]:
        try:
            await self._build_venv(directory, KERNEL_PACKAGES, progress)
        except procs.CommandFailed as exc:
            raise BuildFailed(exc.summary()) from exc
        return {"python": self.config.python}

    async def _acquire_requirements(self, request: EnvRequest, progress: Progress) -> PreparedEnv:
        source, file = request.env_source, request.project_file
        if file is None:
            raise EnvironmentFailed("venv:requirements needs a requirements.txt in the notebook's "
                                    "directory or above it.", env_source=source)
        content = f"{self.config.python}\n{file.read_text()}"
        name = REQUIREMENTS_PREFIX + hashlib.sha256(content.encode()).hexdigest()[:16]

        async def build(directory: Path, progress: Progress) -> dict[str, Any]:
            try:
                await self._build_venv(directory, [*KERNEL_PACKAGES, "-r", str(file)], progress)
            except procs.CommandFailed as exc:
                raise EnvironmentFailed(f"pip could not install {file}:\n{exc.tail()}\n"
                                        "Fix the file and start the kernel again.",
                                        env_source=source) from None
            return {"requirements": str(file), "python": self.config.python}

        path, _ = await self.cache.acquire(name, build, progress, env_source=source,
                                           reuse_message=f"Reusing the cached venv for the requirements in {file}")
        return PreparedEnv(source, prefix=path, python=[str(python_of(path))],
                           extra={"cached": name})

    async def _build_venv(self, directory: Path, packages: list[str], progress: Progress) -> None:
        """``python -m venv directory``, then pip installs ``packages`` (and compiles their
        bytecode, even under PYTHONDONTWRITEBYTECODE). Raises :class:`procs.CommandFailed`."""
        env = procs.subprocess_env(for_python=True)
        progress("preparing_env", f"Creating a venv with {self.config.python}")
        await procs.run([self.config.python, "-m", "venv", str(directory)], env=env,
                        timeout=STEP_TIMEOUT)
        progress("preparing_env", f"pip install {shlex.join(packages)}")
        await procs.run([str(python_of(directory)), "-m", "pip", "install", "--no-input",
                         "--disable-pip-version-check", *self.setting("pip_args"), *packages],
                        env=env, timeout=STEP_TIMEOUT)
