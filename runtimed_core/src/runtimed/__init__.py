"""runtimed: a per-user notebook runtime daemon, and its Python client.

Quick start::

    import runtimed

    with runtimed.Session() as session:
        session.start_kernel()
        cell_id = session.create_cell("print('hello')")
        print(session.execute_cell(cell_id).stdout)   # hello
"""

from runtimed.client.async_session import AsyncDaemonClient, AsyncSession
from runtimed.client.events import ExecutionEvent
from runtimed.client.results import Cell, ExecutionResult, Output
from runtimed.client.sidecar import Sidecar, sidecar
from runtimed.client.sync import DaemonClient, Session
from runtimed.errors import (
    CellNotFound, CommNotFound, ConfigError, DaemonNotRunning, DaemonUnavailable,
    EnvironmentFailed, ExecutionNotFound, ExecutionTimeout, InvalidRequest, KernelDied, KernelError,
    KernelLaunchFailed, NoKernel, NotConnected, NotebookFileError, PluginError, ProtocolError,
    RuntimedError, RuntimedWarning,
)

from runtimed.version import __version__  # noqa: F401 - the package version

__all__ = [
    "AsyncDaemonClient", "AsyncSession", "Cell", "CellNotFound", "CommNotFound", "ConfigError",
    "DaemonClient", "DaemonNotRunning", "DaemonUnavailable", "EnvironmentFailed", "ExecutionEvent",
    "ExecutionNotFound", "ExecutionResult", "ExecutionTimeout", "InvalidRequest", "KernelDied",
    "KernelError", "KernelLaunchFailed", "NoKernel", "NotConnected", "NotebookFileError", "Output",
    "PluginError", "ProtocolError", "RuntimedError", "RuntimedWarning", "Session", "Sidecar",
    "sidecar",
]
