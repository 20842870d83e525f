"""The hooks a runtimed plugin can implement.

A plugin is a module (or object) with ``@hookimpl`` functions, registered
through the ``runtimed`` entry-point group::

    [project.entry-points.runtimed]
    my_plugin = "my_package.hooks"

Hooks are synchronous and cheap: they return *classes*; the daemon
instantiates them with its :class:`runtimed.config.DaemonConfig` and drives
their async lifecycles. All hooks are called with keyword arguments only.
"""

from __future__ import annotations

import pluggy

from runtimed.launchers import KernelLauncher
from runtimed.pools import EnvPool
from runtimed.sinks import OutputSink

hookspec = pluggy.HookspecMarker("runtimed")
hookimpl = pluggy.HookimplMarker("runtimed")


@hookspec
def runtimed_kernel_launchers() -> list[type[KernelLauncher]]:
    """Return the kernel launcher classes this plugin provides.

    Called once when the daemon starts. Each class's ``kernel_type`` must be
    unique across all plugins.
    """


@hookspec
def runtimed_env_pools() -> list[type[EnvPool]]:
    """Return the environment pool classes this plugin provides.

    Called once when the daemon starts. Each class's ``family`` and each of its
    ``sources`` must be unique across all plugins.
    """


@hookspec
def runtimed_output_sinks() -> list[type[OutputSink]]:
    """Return output sink classes; every kernel output is handed to each of them.

    Called once when the daemon starts. Sinks run in plugin registration order,
    the daemon's own document sink first.
    """
