"""The gateway's REST API: where it is, how to authenticate, and the few calls runtimed makes.

Kernel Gateway and Enterprise Gateway serve jupyter_server's kernel API:
``GET /api/kernelspecs``, ``POST /api/kernels`` (start), ``GET``/``DELETE
/api/kernels/{id}``, ``POST /api/kernels/{id}/interrupt`` and ``.../restart``,
with ``Authorization: token <token>``. A kernel's life has a handful of these
calls, so they run on the standard library's HTTP client in a worker thread
(``asyncio.to_thread``), each with a timeout; the WebSocket is the busy part
(:mod:`runtimed_gateway_kernel.kernel`).

Errors are :class:`GatewayError` (a :class:`runtimed.KernelLaunchFailed`) naming
the gateway's URL; a refused token says so, and is never retried.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from runtimed.errors import KernelLaunchFailed, PluginError

#: What a refused request answers; no retry makes it pass.
AUTH_FAILED = (401, 403)


class GatewayError(KernelLaunchFailed):
    """The gateway could not be reached, refused runtimed's credentials, or failed a
    request; ``context`` has its ``url`` (and the HTTP ``status``, when there was one)."""


class GatewayNotConfigured(PluginError):
    """``kernel_type="gateway:..."`` with no gateway URL set."""


def http_url(text: str) -> str:
    """A gateway's base URL (``http://`` or ``https://``), without a trailing slash; "" is none."""
    return _url(text, ("http", "https"))


def ws_url(text: str) -> str:
    """A gateway's WebSocket base URL (``ws://`` or ``wss://``); "" derives it from the URL."""
    return _url(text, ("ws", "wss"))


def _url(text: str, schemes: tuple[str, ...]) -> str:
    text = text.strip()
    if not text:
        return ""
    parts = urlsplit(text)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"expected a {' or '.join(s + '://' for s in schemes)} URL with a host, "
                         f"got {text!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"expected a base URL without ?query or #fragment, got {text!r}")
    return text.rstrip("/")


def header_map(text: str) -> dict[str, str]:
    """Extra HTTP headers as a JSON object of strings: ``{"X-Team": "ml"}``."""
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        raise ValueError(f"expected a JSON object of header names and values, got {text!r}"
                         ) from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"expected a JSON object of header names and string values, got {text!r}")
    return value


def positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"expected a number of seconds > 0, got {text!r}")
    return value


@dataclass(frozen=True)
class Gateway:
    """Where the gateway is and how runtimed talks to it (from the launcher's settings)."""

    url: str
    token: str = ""
    ws_url: str = ""
    auth_scheme: str = "token"
    headers: dict[str, str] = field(default_factory=dict)
    validate_cert: bool = True
    ca_certs: str = ""
    client_cert: str = ""
    client_key: str = ""
    request_timeout: float = 60.0
    #: How long a kernel whose WebSocket dropped is given to be reached again before it
    #: counts as lost.
    reconnect_secs: float = 30.0

    def http_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.token:
            headers["Authorization"] = f"{self.auth_scheme} {self.token}".strip()
        return headers

    def channels_url(self, kernel_id: str, session_id: str) -> str:
        base = self.ws_url or "ws" + self.url[len("http"):]
        return f"{base}/api/kernels/{quote(kernel_id)}/channels?session_id={quote(session_id)}"

    def ssl_context(self, for_url: str) -> ssl.SSLContext | None:
        """The TLS settings for an ``https``/``wss`` URL (None for plain ones)."""
        if urlsplit(for_url).scheme not in ("https", "wss"):
            return None
        try:
            ctx = ssl.create_default_context(cafile=self.ca_certs or None)
            if self.client_cert:
                ctx.load_cert_chain(self.client_cert, self.client_key or None)
        except (OSError, ssl.SSLError) as exc:
            raise GatewayError(f"The TLS files for the gateway at {self.url} do not load "
                               f"(ca_certs {self.ca_certs!r}, client_cert {self.client_cert!r}): "
                               f"{exc}", url=self.url) from None
        if not self.validate_cert:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx

    def auth_error(self, status: int, what: str, message: str = "") -> GatewayError:
        """The error of a refused request (401/403), with the gateway's reason when it gave
        one beyond the status (Enterprise Gateway says which user it refuses, say)."""
        given = ("the token in RUNTIMED_GATEWAY_TOKEN" if self.token
                 else "no token (RUNTIMED_GATEWAY_TOKEN is empty)")
        text = f"The gateway at {self.url} refused {what} with HTTP {status}"
        if message and message.lower() not in ("unauthorized", "forbidden"):
            text += f": {message}"
        if status == 401 or not message or message.lower() == "forbidden":
            text += f" (runtimed sent {given}; set it to the gateway's token)"
        return GatewayError(text, url=self.url, status=status)


class GatewayClient:
    """The REST calls, each in a worker thread with :attr:`Gateway.request_timeout`."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._opener: Any = None
        #: Requests made, by ``"METHOD path"`` (what a test checks to see there is no retry storm).
        self.calls: dict[str, int] = {}

    async def request(self, method: str, path: str, body: Any = None, *,
                      allow: tuple[int, ...] = (), timeout: float | None = None
                      ) -> tuple[int, Any]:
        """``(status, JSON body or None)``; statuses in ``allow`` (e.g. 404) are answers, other
        failures raise :class:`GatewayError`."""
        key = f"{method} {path}"
        self.calls[key] = self.calls.get(key, 0) + 1
        return await asyncio.to_thread(self._request, method, path, body, allow,
                                       timeout or self.gateway.request_timeout)

    def _request(self, method: str, path: str, body: Any, allow: tuple[int, ...],
                 timeout: float) -> tuple[int, Any]:
        import urllib.error
        import urllib.request

        gateway = self.gateway
        if self._opener is None:
            context = gateway.ssl_context(gateway.url)
            handlers = [urllib.request.HTTPSHandler(context=context)] if context else []
            self._opener = urllib.request.build_opener(*handlers)
        data = json.dumps(body).encode() if body is not None else None
        headers = {**gateway.http_headers(), "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(gateway.url + path, data=data, headers=headers, method=method)
        what = f"{method} {path}"
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                return resp.status, _json(resp.read())
        except urllib.error.HTTPError as exc:
            text = exc.read()
            if exc.code in allow:
                return exc.code, _json(text)
            if exc.code in AUTH_FAILED:
                raise gateway.auth_error(exc.code, what, _reason(text, "")) from None
            raise GatewayError(f"The gateway at {gateway.url} answered {what} with HTTP "
                               f"{exc.code}: {_reason(text, exc.reason)}",
                               url=gateway.url, status=exc.code) from None
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise GatewayError(f"Could not reach the gateway at {gateway.url} ({what}): {reason}",
                               url=gateway.url) from None


def _json(data: bytes) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None


def _reason(body: bytes, default: str) -> str:
    """The message of a jupyter_server JSON error (``{"reason", "message"}``), else ``default``."""
    payload = _json(body)
    if isinstance(payload, dict):
        return str(payload.get("message") or payload.get("reason") or default)
    return body.decode(errors="replace").strip()[:300] or str(default)
