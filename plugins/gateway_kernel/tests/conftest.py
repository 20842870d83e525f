"""Fixtures: real gateways (see :mod:`runtimed_gateway_kernel.testing`) and daemons using them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from runtimed.pytest_plugin import DaemonProcess
from runtimed_gateway_kernel.testing import PACKAGES, Gateway, build_venv, gateway_env


@pytest.fixture(scope="session")
def gateway_venvs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``venv(kind)``: the venv of that gateway, built once per test session on first use."""
    built: dict[str, Path] = {}

    def venv(kind: str) -> Path:
        if kind not in built:
            built[kind] = build_venv(tmp_path_factory.mktemp(kind), PACKAGES[kind])
        return built[kind]

    return venv


@pytest.fixture(scope="session")
def runtimed_gateway_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Kernel Gateway venv with runtimed and its Jupyter provisioner installed (from this
    checkout): a jupyter_server, as JupyterLab runs one, that can serve `runtimed-python`."""
    import runtimed
    import runtimed_jupyter_provisioner

    core = Path(runtimed.__file__).parents[2]
    provisioner = Path(runtimed_jupyter_provisioner.__file__).parents[2]
    return build_venv(tmp_path_factory.mktemp("kg-runtimed"), PACKAGES["kernel_gateway"],
                      str(core), str(provisioner))


@pytest.fixture(scope="session")
def gateway_kernelspecs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data dir for the gateways: ``remote-py``, a Python kernelspec only they have."""
    data = tmp_path_factory.mktemp("gateway-jupyter")
    spec = data / "kernels" / "remote-py"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Remote Python", "language": "python"}))
    return data


@pytest.fixture
def gateway_factory(gateway_venvs: Callable[[str], Path], gateway_kernelspecs: Path,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Gateway]]:
    """``factory(kind="kernel_gateway", **options)`` starts a gateway; all are stopped after."""
    started: list[Gateway] = []

    def factory(kind: str = "kernel_gateway", **options: Any) -> Gateway:
        options.setdefault("jupyter_path", gateway_kernelspecs)
        gateway = Gateway(kind, gateway_venvs(kind), tmp_path_factory.mktemp("gw"), **options)
        started.append(gateway)
        return gateway.start()

    try:
        yield factory
    finally:
        for gateway in started:
            gateway.stop()


@pytest.fixture(scope="session")
def kernel_gateway(gateway_venvs: Callable[[str], Path], gateway_kernelspecs: Path,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One Kernel Gateway for the tests that neither stop nor break it."""
    gateway = Gateway("kernel_gateway", gateway_venvs("kernel_gateway"),
                      tmp_path_factory.mktemp("kg"), jupyter_path=gateway_kernelspecs).start()
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture
def gateway_daemon(runtimed_daemon_factory: Callable[..., DaemonProcess],
                   kernel_gateway: Gateway) -> DaemonProcess:
    """A daemon using the shared Kernel Gateway, with no local environments or hot kernels."""
    return runtimed_daemon_factory(pool_sizes={"uv": 0}, hot_kernels=0,
                                   env=gateway_env(kernel_gateway))


