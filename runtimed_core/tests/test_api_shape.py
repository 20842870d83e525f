"""The public API's shape: sync/async parity and the seed's names."""

from __future__ import annotations

import asyncio
import inspect

import pytest

import runtimed


def _public(cls) -> set[str]:
    return {n for n, v in vars(cls).items() if not n.startswith("_") and (callable(v) or isinstance(v, property))}


@pytest.mark.parametrize(("sync", "async_"), [(runtimed.Session, runtimed.AsyncSession),
                                              (runtimed.DaemonClient, runtimed.AsyncDaemonClient)])
def test_every_sync_method_has_an_async_twin(sync, async_):
    missing = _public(sync) - _public(async_)
    assert not missing, f"{sync.__name__} has no async twin for {sorted(missing)}"
    for name in _public(sync) - {"notebook_id"}:
        member = getattr(async_, name)
        if not isinstance(member, property):
            assert inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member), \
                f"{async_.__name__}.{name} is not async"


def test_seed_names_exist():
    for name in ("connect", "start_kernel", "interrupt", "shutdown_kernel", "create_cell", "set_source",
                 "execute_cell", "queue_cell", "get_cell", "get_cells", "delete_cell", "run",
                 "set_metadata", "get_metadata", "notebook_id", "is_connected", "kernel_started",
                 "env_source", "__enter__", "__exit__"):
        assert hasattr(runtimed.Session, name), name
    for name in ("ping", "is_running", "status", "list_rooms", "flush_pool", "shutdown"):
        assert hasattr(runtimed.DaemonClient, name), name
    result = runtimed.ExecutionResult("c", True, 1, [runtimed.Output("stream", name="stdout", text="hi\n"),
                                                     runtimed.Output("error", ename="E", evalue="v")])
    assert (result.stdout, result.stderr, result.error.ename, result.display_data) == ("hi\n", "", "E", [])
    assert issubclass(runtimed.CellNotFound, runtimed.RuntimedError)


@pytest.mark.slow
def test_sync_api_inside_a_running_event_loop(runtimed_daemon):
    """Like a Jupyter cell: the caller's thread already runs a loop."""

    async def notebook_cell():
        with runtimed_daemon.session() as session:
            return session.run("print('from inside a loop')").stdout

    assert asyncio.run(notebook_cell()) == "from inside a loop\n"


def test_notebook_file_names_exist():
    for cls in (runtimed.Session, runtimed.AsyncSession):
        for name in ("path", "save", "run_all", "move_cell", "clear_outputs", "set_cell_metadata"):
            assert hasattr(cls, name), f"{cls.__name__}.{name}"
        assert "path" in inspect.signature(cls.__init__).parameters
    for name in ("metadata", "outputs"):
        assert name in runtimed.Cell.__dataclass_fields__
    assert issubclass(runtimed.NotebookFileError, runtimed.RuntimedError)


def test_agent_names_exist():
    for cls in (runtimed.Session, runtimed.AsyncSession):
        for name in ("stream", "get_result", "complete", "inspect", "get_dependencies",
                     "add_dependency", "remove_dependency", "sync_environment"):
            assert hasattr(cls, name), f"{cls.__name__}.{name}"
        for name in ("execute_cell", "run", "stream"):
            assert "stdin" in inspect.signature(getattr(cls, name)).parameters, f"{cls.__name__}.{name}"
    assert inspect.isasyncgenfunction(runtimed.AsyncSession.stream)
    assert inspect.isgeneratorfunction(runtimed.Session.stream)
    for cls in (runtimed.DaemonClient, runtimed.AsyncDaemonClient):
        assert hasattr(cls, "get_result")
    assert runtimed.ExecutionEvent("done").kind == "done"
    assert issubclass(runtimed.ExecutionNotFound, LookupError)
