"""The MCP server: one tool per notebook operation, each a thin layer over
:class:`runtimed.AsyncSession`.

The server is a client of the daemon like any script: it joins a notebook's room
(the same room a human's session, a notebook app or another agent is in), so
edits and outputs flow both ways. It holds one session per notebook it was asked
about; a notebook id must be one the daemon has open (``list_notebooks``), a
notebook file, or one this server created. Every failure (a notebook or cell that
does not exist, a timeout, the daemon gone) is answered as a tool error with a
message saying what to do, and the server serves on.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import re
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

import runtimed
from runtimed import AsyncDaemonClient, AsyncSession, ExecutionResult, RuntimedError
from runtimed_mcp import render

INSTRUCTIONS = """\
Notebooks of the runtimed daemon: Jupyter kernels with live, shared notebook documents.
A human may have the same notebook open: your edits and outputs appear in their view and
theirs in yours. Start with list_notebooks, open_notebook(path) or create_notebook(). Cells
are addressed by their ids (get_cells lists them). execute_cell runs a cell as it is in the
notebook now and returns its outputs; run_code adds a cell with the code and runs it. A
long cell: give timeout_secs, then get_result(execution_id) or interrupt(notebook_id).
Packages: add_dependency(notebook_id, "pandas") installs into the running kernel."""

T = TypeVar("T")
NotebookId = Annotated[str, Field(description="The notebook's id, as list_notebooks, open_notebook "
                                              "or create_notebook return it")]
CellId = Annotated[str, Field(description="A cell id, as get_cells or create_cell return it")]
Timeout = Annotated[float, Field(gt=0, le=86400, description="Seconds to wait for the cell to end "
                                 "(it keeps running after: get_result or interrupt)")]


class TypedAnswer(BaseModel):
    """What the user types at a cell's ``input()`` prompt."""

    answer: str = Field(description="The text to type (without the Enter)")


def stdin_for(ctx: Context | None) -> Callable[[str, bool], Awaitable[str]] | None:
    """A cell's ``input()`` answered by the MCP client's user (elicitation), when the client
    can ask them; None (the cell gets StdinNotImplementedError) when it cannot. A password
    (``getpass``) is never asked this way: what passes through an MCP client may reach the
    model, so the cell gets EOFError with a note saying to use a terminal."""
    try:
        capabilities = ctx.request_context.session.client_capabilities if ctx is not None else None
    except (AttributeError, ValueError):
        return None
    if capabilities is None or capabilities.elicitation is None:
        return None

    async def answer(prompt: str, password: bool) -> str:
        if password:
            raise PermissionError("passwords are not asked through MCP; run this cell from a "
                                  "terminal (runtimed exec) or a script with stdin=")
        assert ctx is not None
        result = await ctx.elicit(f"The notebook's cell asks for input: {prompt}", TypedAnswer)
        if result.action != "accept":
            raise RuntimeError(f"the user chose {result.action!r} instead of answering")
        return result.data.answer

    return answer


class Notebooks:
    """The sessions this server holds, one per notebook."""

    def __init__(self, socket_path: str | None) -> None:
        self.socket_path = socket_path
        self.client = AsyncDaemonClient(socket_path=socket_path)
        self.sessions: dict[str, AsyncSession] = {}
        self._lock = asyncio.Lock()

    async def _connect(self, session: AsyncSession) -> AsyncSession:
        await session.connect()
        self.sessions[session.notebook_id] = session
        return session

    async def open(self, path: str, *, create: bool = False) -> AsyncSession:
        resolved = Path(path).expanduser()
        if not resolved.is_absolute():
            raise ToolError(f"{path!r}: give an absolute path (this server runs in {os.getcwd()})")
        if resolved.suffix != ".ipynb":
            raise ToolError(f"{path!r} is not a notebook file: the name must end in .ipynb")
        if create and resolved.exists():
            raise ToolError(f"{path} already exists: open_notebook(path) opens it")
        if not create and not resolved.exists():
            raise ToolError(f"{path} does not exist: create_notebook(path) creates it")
        session = AsyncSession(path=resolved, socket_path=self.socket_path)
        return await self._connect(session)

    async def create(self) -> AsyncSession:
        return await self._connect(AsyncSession(f"agent-{uuid.uuid4()}", socket_path=self.socket_path))

    async def get(self, notebook_id: str) -> AsyncSession:
        """The session of ``notebook_id``: ours, or a new one on a room the daemon has open
        (or a notebook file); else a tool error (a mistyped id must not create a notebook)."""
        async with self._lock:
            session = self.sessions.get(notebook_id)
            if session is not None:
                return session
            if notebook_id.endswith(".ipynb") and Path(notebook_id).is_absolute():
                if not Path(notebook_id).exists():
                    raise ToolError(f"No notebook file {notebook_id}")
                return await self._connect(AsyncSession(path=notebook_id, socket_path=self.socket_path))
            rooms = await self.client.list_rooms()
            if not any(room["notebook_id"] == notebook_id for room in rooms):
                raise ToolError(f"No notebook {notebook_id!r} is open in the daemon: list_notebooks "
                                "shows the open ones, open_notebook(path) opens a file, "
                                "create_notebook() makes a new one")
            return await self._connect(AsyncSession(notebook_id, socket_path=self.socket_path))

    async def close(self) -> None:
        for session in list(self.sessions.values()):
            await session.close()  # their kernels stay: the notebooks are shared
        self.sessions.clear()


def _tool_errors(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """runtimed's errors as tool errors an agent can act on."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return await fn(*args, **kwargs)
        except ToolError:
            raise
        except runtimed.DaemonUnavailable as exc:
            raise ToolError(f"The runtimed daemon is not reachable ({exc.message}); it is started "
                            "again on the next call, or with `runtimed run`") from None
        except RuntimedError as exc:
            raise ToolError(f"{type(exc).__name__}: {exc.message}") from None

    return wrapper


def _text(text: str, structured: dict[str, Any] | None = None) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)


def _json(data: Any) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=json.dumps(data, indent=1))],
                          structured_content=data if isinstance(data, dict) else {"result": data})


def build_server(socket_path: str | None = None, max_output_chars: int = render.DEFAULT_MAX_CHARS
                 ) -> tuple[MCPServer, Notebooks]:
    """The MCP server over the daemon at ``socket_path`` (default: the user's daemon)."""
    server = MCPServer("runtimed", instructions=INSTRUCTIONS, version=runtimed.__version__)
    notebooks = Notebooks(socket_path)
    max_chars = max_output_chars
    read_only = ToolAnnotations(read_only_hint=True)

    def tool(annotations: ToolAnnotations | None = None) -> Callable[[Callable[..., Any]], Any]:
        def register(fn: Callable[..., Any]) -> Any:
            server.add_tool(_tool_errors(fn), annotations=annotations, structured_output=False)
            return fn
        return register

    def result_tool_output(result: ExecutionResult, offset: int = 0,
                           widgets: render.Widgets | None = None) -> CallToolResult:
        return CallToolResult(content=render.result_content(result, max_chars, offset=offset,
                                                            widgets=widgets),
                              structured_content=render.result_summary(result))

    async def run_streamed(session: AsyncSession, cell_id: str, timeout_secs: float,
                           ctx: Context | None = None) -> CallToolResult:
        """Run a cell (its ``input()`` asked of the client's user, if it can); on a timeout,
        a tool error with its execution id and outputs so far."""
        execution_id = None
        try:
            async for event in session.stream(cell_id, timeout_secs=timeout_secs,
                                              stdin=stdin_for(ctx)):
                if event.kind == "queued":
                    execution_id = event.execution_id
                elif event.kind == "done":
                    assert event.result is not None
                    return result_tool_output(event.result, widgets=await session.widget_state())
        except runtimed.ExecutionTimeout:
            so_far = ""
            if execution_id is not None:
                partial = await session.get_result(execution_id)
                text, _ = render.output_parts(partial.outputs)
                if text:
                    read = f'get_result(execution_id="{execution_id}", offset={{offset}}) reads on'
                    so_far = "\nOutputs so far:\n" + render.cut(text, max_chars // 2, read)
            raise ToolError(f"Cell {cell_id} was still running after {timeout_secs:g} s "
                            f"(execution_id {execution_id}). It keeps running: get_result("
                            f"execution_id) fetches its outputs later, interrupt(notebook_id) stops "
                            f"it.{so_far}") from None
        raise ToolError("The execution ended without a result")  # pragma: no cover

    async def cell_of(session: AsyncSession, cell_id: str) -> runtimed.Cell:
        try:
            return await session.get_cell(cell_id)
        except runtimed.CellNotFound:
            raise ToolError(f"No cell {cell_id!r} in notebook {session.notebook_id} (get_cells lists "
                            "its cells; a cell of another notebook is addressed with that "
                            "notebook's id)") from None

    # notebooks ---------------------------------------------------------------------------------
    @tool(read_only)
    async def list_notebooks() -> CallToolResult:
        """The notebooks the daemon has open (its rooms): id, file, connected peers, kernel
        and environment. Pass a notebook's id to the other tools."""
        rooms = await notebooks.client.list_rooms()
        rows = [{"notebook_id": r["notebook_id"], "path": r.get("path"),
                 "peers": r.get("active_peers"), "kernel": r.get("kernel_type"),
                 "kernel_status": r.get("kernel_status"), "env_source": r.get("env_source")}
                for r in rooms]
        return _json({"notebooks": rows})

    @tool()
    async def open_notebook(path: Annotated[str, Field(description="Absolute path of an existing "
                                                                   ".ipynb file")]) -> CallToolResult:
        """Open a notebook file (in the room every other client of that file is in) and list
        its cells. Returns its notebook_id (the file's absolute path)."""
        session = await notebooks.open(path)
        cells = await session.get_cells()
        listing = "\n".join(render.cell_text(c, outputs=False) for c in cells) or "(no cells)"
        return _text(f"notebook_id: {session.notebook_id}\n{len(cells)} cells\n{listing}",
                     {"notebook_id": session.notebook_id, "cells": len(cells)})

    @tool()
    async def create_notebook(path: Annotated[str | None, Field(
            description="Absolute path of a new .ipynb file; omit for an untitled notebook")] = None
                              ) -> CallToolResult:
        """Create a notebook: a new .ipynb file at path (saved as it changes), or an untitled
        notebook kept by the daemon (save_notebook writes it to a file later)."""
        session = await (notebooks.open(path, create=True) if path else notebooks.create())
        if path:
            await session.save()
        return _text(f"notebook_id: {session.notebook_id}", {"notebook_id": session.notebook_id})

    @tool()
    async def save_notebook(notebook_id: NotebookId, path: Annotated[str | None, Field(
            description="Save as: an absolute .ipynb path (required for an untitled notebook)")] = None
                            ) -> CallToolResult:
        """Write the notebook to its .ipynb file (nbformat 4.5), or to path (save as)."""
        session = await notebooks.get(notebook_id)
        written = await session.save(path)
        return _text(f"saved {written}", {"path": written})

    @tool()
    async def show_notebook(notebook_id: NotebookId) -> CallToolResult:
        """The URL of the notebook's live view in a browser (cells and outputs as they change),
        to hand to a human."""
        session = await notebooks.get(notebook_id)
        show = getattr(session, "show", None)
        if show is None:
            raise ToolError("This runtimed has no live notebook viewer")
        return _text(await show(open_browser=False))

    # cells ----------------------------------------------------------------------------------------
    @tool(read_only)
    async def get_cells(notebook_id: NotebookId, include_outputs: Annotated[bool, Field(
            description="Also each cell's outputs (text; images are left to get_cell)")] = True
                        ) -> CallToolResult:
        """Every cell of the notebook, in order: id, type, execution count, tags, source and
        (include_outputs) output text."""
        session = await notebooks.get(notebook_id)
        cells = await session.get_cells()
        per_cell = max(max_chars // max(len(cells), 1), 500)
        widgets = await session.widget_state()
        text = "\n".join(render.cell_text(c, outputs=include_outputs, max_chars=per_cell,
                                          widgets=widgets) for c in cells)
        text = render.cut(text, 4 * max_chars, "get_cell(notebook_id, cell_id) shows any cell whole")
        return _text(f"{len(cells)} cells\n{text}" if cells else "(no cells)",
                     {"cells": [{"cell_id": c.id, "cell_type": c.cell_type} for c in cells]})

    @tool(read_only)
    async def get_cell(notebook_id: NotebookId, cell_id: CellId) -> CallToolResult:
        """One cell: its source and its outputs (text and images)."""
        session = await notebooks.get(notebook_id)
        cell = await cell_of(session, cell_id)
        text, images = render.output_parts(cell.outputs)
        body = render.cell_text(cell, outputs=False)
        if cell.outputs:
            body += ("\n--- outputs ---\n" + render.cut(text, max_chars, "the start and end are shown")
                     + render.widgets_text(cell.outputs, await session.widget_state()))
        return CallToolResult(content=[TextContent(type="text", text=body), *images],
                              structured_content={"cell_id": cell.id, "cell_type": cell.cell_type,
                                                  "source": cell.source,
                                                  "execution_count": cell.execution_count})

    @tool()
    async def create_cell(notebook_id: NotebookId,
                          source: Annotated[str, Field(description="The cell's text")],
                          index: Annotated[int | None, Field(ge=0, description="Position (0: first); "
                                                             "omit to append")] = None,
                          cell_type: Annotated[str, Field(pattern="^(code|markdown|raw)$",
                                                          description="code, markdown or raw")] = "code",
                          ) -> CallToolResult:
        """Add a cell (code, markdown or raw); returns its cell_id (execute_cell runs it)."""
        session = await notebooks.get(notebook_id)
        cell_id = await session.create_cell(source, cell_type, index)
        return _text(f"cell_id: {cell_id}", {"cell_id": cell_id})

    @tool()
    async def set_source(notebook_id: NotebookId, cell_id: CellId,
                         source: Annotated[str, Field(description="The cell's new text, whole")]
                         ) -> CallToolResult:
        """Replace a cell's whole source (replace_in_cell edits part of it)."""
        session = await notebooks.get(notebook_id)
        await cell_of(session, cell_id)
        await session.set_source(cell_id, source)
        return _text(f"cell {cell_id} updated")

    @tool()
    async def replace_in_cell(notebook_id: NotebookId, cell_id: CellId,
                              old: Annotated[str, Field(min_length=1, description="The text to find "
                                                        "(a regular expression with regex=true)")],
                              new: Annotated[str, Field(description="Its replacement (with regex: "
                                                        "\\1 and \\g<name> refer to groups)")],
                              regex: bool = False) -> CallToolResult:
        """Edit a cell by find and replace: every occurrence of old becomes new. An error when
        old is not in the cell (its source is shown then)."""
        session = await notebooks.get(notebook_id)
        cell = await cell_of(session, cell_id)
        try:
            pattern = re.compile(old if regex else re.escape(old))
            source, count = pattern.subn(new if regex else new.replace("\\", "\\\\"), cell.source)
        except re.error as exc:
            raise ToolError(f"Not a valid regular expression or replacement: {exc}") from None
        if not count:
            raise ToolError(f"{old!r} is not in cell {cell_id}; its source is:\n{cell.source}")
        await session.set_source(cell_id, source)
        return _text(f"{count} replacement{'s' if count > 1 else ''}; cell {cell_id} is now:\n{source}",
                     {"replacements": count, "source": source})

    @tool()
    async def delete_cell(notebook_id: NotebookId, cell_id: CellId) -> CallToolResult:
        """Delete a cell (for everyone who has the notebook open)."""
        session = await notebooks.get(notebook_id)
        await cell_of(session, cell_id)
        await session.delete_cell(cell_id)
        return _text(f"cell {cell_id} deleted")

    @tool()
    async def move_cell(notebook_id: NotebookId, cell_id: CellId,
                        index: Annotated[int, Field(ge=0, description="Its new position (0: first)")]
                        ) -> CallToolResult:
        """Move a cell to another position in the notebook (0: first)."""
        session = await notebooks.get(notebook_id)
        await cell_of(session, cell_id)
        await session.move_cell(cell_id, index)
        return _text(f"cell {cell_id} moved to {index}")

    @tool()
    async def clear_outputs(notebook_id: NotebookId, cell_id: Annotated[str | None, Field(
            description="The cell; omit for every cell")] = None) -> CallToolResult:
        """Clear outputs and execution counts (of one cell, or of all)."""
        session = await notebooks.get(notebook_id)
        if cell_id is not None:
            await cell_of(session, cell_id)
        await session.clear_outputs(cell_id)
        return _text("outputs cleared")

    @tool()
    async def set_cell_tags(notebook_id: NotebookId, cell_id: CellId,
                            tags: Annotated[list[str], Field(description="The cell's tags, whole "
                                                             "(e.g. parameters, skip-execution)")]
                            ) -> CallToolResult:
        """Set a cell's tags (metadata.tags), replacing the ones it has."""
        session = await notebooks.get(notebook_id)
        await cell_of(session, cell_id)
        await session.set_cell_metadata(cell_id, "tags", json.dumps(tags))
        return _text(f"cell {cell_id} tags: {', '.join(tags) or '(none)'}")

    # running ---------------------------------------------------------------------------------------
    @tool()
    async def execute_cell(notebook_id: NotebookId, cell_id: CellId, timeout_secs: Timeout = 60,
                           ctx: Context | None = None) -> CallToolResult:
        """Run a code cell as the notebook has it now and return its outputs (text, images,
        errors). Starts the notebook's kernel if none runs. A cell's input() is asked of
        your user (MCP elicitation), if your client can."""
        session = await notebooks.get(notebook_id)
        await cell_of(session, cell_id)
        return await run_streamed(session, cell_id, timeout_secs, ctx)

    @tool()
    async def run_code(notebook_id: NotebookId,
                       code: Annotated[str, Field(description="Code for the notebook's kernel")],
                       timeout_secs: Timeout = 60, ctx: Context | None = None) -> CallToolResult:
        """Add a code cell with code at the end of the notebook, run it, and return its outputs
        (as execute_cell)."""
        session = await notebooks.get(notebook_id)
        cell_id = await session.create_cell(code)
        return await run_streamed(session, cell_id, timeout_secs, ctx)

    @tool()
    async def run_all(notebook_id: NotebookId, timeout_secs: Annotated[float, Field(
            gt=0, description="Seconds per cell")] = 60, allow_errors: bool = False) -> CallToolResult:
        """Run every code cell top to bottom (as nbclient does: cells tagged skip-execution are
        skipped; the first error stops the run unless allow_errors)."""
        session = await notebooks.get(notebook_id)
        results = await session.run_all(timeout_secs=timeout_secs, allow_errors=allow_errors)
        per_cell = max(max_chars // max(len(results), 1), 500)
        blocks = []
        widgets = await session.widget_state()
        for result in results:
            text, _ = render.output_parts(result.outputs)
            read = f"get_result(execution_id=\"{result.execution_id}\", offset={{offset}}) reads on"
            blocks.append(render.status_line(result) + ("\n" + render.cut(text, per_cell, read)
                                                        if text else "")
                          + render.widgets_text(result.outputs, widgets))
        ok = all(r.success for r in results)
        outcome = "all ok" if ok else "some failed" if allow_errors else "stopped at an error"
        head = f"{len(results)} cells run, {outcome}"
        return _text(head + "\n" + "\n".join(blocks),
                     {"results": [render.result_summary(r) for r in results], "success": ok})

    @tool(read_only)
    async def get_result(execution_id: Annotated[str, Field(description="An execution_id from "
                                                            "execute_cell, run_code or run_all")],
                         offset: Annotated[int, Field(ge=0, description="Read the text from this "
                                                      "character on (for long outputs)")] = 0
                         ) -> CallToolResult:
        """The result of an execution by its id, in any notebook: its outputs so far while it
        runs, its final outputs after (kept for 7 days)."""
        result = await notebooks.client.get_result(execution_id)
        return result_tool_output(result, offset)

    @tool()
    async def interrupt(notebook_id: NotebookId) -> CallToolResult:
        """Interrupt the running cell (KeyboardInterrupt in it) and cancel the queued ones;
        returns once the cell ended."""
        session = await notebooks.get(notebook_id)
        await session.interrupt()
        return _text("interrupted")

    @tool()
    async def restart_kernel(notebook_id: NotebookId) -> CallToolResult:
        """Restart the notebook's kernel (its variables are lost; the cells stay)."""
        session = await notebooks.get(notebook_id)
        await session.restart_kernel()
        return _text("kernel restarted")

    @tool(read_only)
    async def kernel_status(notebook_id: NotebookId) -> CallToolResult:
        """The kernel's state: lifecycle (not_started, preparing_env, running, error...),
        activity (idle, busy), environment, progress and last error."""
        session = await notebooks.get(notebook_id)
        return _json(await session.kernel_status())

    @tool(read_only)
    async def complete(notebook_id: NotebookId, code: str, cursor_pos: Annotated[int | None, Field(
            ge=0, description="Cursor position in code; omit for its end")] = None) -> CallToolResult:
        """Completions from the kernel at the cursor (names, attributes, keys)."""
        session = await notebooks.get(notebook_id)
        reply = await session.complete(code, cursor_pos)
        return _json({k: reply[k] for k in ("matches", "cursor_start", "cursor_end")})

    @tool(read_only)
    async def inspect(notebook_id: NotebookId, code: str, cursor_pos: Annotated[int | None, Field(
            ge=0, description="Cursor position in code; omit for its end")] = None) -> CallToolResult:
        """What the kernel knows of the name at the cursor: signature, docstring, type."""
        session = await notebooks.get(notebook_id)
        bundle = await session.inspect(code, cursor_pos)
        if not bundle:
            return _text("nothing found")
        return _text(render.strip_ansi(str(bundle.get("text/plain") or next(iter(bundle.values())))))

    # dependencies ------------------------------------------------------------------------------------
    async def synced(session: AsyncSession, deps: list[str], sync: bool, undo: Callable[[], Awaitable[Any]]
                     ) -> CallToolResult:
        if not sync:
            return _text(f"dependencies: {', '.join(deps) or '(none)'} (sync_environment applies them)",
                         {"dependencies": deps})
        try:
            done = await session.sync_environment()
        except runtimed.EnvironmentFailed as exc:
            await undo()
            raise ToolError(f"{exc.message}\nThe change was undone.") from None
        what = {"installed": "installed into the running kernel (its variables are kept)",
                "restarted": "the kernel was restarted in an environment that has them (its "
                             "variables are lost)",
                "unchanged": "the running kernel already had them",
                "none": "no kernel runs: the next one starts with them"}[done["action"]]
        return _text(f"dependencies: {', '.join(deps) or '(none)'}; {what}",
                     {"dependencies": deps, **done})

    @tool(read_only)
    async def get_dependencies(notebook_id: NotebookId) -> CallToolResult:
        """The packages the notebook declares (its inline dependencies)."""
        session = await notebooks.get(notebook_id)
        deps = await session.get_dependencies()
        return _text(", ".join(deps) or "(none)", {"dependencies": deps})

    @tool()
    async def add_dependency(notebook_id: NotebookId,
                             spec: Annotated[str, Field(description="A requirement: 'pandas', "
                                                        "'numpy>=2', 'scipy==1.14.*'")],
                             sync: Annotated[bool, Field(description="Install it into the running "
                                                         "kernel now")] = True) -> CallToolResult:
        """Add a package to the notebook's dependencies and (sync) install it into the running
        kernel, in place when possible, so the next cell can import it."""
        session = await notebooks.get(notebook_id)
        before = await session.get_dependencies()
        deps = await session.add_dependency(spec)

        async def undo() -> None:  # back to the list before (a replaced spec comes back)
            replaced = [d for d in before if d not in deps]
            for dep in replaced:
                await session.add_dependency(dep)
            if not replaced:
                await session.remove_dependency(spec)

        return await synced(session, deps, sync, undo)

    @tool()
    async def remove_dependency(notebook_id: NotebookId,
                                name: Annotated[str, Field(description="The package's name")],
                                sync: Annotated[bool, Field(description="Restart the kernel in an "
                                                            "environment without it now")] = True
                                ) -> CallToolResult:
        """Remove a package from the notebook's dependencies (sync: the kernel restarts in an
        environment without it)."""
        session = await notebooks.get(notebook_id)
        before = await session.get_dependencies()
        deps = await session.remove_dependency(name)

        async def undo() -> None:
            for dep in before:
                if dep not in deps:
                    await session.add_dependency(dep)

        return await synced(session, deps, sync, undo)

    @tool()
    async def sync_environment(notebook_id: NotebookId) -> CallToolResult:
        """Make the running kernel match the notebook's dependencies (installed in place, or a
        restart into an environment that has them)."""
        session = await notebooks.get(notebook_id)
        deps = await session.get_dependencies()

        async def nothing_to_undo() -> None:
            return None

        return await synced(session, deps, True, nothing_to_undo)

    return server, notebooks
