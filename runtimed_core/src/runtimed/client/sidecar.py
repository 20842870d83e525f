"""The sidecar: a live page of one kernel's rich outputs, next to a console or a kernel.

``runtimed.sidecar()`` starts a small process of its own (``python -m
runtimed.web.sidecar``) that subscribes to the kernel's IOPub channel, verifies
every message with the key in its connection file, and shows each execution's
code and outputs (images, HTML, LaTeX, streams...) on a page of the same
look as the notebook view, updated as they come. It needs no daemon.

- Inside a Jupyter kernel (a notebook, ``jupyter console``...) it finds the
  kernel's own connection file.
- In terminal IPython, which has no kernel, it bridges the shell's displays and
  results to the sidecar (:mod:`runtimed.client.ipython_bridge`).
- With a path, it watches that kernel.

The sidecar process ends with :meth:`Sidecar.close`, when the process that
started it ends, or when the kernel stops answering its heartbeat.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
from pathlib import Path

from runtimed.errors import RuntimedError
from runtimed.web import open_in_browser

START_TIMEOUT = 30.0


class Sidecar:
    """A running sidecar: :attr:`url` (its page, with its secret), :attr:`running`, :meth:`close`."""

    def __init__(self, process: subprocess.Popen[str], url: str, bridge: object | None = None) -> None:
        self.process = process
        self.url = url
        self._bridge = bridge

    @property
    def running(self) -> bool:
        """True while the sidecar process is alive."""
        return self.process.poll() is None

    def close(self) -> None:
        """Stop the sidecar process (and the bridge of a terminal IPython); idempotent."""
        if self._bridge is not None:
            self._bridge.close()  # type: ignore[attr-defined]
            self._bridge = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> Sidecar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Sidecar {self.url} {'running' if self.running else 'stopped'}>"

    def _repr_html_(self) -> str:
        return f'<a href="{self.url}" target="_blank">runtimed sidecar</a>'


def _own_connection_file() -> str | None:
    """The connection file of the Jupyter kernel this code runs in, if it runs in one."""
    if "ipykernel" not in sys.modules:  # a kernel has it loaded; nothing else needs it
        return None
    from ipykernel.kernelapp import IPKernelApp

    if not IPKernelApp.initialized():  # e.g. terminal IPython with ipykernel installed
        return None
    return str(IPKernelApp.instance().abs_connection_file)


def sidecar(connection_file: str | os.PathLike[str] | None = None, *, open_browser: bool = True,
            port: int = 0) -> Sidecar:
    """Start a sidecar for a kernel (see the module docstring) and return it.

    ``connection_file``: the kernel's; default: this kernel's, or in terminal
    IPython a bridge of its displays. The page opens in a browser unless
    ``open_browser`` is false or ``RUNTIMED_NO_BROWSER=1``.
    """
    bridge = None
    path = str(connection_file) if connection_file is not None else _own_connection_file()
    if path is None:
        from runtimed.client.ipython_bridge import Bridge

        bridge = Bridge.for_this_shell()
        path = str(bridge.connection_file)
    if not Path(path).is_file():
        raise RuntimedError(f"No kernel connection file at {path}")
    process = subprocess.Popen(
        [sys.executable, "-m", "runtimed.web.sidecar", path, "--parent-pid", str(os.getpid()),
         "--port", str(port)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert process.stdout is not None
    url = ""  # the process prints its address first
    if select.select([process.stdout], [], [], START_TIMEOUT)[0]:
        url = process.stdout.readline().strip()
    if not url.startswith("http://"):
        process.kill()
        process.wait()
        process.stdout.close()
        if bridge is not None:
            bridge.close()
        raise RuntimedError(f"The sidecar did not start (exit code {process.returncode}); "
                            "see its messages above")
    if bridge is not None and not bridge.wait_subscribed(START_TIMEOUT):
        Sidecar(process, url, bridge).close()
        raise RuntimedError("The sidecar started but did not subscribe to this shell's displays")
    if open_browser:
        open_in_browser(url)
    return Sidecar(process, url, bridge)


__all__ = ["Sidecar", "sidecar"]
