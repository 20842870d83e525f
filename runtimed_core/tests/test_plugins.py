"""Plugin discovery, the hookspecs' contract, and `runtimed plugins`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from runtimed import hookspecs
from runtimed.errors import PluginError
from runtimed.launchers import KernelLauncher
from runtimed.plugins import Registry, describe_plugins, get_plugin_manager
from runtimed.pools import EnvPool, InlineDependencies, ProjectFile
from runtimed.settings import Setting
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
    registry = Registry.load(pm)
    launchers, pools = registry.launchers, registry.pools
    assert launchers["python"].__module__ == "runtimed_python_kernel.launcher"
    assert pools["uv"].sources == ("uv:prewarmed", "uv:inline", "uv:pep723", "uv:pyproject")
    names = {p["name"]: p for p in describe_plugins(pm)}
    assert names["python_kernel"]["distribution"] == "runtimed-python-kernel"
    assert names["uv_pool"]["provides"]["runtimed_env_pools"] == ["runtimed_uv_pool.pool.UvPool"]


def test_disable_plugins(monkeypatch):
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "uv_pool")
    registry = Registry.load()
    assert "uv" not in registry.pools
    assert "python" in registry.launchers
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "*")
    assert Registry.load().launchers == {}


class _Sink(OutputSink):
    def on_output(self, ctx, msg_type, content):
        pass


def _plugin(hook: str, classes: list[type]):
    class Plugin:
        pass

    setattr(Plugin, hook, staticmethod(hookspecs.hookimpl(lambda: classes)))
    return Plugin()


class _Launcher(KernelLauncher):
    kernel_type = "fake"

    def command(self, ctx):
        return ["true"]


def _registry(hook: str, *groups: list[type]) -> Registry:
    return Registry.load(get_plugin_manager(*(_plugin(hook, classes) for classes in groups)))


def test_duplicate_kernel_type_names_both_classes(monkeypatch):
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "*")

    class A(_Launcher):
        kernel_type = "python"

    class B(A):
        pass

    with pytest.raises(PluginError, match=r"Two kernel launchers claim kernel_type 'python': .*A .* and .*B"):
        _registry("runtimed_kernel_launchers", [A], [B])


def _pool(name: str, family: str, **declared) -> type[EnvPool]:
    attrs = {"family": family, "sources": (f"{family}:prewarmed",)}
    return type(name, (EnvPool,), {**attrs, **declared})


@pytest.mark.parametrize("what, first, second", [
    ("project file", {"project_files": (ProjectFile("env.toml", "x:prewarmed"),)},
     {"project_files": (ProjectFile("env.toml", "y:prewarmed"),)}),
    ("metadata key", {"inline_dependencies": (InlineDependencies("runt.deps", "x:prewarmed"),)},
     {"inline_dependencies": (InlineDependencies("runt.deps", "y:prewarmed"),)}),
])
def test_two_pools_claiming_one_thing_are_refused(monkeypatch, what, first, second):
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "*")
    with pytest.raises(PluginError, match=rf"Two environment pools claim {what} .*P1 .*P2"):
        _registry("runtimed_env_pools", [_pool("P1", "x", **first)], [_pool("P2", "y", **second)])


def test_two_pools_of_one_family_are_refused(monkeypatch):
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "*")
    with pytest.raises(PluginError, match=r"Two environment pools claim family 'x': .*P1 .*P2"):
        _registry("runtimed_env_pools", [_pool("P1", "x")], [_pool("P2", "x")])


@pytest.mark.parametrize("declared, field, problem", [
    ({"sources": ("other:kind",)}, "sources", "not 'x:<kind>'"),
    ({"sources": ()}, "sources", "at least one"),
    ({"project_files": ("pyproject.toml",)}, "project_files", "tuple of ProjectFile"),
    ({"project_files": (ProjectFile("f.toml", "x:elsewhere"),)}, "project_files", "not in its sources"),
    ({"settings": (Setting("pool_size", 3),)}, "settings", "more than once"),
    ({"family": "x:y"}, "family", "without ':'"),
])
def test_malformed_pool_declaration_names_plugin_and_field(monkeypatch, declared, field, problem):
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "*")
    with pytest.raises(PluginError, match=rf"Plugin '.*': .*\.P\.{field} .*{problem}"):
        _registry("runtimed_env_pools", [_pool("P", declared.pop("family", "x"), **declared)])


def test_malformed_launcher_declaration(monkeypatch):
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "*")
    nothing = type("Nothing", (KernelLauncher,), {"kernel_type": "nothing"})
    with pytest.raises(PluginError, match=r"Nothing\.command is missing: implement command\(\) or launch\(\)"):
        _registry("runtimed_kernel_launchers", [nothing])
    bad = type("Bad", (_Launcher,), {"interrupt_mode": "wave"})
    with pytest.raises(PluginError, match=r"Bad\.interrupt_mode must be 'signal' or 'message'"):
        _registry("runtimed_kernel_launchers", [bad])
    clash = type("Clash", (_Launcher,), {"kernel_type": "other", "kernelspec_names": ("python3",)})
    first = type("First", (_Launcher,), {"kernelspec_names": ("python3",)})
    with pytest.raises(PluginError, match=r"claim kernelspec name 'python3'"):
        _registry("runtimed_kernel_launchers", [first], [clash])


def test_sinks_are_collected_in_registration_order(monkeypatch):
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "*")
    Second = type("Second", (_Sink,), {})
    registry = _registry("runtimed_output_sinks", [_Sink], [Second])
    assert [cls for _, cls in registry.sinks] == [_Sink, Second]


def test_defaults_come_from_declared_ranks(monkeypatch):
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "*")
    ranked = [_pool("A", "a", default_rank=5), _pool("B", "b", default_rank=1), _pool("C", "c")]
    registry = _registry("runtimed_env_pools", ranked)
    assert registry.default_family(None) == "b"
    assert registry.default_family("a") == "a", "the configured family wins"
    assert _registry("runtimed_env_pools", [_pool("C", "c")]).default_family(None) is None


def test_plugins_cli_json():
    out = subprocess.run([sys.executable, "-m", "runtimed", "plugins", "--json"],
                         capture_output=True, text=True, check=True)
    names = {p["name"] for p in json.loads(out.stdout)}
    assert {"python_kernel", "uv_pool"} <= names
