"""Plugin manager factory and typed collectors over the hooks in :mod:`runtimed.hookspecs`."""

from __future__ import annotations

import os
from typing import Any, TypeVar

import pluggy

from runtimed import hookspecs
from runtimed.errors import PluginError
from runtimed.launchers import KernelLauncher
from runtimed.pools import EnvPool
from runtimed.sinks import OutputSink

ENTRY_POINT_GROUP = "runtimed"
T = TypeVar("T")


def disabled_plugins() -> set[str]:
    """Names in ``RUNTIMED_DISABLE_PLUGINS`` (comma separated; ``*`` disables every plugin)."""
    return {n.strip() for n in os.environ.get("RUNTIMED_DISABLE_PLUGINS", "").split(",") if n.strip()}


def get_plugin_manager(*extra: Any) -> pluggy.PluginManager:
    """A plugin manager with the hookspecs, the entry-point plugins not disabled, and ``extra``."""
    pm = pluggy.PluginManager("runtimed")
    pm.add_hookspecs(hookspecs)
    disabled = disabled_plugins()
    if "*" not in disabled:
        for name in disabled:
            pm.set_blocked(name)
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken plugin must say which one it is
            raise PluginError(f"A runtimed plugin failed to load: {type(exc).__name__}: {exc}") from exc
    for plugin in extra:
        pm.register(plugin)
    pm.check_pending()
    return pm


def _call_each(pm: pluggy.PluginManager, hook_name: str) -> list[Any]:
    """Every implementation's classes, in registration order; a failing plugin is named."""
    classes: list[Any] = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        try:
            result = impl.function()
        except Exception as exc:
            raise PluginError(
                f"Plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc} "
                f"(skip it with RUNTIMED_DISABLE_PLUGINS={impl.plugin_name})"
            ) from exc
        classes.extend(result or [])
    return classes


def _unique(classes: list[type[T]], key: str, what: str) -> dict[str, type[T]]:
    found: dict[str, type[T]] = {}
    for cls in classes:
        names = getattr(cls, key, None)
        for name in names if isinstance(names, tuple) else (names,):
            if not name:
                raise PluginError(f"{cls.__module__}.{cls.__qualname__} has no {key}")
            if name in found and found[name] is not cls:
                other = found[name]
                raise PluginError(
                    f"Two {what}s claim {key} {name!r}: "
                    f"{other.__module__}.{other.__qualname__} and {cls.__module__}.{cls.__qualname__}"
                )
            found[name] = cls
    return found


def collect_launchers(pm: pluggy.PluginManager) -> dict[str, type[KernelLauncher]]:
    """``kernel_type -> launcher class``; a duplicate kernel_type is a :class:`PluginError`."""
    return _unique(_call_each(pm, "runtimed_kernel_launchers"), "kernel_type", "kernel launcher")


def collect_pools(pm: pluggy.PluginManager) -> dict[str, type[EnvPool]]:
    """``family -> pool class``; a duplicate family or env_source is a :class:`PluginError`."""
    classes = _call_each(pm, "runtimed_env_pools")
    _unique(classes, "sources", "environment pool")
    return _unique(classes, "family", "environment pool")


def collect_sinks(pm: pluggy.PluginManager) -> list[type[OutputSink]]:
    """Output sink classes in registration order."""
    return _call_each(pm, "runtimed_output_sinks")


def describe_plugins(pm: pluggy.PluginManager) -> list[dict[str, Any]]:
    """One entry per registered plugin: name, distribution, version, and the classes it provides."""
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        provides: dict[str, Any] = {}
        for caller in pm.get_hookcallers(plugin) or []:
            try:
                classes = getattr(plugin, caller.name)()
            except Exception as exc:
                provides[caller.name] = f"error: {type(exc).__name__}: {exc}"
                continue
            provides[caller.name] = [f"{c.__module__}.{c.__qualname__}" for c in classes or []]
        out.append(
            {
                "name": name,
                "distribution": dist.project_name if dist else None,
                "version": dist.version if dist else None,
                "provides": provides,
            }
        )
    return out
