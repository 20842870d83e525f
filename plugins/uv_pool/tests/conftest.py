"""Shared fixtures: one real prewarmed env per test session, seeded into each test's cache.

Building a pool env takes about 5 s (bytecode compilation of ipykernel and its
dependencies); the tests that need one ready get a hard-linked copy instead.
Pool envs are relocatable and uv itself hard-links files from its cache and
never writes into an installed file, so the copies are independent envs.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from runtimed.config import DaemonConfig
from runtimed_uv_pool import UvPool


@pytest.fixture(scope="session")
def prewarmed_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ready ``uv-prewarmed-*`` env built by a real pool (for ``sys.executable``)."""
    root = tmp_path_factory.mktemp("uv-template")
    pool = UvPool(DaemonConfig(cache_dir=root, settings={"uv.pool_size": 1}, python=sys.executable))

    async def build() -> None:
        await pool.start()
        try:
            deadline = time.monotonic() + 180
            while pool.status().available < 1:
                assert time.monotonic() < deadline, "the template env was not built"
                await asyncio.sleep(0.05)
        finally:
            await pool.stop()

    asyncio.run(build())
    [env] = [p for p in (root / "envs").iterdir() if (p / ".warmed").exists()]
    return env


@pytest.fixture
def seed_pool(prewarmed_template: Path) -> Callable[[Path], Path]:
    """``seed_pool(envs_dir)``: put a ready pool env there (a pool starting on it reuses it)."""

    def seed(envs_dir: Path) -> Path:
        envs_dir.mkdir(parents=True, exist_ok=True)
        dst = envs_dir / f"uv-prewarmed-{uuid.uuid4().hex}"
        shutil.copytree(
            prewarmed_template,
            dst,
            symlinks=True,
            copy_function=os.link,
            ignore=shutil.ignore_patterns(".warmed"),
        )
        marker = json.loads((prewarmed_template / ".warmed").read_text())
        marker["created"] = time.time()
        (dst / ".warmed").write_text(json.dumps(marker))  # a new file, not a shared link
        return dst

    return seed


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """A uv project that depends on ``six`` and has its own package ``tinyproj`` (src layout).

    Its parent directory holds a ``.git`` so nothing above it is taken for its project.
    """
    (tmp_path / "repo" / ".git").mkdir(parents=True)
    project = tmp_path / "repo" / "tinyproj"
    (project / "src" / "tinyproj").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        "[project]\n"
        'name = "tinyproj"\n'
        'version = "0.1.0"\n'
        'requires-python = ">=3.10"\n'
        'dependencies = ["six"]\n'
        "\n"
        "[build-system]\n"
        'requires = ["hatchling"]\n'
        'build-backend = "hatchling.build"\n'
    )
    (project / "src" / "tinyproj" / "__init__.py").write_text("VALUE = 42\n")
    return project
