"""The hooks a runtimed plugin can implement.

A plugin is a module (or object) with ``@hookimpl`` functions, registered
through the ``runtimed`` entry-point group::

    [project.entry-points.runtimed]
    my_plugin = "my_package.hooks"

Hooks are synchronous and cheap: they return *classes* (import heavy things
inside the classes, not in the hooks module). The daemon reads each class's
declarations, checks them (:class:`runtimed.plugins.Registry`), instantiates it
once with its :class:`runtimed.config.DaemonConfig`, and drives its async
lifecycle. All hooks are called with keyword arguments only (today: none).

``RUNTIMED_DISABLE_PLUGINS=name,...`` skips plugins by entry-point name (``*``:
all); ``runtimed plugins [--json]`` lists what is installed and what each
class declares.
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

    Called once when the daemon starts (and by ``runtimed plugins`` and
    ``runtimed run --help``). Each class is a :class:`runtimed.launchers.KernelLauncher`
    subclass; the daemon reads its declarations:

    - ``kernel_type``: what ``start_kernel(kernel_type=...)`` names; unique across
      plugins. A launcher whose ``kernelspecs()`` lists names also serves
      ``<kernel_type>:<name>`` for each.
    - ``kernelspec_names`` and ``languages``: what ``kernel_type="auto"`` maps to it,
      from the notebook's kernelspec; each unique across plugins.
    - ``needs_env`` (an environment from a pool), ``interrupt_mode``, ``hot`` (may be
      started ahead of time and claimed), ``default_rank`` and ``settings``.

    A class whose declarations are malformed, or that claims what another class
    claims, stops the daemon with a :class:`runtimed.errors.PluginError` naming both.

    :return: launcher classes (an empty list is fine).
    """


@hookspec
def runtimed_env_pools() -> list[type[EnvPool]]:
    """Return the environment pool classes this plugin provides.

    Called once when the daemon starts (and by ``runtimed plugins`` and
    ``runtimed run --help``). Each class is a :class:`runtimed.pools.EnvPool`
    subclass; the daemon reads its declarations:

    - ``family`` and ``sources`` (``<family>:<kind>``; the first is the family's
      ready pool, what ``auto`` falls back to);
    - ``project_files``, ``inline_dependencies`` and ``script_blocks``: how
      ``env_source="auto"`` finds one of its sources from the notebook;
    - ``default_pool_size``, ``default_rank`` and ``settings``.

    Families, env_sources, project file names, metadata keys and script block
    types are each unique across plugins; a clash or a malformed declaration
    stops the daemon with a :class:`runtimed.errors.PluginError`.

    :return: pool classes (an empty list is fine).
    """


@hookspec
def runtimed_output_sinks() -> list[type[OutputSink]]:
    """Return output sink classes; every kernel output is handed to each of them.

    Called once when the daemon starts. Sinks run after the daemon has recorded
    the output in the notebook's runtime state, in plugin registration order;
    each call is isolated (an exception is logged once per execution, naming the
    plugin, and nothing else is affected).

    :return: :class:`runtimed.sinks.OutputSink` subclasses.
    """
