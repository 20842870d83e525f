"""Plugin output sinks, each call isolated: a sink that raises costs only itself.

An exception in a sink is logged with the plugin's name, once per execution
(not once per output), and everything else goes on: the other sinks, the
document, the cell.
"""

from __future__ import annotations

import logging
from typing import Any

from runtimed.sinks import ExecutionContext, OutputSink

log = logging.getLogger(__name__)


class PluginSinks:
    """The daemon's plugin sinks: ``(plugin name, sink)`` in registration order."""

    def __init__(self, sinks: list[tuple[str, OutputSink]]) -> None:
        self.sinks = sinks
        self._failed: set[tuple[int, str]] = set()  # (sink index, execution_id) already logged

    def __bool__(self) -> bool:
        return bool(self.sinks)

    def _call(self, ctx: ExecutionContext, method: str, *args: Any) -> None:
        for index, (plugin, sink) in enumerate(self.sinks):
            try:
                getattr(sink, method)(ctx, *args)
            except Exception:
                key = (index, ctx.execution_id)
                if key not in self._failed:
                    self._failed.add(key)
                    log.exception("%s: output sink %s of plugin %r failed in %s (execution %s; "
                                  "further failures of it in this execution are not logged)",
                                  ctx.notebook_id, type(sink).__qualname__, plugin, method,
                                  ctx.execution_id)

    def started(self, ctx: ExecutionContext, execution_count: int | None) -> None:
        self._call(ctx, "on_execution_started", execution_count)

    def output(self, ctx: ExecutionContext, msg_type: str, content: dict[str, Any]) -> None:
        self._call(ctx, "on_output", msg_type, content)

    def finished(self, ctx: ExecutionContext, success: bool) -> None:
        self._call(ctx, "on_execution_finished", success)
        self._failed = {key for key in self._failed if key[1] != ctx.execution_id}
