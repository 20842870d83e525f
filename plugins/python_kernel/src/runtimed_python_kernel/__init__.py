"""runtimed plugin: Python kernels (ipykernel) in the environment a pool hands out."""

from runtimed_python_kernel.launcher import PythonKernelLauncher

__all__ = ["PythonKernelLauncher"]
