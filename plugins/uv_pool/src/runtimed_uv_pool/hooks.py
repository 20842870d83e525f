"""The plugin's hook implementations: registered through the ``runtimed`` entry point."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtimed.hookspecs import hookimpl

if TYPE_CHECKING:
    from runtimed.pools import EnvPool


@hookimpl
def runtimed_env_pools() -> list[type[EnvPool]]:
    """The uv pool: ``uv:prewarmed``, ``uv:inline``, ``uv:pep723`` and ``uv:pyproject``."""
    from runtimed_uv_pool.pool import UvPool

    return [UvPool]
