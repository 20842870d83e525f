"""Helpers for testing pool and launcher plugins directly (no daemon).

For tests through a real daemon, use the fixtures of :mod:`runtimed.pytest_plugin`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import TypeVar

from runtimed.pools import EnvPool

P = TypeVar("P", bound=EnvPool)


class ProgressRecorder:
    """A :data:`runtimed.pools.Progress` that remembers what it was told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def __call__(self, phase: str, message: str) -> None:
        self.events.append((phase, message))

    @property
    def messages(self) -> list[str]:
        return [message for _, message in self.events]


@contextlib.asynccontextmanager
async def running(pool: P) -> AsyncIterator[P]:
    """Start ``pool`` and always stop it, so a failing assertion leaves no build behind."""
    await pool.start()
    try:
        yield pool
    finally:
        await pool.stop()


async def wait_for(predicate: Callable[[], bool], timeout: float = 90, interval: float = 0.05) -> None:
    """Poll ``predicate`` until it holds (tests only: pools themselves never poll)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting for the pool"
        await asyncio.sleep(interval)
