"""runtimed plugin: kernels on a Jupyter Kernel Gateway or Enterprise Gateway, as
``kernel_type="gateway:<name>"``."""

from runtimed_gateway_kernel.client import GatewayError, GatewayNotConfigured
from runtimed_gateway_kernel.launcher import GatewayLauncher

__all__ = ["GatewayError", "GatewayLauncher", "GatewayNotConfigured"]
