"""Hook implementations of the deno_kernel plugin."""

from runtimed.hookspecs import hookimpl


@hookimpl
def runtimed_kernel_launchers():
    from runtimed_deno_kernel.launcher import DenoKernelLauncher

    return [DenoKernelLauncher]
