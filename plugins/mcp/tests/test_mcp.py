"""`runtimed mcp` through the SDK's own MCP client (stdio and HTTP), against a real daemon
and real kernels: what an agent (and the human beside it) sees."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, ElicitResult, ImageContent

from runtimed.pytest_plugin import DaemonProcess
from runtimed.testing import wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
README = REPO / "README.md"
PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAIAAAD91JpzAAAAFklEQVR4nGP8z8DAwMDAxMDAwMDAAAANHQEDasKb6QAA"
       "AABJRU5ErkJggg==")
#: The tools of the API (api-next.md "Agents"), plus completion and sync_environment.
TOOLS = {"list_notebooks", "open_notebook", "create_notebook", "get_cells", "get_cell", "create_cell",
         "set_source", "replace_in_cell", "delete_cell", "move_cell", "clear_outputs", "set_cell_tags",
         "execute_cell", "run_code", "run_all", "get_result", "interrupt", "restart_kernel",
         "kernel_status", "get_dependencies", "add_dependency", "remove_dependency", "show_notebook",
         "save_notebook", "complete", "inspect", "sync_environment"}


@contextlib.asynccontextmanager
async def mcp_client(socket_path: Path, *args: str, env: dict[str, str] | None = None,
                     command: list[str] | None = None, **session: Any) -> AsyncIterator[ClientSession]:
    argv = command or [sys.executable, "-m", "runtimed", "mcp", "--socket", str(socket_path), *args]
    params = StdioServerParameters(command=argv[0], args=argv[1:], env={**os.environ, **(env or {})})
    async with stdio_client(params) as (read, write), ClientSession(read, write, **session) as client:
        await client.initialize()
        yield client


def text(result: CallToolResult) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def call(client: ClientSession, tool: str, **arguments: Any) -> CallToolResult:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, f"{tool}: {text(result)}"
    return result


async def error(client: ClientSession, tool: str, **arguments: Any) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, f"{tool} should have failed: {text(result)}"
    return text(result)


def test_tools_are_listed_with_schemas_and_docstrings(runtimed_daemon):
    async def main() -> None:
        async with mcp_client(runtimed_daemon.socket_path) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert set(tools) == TOOLS
            for tool in tools.values():
                assert tool.description and len(tool.description) > 30, tool.name
                assert tool.input_schema["type"] == "object"
            create = tools["create_cell"].input_schema
            assert set(create["required"]) == {"notebook_id", "source"}
            assert create["properties"]["index"]["anyOf"][0]["minimum"] == 0
            assert "description" in create["properties"]["notebook_id"]
            assert tools["get_cells"].annotations.read_only_hint

    asyncio.run(main())


def test_an_agent_edits_runs_and_saves_a_notebook(runtimed_daemon, tmp_path):
    path = tmp_path / "agent.ipynb"

    async def main() -> None:
        async with mcp_client(runtimed_daemon.socket_path) as client:
            created = await call(client, "create_notebook", path=str(path))
            nb = created.structured_content["notebook_id"]
            assert nb == str(path) and path.exists()
            first = (await call(client, "create_cell", notebook_id=nb,
                                source="greeting = 'helo'\nprint(greeting, 'wrld')")).structured_content["cell_id"]
            fixed = await call(client, "replace_in_cell", notebook_id=nb, cell_id=first, old="helo", new="hello")
            assert fixed.structured_content["replacements"] == 1
            await call(client, "replace_in_cell", notebook_id=nb, cell_id=first, old=r"w(r)ld",
                       new=r"wo\1ld", regex=True)
            assert "not in cell" in await error(client, "replace_in_cell", notebook_id=nb, cell_id=first,
                                                old="absent", new="x")
            ran = await call(client, "execute_cell", notebook_id=nb, cell_id=first)
            assert "hello world\n" in text(ran) and ran.structured_content["success"]
            picture = (await call(client, "create_cell", notebook_id=nb, source=(
                "import base64\nfrom IPython.display import Image, display\n"
                f"display(Image(data=base64.b64decode('{PNG}')))"))).structured_content["cell_id"]
            shown = await call(client, "execute_cell", notebook_id=nb, cell_id=picture)
            [image] = [b for b in shown.content if isinstance(b, ImageContent)]
            assert image.mime_type == "image/png" and base64.b64decode(image.data) == base64.b64decode(PNG)
            failing = await call(client, "run_code", notebook_id=nb, code="def f():\n    return 1/0\nf()")
            assert not failing.structured_content["success"]
            assert "ZeroDivisionError: division by zero" in text(failing)
            assert "return 1/0" in text(failing) and "\x1b[" not in text(failing), "a short plain traceback"
            md = (await call(client, "create_cell", notebook_id=nb, source="# Title", cell_type="markdown",
                             index=0)).structured_content["cell_id"]
            await call(client, "set_cell_tags", notebook_id=nb, cell_id=first, tags=["parameters"])
            await call(client, "move_cell", notebook_id=nb, cell_id=md, index=3)
            await call(client, "set_source", notebook_id=nb, cell_id=md, source="# The title")
            cells = await call(client, "get_cells", notebook_id=nb)
            assert [c["cell_type"] for c in cells.structured_content["cells"]] == ["code", "code", "code", "markdown"]
            assert "tags parameters" in text(cells) and "hello world" in text(cells)
            one = await call(client, "get_cell", notebook_id=nb, cell_id=picture)
            assert any(isinstance(b, ImageContent) for b in one.content)
            await call(client, "delete_cell", notebook_id=nb, cell_id=(
                cells.structured_content["cells"][2]["cell_id"]))
            status = json.loads(text(await call(client, "kernel_status", notebook_id=nb)))
            assert status["lifecycle"] == "running"
            completed = json.loads(text(await call(client, "complete", notebook_id=nb, code="greet")))
            assert completed["matches"] == ["greeting"]
            assert "str" in text(await call(client, "inspect", notebook_id=nb, code="greeting"))
            saved = await call(client, "save_notebook", notebook_id=nb)
            assert saved.structured_content["path"] == str(path)

    asyncio.run(main())
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert [c.cell_type for c in notebook.cells] == ["code", "code", "markdown"]
    assert notebook.cells[0].source == "greeting = 'hello'\nprint(greeting, 'world')"
    assert notebook.cells[0].metadata["tags"] == ["parameters"]
    assert notebook.cells[1].outputs[0]["data"]["image/png"] == PNG
    assert notebook.cells[2].source == "# The title"


def test_interrupt_a_sleeping_cell_and_fetch_results_by_id(runtimed_daemon):
    async def main() -> None:
        async with mcp_client(runtimed_daemon.socket_path) as client:
            nb = (await call(client, "create_notebook")).structured_content["notebook_id"]
            await call(client, "run_code", notebook_id=nb, code="x = 1")
            started = time.monotonic()
            sleeping = asyncio.ensure_future(client.call_tool(
                "run_code", {"notebook_id": nb, "code": "import time\nprint('sleeping', flush=True)\ntime.sleep(60)"}))
            while json.loads(text(await call(client, "kernel_status", notebook_id=nb)))["activity"] != "busy":
                await asyncio.sleep(0.05)
            await call(client, "interrupt", notebook_id=nb)
            result = await sleeping
            assert time.monotonic() - started < 30
            assert not result.is_error and "KeyboardInterrupt" in text(result) and "sleeping" in text(result)
            # a timeout is a tool error naming the execution; it runs on, and is fetched by id
            timed_out = await error(client, "run_code", notebook_id=nb, timeout_secs=1,
                                    code="import time\nprint('started', flush=True)\ntime.sleep(60)")
            [execution_id] = re.findall(r"exec-[0-9a-f-]{36}", timed_out)
            assert "still running after 1 s" in timed_out and "started" in timed_out
            partial = await call(client, "get_result", execution_id=execution_id)
            assert partial.structured_content["status"] == "running"
            await call(client, "interrupt", notebook_id=nb)
            final = await call(client, "get_result", execution_id=execution_id)
            assert final.structured_content["status"] == "error" and "KeyboardInterrupt" in text(final)
            assert "x = 1" not in text(final)
            assert "1\n" in text(await call(client, "run_code", notebook_id=nb, code="print(x)")), \
                "the kernel kept its state"
            await call(client, "restart_kernel", notebook_id=nb)
            assert "NameError" in text(await call(client, "run_code", notebook_id=nb, code="x"))

    asyncio.run(main())


def test_a_cells_input_is_asked_of_the_clients_user(runtimed_daemon):
    asked: list[str] = []
    replies = [ElicitResult(action="accept", content={"answer": "Ada"}), ElicitResult(action="decline")]

    async def user(context: Any, params: Any) -> ElicitResult:
        asked.append(params.message)
        return replies.pop(0)

    async def main() -> None:
        async with mcp_client(runtimed_daemon.socket_path, elicitation_callback=user) as client:
            nb = (await call(client, "create_notebook")).structured_content["notebook_id"]
            hello = await call(client, "run_code", notebook_id=nb, code="name = input('name? ')\nprint('hi', name)")
            assert "hi Ada" in text(hello) and asked == ["The notebook's cell asks for input: name? "]
            declined = await call(client, "run_code", notebook_id=nb, code="input('again? ')")
            assert "EOFError" in text(declined) and "'decline' instead of answering" in text(declined)
            secret = await call(client, "run_code", notebook_id=nb, code="import getpass; getpass.getpass()")
            assert "EOFError" in text(secret) and "passwords are not asked through MCP" in text(secret)
            assert len(asked) == 2, "a password is never asked through the client"
        async with mcp_client(runtimed_daemon.socket_path) as client:  # a client that cannot ask
            nb = (await call(client, "create_notebook")).structured_content["notebook_id"]
            assert "StdinNotImplementedError" in text(await call(client, "run_code", notebook_id=nb,
                                                                 code="input('x')"))

    asyncio.run(main())


def test_long_outputs_are_cut_with_a_note_saying_how_to_read_the_rest(runtimed_daemon):
    async def main() -> None:
        async with mcp_client(runtimed_daemon.socket_path, "--max-output-chars", "2000") as client:
            nb = (await call(client, "create_notebook")).structured_content["notebook_id"]
            result = await call(client, "run_code", notebook_id=nb,
                                code="print('\\x1b[31mred\\x1b[0m')\nfor i in range(5000):\n    print(f'line {i}')")
            body = text(result)
            assert "\x1b" not in body and "red\n" in body
            assert "line 0\n" in body and "line 4999" in body and "line 2500\n" not in body
            [(cut, total, offset)] = re.findall(r"\[\.\.\. ([\d,]+) characters cut \(of ([\d,]+)\); "
                                                r"get_result\(execution_id=\"exec-[0-9a-f-]+\", offset=(\d+)\)", body)
            assert int(total.replace(",", "")) == len("red\n") + sum(len(f"line {i}\n") for i in range(5000))
            assert len(body) < 2500
            rest = await call(client, "get_result", execution_id=result.structured_content["execution_id"],
                              offset=int(offset))
            assert f"[characters {int(offset):,} to" in text(rest) and "line 100\n" in text(rest)

    asyncio.run(main())


def test_a_widget_reads_as_it_is_now(runtimed_daemon):
    async def main() -> None:
        async with mcp_client(runtimed_daemon.socket_path) as client:
            nb = (await call(client, "create_notebook")).structured_content["notebook_id"]
            shown = await call(client, "run_code", notebook_id=nb, code=(
                "from ipywidgets import IntSlider, HBox, HTML\n"
                "w = IntSlider(3, max=10, description='level')\nHBox([HTML('speed'), w])"))
            assert "--- widgets now ---\nHBox([HTML(value='speed'), IntSlider(description='level', " \
                   "value=3, min=0, max=10)])" in text(shown)
            await call(client, "run_code", notebook_id=nb, code="w.value = 7")
            cell = await call(client, "get_cell", notebook_id=nb,
                              cell_id=shown.structured_content["cell_id"])
            assert "IntSlider(description='level', value=7, min=0, max=10)" in text(cell)
            assert "value=3" in text(cell), "the output's own text: the slider when it was shown"

    asyncio.run(main())


def test_a_human_and_the_agent_share_one_room(runtimed_daemon):
    human = runtimed_daemon.session()
    human.start_kernel()
    mine = human.create_cell("shared = 'from the human'")
    human.execute_cell(mine)

    async def main() -> None:
        async with mcp_client(runtimed_daemon.socket_path) as client:
            listed = json.loads(text(await call(client, "list_notebooks")))["notebooks"]
            assert human.notebook_id in [n["notebook_id"] for n in listed]
            nb = human.notebook_id
            assert "shared = 'from the human'" in text(await call(client, "get_cells", notebook_id=nb))
            await call(client, "set_source", notebook_id=nb, cell_id=mine, source="shared = 'edited by the agent'")
            await asyncio.to_thread(wait_until, lambda: human.get_cell(mine).source == "shared = 'edited by the agent'",
                                    "the agent's edit in the human's session")
            ran = await call(client, "run_code", notebook_id=nb, code="print(shared)")
            assert "from the human" in text(ran), "one kernel: the human's variable"
            cell_id = ran.structured_content["cell_id"]
            await asyncio.to_thread(wait_until, lambda: human.get_cell(cell_id).outputs,
                                    "the agent's outputs in the human's session")
            assert human.get_cell(cell_id).outputs[0].text == "from the human\n"
            theirs = human.run("print('human ran this')")
            seen = await call(client, "get_cell", notebook_id=nb, cell_id=theirs.cell_id)
            assert "human ran this" in text(seen)

    try:
        asyncio.run(main())
    finally:
        human.__exit__(None, None, None)


def test_bad_input_is_a_tool_error_and_the_server_serves_on(runtimed_daemon, tmp_path):
    async def main() -> None:
        async with mcp_client(runtimed_daemon.socket_path) as client:
            one = (await call(client, "create_notebook")).structured_content["notebook_id"]
            other = (await call(client, "create_notebook")).structured_content["notebook_id"]
            cell_of_other = (await call(client, "create_cell", notebook_id=other, source="1")).structured_content["cell_id"]
            assert "Unknown tool" in await error(client, "no_such_tool")
            assert "valid string" in await error(client, "get_cells", notebook_id=5)
            assert "valid integer" in await error(client, "move_cell", notebook_id=one, cell_id="c", index="top")
            assert "No notebook 'nope' is open" in await error(client, "get_cells", notebook_id="nope")
            message = await error(client, "execute_cell", notebook_id=one, cell_id=cell_of_other)
            assert f"No cell {cell_of_other!r} in notebook {one}" in message
            assert "absolute path" in await error(client, "open_notebook", path="relative.ipynb")
            assert "does not exist" in await error(client, "open_notebook", path=str(tmp_path / "none.ipynb"))
            assert "not an execution id" in await error(client, "get_result", execution_id="42")
            assert "ExecutionNotFound" in await error(
                client, "get_result", execution_id="exec-00000000-0000-4000-8000-000000000000")
            assert "non-empty" in await error(client, "add_dependency", notebook_id=one, spec=" ")
            assert "ok" in text(await call(client, "run_code", notebook_id=one, code="print('ok')"))

    asyncio.run(main())


def test_the_daemon_restarting_under_the_server(runtimed_daemon_factory, tmp_path):
    root = tmp_path / "d"
    daemon = runtimed_daemon_factory(root, pool_sizes={"uv": 1})

    async def main() -> None:
        nonlocal daemon
        async with mcp_client(daemon.socket_path, env={"RUNTIMED_NO_AUTOSTART": "1"}) as client:
            nb = (await call(client, "create_notebook")).structured_content["notebook_id"]
            await call(client, "run_code", notebook_id=nb, code="print('before')")
            await asyncio.to_thread(daemon.stop)
            message = await error(client, "run_code", notebook_id=nb, code="print('while down')")
            assert "The runtimed daemon is not reachable" in message
            daemon = await asyncio.to_thread(DaemonProcess(root, pool_sizes={"uv": 1}).start)
            after = await call(client, "run_code", notebook_id=nb, code="print('after')")
            assert "after" in text(after)
            cells = text(await call(client, "get_cells", notebook_id=nb))
            assert "print('before')" in cells, "the notebook survived the restart"

    try:
        asyncio.run(main())
    finally:
        daemon.stop()


@pytest.mark.network
def test_an_agent_adds_a_dependency_and_imports_it(runtimed_daemon):
    async def main() -> None:
        async with mcp_client(runtimed_daemon.socket_path) as client:
            nb = (await call(client, "create_notebook")).structured_content["notebook_id"]
            await call(client, "run_code", notebook_id=nb, code="kept = 7")
            added = await call(client, "add_dependency", notebook_id=nb, spec="six")
            assert added.structured_content["action"] == "installed" and "variables are kept" in text(added)
            assert "six 7" in text(await call(client, "run_code", notebook_id=nb,
                                              code="import six; print('six', kept)"))
            assert text(await call(client, "get_dependencies", notebook_id=nb)) == "six"
            failed = await error(client, "add_dependency", notebook_id=nb, spec="runtimed-no-such-package-xyz")
            assert "runtimed-no-such-package-xyz" in failed and "The change was undone" in failed
            assert text(await call(client, "get_dependencies", notebook_id=nb)) == "six"

    asyncio.run(main())


def _readme_mcp_config() -> dict[str, Any]:
    """The README's stdio registration snippet for MCP clients."""
    section = README.read_text().split("### The MCP server", 1)[1]
    blocks = re.findall(r"```json\n(.*?)```", section, re.S)
    return next(json.loads(b) for b in blocks if '"command"' in b)


def test_the_readme_registration_works_as_written(runtimed_daemon):
    server = _readme_mcp_config()["mcpServers"]["runtimed"]
    args = [str(REPO) if a == "/absolute/path/to/your/clone" else a for a in server["args"]]
    assert str(REPO) in args, "the snippet names the clone's path"

    async def main() -> None:
        env = {"RUNTIMED_SOCKET_PATH": str(runtimed_daemon.socket_path)}
        async with mcp_client(runtimed_daemon.socket_path, command=[server["command"], *args], env=env) as client:
            assert TOOLS <= {t.name for t in (await client.list_tools()).tools}
            nb = (await call(client, "create_notebook")).structured_content["notebook_id"]
            assert "42" in text(await call(client, "run_code", notebook_id=nb, code="6 * 7"))

    asyncio.run(main())


def test_http_needs_the_bearer_token(runtimed_daemon, tmp_path):
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    env = {**os.environ, "RUNTIMED_STATE_DIR": str(tmp_path / "state")}
    token = subprocess.run([sys.executable, "-m", "runtimed", "mcp", "--show-token"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert len(token) >= 40 and (tmp_path / "state" / "mcp-token").stat().st_mode & 0o777 == 0o600
    with subprocess.Popen([sys.executable, "-m", "runtimed", "mcp", "--http", "--port", "0", "--socket",
                           str(runtimed_daemon.socket_path)], env=env, stderr=subprocess.PIPE, text=True) as proc:
        try:
            line = proc.stderr.readline()
            [url] = re.findall(r"http://127\.0\.0\.1:\d+/mcp", line)

            async def main() -> None:
                async with httpx2.AsyncClient() as anonymous:
                    denied = await anonymous.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"})
                    assert denied.status_code == 401
                async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                              timeout=60) as http, \
                        streamable_http_client(url, http_client=http) as (read, write), \
                        ClientSession(read, write) as client:
                    await client.initialize()
                    assert TOOLS <= {t.name for t in (await client.list_tools()).tools}
                    nb = (await call(client, "create_notebook")).structured_content["notebook_id"]
                    assert "over http" in text(await call(client, "run_code", notebook_id=nb,
                                                          code="print('over http')"))

            asyncio.run(main())
        finally:
            proc.terminate()
            proc.wait(20)
