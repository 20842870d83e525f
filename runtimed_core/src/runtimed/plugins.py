"""Finding plugins and checking what they declare: the plugin manager and :class:`Registry`.

Plugins come from the ``runtimed`` entry-point group (``RUNTIMED_DISABLE_PLUGINS``
skips some, ``*`` all). :meth:`Registry.load` calls every hook of
:mod:`runtimed.hookspecs` once and checks the classes they return: a
declaration that is malformed is a :class:`PluginError` naming the plugin and
the field; two classes that claim the same kernel type, kernelspec name,
language, family, env_source, project file, metadata key or script block
type are a :class:`PluginError` naming both. The daemon refuses to start on
either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pluggy

from runtimed import hookspecs
from runtimed.errors import PluginError
from runtimed.launchers import KernelLauncher
from runtimed.pools import EnvPool, InlineDependencies, ProjectFile, ScriptBlock
from runtimed.settings import Configurable, Setting
from runtimed.sinks import OutputSink

ENTRY_POINT_GROUP = "runtimed"
T = TypeVar("T")


def disabled_plugins() -> set[str]:
    """Names in ``RUNTIMED_DISABLE_PLUGINS`` (comma separated; ``*`` disables every plugin), or
    the configuration file's ``disable_plugins``."""
    from runtimed.config import core

    return set(core("disable_plugins"))


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


def _call_each(pm: pluggy.PluginManager, hook_name: str) -> Iterator[tuple[str, Any]]:
    """``(plugin name, class)`` for every class every implementation returns, in registration
    order; a failing plugin is named."""
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        try:
            result = impl.function()
        except Exception as exc:
            raise PluginError(
                f"Plugin {impl.plugin_name!r} failed in {hook_name}: {type(exc).__name__}: {exc} "
                f"(skip it with RUNTIMED_DISABLE_PLUGINS={impl.plugin_name})"
            ) from exc
        for cls in result or []:
            yield impl.plugin_name, cls


def qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclass
class Registry:
    """The installed plugins' classes, checked (see the module docstring)."""

    #: ``kernel_type -> launcher class``, in registration order.
    launchers: dict[str, type[KernelLauncher]] = field(default_factory=dict)
    #: ``family -> pool class``, in registration order.
    pools: dict[str, type[EnvPool]] = field(default_factory=dict)
    #: ``(plugin name, sink class)`` in registration order.
    sinks: list[tuple[str, type[OutputSink]]] = field(default_factory=list)
    #: ``class -> the plugin that provided it``.
    plugin_of: dict[type, str] = field(default_factory=dict)

    @classmethod
    def load(cls, pm: pluggy.PluginManager | None = None) -> Registry:
        """Collect and check every plugin's classes (``pm``: default, the entry points)."""
        pm = pm or get_plugin_manager()
        registry = cls()
        claims = _Claims(registry)
        for plugin, launcher in _call_each(pm, "runtimed_kernel_launchers"):
            registry.plugin_of[launcher] = plugin
            _check_launcher(plugin, launcher)
            claims.claim("kernel launcher", "kernel_type", launcher.kernel_type, launcher)
            for name in launcher.kernelspec_names:
                claims.claim("kernel launcher", "kernelspec name", name, launcher)
            for language in launcher.languages:
                claims.claim("kernel launcher", "language", language.lower(), launcher)
            registry.launchers[launcher.kernel_type] = launcher
        for plugin, pool in _call_each(pm, "runtimed_env_pools"):
            registry.plugin_of[pool] = plugin
            _check_pool(plugin, pool)
            claims.claim("environment pool", "family", pool.family, pool)
            for source in pool.sources:
                claims.claim("environment pool", "env_source", source, pool)
            for project in pool.project_files:
                claims.claim("environment pool", "project file", project.name, pool)
            for inline in pool.inline_dependencies:
                claims.claim("environment pool", "metadata key", inline.key, pool)
            for block in pool.script_blocks:
                claims.claim("environment pool", "script block type", block.block_type, pool)
            registry.pools[pool.family] = pool
        for plugin, sink in _call_each(pm, "runtimed_output_sinks"):
            registry.plugin_of[sink] = plugin
            if not (isinstance(sink, type) and issubclass(sink, OutputSink)):
                raise PluginError(f"Plugin {plugin!r}: runtimed_output_sinks returned {sink!r}, "
                                  "not an OutputSink subclass")
            registry.sinks.append((plugin, sink))
        return registry

    # -- what the daemon asks ---------------------------------------------------------------

    def default_family(self, configured: str | None) -> str | None:
        """The family ``auto`` falls back to: the configured one, else the pool ranked first."""
        return configured or _first_ranked(self.pools)

    def default_kernel_type(self, configured: str | None) -> str | None:
        """The kernel type started when nobody says: the configured one, else the launcher ranked first."""
        return configured or _first_ranked(self.launchers)

    def launcher_claiming(self, *, kernelspec_name: str | None = None,
                          language: str | None = None) -> type[KernelLauncher] | None:
        """The launcher that declares a kernelspec name (or else a language), if any."""
        for launcher in self.launchers.values():
            if kernelspec_name and kernelspec_name in launcher.kernelspec_names:
                return launcher
        for launcher in self.launchers.values():
            if language and language.lower() in (lang.lower() for lang in launcher.languages):
                return launcher
        return None

    def configurables(self) -> list[type[Configurable]]:
        """Every class that may declare settings: launchers, then pools."""
        return [*self.launchers.values(), *self.pools.values()]

    def declared_settings(self) -> list[tuple[str, Setting, type[Configurable]]]:
        """``(namespace, setting, owner)`` for every knob every plugin declares."""
        return [(owner.settings_namespace(), setting, owner)
                for owner in self.configurables() for setting in owner.declared_settings()]


def _first_ranked(classes: dict[str, Any]) -> str | None:
    """The name of the class with the lowest ``default_rank`` (ties: by name), if any has one."""
    ranked = [(cls.default_rank, name) for name, cls in classes.items() if cls.default_rank is not None]
    return min(ranked)[1] if ranked else None


class _Claims:
    """Who claimed what, to name both sides of a clash."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.seen: dict[tuple[str, str], type] = {}

    def claim(self, what: str, kind: str, value: str, cls: type) -> None:
        other = self.seen.setdefault((kind, value), cls)
        if other is not cls:
            names = self.registry.plugin_of
            raise PluginError(
                f"Two {what}s claim {kind} {value!r}: {qualname(other)} (plugin "
                f"{names.get(other)!r}) and {qualname(cls)} (plugin {names.get(cls)!r}); "
                f"disable one with RUNTIMED_DISABLE_PLUGINS"
            )


def _fail(plugin: str, cls: Any, field_name: str, problem: str) -> PluginError:
    where = qualname(cls) if isinstance(cls, type) else repr(cls)
    return PluginError(f"Plugin {plugin!r}: {where}.{field_name} {problem}")


def _check_name(plugin: str, cls: type, field_name: str, value: Any, *, colon: bool = False) -> None:
    if not isinstance(value, str) or not value.strip() or (not colon and ":" in value):
        rule = "a non-empty string" + ("" if colon else " without ':'")
        raise _fail(plugin, cls, field_name, f"must be {rule}, not {value!r}")


def _check_tuple(plugin: str, cls: type, field_name: str, kind: type | tuple[type, ...]) -> tuple:
    value = getattr(cls, field_name)
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, kind) for v in value):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise _fail(plugin, cls, field_name, f"must be a tuple of {names}, not {value!r}")
    return tuple(value)


def _check_settings(plugin: str, cls: type[Configurable]) -> None:
    _check_tuple(plugin, cls, "settings", Setting)
    names = [s.name for s in cls.declared_settings()]
    for name in names:
        _check_name(plugin, cls, "settings", name)
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise _fail(plugin, cls, "settings", f"declares {sorted(duplicates)} more than once")


def _check_launcher(plugin: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, KernelLauncher)):
        raise PluginError(f"Plugin {plugin!r}: runtimed_kernel_launchers returned {cls!r}, "
                          "not a KernelLauncher subclass")
    _check_name(plugin, cls, "kernel_type", getattr(cls, "kernel_type", None))
    _check_tuple(plugin, cls, "kernelspec_names", str)
    _check_tuple(plugin, cls, "languages", str)
    if cls.interrupt_mode not in ("signal", "message"):
        raise _fail(plugin, cls, "interrupt_mode", f"must be 'signal' or 'message', not {cls.interrupt_mode!r}")
    if not isinstance(cls.kernelspec, dict):
        raise _fail(plugin, cls, "kernelspec", f"must be a dict, not {cls.kernelspec!r}")
    if cls.command is KernelLauncher.command and cls.launch is KernelLauncher.launch:
        raise _fail(plugin, cls, "command", "is missing: implement command() or launch()")
    _check_settings(plugin, cls)


def _check_pool(plugin: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, EnvPool)):
        raise PluginError(f"Plugin {plugin!r}: runtimed_env_pools returned {cls!r}, "
                          "not an EnvPool subclass")
    family = getattr(cls, "family", None)
    _check_name(plugin, cls, "family", family)
    sources = _check_tuple(plugin, cls, "sources", str) if hasattr(cls, "sources") else ()
    if not sources:
        raise _fail(plugin, cls, "sources", "must list at least one env_source")
    for source in sources:
        if not source.startswith(f"{family}:") or len(source) == len(family) + 1:
            raise _fail(plugin, cls, "sources", f"has {source!r}, which is not '{family}:<kind>'")
    declared: list[tuple[str, type, Callable[[Any], str]]] = [
        ("project_files", ProjectFile, lambda p: p.env_source),
        ("inline_dependencies", InlineDependencies, lambda p: p.env_source),
        ("script_blocks", ScriptBlock, lambda p: p.env_source),
    ]
    for field_name, kind, env_source in declared:
        for item in _check_tuple(plugin, cls, field_name, kind):
            if env_source(item) not in sources:
                raise _fail(plugin, cls, field_name,
                            f"names env_source {env_source(item)!r}, which is not in its sources")
    if not isinstance(cls.default_pool_size, int) or cls.default_pool_size < 0:
        raise _fail(plugin, cls, "default_pool_size", f"must be an int >= 0, not {cls.default_pool_size!r}")
    _check_settings(plugin, cls)


def describe_plugins(pm: pluggy.PluginManager, config: Any = None) -> list[dict[str, Any]]:
    """One entry per registered plugin: name, distribution, version, the classes it provides
    and what they declare (kernel types and, for launchers serving named kernels, the names
    found now; pools' families, sources and project files; every setting with its variable)."""
    import asyncio

    from runtimed.config import DaemonConfig

    config = config or DaemonConfig()
    dists = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    out = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        dist = dists.get(id(plugin))
        provides: dict[str, Any] = {}
        declares: list[dict[str, Any]] = []
        for caller in pm.get_hookcallers(plugin) or []:
            try:
                classes = getattr(plugin, caller.name)()
            except Exception as exc:
                provides[caller.name] = f"error: {type(exc).__name__}: {exc}"
                continue
            provides[caller.name] = [qualname(c) for c in classes or []]
            for cls in classes or []:
                declared = _declarations(cls, config, asyncio)
                if declared:
                    declares.append(declared)
        out.append(
            {
                "name": name,
                "distribution": dist.project_name if dist else None,
                "version": dist.version if dist else None,
                "provides": provides,
                "declares": declares,
            }
        )
    return out


def _declarations(cls: Any, config: Any, asyncio: Any) -> dict[str, Any]:
    """What one launcher or pool class declares, as JSON-able data."""
    if not isinstance(cls, type):
        return {}
    settings = [
        {"key": s.key(cls.settings_namespace()), "env": s.env_var(cls.settings_namespace()),
         "flag": s.flag(cls.settings_namespace()), "default": s.default, "help": s.help}
        for s in cls.declared_settings()
    ] if issubclass(cls, (KernelLauncher, EnvPool)) else []
    if issubclass(cls, KernelLauncher):
        info: dict[str, Any] = {
            "class": qualname(cls), "kernel_type": cls.kernel_type,
            "kernelspec_names": list(cls.kernelspec_names), "languages": list(cls.languages),
            "needs_env": cls.needs_env, "hot": cls.hot, "settings": settings,
        }
        try:
            specs = asyncio.run(cls(config).kernelspecs())
            info["kernelspecs"] = {n: spec for n, spec in sorted(specs.items())}
        except Exception as exc:  # a launcher that cannot list its kernels now says why
            info["kernelspecs"] = f"error: {type(exc).__name__}: {exc}"
        return info
    if issubclass(cls, EnvPool):
        return {
            "class": qualname(cls), "family": cls.family, "sources": list(cls.sources),
            "project_files": [p.name for p in sorted(cls.project_files, key=lambda p: p.rank)],
            "inline_dependencies": [i.key for i in cls.inline_dependencies],
            "script_blocks": [b.block_type for b in cls.script_blocks], "settings": settings,
        }
    return {}
