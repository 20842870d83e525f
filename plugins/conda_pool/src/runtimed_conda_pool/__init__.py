"""runtimed-conda-pool: conda environments for kernels, built with py-rattler.

No conda, mamba or micromamba binary is involved: repodata is fetched and
cached, specs are solved and packages installed by rattler, in a worker process
per build (:mod:`runtimed_conda_pool.worker`) so the daemon keeps none of its memory.
The daemon finds this plugin through the ``runtimed`` entry point
(:mod:`runtimed_conda_pool.hooks`) and drives :class:`CondaPool`, which serves

- ``conda:prewarmed``: N ready envs (python, ipykernel, ipywidgets and the
  default packages), replenished from a lock without solving again;
- ``conda:inline``: ``metadata.runt.conda`` (``dependencies``, ``channels``, ``python``);
- ``conda:env_yml``: an ``environment.yml``/``environment.yaml`` (its ``pip:``
  section installed with uv into the same prefix);
- ``conda:pixi``: a ``pixi.toml`` (``[dependencies]``, ``[pypi-dependencies]``).

Every env records its exact solve as ``conda-lock.yml`` (conda-lock's format)
and can be rebuilt from one without solving; a ``conda-lock.yml`` next to the
notebook is honoured. Kernels run with the env's activation variables
(``CONDA_PREFIX``, ``etc/conda/env_vars.d``, ``etc/conda/activate.d`` scripts...:
:mod:`runtimed_conda_pool.activation`), as if ``conda activate`` had run.
Channels come from ``RUNTIMED_CONDA_CHANNELS`` (comma-separated, default
``conda-forge``). :mod:`runtimed_conda_pool.testing`
builds a small local ``file://`` channel for offline tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from runtimed_conda_pool.pool import CondaPool

__all__ = ["CondaPool"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing the hooks module (at every daemon start) stays cheap.
    if name == "CondaPool":
        from runtimed_conda_pool.pool import CondaPool

        return CondaPool
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
