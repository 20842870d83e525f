"""Real gateways for tests: Jupyter Kernel Gateway or Enterprise Gateway from PyPI, in a venv
of their own (with ipykernel), started on a free 127.0.0.1 port with a token; and a TCP relay
that can cut connections, as a network blip would.

The plugin's tests use these; so can a project testing its own code against a gateway::

    venv = build_venv(tmp_path, "jupyter_kernel_gateway")
    gateway = Gateway("kernel_gateway", venv, tmp_path).start()
    ...  # RUNTIMED_GATEWAY_URL=gateway.url, RUNTIMED_GATEWAY_TOKEN=gateway.token
    gateway.stop()
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from runtimed.testing import wait_until

INSTALL_TIMEOUT = 600
TOKEN = "test-token-1234"
#: The gateways' own packages (each installs into its venv with ipykernel).
PACKAGES = {"kernel_gateway": "jupyter_kernel_gateway",
            "enterprise_gateway": "jupyter_enterprise_gateway"}
APPS = {"kernel_gateway": ("kernelgateway", "KernelGatewayApp"),
        "enterprise_gateway": ("enterprisegateway", "EnterpriseGatewayApp")}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_venv(root: Path, *packages: str) -> Path:
    from uv import find_uv_bin

    uv, venv = find_uv_bin(), root / "venv"
    python = venv / "bin" / "python"
    for argv in ([uv, "venv", str(venv), "--python", sys.executable, "--quiet"],
                 [uv, "pip", "install", "--python", str(python), "--quiet", *packages,
                  "ipykernel"]):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
                              stdin=subprocess.DEVNULL, check=False)
        assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"
    return venv


class Gateway:
    """A gateway process: ``url``, ``token``, its log; ``stop``/``kill``/``start`` again on the
    same port."""

    def __init__(self, kind: str, venv: Path, root: Path, *, token: str = TOKEN,
                 extra_args: tuple[str, ...] = (), jupyter_path: Path | None = None) -> None:
        self.kind, self.venv, self.root, self.token = kind, venv, root, token
        self.extra_args = extra_args
        self.jupyter_path = jupyter_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = root / f"{kind}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Gateway:
        command, app = APPS[self.kind]
        env = {**os.environ, "PATH": f"{self.venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
        env.pop("VIRTUAL_ENV", None)
        env["KG_LIST_KERNELS"] = env["EG_LIST_KERNELS"] = "True"  # GET /api/kernels, for tests
        if self.jupyter_path is not None:
            env["JUPYTER_PATH"] = str(self.jupyter_path)
        argv = [str(self.venv / "bin" / "jupyter"), command, f"--{app}.ip=127.0.0.1",
                f"--{app}.port={self.port}", f"--{app}.port_retries=0",
                f"--{app}.auth_token={self.token}", *self.extra_args]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(argv, cwd=self.root, env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=log, start_new_session=True)
        wait_until(self._answers, f"the {self.kind} at {self.url} to answer:\n{self.log()}",
                   timeout=60)
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"the {self.kind} exited with {self.process.returncode}:\n{self.log()}")
        try:
            return self.get("/api")[0] == 200
        except OSError:
            return False

    def get(self, path: str) -> tuple[int, Any]:
        req = urllib.request.Request(self.url + path,
                                     headers={"Authorization": f"token {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, None

    def kernels(self) -> list[dict[str, Any]]:
        status, kernels = self.get("/api/kernels")
        assert status == 200, status
        return kernels

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def requests_answered(self, status: int) -> list[str]:
        """The log lines of requests the gateway answered with ``status``."""
        return [line for line in self.log().splitlines()
                if f" {status} " in line and "/api" in line]

    def kill(self) -> None:
        """SIGKILL the gateway and what it started (as a crash of its host would)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process is not None:  # kernels it may have left behind
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


def gateway_env(gateway: Gateway, **settings: str) -> dict[str, str]:
    """A daemon's environment variables for ``gateway`` (``settings``: more ``gateway.*`` knobs)."""
    env = {"RUNTIMED_GATEWAY_URL": gateway.url, "RUNTIMED_GATEWAY_TOKEN": gateway.token}
    env.update({f"RUNTIMED_GATEWAY_{name.upper()}": value for name, value in settings.items()})
    return env


class Proxy:
    """A TCP relay to ``port`` on 127.0.0.1 (its own ``url``); :meth:`drop` cuts every
    connection through it, as a network blip would, and keeps accepting new ones (unless
    :attr:`holding`: then each is closed as soon as it is accepted)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.accepted = 0
        self.holding = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.holding:
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            with self._lock:
                self.sockets += [client, upstream]
                self.accepted += 1
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def drop(self) -> None:
        """Cut every connection now (both sides see it closed)."""
        with self._lock:
            sockets, self.sockets = self.sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # ends the accept() of the relay's thread
        self.listener.close()
        self._thread.join(5)
        self.drop()
