"""runtimed plugin: the Deno Jupyter kernel (TypeScript and JavaScript notebooks)."""

from runtimed_deno_kernel.launcher import DenoKernelLauncher, find_deno

__all__ = ["DenoKernelLauncher", "find_deno"]
