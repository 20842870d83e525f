"""Reading and writing ``.ipynb`` files with nbformat, in a child process of the daemon.

nbformat (with jsonschema and traitlets) costs a process ~16 MB of memory, too
much to keep in a long-lived daemon whose idle target is 45 MB, so the daemon
runs ``python -m runtimed.formats.nbfile`` when it first needs a file and
talks to it over its stdin and stdout: 4-byte big-endian length, then a JSON
object, each way. The child exits when its stdin closes or after
:data:`IDLE_EXIT` seconds without a request; the daemon starts another when
it needs one (:class:`runtimed.daemon.nbformat_worker.NbformatWorker`).

Requests and replies:

- ``{"op": "read", "path"}`` -> ``{"ok": true, "nb", "had_ids", "version", "fingerprint"}``:
  the notebook as nbformat reads it (converted to 4.5: older files are
  upgraded and get cell ids; ``had_ids`` says whether the file had them), its
  ``[nbformat, nbformat_minor]`` on disk, and the file's fingerprint
  (``sha256``, ``size``, ``mtime_ns``);
- ``{"op": "write", "path", "nb"}`` -> ``{"ok": true, "fingerprint"}``: validated
  with nbformat, written as ``nbformat.write`` writes (key order and
  indentation), atomically: a temporary file in the same directory, flushed
  and fsynced, renamed over the target, the directory fsynced. The file's mode
  is kept. A crash at any point leaves the old file or the new one, never a part.

A failure is ``{"ok": false, "kind", "message"}``; ``kind`` is ``missing``,
``directory``, ``permission``, ``encoding``, ``json``, ``notebook``, ``invalid``
or ``os``, and ``message`` names the path and the problem.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import struct
import sys
import uuid
from pathlib import Path
from typing import Any

IDLE_EXIT = 120.0
_LEN = struct.Struct(">I")


class FileProblem(Exception):
    """A file that cannot be read or written, with a ``kind`` (see the module docstring)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def fingerprint(data: bytes, path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "mtime_ns": st.st_mtime_ns}


def _os_problem(path: Path, exc: OSError, doing: str) -> FileProblem:
    if isinstance(exc, FileNotFoundError):
        return FileProblem("missing", f"{path}: no such file")
    if isinstance(exc, IsADirectoryError):
        return FileProblem("directory", f"{path} is a directory, not a notebook file")
    if isinstance(exc, PermissionError):
        return FileProblem("permission", f"{path}: permission denied ({doing})")
    return FileProblem("os", f"{path}: cannot {doing}: {exc.strerror or exc}")


def _nbformat() -> Any:
    import warnings

    import nbformat

    warnings.filterwarnings("ignore", module="nbformat")
    return nbformat


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read(path: Path) -> dict[str, Any]:
    """Read ``path`` with nbformat (see the module docstring); raise :class:`FileProblem`."""
    nbformat = _nbformat()
    try:
        data = path.read_bytes()
        found = fingerprint(data, path)
    except OSError as exc:
        raise _os_problem(path, exc, "read it") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem("encoding", f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        raw = json.loads(text)
    except ValueError as exc:
        raise FileProblem("json", f"{path} is not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or "nbformat" not in raw:
        raise FileProblem("notebook", f"{path} is not a Jupyter notebook (no nbformat version in it)")
    version = [raw.get("nbformat"), raw.get("nbformat_minor", 0)]
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as exc:  # nbformat raises many kinds for "not a notebook"
        raise FileProblem("notebook", f"{path} is not a notebook nbformat can read: {_first_line(exc)}") from None
    had_ids = all("id" in cell for cell in nb.cells)
    if nb.nbformat_minor < 5 or not had_ids:
        nb = nbformat.v4.upgrade(nb, from_version=4, from_minor=min(nb.nbformat_minor, 4))
    try:
        nbformat.validate(nb)
    except Exception as exc:
        raise FileProblem("invalid", f"{path} is not a valid notebook: {_first_line(exc)}") from None
    return {"nb": nb, "had_ids": had_ids, "version": version, "fingerprint": found}


def render(nb: dict[str, Any]) -> bytes:
    """The bytes ``nbformat.write`` writes for ``nb`` (validated first; FileProblem if invalid)."""
    nbformat = _nbformat()
    node = nbformat.from_dict(nb)
    try:
        nbformat.validate(node)
    except Exception as exc:
        raise FileProblem("invalid", f"the notebook is not valid, not saved: {_first_line(exc)}") from None
    text = nbformat.writes(node, version=4)
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


def write(path: Path, nb: dict[str, Any]) -> dict[str, Any]:
    """Validate and write ``nb`` to ``path`` atomically; return the new file's fingerprint."""
    data = render(nb)
    if path.is_dir():
        raise FileProblem("directory", f"{path} is a directory, not a notebook file")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        mode = path.stat().st_mode & 0o7777 if path.exists() else None
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if mode is not None:
                os.chmod(tmp, mode)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return fingerprint(data, path)
    except OSError as exc:
        raise _os_problem(path, exc, "write it") from None


def handle(request: dict[str, Any]) -> dict[str, Any]:
    """One request to its reply (see the module docstring)."""
    try:
        op, path = request.get("op"), Path(str(request.get("path", "")))
        if op == "read":
            return {"ok": True, **read(path)}
        if op == "write":
            return {"ok": True, "fingerprint": write(path, request["nb"])}
        if op == "ping":
            return {"ok": True}
        return {"ok": False, "kind": "request", "message": f"unknown op {op!r}"}
    except FileProblem as exc:
        return {"ok": False, "kind": exc.kind, "message": exc.message}


def _read_exactly(fd: int, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(fd: int) -> dict[str, Any] | None:
    """One request from file descriptor ``fd`` (unbuffered), or None at end of input."""
    head = _read_exactly(fd, _LEN.size)
    if head is None:
        return None
    body = _read_exactly(fd, _LEN.unpack(head)[0])
    return None if body is None else json.loads(body)


def frame(obj: Any) -> bytes:
    body = json.dumps(obj, ensure_ascii=False).encode("utf-8")
    return _LEN.pack(len(body)) + body


def main() -> None:
    stdin, stdout = sys.stdin.fileno(), sys.stdout.buffer
    _nbformat()  # import now: the first request should not wait for it
    while True:
        ready, _, _ = select.select([stdin], [], [], IDLE_EXIT)
        if not ready:
            return  # idle: the daemon starts another when it needs one
        request = read_frame(stdin)
        if request is None:
            return  # the daemon closed our stdin
        try:
            reply = handle(request)
        except Exception as exc:  # a bug: answer, keep serving
            reply = {"ok": False, "kind": "bug", "message": f"{type(exc).__name__}: {exc}"}
        stdout.write(frame(reply))
        stdout.flush()


if __name__ == "__main__":
    main()
