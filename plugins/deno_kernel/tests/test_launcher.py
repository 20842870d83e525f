"""The launcher: which Deno it picks, and the command and environment it starts it with."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from runtimed.config import DaemonConfig
from runtimed.errors import KernelLaunchFailed
from runtimed.launchers import LaunchContext
from runtimed.plugins import Registry, describe_plugins, get_plugin_manager
from runtimed_deno_kernel import DenoKernelLauncher, find_deno, launcher
from runtimed_deno_kernel.hooks import runtimed_kernel_launchers


@pytest.fixture(autouse=True)
def _fresh_lookup():
    find_deno.cache_clear()
    yield
    find_deno.cache_clear()


def fake_deno(directory: Path, version_line: str) -> Path:
    """A ``deno`` script that prints ``version_line`` and counts its calls in ``calls``."""
    directory.mkdir(parents=True, exist_ok=True)
    script = directory / "deno"
    script.write_text(f'#!/bin/sh\necho x >> "{directory}/calls"\necho "{version_line}"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def calls(script: Path) -> int:
    counter = script.parent / "calls"
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def context(tmp_path: Path, env: dict[str, str]) -> LaunchContext:
    return LaunchContext(notebook_id="nb", connection_file=Path("/run/kernel-1.json"), cwd=tmp_path,
                         env=env)


def test_registered_through_the_entry_point():
    pm = get_plugin_manager()
    assert Registry.load(pm).launchers["deno"] is DenoKernelLauncher
    described = {p["name"]: p for p in describe_plugins(pm)}["deno_kernel"]
    assert described["distribution"] == "runtimed-deno-kernel"
    assert described["provides"] == {
        "runtimed_kernel_launchers": ["runtimed_deno_kernel.launcher.DenoKernelLauncher"],
    }
    assert runtimed_kernel_launchers() == [DenoKernelLauncher]
    assert DenoKernelLauncher.kernel_type == "deno"
    assert DenoKernelLauncher.needs_env is False
    assert DenoKernelLauncher.interrupt_mode == "message"  # SIGINT would kill the kernel
    assert DenoKernelLauncher.kernelspec == {
        "name": "deno", "display_name": "Deno", "language": "typescript",
    }


def test_deno_2_on_path_wins_and_the_lookup_is_cached(tmp_path, monkeypatch):
    on_path = fake_deno(tmp_path / "bin", "deno 2.1.4 (stable, release, x86_64-unknown-linux-gnu)")
    bundled = fake_deno(tmp_path / "pkg", "deno 2.9.8 (stable, release, x86_64-unknown-linux-gnu)")
    monkeypatch.setattr(launcher, "_bundled_deno", lambda: str(bundled))
    path = str(tmp_path / "bin")
    assert find_deno(path) == str(on_path)
    assert find_deno(path) == str(on_path)
    assert calls(on_path) == 1  # `deno --version` ran once
    assert calls(bundled) == 0


def test_old_deno_on_path_falls_back_to_the_package(tmp_path, monkeypatch):
    fake_deno(tmp_path / "bin", "deno 1.46.3 (stable, release, x86_64-unknown-linux-gnu)")
    bundled = fake_deno(tmp_path / "pkg", "deno 2.9.8 (stable, release, x86_64-unknown-linux-gnu)")
    monkeypatch.setattr(launcher, "_bundled_deno", lambda: str(bundled))
    assert find_deno(str(tmp_path / "bin")) == str(bundled)


def test_not_deno_on_path_falls_back_to_the_package(tmp_path, monkeypatch):
    fake_deno(tmp_path / "bin", "definitely not deno")
    bundled = fake_deno(tmp_path / "pkg", "deno 2.0.0")
    monkeypatch.setattr(launcher, "_bundled_deno", lambda: str(bundled))
    assert find_deno(str(tmp_path / "bin")) == str(bundled)


def test_the_package_binary_is_used_without_deno_on_path(tmp_path):
    found = find_deno(str(tmp_path / "empty"))  # the real deno package, a dependency of the plugin
    assert Path(found).is_file()
    version = launcher.deno_version(found)
    assert version is not None and version[0] >= 2


def test_no_usable_deno_says_what_was_tried(tmp_path, monkeypatch):
    fake_deno(tmp_path / "bin", "deno 1.46.3 (stable, release, x86_64-unknown-linux-gnu)")
    monkeypatch.setattr(launcher, "_bundled_deno", lambda: None)
    with pytest.raises(KernelLaunchFailed, match=r"deno on PATH is 1\.46\.3") as e:
        find_deno(str(tmp_path / "bin"))
    assert "pip install deno" in str(e.value) and "Install Deno" in str(e.value)
    # failures are not cached: a Deno installed afterwards is found
    bundled = fake_deno(tmp_path / "pkg", "deno 2.9.8")
    monkeypatch.setattr(launcher, "_bundled_deno", lambda: str(bundled))
    assert find_deno(str(tmp_path / "bin")) == str(bundled)


def test_command_and_environment(tmp_path, monkeypatch):
    deno = fake_deno(tmp_path / "bin", "deno 2.2.0")
    config = DaemonConfig(cache_dir=tmp_path / "cache")
    deno_launcher = DenoKernelLauncher(config)
    ctx = context(tmp_path, {"PATH": str(tmp_path / "bin"), "HOME": "/home/u"})
    assert deno_launcher.command(ctx) == [
        str(deno), "jupyter", "--kernel", "--conn", "/run/kernel-1.json",
    ]
    env = deno_launcher.environment(ctx)
    assert env["NO_COLOR"] == "1"
    assert env["DENO_DIR"] == str(tmp_path / "cache" / "deno")  # one cache per daemon
    assert env["HOME"] == "/home/u" and env["PATH"] == str(tmp_path / "bin")
    assert "NO_COLOR" not in ctx.env  # the context's env is not modified


def test_a_deno_dir_in_the_environment_is_kept(tmp_path):
    deno_launcher = DenoKernelLauncher(DaemonConfig(cache_dir=tmp_path / "cache"))
    env = deno_launcher.environment(context(tmp_path, {"DENO_DIR": "/srv/deno", "NO_COLOR": ""}))
    assert env["DENO_DIR"] == "/srv/deno"
    assert env["NO_COLOR"] == "1"


@pytest.mark.skipif(os.name != "posix", reason="shell-script fake deno")
def test_launch_fails_clearly_without_deno(tmp_path, monkeypatch):
    import asyncio

    monkeypatch.setattr(launcher, "_bundled_deno", lambda: None)
    deno_launcher = DenoKernelLauncher(DaemonConfig(cache_dir=tmp_path / "cache"))
    with pytest.raises(KernelLaunchFailed, match="no deno on PATH"):
        asyncio.run(deno_launcher.launch(context(tmp_path, {"PATH": str(tmp_path / "nothing")})))
