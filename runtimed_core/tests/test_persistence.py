"""DocStore: the append log, compaction, crash leftovers, corrupt files."""

from __future__ import annotations

import asyncio

from runtimed.daemon.persistence import DocStore
from runtimed.document import notebook


def test_log_then_snapshot_round_trip(tmp_path):
    async def main():
        store = DocStore(tmp_path, "nb")
        doc = store.load()
        a = notebook.add_cell(doc, "a = 1")
        store.record(doc)
        # nothing compacted yet: a fresh store reads snapshot-less log records
        assert [c.id for c in notebook.read_cells(DocStore(tmp_path, "nb").load())] == [a]
        store.compact(doc, background=False)
        b = notebook.add_cell(doc, "b = 2")
        store.record(doc)
        reloaded = DocStore(tmp_path, "nb").load()
        assert [(c.id, c.source) for c in notebook.read_cells(reloaded)] == [(a, "a = 1"), (b, "b = 2")]
        store.close(doc)

    asyncio.run(main())


def test_crash_between_log_cut_and_snapshot_loses_nothing(tmp_path):
    async def main():
        store = DocStore(tmp_path, "nb")
        doc = store.load()
        notebook.add_cell(doc, "kept")
        store.record(doc)
        # simulate a compaction that cut the log but died before its snapshot landed
        cut = store.log_path.with_name(store.log_path.name + ".999-1")
        store.log_path.rename(cut)
        reloaded = DocStore(tmp_path, "nb").load()
        assert [c.source for c in notebook.read_cells(reloaded)] == ["kept"]
        assert not cut.exists() and store.snapshot_path.exists()
        store.close(doc)

    asyncio.run(main())


def test_torn_tail_is_ignored(tmp_path):
    async def main():
        store = DocStore(tmp_path, "nb")
        doc = store.load()
        notebook.add_cell(doc, "whole")
        store.record(doc)
        with open(store.log_path, "ab") as f:
            f.write(b"\x00\x00\x10\x00partial")
        assert [c.source for c in notebook.read_cells(DocStore(tmp_path, "nb").load())] == ["whole"]
        store.close(doc)

    asyncio.run(main())
