"""Plugin discovery, the hookspecs' contract, and `runtimed plugins`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runtimed import hookspecs
from runtimed.errors import PluginError
from runtimed.launchers import KernelLauncher
from runtimed.plugins import (
    collect_launchers, collect_pools, collect_sinks, describe_plugins, get_plugin_manager,
)
from runtimed.pools import EnvPool
from runtimed.sinks import OutputSink

HOOKS = [name for name in dir(hookspecs) if name.startswith("runtimed_")]


def test_every_hookspec_is_documented_and_typed():
    assert set(HOOKS) == {"runtimed_kernel_launchers", "runtimed_env_pools", "runtimed_output_sinks"}
    for name in HOOKS:
        spec = getattr(hookspecs, name)
        assert spec.__doc__ and "Called" in spec.__doc__, name
        assert "return" in spec.__annotations__, name


def test_builtin_plugins_register_through_entry_points():
    pm = get_plugin_manager()
    launchers = collect_launchers(pm)
    pools = collect_pools(pm)
    assert launchers["python"].__module__ == "runtimed_python_kernel.launcher"
    assert pools["uv"].sources == ("uv:prewarmed", "uv:inline", "uv:pep723", "uv:pyproject")
    names = {p["name"]: p for p in describe_plugins(pm)}
    assert names["python_kernel"]["distribution"] == "runtimed-python-kernel"
    assert names["uv_pool"]["provides"]["runtimed_env_pools"] == ["runtimed_uv_pool.pool.UvPool"]


def test_disable_plugins(monkeypatch):
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "uv_pool")
    pm = get_plugin_manager()
    assert "uv" not in collect_pools(pm)
    assert "python" in collect_launchers(pm)
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "*")
    assert collect_launchers(get_plugin_manager()) == {}


class _Sink(OutputSink):
    def on_output(self, ctx, msg_type, content):
        pass


def _plugin(hook: str, classes: list[type]):
    class Plugin:
        pass

    setattr(Plugin, hook, staticmethod(hookspecs.hookimpl(lambda: classes)))
    return Plugin()


def test_duplicate_kernel_type_names_both_classes(monkeypatch):
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "*")

    class A(KernelLauncher):
        kernel_type = "python"

        def command(self, ctx):
            return []

    class B(A):
        pass

    pm = get_plugin_manager(_plugin("runtimed_kernel_launchers", [A]),
                            _plugin("runtimed_kernel_launchers", [B]))
    with pytest.raises(PluginError, match=r"Two kernel launchers claim kernel_type 'python': .*A and .*B"):
        collect_launchers(pm)


def test_duplicate_env_source_is_rejected(monkeypatch):
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "*")

    def pool(name: str, family: str) -> type[EnvPool]:
        return type(name, (EnvPool,), {"family": family, "sources": ("x:prewarmed",)})

    pm = get_plugin_manager(_plugin("runtimed_env_pools", [pool("P1", "x"), pool("P2", "y")]))
    with pytest.raises(PluginError, match="x:prewarmed"):
        collect_pools(pm)


def test_sinks_are_collected_in_registration_order(monkeypatch):
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "*")
    Second = type("Second", (_Sink,), {})
    pm = get_plugin_manager(_plugin("runtimed_output_sinks", [_Sink]),
                            _plugin("runtimed_output_sinks", [Second]))
    assert collect_sinks(pm) == [_Sink, Second]


def test_plugins_cli_json():
    out = subprocess.run([sys.executable, "-m", "runtimed", "plugins", "--json"],
                         capture_output=True, text=True, check=True)
    names = {p["name"] for p in json.loads(out.stdout)}
    assert {"python_kernel", "uv_pool"} <= names
