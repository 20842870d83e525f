"""runtimed-uv-pool: the uv env family (``uv:prewarmed``, ``uv:inline``, ``uv:pep723``, ``uv:pyproject``).

The daemon finds this plugin through the ``runtimed`` entry point
(:mod:`runtimed_uv_pool.hooks`) and drives :class:`UvPool`. Each pool env is a
relocatable ``uv venv`` with ipykernel, ipywidgets and the user's default
packages, bytecode-compiled and import-tested before it is handed out. Inline
and PEP 723 envs are cached per dependency set (:mod:`runtimed.envcache`);
pyproject projects run in their own uv env (:mod:`runtimed_uv_pool.project`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtimed_uv_pool.pool import UvPool

__all__ = ["UvPool"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing the hooks module (at every daemon start) stays cheap.
    if name == "UvPool":
        from runtimed_uv_pool.pool import UvPool

        return UvPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
