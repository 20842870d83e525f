"""Hook implementations of the jupyter_kernels plugin."""

from runtimed.hookspecs import hookimpl


@hookimpl
def runtimed_kernel_launchers():
    from runtimed_jupyter_kernels.launcher import JupyterKernelLauncher

    return [JupyterKernelLauncher]
