"""A notebook's inline dependencies, edited without hand-editing metadata, and made real
for its running kernel.

The dependencies live where the env family's pool declares them
(:class:`~runtimed.pools.InlineDependencies`: a dotted notebook-metadata key, such as
the default family's ``runt.<family>.dependencies``): the family of the running
kernel's environment, else the family whose key already lists some, else the
default family. Nothing here names a family.

:func:`sync` makes the running kernel see them: the pool that provided its
environment installs them into it in place when it can
(:meth:`~runtimed.pools.EnvPool.update`: no restart, the kernel's variables stay),
else a kernel is started in the environment a fresh start would get and takes the
running one's place once it is up (if it cannot start, the running kernel stays).
While it works the kernel record's ``progress`` says what is happening.

A notebook whose environment comes from a project file or a script block in a
cell declares its dependencies there: editing the metadata would change nothing
(or switch environments), so it is refused with a message saying where to edit.
"""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtimed import envsource
from runtimed.daemon.provisioning import KernelRequest, Plan, Provisioner
from runtimed.daemon.room_kernel import RoomKernel
from runtimed.document import notebook
from runtimed.document.replica import Replica
from runtimed.errors import InvalidRequest
from runtimed.pools import EnvPool, EnvRequest, Progress

log = logging.getLogger(__name__)

_NAME = re.compile(r"\s*([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)")
MAX_SPEC = 500


def requirement_name(spec: str) -> str:
    """The package a requirement names, normalised (``Pandas_Stubs>=2`` -> ``pandas-stubs``)."""
    match = _NAME.match(spec)
    return re.sub(r"[-_.]+", "-", match.group(1)).lower() if match else spec.strip().lower()


def check_spec(spec: Any) -> str:
    """A requirement as given (``pandas``, ``numpy>=2``, ``scipy==1.14.*``), stripped; else
    InvalidRequest saying what is wrong."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidRequest("A dependency is a non-empty string such as 'pandas' or 'numpy>=2'")
    spec = spec.strip()
    if "\n" in spec or "\r" in spec or len(spec) > MAX_SPEC:
        raise InvalidRequest(f"{spec[:60]!r}... is not one requirement (one line, at most "
                             f"{MAX_SPEC} characters)")
    if not _NAME.match(spec):
        raise InvalidRequest(f"{spec!r} does not start with a package name")
    return spec


@dataclass
class Dependencies:
    """One room's dependencies: its notebook document, its kernel, the daemon's pools."""

    doc: Replica
    kernel: RoomKernel
    provisioner: Provisioner
    notebook_path: Path | None
    notebook_id: str

    # where they live -------------------------------------------------------------------------
    def _pool_classes(self) -> dict[str, type[EnvPool]]:
        return dict(self.provisioner.registry.pools)

    def _family(self) -> tuple[type[EnvPool], str]:
        """The pool class whose inline dependencies this notebook edits, and their key."""
        pools = self._pool_classes()
        runner = self.kernel.runner
        family = None
        if runner is not None and runner.alive:
            if runner.lease.pool is None:
                raise InvalidRequest(
                    f"The {runner.kernel_type} kernel runs in no environment a pool builds, so "
                    "runtimed does not manage its dependencies", notebook_id=self.notebook_id)
            family = runner.lease.env_source.split(":", 1)[0]
        else:
            metadata = notebook.get_metadata(self.doc)
            for cls in pools.values():
                if any(envsource.inline_dependencies(metadata, d.key) for d in cls.inline_dependencies):
                    family = cls.family
                    break
            family = family or self.provisioner.default_family
        cls = pools.get(family) if family else None
        if cls is None:
            raise InvalidRequest("No installed pool plugin provides environments for this "
                                 "notebook, so it has no dependencies to manage",
                                 notebook_id=self.notebook_id)
        if not cls.inline_dependencies:
            raise InvalidRequest(f"The {family} environments take no dependencies listed in the "
                                 "notebook", notebook_id=self.notebook_id)
        return cls, cls.inline_dependencies[0].key

    def _check_declared_here(self) -> None:
        """Refuse when the environment is declared elsewhere (a project file, a script block)."""
        pools = list(self._pool_classes().values())
        project_sources = {p.env_source for cls in pools for p in cls.project_files}
        runner = self.kernel.runner
        if runner is not None and runner.alive and runner.lease.env_source in project_sources:
            raise InvalidRequest(
                f"The kernel's environment ({runner.lease.env_source}) is a project's: add "
                "dependencies to its project file, then restart the kernel",
                notebook_id=self.notebook_id)
        metadata = notebook.get_metadata(self.doc)
        resolved = envsource.resolve(
            "auto", pools=pools, default_family=self.provisioner.default_family,
            notebook_path=self.notebook_path, metadata=metadata,
            cell_sources=[c.source for c in notebook.read_cells(self.doc) if c.cell_type == "code"])
        if resolved.project_file is not None:
            raise InvalidRequest(
                f"This notebook's environment comes from {resolved.project_file}: add "
                "dependencies there, then restart the kernel", notebook_id=self.notebook_id)
        for cls in pools:
            for block in cls.script_blocks:
                if block.env_source == resolved.env_source:
                    raise InvalidRequest(
                        f"This notebook declares its dependencies in a `# /// {block.block_type}` "
                        "block in a code cell: edit that block", notebook_id=self.notebook_id)

    # reading and editing -----------------------------------------------------------------------
    def get(self) -> list[str]:
        """The notebook's inline dependencies (its env family's list)."""
        _, key = self._family()
        return list(envsource.inline_dependencies(notebook.get_metadata(self.doc), key))

    def _write(self, key: str, deps: list[str]) -> None:
        top, *rest = key.split(".")
        metadata = notebook.get_metadata(self.doc)
        if not rest:
            notebook.set_metadata_value(self.doc, top, deps)
            return
        value = copy.deepcopy(metadata.get(top)) if isinstance(metadata.get(top), dict) else {}
        node = value
        for part in rest[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[rest[-1]] = deps
        notebook.set_metadata_value(self.doc, top, value)

    def add(self, spec: Any) -> list[str]:
        """Add a requirement (one naming a package already listed replaces it); the new list."""
        spec = check_spec(spec)
        _, key = self._family()
        self._check_declared_here()
        deps = self.get()
        name = requirement_name(spec)
        for i, old in enumerate(deps):
            if requirement_name(old) == name:
                deps[i] = spec
                break
        else:
            deps.append(spec)
        self._write(key, deps)
        return deps

    def remove(self, name: Any) -> list[str]:
        """Remove the requirement naming package ``name``; the new list."""
        if not isinstance(name, str) or not name.strip():
            raise InvalidRequest("remove_dependency needs a package name")
        _, key = self._family()
        deps = self.get()
        wanted = requirement_name(name)
        kept = [d for d in deps if requirement_name(d) != wanted]
        if len(kept) == len(deps):
            listed = ", ".join(deps) or "none"
            raise InvalidRequest(f"{name.strip()!r} is not one of this notebook's dependencies "
                                 f"({listed})", notebook_id=self.notebook_id)
        self._write(key, kept)
        return kept

    # making them real -------------------------------------------------------------------------
    async def sync(self) -> dict[str, Any]:
        """Make the running kernel see the dependencies (see the module docstring).

        Returns ``action``: ``"installed"`` (in place), ``"restarted"`` (into a new
        environment), ``"unchanged"`` (it had them) or ``"none"`` (no kernel runs: the
        next start gets them), with the kernel's ``env_source`` and the ``dependencies``.
        """
        deps = self.get()
        runner = self.kernel.runner
        if runner is None or not runner.alive:
            return {"action": "none", "env_source": None, "dependencies": deps}
        lease = runner.lease
        host = self.kernel.host
        metadata = notebook.get_metadata(self.doc)
        cells = [c.source for c in notebook.read_cells(self.doc) if c.cell_type == "code"]
        request = KernelRequest(notebook_id=self.notebook_id, kernel_type=lease.kernel_type,
                                env_source="auto", notebook_path=self.notebook_path,
                                cwd=lease.kernel.cwd, metadata=metadata, cell_sources=cells)
        plan = await self.provisioner.plan(request)

        def progress(phase: str, message: str) -> None:  # the kernel keeps running meanwhile
            host.writer.set_kernel(progress=message)
            host.schedule_flush()
            log.info("%s: %s", self.notebook_id, message)

        try:
            return await self._apply(plan, request, progress, deps)
        except BaseException:
            host.writer.set_kernel(progress=None)  # whatever failed, the running kernel stays
            host.schedule_flush()
            raise

    async def _apply(self, plan: Plan, request: KernelRequest, progress: Progress,
                     deps: list[str]) -> dict[str, Any]:
        runner = self.kernel.runner
        assert runner is not None
        lease, host = runner.lease, self.kernel.host
        metadata, cells = request.metadata, request.cell_sources
        if plan.pool is not None and plan.pool is lease.pool and lease.env is not None:
            env = await plan.pool.update(lease.env, EnvRequest(
                env_source=plan.env_source, notebook_id=self.notebook_id,
                notebook_path=self.notebook_path, metadata=metadata, cell_sources=cells,
                project_file=plan.project_file), progress)
            if env is not None:
                changed = env is not lease.env
                lease.env, lease.env_source = env, env.env_source
                runner.env_source = env.env_source
                host.writer.set_kernel(env_source=env.env_source, progress=None)
                host.flush()
                return {"action": "installed" if changed else "unchanged",
                        "env_source": env.env_source, "dependencies": deps}
        progress("launching", f"Starting a {lease.kernel_type} kernel in an environment with "
                              f"{', '.join(deps) or 'no extra packages'}")
        info = await self.kernel.switch(request, progress)
        return {"action": "restarted", "env_source": info.get("env_source"), "dependencies": deps}
