"""Hook implementations of the gateway_kernel plugin."""

from runtimed.hookspecs import hookimpl


@hookimpl
def runtimed_kernel_launchers():
    from runtimed_gateway_kernel.launcher import GatewayLauncher

    return [GatewayLauncher]
