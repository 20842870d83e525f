"""The failing sink's hook implementation: a plugin of its own, so a test can disable it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runtimed.hookspecs import hookimpl

if TYPE_CHECKING:
    from runtimed.sinks import OutputSink


@hookimpl
def runtimed_output_sinks() -> list[type[OutputSink]]:
    """A sink that raises on every output."""
    from runtimed_test_venv.sink import FailingSink

    return [FailingSink]
