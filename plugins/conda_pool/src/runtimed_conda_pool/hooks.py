"""The plugin's hook implementations: registered through the ``runtimed`` entry point."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtimed.hookspecs import hookimpl

if TYPE_CHECKING:
    from runtimed.pools import EnvPool


@hookimpl
def runtimed_env_pools() -> list[type[EnvPool]]:
    """The conda pool: ``conda:prewarmed``, ``conda:inline``, ``conda:env_yml``, ``conda:pixi``."""
    from runtimed_conda_pool.pool import CondaPool

    return [CondaPool]
