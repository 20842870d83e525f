"""The daemon's side of the nbformat child process (:mod:`runtimed.formats.nbfile`).

Started when a notebook file is first read or written, one request at a time;
the child exits by itself when idle, and the next request starts another.
Failures arrive as :class:`runtimed.errors.NotebookFileError` naming the path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import sys
from pathlib import Path
from typing import Any

from runtimed import procs
from runtimed.errors import NotebookFileError

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")


class NbformatWorker:
    """Requests to the nbformat child process; see the module docstring."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def read(self, path: Path) -> dict[str, Any]:
        """``{"nb", "had_ids", "version", "fingerprint"}`` of the notebook at ``path``."""
        return await self._request({"op": "read", "path": str(path)}, path)

    async def write(self, path: Path, nb: dict[str, Any]) -> dict[str, Any]:
        """Validate and write ``nb`` atomically; the new file's fingerprint."""
        return (await self._request({"op": "write", "path": str(path), "nb": nb}, path))["fingerprint"]

    async def _request(self, request: dict[str, Any], path: Path) -> dict[str, Any]:
        body = json.dumps(request, ensure_ascii=False).encode("utf-8")
        # The exchange runs to its end even if the caller is cancelled (a room closing while it
        # reads its file): a reply left unread in the pipe would stall every later request.
        reply = await asyncio.shield(asyncio.ensure_future(self._exchange(body, path)))
        if not reply.get("ok"):
            raise NotebookFileError(reply.get("message", "unknown error"), path=str(path),
                                    kind=reply.get("kind"))
        return reply

    async def _exchange(self, body: bytes, path: Path) -> dict[str, Any]:
        """One request and its reply, one at a time."""
        async with self._lock:
            for attempt in (1, 2):  # a child that exited while idle is replaced once
                proc = await self._process()
                assert proc.stdin is not None and proc.stdout is not None
                try:
                    proc.stdin.write(_LEN.pack(len(body)) + body)
                    await proc.stdin.drain()
                    (length,) = _LEN.unpack(await proc.stdout.readexactly(_LEN.size))
                    return json.loads(await proc.stdout.readexactly(length))
                except (BrokenPipeError, ConnectionResetError, asyncio.IncompleteReadError) as exc:
                    await self._stop(proc)
                    if attempt == 2:
                        raise NotebookFileError(f"{path}: the nbformat process failed ({exc})",
                                                path=str(path), kind="bug") from None
        raise AssertionError("unreachable")

    async def _process(self) -> asyncio.subprocess.Process:
        if self._proc is None or self._proc.returncode is not None:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtimed.formats.nbfile",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env=procs.subprocess_env())
            log.debug("Started the nbformat process (pid %d)", self._proc.pid)
        return self._proc

    async def _stop(self, proc: asyncio.subprocess.Process) -> None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if self._proc is proc:
            self._proc = None

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            assert proc.stdin is not None
            proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                await self._stop(proc)
