"""The pool against conda-forge itself (the default channel); skipped where it is unreachable."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import pytest

from runtimed.pools import EnvRequest
from runtimed_conda_pool import CondaPool


def conda_forge_host() -> str:
    from rattler import Channel

    return urlparse(Channel("conda-forge").base_url).hostname or "conda-forge"


@pytest.mark.network
@pytest.mark.slow
def test_a_conda_forge_env_runs_ipykernel(
    make_pool: Callable[..., CondaPool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = conda_forge_host()
    try:
        socket.getaddrinfo(host, 443)
    except OSError as exc:
        pytest.skip(
            f"conda-forge is unreachable from this machine ({host} does not resolve: {exc})"
        )
    # The defaults a user gets: conda-forge, and a package cache of the pool's own.
    monkeypatch.delenv("RUNTIMED_CONDA_CHANNELS")
    monkeypatch.delenv("RATTLER_CACHE_DIR")
    pool = make_pool(size=0)
    assert pool.channels == ["conda-forge"]

    async def scenario() -> Path:
        await pool.start()
        env = await pool.acquire(
            EnvRequest(
                "conda:inline",
                "nb",
                metadata={"runt": {"conda": {"dependencies": ["numpy"], "python": "3.12"}}},
            ),
            lambda *_: None,
        )
        await pool.stop()
        return env.prefix

    prefix = asyncio.run(scenario())
    out = subprocess.run(
        [
            str(prefix / "bin" / "python"),
            "-c",
            "import sys, numpy, ipykernel; print(sys.prefix, sys.version_info[:2])",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.strip() == f"{prefix} (3, 12)"
    assert list((prefix / "conda-meta").glob("python-3.12.*.json")), "a real conda-forge python"
