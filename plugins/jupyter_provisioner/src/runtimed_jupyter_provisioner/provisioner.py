"""The ``runtimed`` kernel provisioner: Jupyter tools get their kernels from the runtimed daemon.

jupyter_client (7 and later) starts a kernelspec's kernel through the
provisioner its ``metadata.kernel_provisioner`` names; ``runtimed kernelspec
install`` writes such a spec (``runtimed-python``). With it, JupyterLab,
nbclient, papermill and ``jupyter console`` run on runtimed's kernels:

- **Start** (``launch_kernel``): a session joins the room ``jupyter-<kernel id>``
  and asks for a kernel there (``kernel_type``/``env_source`` from the spec's
  provisioner config, by default the daemon's default kernel in a prewarmed
  environment: a hot kernel when one is ready, else one from the pool), in the
  tool's working directory (``cwd``), then hands jupyter_client the kernel's
  connection info. The tool then talks to the kernel itself, over ZMQ; the room
  shows in ``list_rooms`` (one peer, its kernel) for as long as the tool uses it.
- **Interrupt**: the daemon interrupts it (SIGINT to the kernel's process group).
- **Shutdown**: jupyter_client's shutdown begins with an interrupt while its
  manager is ``shutting_down``; the provisioner takes that as the moment to have
  the daemon shut the kernel down (its environment goes back to the pool), so the
  kernel's exit is one the daemon expects. The session leaves at ``cleanup``.
- **Restart**: the same room gets a new kernel (hot when ready).

The kernel runs with the daemon's environment, as every runtimed kernel does:
the variables a tool sets for a kernel it starts itself are not passed on.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning import KernelProvisionerBase
from traitlets import Unicode

#: The lifecycles of a room's kernel on its way up (alive, for jupyter_client).
_STARTING = ("resolving", "preparing_env", "launching")


class RuntimedProvisioner(KernelProvisionerBase):  # type: ignore[misc]
    """Kernels from the runtimed daemon (see the module docstring)."""

    kernel_type = Unicode("auto", config=True, help="the kernel_type the daemon is asked for")
    env_source = Unicode("prewarmed", config=True, help="the env_source the daemon is asked for")
    socket_path = Unicode("", config=True, help="the daemon's socket (default: "
                                                "RUNTIMED_SOCKET_PATH, else the usual one)")

    _session: Any = None
    _exit_code: int | None = None

    @property
    def has_process(self) -> bool:
        return self._session is not None

    @property
    def notebook_id(self) -> str:
        return f"jupyter-{self.kernel_id}"

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        kwargs["cmd"] = list(self.kernel_spec.argv)  # never run: the daemon starts the kernel
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        from runtimed.client.sync import Session

        if self._session is None:
            self._session = Session(self.notebook_id, socket_path=self.socket_path or None)
        session = self._session
        cwd = kwargs.get("cwd")
        try:
            await asyncio.to_thread(session.start_kernel, self.kernel_type or "auto",
                                    self.env_source or "auto", cwd=str(cwd) if cwd else None)
            info = dict(await asyncio.to_thread(session.connection_info))
        except BaseException:
            await self._leave()
            raise
        info["key"] = info["key"].encode()  # as jupyter_client keeps it
        self._exit_code = None
        self.connection_info = info
        self.log.debug("runtimed kernel for %s: %s in room %s", self.kernel_id,
                      session.env_source, self.notebook_id)
        return info

    async def poll(self) -> int | None:
        if self._session is None:
            return self._exit_code
        status, connected = await asyncio.to_thread(self._status)
        lifecycle = status.get("lifecycle")
        if connected and (lifecycle == "running" or lifecycle in _STARTING):
            return None
        # the daemon's kernels do not outlive it: a lost connection is a lost kernel
        self._exit_code = 0 if lifecycle == "shutdown" else 1
        return self._exit_code

    def _status(self) -> tuple[dict[str, Any], bool]:
        session = self._session
        return session.kernel_status(), session.is_connected

    async def wait(self) -> int | None:
        while (code := await self.poll()) is None:
            await asyncio.sleep(0.05)
        return code

    async def send_signal(self, signum: int) -> None:
        if self._session is None or signum == 0:
            return
        if signum == signal.SIGINT:
            if getattr(self.parent, "shutting_down", False):
                await self._release()  # jupyter_client interrupts first when it shuts down
            else:
                await asyncio.to_thread(self._session.interrupt)
        elif signum in (signal.SIGTERM, signal.SIGKILL):
            await self._release()
        else:
            self.log.debug("runtimed kernel %s: signal %s not forwarded", self.kernel_id, signum)

    async def kill(self, restart: bool = False) -> None:
        await self._release()

    async def terminate(self, restart: bool = False) -> None:
        await self._release()

    async def shutdown_requested(self, restart: bool = False) -> None:
        await self._release()

    async def cleanup(self, restart: bool = False) -> None:
        """After a shutdown: the room keeps the session for a restart, else it leaves."""
        await self._release()
        if not restart:
            await self._leave()

    async def _release(self) -> None:
        """Have the daemon shut the room's kernel down (idempotent)."""
        session = self._session
        if session is None or self._exit_code is not None:
            return
        from runtimed.errors import RuntimedError

        try:
            await asyncio.to_thread(session.shutdown_kernel)
        except RuntimedError as exc:  # the daemon is gone: so is its kernel
            self.log.warning("runtimed kernel %s: shutdown failed: %s", self.kernel_id, exc)
        self._exit_code = 0

    async def _leave(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await asyncio.to_thread(session.close)

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(notebook_id=self.notebook_id, socket_path=self.socket_path)
        return info
