"""Errors raised by runtimed.

Every error a user can see is a :class:`RuntimedError`. The tree::

    RuntimedError
    ├── DaemonUnavailable          no daemon at the socket (and auto-start was off or failed)
    │   └── DaemonNotRunning       none runs there, and the call does not start one
    ├── NotConnected               a call that needs a connection was made without one
    ├── ProtocolError              malformed frames, bad handshakes, unknown requests
    ├── CellNotFound (LookupError) a cell id that is not in the notebook
    ├── CommNotFound (LookupError) a comm (widget model) the kernel has not opened, or closed
    ├── ExecutionNotFound (LookupError) an execution id the daemon has no result for
    ├── InvalidRequest (ValueError) bad arguments: markdown cell executed, malformed metadata JSON
    ├── KernelError                anything about the kernel
    │   ├── NoKernel               no kernel runs (it was shut down, or never started)
    │   ├── KernelLaunchFailed     the kernel process did not come up (carries its stderr tail)
    │   └── KernelDied             the kernel process exited while it had work
    ├── ExecutionTimeout (TimeoutError)
    ├── EnvironmentFailed          a pool or environment could not provide an env
    ├── NotebookFileError          a notebook file that cannot be read, parsed, validated or written
    ├── PluginError                a plugin is missing, broken, or clashes with another
    └── ConfigError (ValueError)   a configuration value that does not parse

:class:`RuntimedWarning` is the category of runtimed's warnings (a daemon of another
version that could not be restarted, say).

Errors cross the wire as ``{"type": <class name>, "message": ..., **context}``;
:func:`error_to_wire` and :func:`error_from_wire` are the two halves.
"""

from __future__ import annotations

from typing import Any


class RuntimedError(Exception):
    """Base class of every runtimed error. ``context`` holds ids that locate the problem."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = {k: v for k, v in context.items() if v is not None}

    @property
    def cell_id(self) -> str | None:
        return self.context.get("cell_id")

    @property
    def notebook_id(self) -> str | None:
        return self.context.get("notebook_id")

    @property
    def env_source(self) -> str | None:
        return self.context.get("env_source")


class DaemonUnavailable(RuntimedError):
    pass


class DaemonNotRunning(DaemonUnavailable):
    pass


class NotConnected(RuntimedError):
    pass


class RuntimedWarning(UserWarning):
    """Something a user should know that is not an error (``warnings.warn`` category)."""


class ProtocolError(RuntimedError):
    pass


class CellNotFound(RuntimedError, LookupError):
    def __init__(self, cell_id: str, **context: Any) -> None:
        super().__init__(f"Cell not found: {cell_id}", cell_id=cell_id, **context)


class CommNotFound(RuntimedError, LookupError):
    """A message for a comm the kernel does not hold (never opened, closed, or gone with a
    restart); ``comm_id`` names it."""

    @property
    def comm_id(self) -> str | None:
        return self.context.get("comm_id")


class ExecutionNotFound(RuntimedError, LookupError):
    """``get_result`` of an id the daemon never ran, or whose result is no longer kept."""

    @property
    def execution_id(self) -> str | None:
        return self.context.get("execution_id")


class InvalidRequest(RuntimedError, ValueError):
    pass


class KernelError(RuntimedError):
    pass


class NoKernel(KernelError):
    pass


class KernelLaunchFailed(KernelError):
    pass


class KernelDied(KernelError):
    pass


class ExecutionTimeout(RuntimedError, TimeoutError):
    pass


class EnvironmentFailed(RuntimedError):
    pass


class NotebookFileError(RuntimedError):
    """A ``.ipynb`` problem; ``path`` names the file, ``kind`` says what (``missing``,
    ``directory``, ``permission``, ``json``, ``notebook``, ``invalid``...)."""

    @property
    def path(self) -> str | None:
        return self.context.get("path")

    @property
    def kind(self) -> str | None:
        return self.context.get("kind")


class PluginError(RuntimedError):
    pass


class ConfigError(RuntimedError, ValueError):
    pass


_BY_NAME: dict[str, type[RuntimedError]] = {
    cls.__name__: cls
    for cls in (
        RuntimedError, DaemonUnavailable, DaemonNotRunning, NotConnected, ProtocolError, InvalidRequest,
        CommNotFound, ExecutionNotFound,
        KernelError, NoKernel, KernelLaunchFailed, KernelDied, ExecutionTimeout,
        EnvironmentFailed, NotebookFileError, PluginError, ConfigError,
    )
}


def error_to_wire(exc: BaseException) -> dict[str, Any]:
    """Encode an exception for a response frame; non-runtimed errors become plain RuntimedError."""
    if isinstance(exc, RuntimedError):
        # "bases" lets a client that does not know a plugin's subclass pick its nearest known base
        bases = [c.__name__ for c in type(exc).__mro__[1:] if issubclass(c, RuntimedError)]
        return {"type": type(exc).__name__, "bases": bases, "message": exc.message, **exc.context}
    return {"type": "RuntimedError", "message": f"{type(exc).__name__}: {exc}"}


def error_from_wire(payload: dict[str, Any]) -> RuntimedError:
    """Rebuild the exception a response frame describes."""
    payload = dict(payload)
    kind = payload.pop("type", "RuntimedError")
    bases = payload.pop("bases", [])
    message = str(payload.pop("message", "unknown error"))
    if kind == "CellNotFound" and "cell_id" in payload:
        cell_id = payload.pop("cell_id")
        return CellNotFound(cell_id, **payload)
    known = next((name for name in [kind, *bases] if name in _BY_NAME and name != "CellNotFound"),
                 "RuntimedError")
    return _BY_NAME[known](message, **payload)
