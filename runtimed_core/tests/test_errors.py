"""The error tree and its wire encoding."""

from __future__ import annotations

import json

import pytest

from runtimed import errors as E

ALL_CLASSES = [
    E.RuntimedError, E.DaemonUnavailable, E.NotConnected, E.ProtocolError, E.InvalidRequest,
    E.KernelError, E.NoKernel, E.KernelLaunchFailed, E.KernelDied, E.ExecutionTimeout,
    E.EnvironmentFailed, E.PluginError,
]


def test_every_error_is_a_runtimed_error():
    for cls in [*ALL_CLASSES, E.CellNotFound]:
        assert issubclass(cls, E.RuntimedError)


def test_builtin_mixins():
    assert issubclass(E.CellNotFound, LookupError)
    assert issubclass(E.InvalidRequest, ValueError)
    assert issubclass(E.ExecutionTimeout, TimeoutError)
    for cls in (E.NoKernel, E.KernelLaunchFailed, E.KernelDied):
        assert issubclass(cls, E.KernelError)
    with pytest.raises(LookupError):
        raise E.CellNotFound("cell-x")
    with pytest.raises(TimeoutError):
        raise E.ExecutionTimeout("took too long", cell_id="c")


def test_cell_not_found_message_and_context():
    exc = E.CellNotFound("cell-1", notebook_id="nb")
    assert str(exc) == "Cell not found: cell-1"
    assert exc.cell_id == "cell-1"
    assert exc.notebook_id == "nb"
    assert exc.env_source is None


def test_context_drops_none_values():
    exc = E.KernelDied("gone", cell_id=None, notebook_id="nb")
    assert exc.context == {"notebook_id": "nb"}
    assert exc.cell_id is None


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_round_trip_keeps_class_message_and_context(cls):
    exc = cls("something broke", cell_id="cell-9", notebook_id="nb-2", env_source="uv:prewarmed")
    wire = E.error_to_wire(exc)
    wire = json.loads(json.dumps(wire))  # it must survive a JSON response frame
    back = E.error_from_wire(wire)
    assert type(back) is cls
    assert str(back) == "something broke"
    assert back.message == "something broke"
    assert back.cell_id == "cell-9"
    assert back.notebook_id == "nb-2"
    assert back.env_source == "uv:prewarmed"


def test_cell_not_found_round_trip():
    wire = json.loads(json.dumps(E.error_to_wire(E.CellNotFound("cell-7", notebook_id="nb"))))
    assert wire["type"] == "CellNotFound"
    assert wire["cell_id"] == "cell-7"
    back = E.error_from_wire(wire)
    assert type(back) is E.CellNotFound
    assert isinstance(back, LookupError)
    assert str(back) == "Cell not found: cell-7"
    assert back.cell_id == "cell-7"
    assert back.notebook_id == "nb"


def test_execution_timeout_round_trip_is_still_a_timeout():
    back = E.error_from_wire(E.error_to_wire(E.ExecutionTimeout("timed out after 5s", cell_id="c")))
    assert isinstance(back, TimeoutError)
    assert back.cell_id == "c"
    assert str(back) == "timed out after 5s"


def test_foreign_exceptions_become_plain_runtimed_errors_naming_the_type():
    wire = E.error_to_wire(KeyError("missing"))
    assert wire == {"type": "RuntimedError", "message": "KeyError: 'missing'"}
    back = E.error_from_wire(wire)
    assert type(back) is E.RuntimedError
    assert "KeyError" in str(back)


def test_unknown_wire_type_degrades_to_runtimed_error():
    back = E.error_from_wire({"type": "SomethingNew", "message": "hi", "cell_id": "c"})
    assert type(back) is E.RuntimedError
    assert str(back) == "hi"
    assert back.cell_id == "c"


def test_minimal_and_malformed_wire_payloads():
    back = E.error_from_wire({})
    assert type(back) is E.RuntimedError
    assert str(back) == "unknown error"
    # CellNotFound without a cell_id cannot be rebuilt as one, but still decodes
    back = E.error_from_wire({"type": "CellNotFound", "message": "Cell not found: ?"})
    assert isinstance(back, E.RuntimedError)
    assert str(back) == "Cell not found: ?"


def test_error_from_wire_does_not_mutate_its_input():
    wire = {"type": "NoKernel", "message": "no kernel", "notebook_id": "nb"}
    snapshot = dict(wire)
    E.error_from_wire(wire)
    assert wire == snapshot


def test_unknown_plugin_subclass_arrives_as_its_nearest_known_base():
    from runtimed.errors import KernelError, error_from_wire, error_to_wire

    class PluginKernelTrouble(KernelError):
        pass

    wire = error_to_wire(PluginKernelTrouble("the R kernel is sulking", notebook_id="nb"))
    back = error_from_wire(wire)
    assert type(back) is KernelError
    assert str(back) == "the R kernel is sulking" and back.notebook_id == "nb"
