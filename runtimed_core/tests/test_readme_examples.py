"""The README's plugin examples are real code: they load, declare what the README says,
and pass the daemon's checks."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

from runtimed.config import DaemonConfig
from runtimed.hookspecs import hookimpl
from runtimed.launchers import KernelLauncher, LaunchContext
from runtimed.plugins import Registry, get_plugin_manager
from runtimed.pools import EnvPool

README = Path(__file__).parents[2] / "README.md"


def _example(first_line: str) -> types.ModuleType:
    """The README's python block that starts with ``first_line``, as a module."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    [code] = [b for b in blocks if b.startswith(first_line)]
    module = types.ModuleType(first_line.strip("# ").replace("/", ".").removesuffix(".py"))
    exec(compile(code, f"README.md:{first_line}", "exec"), module.__dict__)
    return module


def _plugin(**hooks: list[type]) -> object:
    plugin = types.SimpleNamespace()
    for name, classes in hooks.items():
        setattr(plugin, name, hookimpl(lambda classes=classes: classes))
    return plugin


def test_readme_launcher_and_pool_pass_the_checks(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNTIMED_DISABLE_PLUGINS", "*")
    launcher_cls = _example("# runtimed_syspy/launcher.py").SystemPythonLauncher
    pool_cls = _example("# runtimed_venvpool/pool.py").VenvPool
    assert issubclass(launcher_cls, KernelLauncher) and issubclass(pool_cls, EnvPool)
    registry = Registry.load(get_plugin_manager(_plugin(runtimed_kernel_launchers=[launcher_cls],
                                                        runtimed_env_pools=[pool_cls])))
    assert registry.launchers == {"syspy": launcher_cls} and registry.pools == {"venv": pool_cls}
    settings = {(ns, s.name): s for ns, s, _ in registry.declared_settings()}
    assert settings["syspy", "python"].env_var("syspy") == "RUNTIMED_SYSPY_PYTHON"
    assert settings["syspy", "python"].flag("syspy") == "--syspy-python"
    assert settings["venv", "pool_size"].flag("venv") == "--venv-pool-size"

    monkeypatch.setenv("RUNTIMED_SYSPY_PYTHON", sys.executable)
    monkeypatch.setenv("RUNTIMED_VENV_PIP_ARGS", "--no-index --find-links /wheels")
    config = DaemonConfig(cache_dir=tmp_path)
    ctx = LaunchContext(notebook_id="nb", connection_file=tmp_path / "k.json", cwd=tmp_path, env={})
    assert launcher_cls(config).command(ctx) == [
        sys.executable, "-m", "ipykernel_launcher", "-f", str(tmp_path / "k.json")]
    pool = pool_cls(config)
    assert pool.pool_size == 1 and pool.setting("pip_args") == ["--no-index", "--find-links", "/wheels"]
    assert pool.status().available == 0
