"""Hook implementations of the python_kernel plugin."""

from runtimed.hookspecs import hookimpl


@hookimpl
def runtimed_kernel_launchers():
    from runtimed_python_kernel.launcher import PythonKernelLauncher

    return [PythonKernelLauncher]
