"""A terminal IPython's displays, published as a kernel's IOPub messages for the sidecar.

Terminal IPython runs no kernel, so nothing publishes what it displays. The
bridge does: it binds an IOPub-style socket on 127.0.0.1, writes a connection
file for it (mode 0600, in a private directory; its key signs every message),
and hooks the shell so that each cell's code, its ``display()`` calls (and
``update_display``), its result (``Out[n]``) and its traceback are published
the way a kernel would, while the terminal shows them as before. Printed text
is not bridged: it stays in the terminal.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

from runtimed.errors import RuntimedError
from runtimed.protocol.jupyter import JupyterCodec


class Bridge:
    """Publishes one IPython shell's displays (see the module docstring); :meth:`close` undoes it."""

    def __init__(self, shell: Any) -> None:
        import zmq

        self.shell = shell
        self.key = secrets.token_hex(32).encode()
        self._codec = JupyterCodec(self.key, username="ipython")
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.XPUB)  # XPUB: it sees the sidecar subscribe
        self._socket.setsockopt(zmq.LINGER, 0)
        port = self._socket.bind_to_random_port("tcp://127.0.0.1")
        self._dir = Path(tempfile.mkdtemp(prefix="runtimed-sidecar-"))
        self.connection_file = self._dir / "ipython-bridge.json"
        fd = os.open(self.connection_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"transport": "tcp", "ip": "127.0.0.1", "iopub_port": port,
                       "key": self.key.decode(), "signature_scheme": "hmac-sha256",
                       "kernel_name": "ipython"}, f)
        self._parent: dict[str, Any] = {}
        self._hooked: list[tuple[Any, str]] = []
        display_pub, displayhook = shell.display_pub, shell.displayhook
        self._hook(display_pub, "publish", self._wrap_publish(display_pub.publish))
        self._hook(displayhook, "write_format_data", self._wrap_result(displayhook.write_format_data))
        self._hook(shell, "_showtraceback", self._wrap_traceback(shell._showtraceback))
        # a terminal computes only text/plain: while bridged, every format a kernel would send
        formatter = shell.display_formatter
        self._active_types = list(formatter.active_types)
        formatter.active_types = list(formatter.format_types)
        shell.events.register("pre_run_cell", self._pre_run_cell)
        shell.events.register("post_run_cell", self._post_run_cell)
        atexit.register(self.close)  # the connection file goes with the shell

    @classmethod
    def for_this_shell(cls) -> Bridge:
        """A bridge for the running IPython; a RuntimedError outside IPython."""
        try:
            from IPython import get_ipython
        except ImportError:
            get_ipython = None
        shell = get_ipython() if get_ipython is not None else None
        if shell is None:
            raise RuntimedError("sidecar() needs a connection file outside Jupyter kernels and "
                                "IPython: pass the kernel's, sidecar('/path/to/kernel-123.json')")
        return cls(shell)

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait until the sidecar has subscribed (messages sent before would be lost)."""
        if self._socket.poll(timeout * 1000):
            self._socket.recv()
            return True
        return False

    def close(self) -> None:
        """Unhook the shell, close the socket and remove the connection file; idempotent."""
        if not self._hooked:
            return
        atexit.unregister(self.close)
        for obj, name in self._hooked:
            obj.__dict__.pop(name, None)
        self._hooked.clear()
        self.shell.display_formatter.active_types = self._active_types
        for event, callback in (("pre_run_cell", self._pre_run_cell),
                                ("post_run_cell", self._post_run_cell)):
            try:
                self.shell.events.unregister(event, callback)
            except ValueError:
                pass
        self._socket.close()
        self._context.term()
        shutil.rmtree(self._dir, ignore_errors=True)

    # publishing ------------------------------------------------------------------------------------
    def _hook(self, obj: Any, name: str, replacement: Any) -> None:
        setattr(obj, name, replacement)  # an instance attribute in front of the class's method
        self._hooked.append((obj, name))

    def _send(self, msg_type: str, content: dict[str, Any]) -> None:
        _, frames = self._codec.message(msg_type, content, parent=self._parent)
        try:
            self._socket.send_multipart([f"ipython.{msg_type}".encode(), *frames])
        except Exception:  # the shell goes on whatever happens to the sidecar
            pass

    def _count(self) -> int:
        """The running cell's number (``In [n]``), whichever IPython counts first."""
        return self.shell.displayhook.prompt_count

    def _pre_run_cell(self, info: Any) -> None:
        self._parent = {"msg_id": uuid.uuid4().hex, "msg_type": "execute_request",
                        "session": self._codec.session}
        self._send("status", {"execution_state": "busy"})
        self._send("execute_input", {"code": getattr(info, "raw_cell", "") or "",
                                     "execution_count": self._count()})

    def _post_run_cell(self, result: Any) -> None:
        self._send("status", {"execution_state": "idle"})

    def _wrap_publish(self, original: Any) -> Any:
        def publish(data: dict[str, Any], metadata: dict[str, Any] | None = None, source: Any = None,
                    *, transient: dict[str, Any] | None = None, update: bool = False, **kwargs: Any
                    ) -> None:
            content: dict[str, Any] = {"data": data, "metadata": metadata or {}}
            if transient:
                content["transient"] = transient
            self._send("update_display_data" if update else "display_data", content)
            original(data, metadata, source, transient=transient, update=update, **kwargs)
        return publish

    def _wrap_result(self, original: Any) -> Any:
        def write_format_data(format_dict: dict[str, Any], md_dict: dict[str, Any] | None = None
                              ) -> None:
            self._send("execute_result", {"data": format_dict, "metadata": md_dict or {},
                                          "execution_count": self._count()})
            original(format_dict, md_dict)
        return write_format_data

    def _wrap_traceback(self, original: Any) -> Any:
        def showtraceback(etype: Any, evalue: Any, stb: list[str]) -> None:
            self._send("error", {"ename": getattr(etype, "__name__", str(etype)),
                                 "evalue": str(evalue), "traceback": list(stb)})
            original(etype, evalue, stb)
        return showtraceback
