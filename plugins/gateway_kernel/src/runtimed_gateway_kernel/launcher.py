"""Kernels on a Jupyter Kernel Gateway or Enterprise Gateway, as ``kernel_type="gateway:<name>"``.

The gateway is at ``RUNTIMED_GATEWAY_URL`` (every knob is a setting of the
``gateway`` kernel type: ``RUNTIMED_GATEWAY_<NAME>``, ``runtimed run
--gateway-<name>``; ``runtimed run --help`` lists them). ``<name>`` is one of
the gateway's kernelspecs (``GET /api/kernelspecs``), which ``runtimed plugins``
lists and ``kernel_type="auto"`` picks from a notebook's kernelspec name when no
other launcher declares that name.

A start is ``POST /api/kernels`` with the kernel name and the environment
variables a gateway accepts from a client: every ``KERNEL_*`` variable of the
daemon's environment (Enterprise Gateway's convention: ``KERNEL_USERNAME``,
``KERNEL_NAMESPACE``, ``KERNEL_LAUNCH_TIMEOUT``...), the ones the ``env`` setting
names, and ``KERNEL_USERNAME`` (the ``username`` setting, by default the local
user) unless set. Then the daemon talks to the kernel over the gateway's
WebSocket (:mod:`runtimed_gateway_kernel.kernel`), exactly as to a local kernel:
queue, interrupts, restarts, outputs into the document.

These kernels take no environment from a pool: ``session.env_source`` is the
kernel type, e.g. ``gateway:python3``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from runtimed.errors import InvalidRequest, KernelLaunchFailed
from runtimed.kernel_handles import KernelHandle
from runtimed.launchers import KernelLauncher, LaunchContext
from runtimed.settings import Setting, csv, flag_bool
from runtimed_gateway_kernel.client import (
    Gateway,
    GatewayClient,
    GatewayNotConfigured,
    header_map,
    http_url,
    positive,
    ws_url,
)

log = logging.getLogger(__name__)

#: Seconds a listing of the gateway's kernelspecs is reused (every start asks for it).
KERNELSPECS_TTL = 5.0


class GatewayLauncher(KernelLauncher):
    """Every kernelspec ``<name>`` of the gateway at ``RUNTIMED_GATEWAY_URL``, as
    ``kernel_type="gateway:<name>"``."""

    kernel_type = "gateway"
    needs_env = False
    settings = (
        Setting("url", "", "the Kernel Gateway or Enterprise Gateway, e.g. http://127.0.0.1:8888",
                parse=http_url),
        Setting("token", "", "its auth token (sent as 'Authorization: token <token>')"),
        Setting("auth_scheme", "token", "the Authorization scheme for the token"),
        Setting("ws_url", "", "its WebSocket base URL (default: the URL with ws:// or wss://)",
                parse=ws_url),
        Setting("headers", {}, 'extra HTTP headers, a JSON object: {"X-Team": "ml"}',
                parse=header_map),
        Setting("validate_cert", True, "verify the gateway's TLS certificate", parse=flag_bool),
        Setting("ca_certs", "", "a CA bundle to verify it with (default: the system's)"),
        Setting("client_cert", "", "a client certificate (PEM) for TLS client authentication"),
        Setting("client_key", "", "its private key (PEM), if not in the certificate file"),
        Setting("request_timeout", 60.0, "seconds for one REST call, a kernel start included",
                parse=positive),
        Setting("reconnect_secs", 30.0,
                "seconds a kernel whose connection dropped may take to be reached again before "
                "it counts as lost", parse=positive),
        Setting("env", [], "comma-separated variables of the daemon's environment passed to "
                           "kernels besides KERNEL_*", parse=csv),
        Setting("username", "", "KERNEL_USERNAME sent with each start (default: the local user)"),
    )

    def __init__(self, config: Any) -> None:
        super().__init__(config)
        self._client: GatewayClient | None = None
        self._specs: tuple[float, dict[str, dict[str, Any]]] | None = None
        self._listing: asyncio.Future[dict[str, dict[str, Any]]] | None = None

    def gateway(self) -> Gateway:
        """The gateway's settings; :class:`GatewayNotConfigured` when no URL is set."""
        url = self.setting("url")
        if not url:
            raise GatewayNotConfigured(
                "No kernel gateway is configured: set RUNTIMED_GATEWAY_URL (e.g. "
                "http://127.0.0.1:8888) and RUNTIMED_GATEWAY_TOKEN in the daemon's environment, "
                "or start it with runtimed run --gateway-url URL")
        return Gateway(
            url=url, token=self.setting("token"), ws_url=self.setting("ws_url"),
            auth_scheme=self.setting("auth_scheme"), headers=self.setting("headers"),
            validate_cert=self.setting("validate_cert"), ca_certs=self.setting("ca_certs"),
            client_cert=self.setting("client_cert"), client_key=self.setting("client_key"),
            request_timeout=self.setting("request_timeout"),
            reconnect_secs=self.setting("reconnect_secs"))

    @property
    def client(self) -> GatewayClient:
        if self._client is None:
            self._client = GatewayClient(self.gateway())
        return self._client

    async def kernelspecs(self) -> dict[str, dict[str, Any]]:
        """The gateway's kernelspecs by (lowercased) name: each its ``spec`` (``display_name``,
        ``language``, ``argv`` on the gateway's host...) plus its ``name`` there."""
        loop = asyncio.get_running_loop()
        if self._specs is not None and loop.time() - self._specs[0] < KERNELSPECS_TTL:
            return self._specs[1]
        if self._listing is None or self._listing.get_loop() is not loop:
            self._listing = asyncio.ensure_future(self._list())  # one request for every caller
            self._listing.add_done_callback(lambda _: setattr(self, "_listing", None))
        specs = await asyncio.shield(self._listing)
        self._specs = (loop.time(), specs)
        return specs

    async def _list(self) -> dict[str, dict[str, Any]]:
        _, listing = await self.client.request("GET", "/api/kernelspecs")
        found: dict[str, dict[str, Any]] = {}
        entries = listing.get("kernelspecs") if isinstance(listing, dict) else None
        for name, entry in sorted((entries or {}).items()):
            spec = entry.get("spec") if isinstance(entry, dict) else None
            if isinstance(spec, dict):
                found[name.lower()] = {**spec, "name": name}
        return found

    async def kernelspec_for(self, kernel_name: str | None) -> dict[str, Any]:
        if kernel_name is None:
            return {}
        spec = (await self.kernelspecs()).get(kernel_name, {})
        return {"name": spec.get("name", kernel_name),
                "display_name": spec.get("display_name", kernel_name),
                "language": spec.get("language", "")}

    def kernel_env(self, base: dict[str, str]) -> dict[str, str]:
        """What a start sends as ``env`` (see the module docstring)."""
        env = {key: value for key, value in base.items() if key.startswith("KERNEL_")}
        env.update({key: base[key] for key in self.setting("env") if key in base})
        if "KERNEL_USERNAME" not in env:
            import getpass

            env["KERNEL_USERNAME"] = self.setting("username") or getpass.getuser()
        return env

    async def launch(self, ctx: LaunchContext) -> KernelHandle:
        from runtimed_gateway_kernel.kernel import GatewayKernel

        specs = await self.kernelspecs()
        available = ", ".join(sorted(specs)) or "none"
        if not ctx.kernel_name:
            raise InvalidRequest(f"kernel_type 'gateway' needs a kernel name: 'gateway:<name>' "
                                 f"(the gateway at {self.client.gateway.url} has: {available})")
        spec = specs.get(ctx.kernel_name.lower())
        if spec is None:  # removed since the start was planned
            raise KernelLaunchFailed(f"The gateway at {self.client.gateway.url} has no kernel "
                                     f"named {ctx.kernel_name!r} (available: {available})")
        body = {"name": spec["name"], "env": self.kernel_env(ctx.env)}
        _, model = await self.client.request("POST", "/api/kernels", body)
        kernel_id = model.get("id") if isinstance(model, dict) else None
        if not isinstance(kernel_id, str) or not kernel_id:
            raise KernelLaunchFailed(f"The gateway at {self.client.gateway.url} started a kernel "
                                     f"but did not say its id (answer: {model!r})")
        log.info("Gateway kernel %s (%s) started on %s", kernel_id, spec["name"],
                 self.client.gateway.url)
        files = tuple(p for p in (ctx.connection_file, ctx.stderr_path) if p is not None)
        return GatewayKernel(self.client, kernel_id, spec["name"], files=files)
