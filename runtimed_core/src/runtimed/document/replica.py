"""A thin adapter over ``automerge.core``: one document, its sync states, and change tracking.

Automerge patches are opaque in the Python bindings, so change notification is
derived from heads: :attr:`Replica.version` increments whenever the heads move,
and :meth:`Replica.has_heads` answers "does this document contain these
changes" from the set of change hashes seen so far.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from automerge import core as am

ROOT = am.ROOT
Text = am.ObjType.Text
Map = am.ObjType.Map
List = am.ObjType.List
Str = am.ScalarType.Str
Int = am.ScalarType.Int
F64 = am.ScalarType.F64
Bool = am.ScalarType.Boolean
Null = am.ScalarType.Null
ObjType = am.ObjType
SyncState = am.SyncState
Transaction = Any  # automerge's transaction type is not exported


class Replica:
    """One Automerge document owned by a single asyncio task (no locking)."""

    def __init__(self, doc: am.Document | None = None, *, actor: bytes | None = None) -> None:
        self.doc = doc if doc is not None else am.Document(actor_id=actor)
        self.version = 0
        self._heads: list[bytes] = self.doc.get_heads()
        self._known: set[bytes] | None = None  # built on the first has_heads() that needs it
        #: Derived data (e.g. cell order) that schema modules cache against :attr:`version`.
        self.cache: dict[str, Any] = {}
        self._known_at: list[bytes] = []

    @classmethod
    def load(cls, data: bytes) -> Replica:
        """Load a saved document (a snapshot, optionally followed by change chunks)."""
        return cls(am.Document.load(data))

    # writing ----------------------------------------------------------------------------
    @contextmanager
    def change(self) -> Iterator[Transaction]:
        """``with replica.change() as tx:`` one transaction; rolled back if the block raises."""
        with self.doc.transaction() as tx:
            yield tx
        self._moved()

    def merge(self, other: Replica) -> bool:
        """Merge another document's changes into this one; return True if it changed."""
        self.doc.merge(other.doc)
        return self._moved()

    def fork_at(self, heads: list[bytes]) -> Replica:
        """An independent copy of this document as it was at ``heads``, with its own actor."""
        import uuid

        fork = Replica(self.doc.fork_at(heads) if heads else self.doc.fork())
        fork.doc.set_actor(uuid.uuid4().bytes)
        return fork

    def receive(self, state: am.SyncState, message: bytes) -> bool:
        """Apply a peer's sync message; return True if the document changed."""
        self.doc.receive_sync_message(state, am.Message.decode(bytes(message)))
        return self._moved()

    def generate(self, state: am.SyncState) -> bytes | None:
        """The next sync message for the peer behind ``state``, or None when in sync."""
        msg = self.doc.generate_sync_message(state)
        return None if msg is None else msg.encode()

    def _moved(self) -> bool:
        heads = self.doc.get_heads()
        if heads == self._heads:
            return False
        self._heads = heads
        self.version += 1
        return True

    # reading ----------------------------------------------------------------------------
    @property
    def heads(self) -> list[bytes]:
        return self._heads

    def has_heads(self, heads: list[bytes]) -> bool:
        """True if every change in ``heads`` is part of this document."""
        if all(h in self._heads for h in heads):
            return True
        if self._known is None:
            self._known = set()
            self._known_at = []
        if self._known_at != self._heads:
            self._known.update(ch.hash for ch in self.doc.get_changes(self._known_at))
            self._known_at = self._heads
        return all(h in self._known for h in heads)

    def changes_since(self, heads: list[bytes]) -> list[bytes]:
        """Encoded change chunks after ``heads`` (appendable to a saved document)."""
        return [ch.bytes for ch in self.doc.get_changes(heads)]

    def save(self) -> bytes:
        return self.doc.save()

    def get(self, obj: bytes, prop: str | int) -> Any:
        """A scalar value (``None`` if absent or null), or the object id of a nested object."""
        found = self.doc.get(obj, prop)
        if found is None:
            return None
        value, obj_id = found
        if isinstance(value, tuple):
            return value[1]
        return obj_id

    def get_obj(self, obj: bytes, prop: str | int) -> bytes | None:
        found = self.doc.get(obj, prop)
        if found is None or isinstance(found[0], tuple):
            return None
        return found[1]

    def keys(self, obj: bytes) -> list[str]:
        return self.doc.keys(obj)

    def length(self, obj: bytes) -> int:
        return self.doc.length(obj)

    def text(self, obj: bytes) -> str:
        return self.doc.text(obj)

    def to_py(self, obj: bytes) -> Any:
        """A nested object as plain Python (maps to dicts, lists to lists, text to str)."""
        kind = self.doc.object_type(obj)
        if kind == Text:
            return self.doc.text(obj)
        if kind == List:
            return [self._plain(v) for v in self.doc.values(obj)]
        return {k: self._plain(v) for k, v in zip(self.doc.keys(obj), self.doc.values(obj))}

    def _plain(self, entry: tuple[Any, bytes]) -> Any:
        value, obj_id = entry
        return value[1] if isinstance(value, tuple) else self.to_py(obj_id)


# helpers for transactions ------------------------------------------------------------------
def put_json(tx: Transaction, obj: bytes, prop: str | int, value: Any, *, insert: bool = False) -> None:
    """Write a JSON value as nested Automerge maps, lists and scalars (strings stay scalars)."""
    put = tx.insert if insert else tx.put
    put_object = tx.insert_object if insert else tx.put_object
    if isinstance(value, dict):
        child = put_object(obj, prop, Map)
        for k, v in value.items():
            put_json(tx, child, str(k), v)
    elif isinstance(value, list):
        child = put_object(obj, prop, List)
        for i, v in enumerate(value):
            put_json(tx, child, i, v, insert=True)
    elif value is None:
        put(obj, prop, Null, None)
    elif isinstance(value, bool):
        put(obj, prop, Bool, value)
    elif isinstance(value, int):
        put(obj, prop, Int, value)
    elif isinstance(value, float):
        put(obj, prop, F64, value)
    elif isinstance(value, str):
        put(obj, prop, Str, value)
    else:
        put(obj, prop, Str, json.dumps(value))


def splice_to(tx: Transaction, text_obj: bytes, old: str, new: str) -> None:
    """Turn Text ``old`` into ``new`` with one minimal splice (common prefix and suffix kept)."""
    if old == new:
        return
    start = 0
    limit = min(len(old), len(new))
    while start < limit and old[start] == new[start]:
        start += 1
    end_old, end_new = len(old), len(new)
    while end_old > start and end_new > start and old[end_old - 1] == new[end_new - 1]:
        end_old -= 1
        end_new -= 1
    tx.splice_text(text_obj, start, end_old - start, new[start:end_new])
