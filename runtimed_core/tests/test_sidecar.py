"""The sidecar: a real ipykernel in a plain venv with runtimed installed, a real terminal IPython,
the sidecar's own process, and its page in headless Chromium."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import runtimed
from runtimed.protocol.jupyter import JupyterCodec
from runtimed.testing import wait_until
from runtimed.web.sidecar import KernelOutputs, Shown

ROOT = Path(__file__).parents[2]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAFklEQVR4nGP8z8DwnwEKmBiQAAMDAD0AAv8LE4CdAAAAAElFTkSuQmCC"
RICH = (
    "import base64\nfrom IPython.display import HTML, SVG, Image, Latex, display\n"
    f"display(Image(data=base64.b64decode('{PNG}')))\n"
    "display(HTML('<table id=\"t\"><tr><td>a cell of a table</td></tr></table>'))\n"
    "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"30\" height=\"30\">"
    "<rect width=\"30\" height=\"30\" fill=\"#36c\"/></svg>'))\n"
    "display(Latex(r'$$\\frac{a}{b}$$'))\n"
)


# the page model, without processes (fast) ---------------------------------------------------------
def message(msg_type: str, content: dict, parent: str = "r1") -> dict:
    return {"msg_type": msg_type, "content": content, "parent_header": {"msg_id": parent}}


def test_outputs_follow_notebook_semantics():
    outputs = KernelOutputs(max_cells=2)
    outputs.handle(message("execute_input", {"code": "work()", "execution_count": 1}))
    for chunk in ("10%", "\r50%", "\r100%\n", "done\n"):
        outputs.handle(message("stream", {"name": "stdout", "text": chunk}))
    outputs.handle(message("display_data", {"data": {"text/plain": "v1"}, "metadata": {},
                                            "transient": {"display_id": "d"}}))
    outputs.handle(message("stream", {"name": "stdout", "text": "after\n"}))
    cell = outputs.cells["r1"]
    assert cell.source == "work()" and cell.execution_count == 1
    assert [o.get("text") for o in cell.outputs] == ["100%\ndone\n", None, "after\n"]
    outputs.handle(message("update_display_data", {"data": {"text/plain": "v2"}, "metadata": {},
                                                   "transient": {"display_id": "d"}}, parent="r2"))
    assert cell.outputs[1]["data"] == {"text/plain": "v2"} and "r2" not in outputs.cells
    outputs.handle(message("clear_output", {"wait": True}))
    assert len(cell.outputs) == 3, "clear_output(wait=True) waits for the next output"
    outputs.handle(message("stream", {"name": "stderr", "text": "fresh"}))
    assert [o["text"] for o in cell.outputs] == ["fresh"]
    outputs.handle(message("execute_input", {"code": "2"}, parent="r2"))
    outputs.handle(message("execute_input", {"code": "3"}, parent="r3"))
    assert list(outputs.cells) == ["r2", "r3"], "only the most recent executions are kept"
    outputs.handle(message("comm_open", {"comm_id": "c"}))
    assert list(outputs.cells) == ["r2", "r3"], "what is not an output makes no cell"


def test_the_page_gets_a_snapshot_then_only_what_changed():
    outputs = KernelOutputs()
    outputs.handle(message("execute_input", {"code": "a"}, parent="a"))
    outputs.handle(message("execute_input", {"code": "b"}, parent="b"))
    sent = Shown()
    first = json.loads(outputs.page_message("t", "python3", sent))
    assert first["type"] == "snapshot" and first["order"] == ["a", "b"] and set(first["cells"]) == {"a", "b"}
    assert outputs.page_message("t", "python3", sent) is None, "nothing new, nothing sent"
    outputs.handle(message("stream", {"name": "stdout", "text": "x"}, parent="b"))
    update = json.loads(outputs.page_message("t", "python3", sent))
    assert update["type"] == "update" and list(update["cells"]) == ["b"]
    outputs.handle(message("status", {"execution_state": "busy"}))
    assert json.loads(outputs.page_message("t", "python3", sent))["kernel"]["activity"] == "busy"


# a real kernel in a plain venv with runtimed installed -------------------------------------------
@pytest.fixture(scope="module")
def kernel_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A plain venv (as a user makes one) with ipykernel and this runtimed installed."""
    venv = tmp_path_factory.mktemp("sidecar-venv") / "venv"
    env = {**os.environ, "VIRTUAL_ENV": str(venv)}
    subprocess.run(["uv", "venv", "-q", "--python", sys.executable, str(venv)], check=True, env=env)
    # --reinstall-package: uv would reuse a wheel it built from an older state of the sources
    subprocess.run(["uv", "pip", "install", "-q", "--reinstall-package", "runtimed", "ipykernel",
                    str(ROOT / "runtimed_core")], check=True, env=env, timeout=600)
    return venv


@pytest.fixture
def kernel(kernel_venv: Path, tmp_path: Path) -> Iterator:
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = tmp_path / "kernels" / "plain-venv"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [str(kernel_venv / "bin" / "python"), "-m", "ipykernel_launcher", "-f",
                 "{connection_file}"], "display_name": "plain venv", "language": "python"}))
    manager = KernelManager(kernel_name="plain-venv", connection_file=str(tmp_path / "kernel.json"),
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(tmp_path / "kernels")]))
    manager.start_kernel(env={**os.environ, "RUNTIMED_NO_BROWSER": "1"})
    client = manager.client()
    client.start_channels()
    client.wait_for_ready(60)
    try:
        yield manager, client
    finally:
        client.stop_channels()
        if manager.is_alive():
            manager.shutdown_kernel(now=True)
        else:  # killed, or shut down by the test: its sockets and ZMQ context still go
            manager.cleanup_resources()


def run(client, code: str) -> str:  # noqa: ANN001
    """Execute ``code`` in the kernel; its printed text (and tracebacks)."""
    msg_id = client.execute(code)
    text = []
    while True:
        msg = client.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        if msg["msg_type"] == "stream":
            text.append(msg["content"]["text"])
        elif msg["msg_type"] == "error":
            text.append("\n".join(msg["content"]["traceback"]))
        elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
            return "".join(text)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:  # a zombie child of this process counts as gone
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False






def shows(page, selector: str, text: str) -> None:  # noqa: ANN001
    page.wait_for_function("([s, t]) => [...document.querySelectorAll(s)].some("
                           "e => e.innerText.includes(t))", arg=[selector, text])


@pytest.mark.slow
def test_inside_a_kernel_the_sidecar_shows_its_displays_live(kernel, browser, artifacts):
    manager, client = kernel
    printed = run(client, "from runtimed import sidecar\ns = sidecar()\nprint(s.url, s.process.pid)\n"
                  + RICH + "print('same cell')")
    url, pid = printed.split()[0], int(printed.split()[1])
    assert url.startswith("http://127.0.0.1:") and "token=" in url
    page = browser.new_page()
    page.goto(url)
    page.wait_for_selector("body[data-state=live]")
    kinds = page.locator(".output").evaluate_all("els => els.map(e => e.dataset.mime)")
    assert kinds == ["stream", "image/png", "text/html", "image/svg+xml", "text/latex", "stream"], \
        "what the cell that started it printed and displayed after the call"
    assert page.locator(".output[data-mime='image/png'] img").evaluate("i => i.naturalWidth") == 2
    assert page.locator(".output[data-mime='text/latex'] .katex").count() == 1
    frame = next(f for f in page.frames if f != page.main_frame)
    assert frame.locator("#t td").inner_text() == "a cell of a table"
    run(client, "from IPython.display import Markdown\ndisplay(Markdown('**later** $x^2$'))\n1/0")
    shows(page, ".output[data-mime='text/markdown'] strong", "later")
    shows(page, ".output.error", "ZeroDivisionError")
    assert page.locator(".output[data-mime='text/markdown'] .katex").count() == 1
    assert "1/0" in page.locator(".cell").last.locator(".source").inner_text()
    page.screenshot(path=str(artifacts / "sidecar-kernel.png"), full_page=True)
    assert run(client, "print(s.running)") == "True\n"
    page.close()
    manager.shutdown_kernel()
    wait_until(lambda: gone(pid), "the sidecar to stop with its kernel", 20)


@pytest.mark.slow
def test_a_connection_file_watched_from_outside_until_the_kernel_dies(kernel, browser):
    manager, client = kernel
    s = runtimed.sidecar(manager.connection_file, open_browser=False)
    try:
        assert s.running and repr(s).endswith("running>")
        run(client, "print('from outside')")
        page = browser.new_page()
        page.goto(s.url)
        shows(page, ".output.stream", "from outside")
        assert "plain-venv" in page.locator("#kernel").inner_text() or \
            page.locator("#title").inner_text().startswith("sidecar")
        context = browser.new_context()  # no secret, no page
        assert context.new_page().goto(s.url.split("?")[0]).status == 403
        context.close()
        page.close()
        os.kill(manager.provisioner.process.pid, signal.SIGKILL)  # the kernel dies; we live on
        wait_until(lambda: not s.running, "the sidecar to notice the heartbeat stopped", 30)
    finally:
        s.close()
    assert not s.running


def test_bad_connection_files_are_refused_clearly(tmp_path):
    with pytest.raises(runtimed.RuntimedError, match="No kernel connection file"):
        runtimed.sidecar(tmp_path / "missing.json", open_browser=False)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(runtimed.RuntimedError, match="did not start"):
        runtimed.sidecar(tmp_path / "bad.json", open_browser=False)


def test_bad_signatures_are_dropped(tmp_path):
    import zmq

    context = zmq.Context()
    pub = context.socket(zmq.XPUB)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    (tmp_path / "k.json").write_text(json.dumps({"transport": "tcp", "ip": "127.0.0.1",
                                                "iopub_port": port, "key": "right"}))
    s = runtimed.sidecar(tmp_path / "k.json", open_browser=False)
    try:
        assert pub.poll(10_000), "the sidecar subscribes"
        pub.recv()
        for key, text in ((b"wrong", "forged"), (b"right", "genuine")):
            _, frames = JupyterCodec(key).message("stream", {"name": "stdout", "text": text},
                                                  parent={"msg_id": "x"})
            pub.send_multipart([b"stream", *frames])
        health = s.url.replace("/?", "/health?")
        wait_until(lambda: json.loads(urllib.request.urlopen(health).read())["executions"] == 1,
                   "the genuine message", 10)
    finally:
        s.close()
        pub.close()
        context.term()


# terminal IPython, bridged -----------------------------------------------------------------------
@pytest.mark.slow
def test_terminal_ipython_is_bridged(kernel_venv, browser, tmp_path, artifacts):
    (tmp_path / "ipython").mkdir()
    shell = subprocess.Popen(
        [str(kernel_venv / "bin" / "ipython"), "--simple-prompt", "--colors=NoColor", "--no-banner",
         f"--ipython-dir={tmp_path / 'ipython'}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "RUNTIMED_NO_BROWSER": "1"})
    assert shell.stdin is not None and shell.stdout is not None

    def type_line(line: str) -> None:
        shell.stdin.write(line + "\n")
        shell.stdin.flush()

    try:
        type_line("import runtimed; s = runtimed.sidecar(); "
                  "print('URL', s.url, s.process.pid, s._bridge.connection_file)")
        deadline = time.monotonic() + 60
        seen = []
        for line in shell.stdout:
            seen.append(line)
            if "URL " in line:
                url, pid, connection_file = line.split("URL ")[1].split()
                break
            assert time.monotonic() < deadline, seen
        else:
            raise AssertionError(f"IPython ended: {''.join(seen)}")
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("body[data-state=live]")
        type_line("from IPython.display import HTML, display; display(HTML('<p id=p>bridged</p>'))")
        type_line("6 * 7")
        type_line("undefined_name")
        page.wait_for_function("() => document.querySelectorAll('iframe.html-output').length == 1")
        shows(page, ".output[data-mime='text/plain']", "42")
        shows(page, ".output.error", "NameError")
        frame = next(f for f in page.frames if f != page.main_frame)
        assert frame.locator("#p").inner_text() == "bridged"
        assert page.locator(".cell .prompt").all_inner_texts()[-2:] == ["[3]:", "[4]:"]
        page.screenshot(path=str(artifacts / "sidecar-ipython.png"), full_page=True)
        page.close()
        type_line("exit")
        shell.wait(30)
        wait_until(lambda: gone(int(pid)), "the sidecar to stop with the shell", 20)
        assert not Path(connection_file).parent.exists(), "the bridge's connection file is removed"
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
        shell.stdin.close()
        shell.stdout.close()


def test_outside_ipython_a_connection_file_is_needed():
    code = "import runtimed\ntry:\n    runtimed.sidecar()\nexcept runtimed.RuntimedError as e:\n    print(e)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=True)
    assert "needs a connection file" in done.stdout
