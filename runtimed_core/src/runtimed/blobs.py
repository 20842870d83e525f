"""Output blobs: large and binary output parts kept by content address, out of the documents.

An image in a notebook is a base64 string of megabytes inside an output's
``data``. Kept in the runtime-state document it would travel inside every sync
message to every session; instead the daemon stores its bytes once, under their
SHA-256, in the blob store (:class:`BlobStore`), and the output in the document
keeps a reference:

    {"output_type": "display_data", "data": {"text/plain": "<Figure>"},
     "metadata": {}, "$blobs": {"image/png": {"sha256": "ab12...", "size": 40213,
                                             "encoding": "base64"}}}

Binary parts (base64 MIME types: images other than SVG, PDF...) always go to
blobs, text parts when longer than a threshold. :func:`inline_output` turns a
reference back into exactly the string the kernel sent (``encoding`` says how:
``base64`` standard, ``base64-lines`` 76-column lines as
``base64.encodebytes`` writes, ``base64-nl`` with a final newline, ``text``
UTF-8), so what a session reads is byte-exact. Sessions read blobs from the
store's directory (they run as the same user); browsers through the daemon's
HTTP server (``GET /blob/<sha256>``).

Layout of the store: ``<root>/<sha256[:2]>/<sha256>`` (the bytes; written to a
temporary file and renamed, so a reader never sees half of one) and
``<sha256>.type`` beside it (the content type it was first stored with).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BLOBS_KEY = "$blobs"
#: The largest blob kept (bytes); a larger part is dropped with a note in ``text/plain``.
DEFAULT_CAP = 100 * 2**20
#: Text parts longer than this (characters) go to blobs.
DEFAULT_TEXT_THRESHOLD = 32 * 1024
_TEXTUAL_APPLICATION = ("application/javascript", "application/xml", "application/x-latex",
                        "application/x-tex", "application/ecmascript")


def is_binary_mime(mime: str) -> bool:
    """Whether nbformat keeps ``mime`` as base64 (images other than SVG, PDF, octet streams...)."""
    if mime.startswith("text/") or mime.endswith(("json", "+xml")) or mime in _TEXTUAL_APPLICATION:
        return False
    return True


def _encode(raw: bytes, encoding: str) -> str:
    if encoding == "base64":
        return base64.b64encode(raw).decode("ascii")
    if encoding == "base64-nl":
        return base64.b64encode(raw).decode("ascii") + "\n"
    if encoding == "base64-lines":
        return base64.encodebytes(raw).decode("ascii")
    return raw.decode("utf-8")


def _as_bytes(value: str, binary: bool) -> tuple[bytes, str]:
    """The bytes to store for ``value`` and the encoding that gives ``value`` back exactly."""
    if binary:
        try:
            raw = base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError):
            raw = None
        if raw is not None:
            for encoding in ("base64", "base64-nl", "base64-lines"):
                if _encode(raw, encoding) == value:
                    return raw, encoding
    return value.encode("utf-8"), "text"


def offload_output(output: dict[str, Any], put: Callable[[bytes, str], str | None], *,
                   text_threshold: int = DEFAULT_TEXT_THRESHOLD) -> dict[str, Any]:
    """``output`` with its binary and large text parts moved to blobs (``put(bytes,
    content_type) -> sha256``, or None when a part is too large to keep)."""
    data = output.get("data")
    if not isinstance(data, dict):
        return output
    kept, refs, dropped = {}, dict(output.get(BLOBS_KEY) or {}), []
    for mime, value in data.items():
        binary = is_binary_mime(mime)
        if not isinstance(value, str) or (not binary and len(value) <= text_threshold):
            kept[mime] = value
            continue
        raw, encoding = _as_bytes(value, binary)
        sha = put(raw, mime)
        if sha is None:
            dropped.append((mime, len(raw)))
            continue
        refs[mime] = {"sha256": sha, "size": len(raw), "encoding": encoding}
    if not refs and not dropped:
        return output
    out = {**output, "data": kept}
    if refs:
        out[BLOBS_KEY] = refs
    if dropped:
        note = "; ".join(f"{mime} of {size / 2**20:.0f} MiB not kept: larger than the blob cap"
                         for mime, size in dropped)
        plain = kept.get("text/plain")
        kept["text/plain"] = f"{plain}\n[{note}]" if isinstance(plain, str) else f"[{note}]"
    return out


def blob_refs(output: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """MIME type -> blob reference of an output's offloaded parts."""
    refs = output.get(BLOBS_KEY)
    return refs if isinstance(refs, dict) else {}


def inline_output(output: dict[str, Any], read: Callable[[str], bytes | None]) -> dict[str, Any]:
    """``output`` as the kernel sent it: every blob reference replaced by its content
    (``read(sha256) -> bytes``; a blob that cannot be read leaves its part out)."""
    refs = blob_refs(output)
    if not refs:
        return output
    data = dict(output.get("data") or {})
    for mime, ref in refs.items():
        raw = read(ref["sha256"])
        if raw is not None:
            data[mime] = _encode(raw, ref.get("encoding", "text"))
    out = {k: v for k, v in output.items() if k != BLOBS_KEY}
    out["data"] = data
    return out


def shas(outputs: Iterable[dict[str, Any]]) -> set[str]:
    """Every blob the outputs refer to."""
    return {ref["sha256"] for output in outputs for ref in blob_refs(output).values()}


def blob_file(root: Path, sha: str) -> Path:
    return root / sha[:2] / sha


def valid_sha(sha: str) -> bool:
    return len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)


class BlobReader:
    """Reads blobs from a store's directory, verified, with a small cache (sessions)."""

    def __init__(self, root: Path, cache_bytes: int = 64 * 2**20) -> None:
        self.root = root
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_bytes = cache_bytes
        self._held = 0

    def read(self, sha: str) -> bytes | None:
        if sha in self._cache:
            self._cache.move_to_end(sha)
            return self._cache[sha]
        if not valid_sha(sha):
            return None
        try:
            raw = blob_file(self.root, sha).read_bytes()
        except OSError:
            log.warning("Blob %s is missing from %s", sha, self.root)
            return None
        if hashlib.sha256(raw).hexdigest() != sha:
            log.warning("Blob %s in %s is corrupt (its content does not match its name)", sha, self.root)
            return None
        self._cache[sha] = raw
        self._held += len(raw)
        while self._held > self._cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._held -= len(old)
        return raw


class BlobStore(BlobReader):
    """The daemon's blob store (see the module docstring)."""

    def __init__(self, root: Path, *, cap: int = DEFAULT_CAP) -> None:
        super().__init__(root, cache_bytes=0)
        self.cap = cap

    def put(self, raw: bytes, content_type: str) -> str | None:
        """Store ``raw`` (once: it is content addressed); its SHA-256, or None if over the cap."""
        if len(raw) > self.cap:
            log.warning("Not keeping a %s of %d bytes: larger than the %d-byte blob cap",
                        content_type, len(raw), self.cap)
            return None
        sha = hashlib.sha256(raw).hexdigest()
        target = blob_file(self.root, sha)
        if target.exists():
            with contextlib.suppress(OSError):
                os.utime(target)  # used again: not garbage
            return sha
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = target.with_name(f".{sha}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(raw)
            os.replace(tmp, target)
            type_file = target.with_suffix(".type")
            if not type_file.exists():
                type_file.write_text(content_type)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            log.warning("Could not write blob %s", target, exc_info=True)
            return None
        return sha

    def content_type(self, sha: str) -> str:
        try:
            return blob_file(self.root, sha).with_suffix(".type").read_text().strip() or \
                "application/octet-stream"
        except OSError:
            return "application/octet-stream"

    def collect(self, live: set[str], *, older_than: float = 3600.0) -> int:
        """Delete blobs nothing refers to (``live``) and unused for ``older_than`` seconds;
        return how many. Temporary files of interrupted writes go too."""
        removed, now = 0, time.time()
        try:
            folders = [p for p in self.root.iterdir() if p.is_dir()]
        except OSError:
            return 0
        for folder in folders:
            for path in folder.iterdir():
                name = path.name.split(".")[0] if not path.name.startswith(".") else path.name[1:65]
                try:
                    old = now - path.stat().st_mtime > older_than
                except OSError:
                    continue
                if old and name not in live:
                    with contextlib.suppress(OSError):
                        path.unlink()
                        removed += not path.name.endswith((".type", ".tmp"))
        return removed
