"""runtimed plugin: every installed Jupyter kernelspec, as ``kernel_type="jupyter:<name>"``."""

from runtimed_jupyter_kernels.launcher import JupyterKernelLauncher, find_kernelspecs

__all__ = ["JupyterKernelLauncher", "find_kernelspecs"]
