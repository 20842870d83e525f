"""The venv pool's hook implementation: registered through the ``runtimed`` entry point."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtimed.hookspecs import hookimpl

if TYPE_CHECKING:
    from runtimed.pools import EnvPool


@hookimpl
def runtimed_env_pools() -> list[type[EnvPool]]:
    """The venv pool: ``venv:prewarmed`` and ``venv:requirements``."""
    from runtimed_test_venv.pool import VenvPool

    return [VenvPool]
