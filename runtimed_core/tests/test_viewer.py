"""Blobs, the daemon's web server and the live page: through a real daemon, kernel and browser."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import nbformat
import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage

import runtimed
from runtimed.blobs import blob_file
from runtimed.pytest_plugin import DaemonProcess
from runtimed.testing import wait_until

pytestmark = pytest.mark.slow


PNG = "iVBORw0KGgoAAAANSUhEUgAAAAIAAAACCAYAAABytg0kAAAAFklEQVR4nGP8z8DwnwEKmBiQAAMDAD0AAv8LE4CdAAAAAElFTkSuQmCC"
RICH_CELL = (
    "import base64\nfrom IPython.display import HTML, SVG, Image, Latex, display\n"
    f"display(Image(data=base64.b64decode('{PNG}')))\n"
    "display(HTML('<table id=\"t\"><tr><td>a cell of a table</td></tr></table>'))\n"
    "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"30\" height=\"30\">"
    "<rect width=\"30\" height=\"30\" fill=\"#36c\"/></svg>'))\n"
    "display(Latex(r'$$\\frac{a}{b}$$'))\n"
    "raise ValueError('\\x1b[1;31mred and bold\\x1b[0m')"
)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    process = DaemonProcess(tmp_path_factory.mktemp("viewer-daemon"), pool_sizes={"uv": 1},
                            env={"RUNTIMED_BLOB_CAP": str(200 * 1024)}).start()
    try:
        yield process
    finally:
        process.stop()


def session(daemon: DaemonProcess, **kw) -> runtimed.Session:
    s = runtimed.Session(socket_path=daemon.socket_path, **kw)
    s.connect()
    return s


def get(url: str, cookie: str | None = None) -> tuple[int, Any, bytes]:
    request = urllib.request.Request(url, headers={"Cookie": cookie} if cookie else {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # noqa: ANN002, ANN003
        return None


def base(daemon: DaemonProcess) -> str:
    return daemon.client().status()["http_url"]


# blobs and the web server -----------------------------------------------------------------------
def test_images_are_blobs_byte_exact_and_served_only_with_the_secret(daemon):
    with session(daemon) as s:
        result = s.run("import base64\nfrom IPython.display import Image\n"
                       f"Image(data=base64.b64decode('{PNG}'))")
        out = result.outputs[0]
        assert out.data["image/png"].strip() == PNG, "complete and byte-exact in Output.data"
        url = out.blob_urls["image/png"]
        assert set(out.blob_urls) == {"image/png"}, "small text parts stay in the document"
        status, headers, body = get(url)
        assert status == 200 and body == base64.b64decode(PNG)
        assert headers["Content-Type"] == "image/png" and "immutable" in headers["Cache-Control"]
        assert headers["Content-Security-Policy"] == "sandbox"
        cookie = headers["Set-Cookie"].split(";")[0]
        bare = url.split("?")[0]
        assert get(bare)[0] == 403, "no secret, no blob (other users reach the port too)"
        assert get(bare, cookie)[0] == 200, "then a cookie carries the secret"
        assert get(bare, cookie.split("=")[0] + "=wrong")[0] == 403
        root = base(daemon)
        for path, code in (("/blob/../../etc/passwd", 404), ("/blob/%2e%2e%2fetc%2fpasswd", 404),
                           ("/blob/xyz", 400), ("/blob/" + "0" * 64, 404), ("/nothing", 404)):
            assert get(root + path, cookie)[0] == code, path
        status, _, body = get(root + "/health", cookie)
        assert status == 200 and json.loads(body)["ok"] is True
        assert get(root + "/health")[0] == 403
        kept = daemon.client().get_result(result.execution_id).outputs[0]
        assert kept.data["image/png"].strip() == PNG, "a result fetched by id has its blobs too"
        cell = s.create_cell(f"display(Image(data=base64.b64decode('{PNG}')))")
        [done] = [e for e in s.stream(cell) if e.kind == "done"]
        assert done.result.outputs[0].data["image/png"].strip() == PNG, "and a streamed one"
        answered = s.execute_cell(cell, stdin=lambda prompt, password: "")
        assert answered.outputs[0].data["image/png"].strip() == PNG, "and one run with stdin"


def test_a_corrupt_blob_is_never_served(daemon):
    with session(daemon) as s:
        out = s.run("from IPython.display import Image\nimport os\n"
                    "Image(data=b'\\x89PNG\\r\\n\\x1a\\n' + os.urandom(5000))").outputs[0]
        url = out.blob_urls["image/png"]
        sha = urlsplit(url).path.rsplit("/", 1)[1]
        path = blob_file(daemon.blob_store_dir, sha)
        path.write_bytes(b"not the image any more")
        assert get(url)[0] == 410
        assert "is corrupt on disk" in daemon.log()


def test_blobs_survive_the_store_being_deleted_and_big_ones_are_dropped_clearly(daemon):
    with session(daemon) as s:
        shutil.rmtree(daemon.blob_store_dir)
        out = s.run("from IPython.display import Image\nimport os\n"
                    "Image(data=b'\\x89PNG\\r\\n\\x1a\\n' + os.urandom(3000))").outputs[0]
        assert get(out.blob_urls["image/png"])[0] == 200, "the store is made again"
        big = s.run("from IPython.display import Image\nimport os\n"  # over this daemon's cap
                    "Image(data=b'\\x89PNG\\r\\n\\x1a\\n' + os.urandom(300_000))")
        assert big.success and "image/png" not in big.outputs[0].data
        assert "larger than the blob cap" in big.outputs[0].data["text/plain"]
        assert s.run("print('still fine')").stdout == "still fine\n"


def test_saved_files_hold_their_images_inline(daemon, tmp_path):
    path = tmp_path / "pictures.ipynb"
    with session(daemon, path=path) as s:
        s.run(f"from IPython.display import Image\nimport base64\nImage(data=base64.b64decode('{PNG}'))")
        s.save()
    nb = nbformat.read(path, 4)
    nbformat.validate(nb)
    assert nb.cells[0].outputs[0]["data"]["image/png"].strip() == PNG
    with session(daemon, path=path) as again:  # reopened: the file's images are blobs again
        out = again.get_cells()[0].outputs[0]
        assert out.data["image/png"].strip() == PNG and "image/png" in out.blob_urls


# the live page: many viewers, and one that goes away ---------------------------------------------
class LiveView:
    """A WebSocket client of the live page, as the page's own script connects."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname, parts.port), timeout=10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        query = parts.query
        self.sock.sendall(self.ws.send(Request(host=f"{parts.hostname}:{parts.port}",
                                               target=f"/ws/notebook?{query}")))
        self.pending: list[dict] = []
        self._read_until(lambda e: isinstance(e, AcceptConnection))

    def _read_until(self, done) -> None:  # noqa: ANN001
        while True:
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    self.pending.append(json.loads(event.data))
                if done(event):
                    return
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            self.ws.receive_data(data)

    def next(self) -> dict:
        if not self.pending:
            self._read_until(lambda e: isinstance(e, TextMessage))
        return self.pending.pop(0)

    def until(self, check, what: str) -> dict:  # noqa: ANN001
        for _ in range(200):
            message = self.next()
            if check(message):
                return message
        raise AssertionError(f"no message with {what}")

    def close(self) -> None:
        self.sock.close()


def test_a_hundred_viewers_and_one_that_leaves_mid_stream(daemon):
    with session(daemon) as s:
        s.run("x = 1")
        url = s.show(open_browser=False)
        viewers = [LiveView(url) for _ in range(100)]
        for viewer in viewers:
            assert viewer.next()["type"] == "snapshot"
        leaving = LiveView(url)
        leaving.next()
        cell = s.create_cell("import time\nfor i in range(200):\n    print(i, flush=True)\n"
                             "    time.sleep(0.005)")
        s.queue_cell(cell)
        leaving.until(lambda m: cell in m["cells"] and m["cells"][cell]["outputs"], "outputs")
        leaving.sock.shutdown(socket.SHUT_RDWR)  # gone mid-stream, no close handshake
        leaving.close()
        wait_until(lambda: s.get_cell(cell).outputs and
                   s.get_cell(cell).outputs[0].text.endswith("199\n"), "the cell to finish", 30)
        for viewer in viewers:
            final = viewer.until(lambda m: cell in m["cells"] and m["cells"][cell]["outputs"] and
                                 m["cells"][cell]["outputs"][0]["text"].endswith("199\n"), "the end")
            assert final["type"] == "update"
            viewer.close()
        assert s.run("print('the daemon serves on')").stdout == "the daemon serves on\n"


def test_show_and_runtimed_open_give_the_page(daemon, tmp_path):
    path = tmp_path / "opened.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("hi")]), path)
    done = subprocess.run([sys.executable, "-m", "runtimed", "open", str(path), "--no-browser",
                           "--socket", str(daemon.socket_path)], capture_output=True, text=True,
                          timeout=60, check=True)
    url = done.stdout.strip()
    assert url.startswith(base(daemon) + "/notebook?path=") and "token=" in url
    view = LiveView(url)
    snapshot = view.next()
    assert snapshot["path"] == str(path) and [c["source"] for c in snapshot["cells"].values()] == ["hi"]
    view.close()
    page = get(url)
    assert page[0] == 302 and "token" not in page[1]["Location"], "the secret leaves the address bar"


# in a real browser ----------------------------------------------------------------------------


def test_the_page_shows_every_kind_of_output_live(daemon, browser, artifacts):
    with session(daemon) as s:
        s.create_cell("# Results\n\nEuler: $e^{i\\pi} + 1 = 0$, and <script>alert(1)</script>", "markdown")
        s.run(RICH_CELL)
        page = browser.new_page()
        page.goto(s.show(open_browser=False))
        page.wait_for_selector("body[data-state=live]")
        kinds = page.locator(".output").evaluate_all("els => els.map(e => e.dataset.mime)")
        assert kinds == ["image/png", "text/html", "image/svg+xml", "text/latex", "error"]
        assert page.locator(".output[data-mime='image/png'] img").evaluate("i => i.naturalWidth") == 2
        assert page.locator(".output[data-mime='image/svg+xml'] img").evaluate("i => i.naturalWidth") == 30
        assert page.locator(".output[data-mime='text/latex'] .katex").count() == 1
        assert page.locator("div.markdown .katex").count() == 1, "maths in markdown typeset"
        assert "<script>alert(1)</script>" in page.locator("div.markdown").inner_text(), "shown, never run"
        red = page.locator(".output.error").get_by_text("red and bold", exact=True)
        assert "font-weight:bold" in red.get_attribute("style").replace(" ", "")
        frame = next(f for f in page.frames if f != page.main_frame)
        assert frame.locator("#t td").inner_text() == "a cell of a table", "HTML in a sandboxed frame"
        assert page.locator("iframe.html-output").get_attribute("sandbox") == "allow-scripts"
        s.run("print('after the page loaded')")
        page.wait_for_function("() => [...document.querySelectorAll('.output.stream')]"
                               ".some(e => e.innerText.includes('after the page loaded'))")
        page.screenshot(path=str(artifacts / "viewer.png"), full_page=True)
        page.close()


def test_the_page_without_the_secret_is_forbidden(daemon, browser):
    with session(daemon) as s:
        url = s.show(open_browser=False).split("&token=")[0]
        context = browser.new_context()  # no cookie
        page = context.new_page()
        response = page.goto(url)
        assert response.status == 403 and "needs the link" in page.inner_text("body")
        context.close()


def test_results_display_richly_in_jupyter(daemon):
    with session(daemon) as s:
        result = s.run(f"from IPython.display import Image\nimport base64\nImage(data=base64.b64decode('{PNG}'))")
        bundle = result._repr_mimebundle_()
        assert bundle["image/png"].strip() == PNG and "text/plain" in bundle
        output_bundle = result.outputs[0]._repr_mimebundle_()
        assert output_bundle["image/png"].strip() == PNG
        text = s.run("print('plain')")._repr_mimebundle_()
        assert text["text/plain"] == "plain\n"


@pytest.mark.network
def test_a_matplotlib_figure_shows_on_the_page(daemon, browser, artifacts):
    with session(daemon) as s:
        s.set_metadata("runt", json.dumps({"uv": {"dependencies": ["matplotlib"]}}))
        s.start_kernel()
        result = s.run("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('runtimed')\n"
                       "plt.show()")
        assert result.success and "image/png" in result.display_data[0].blob_urls
        page = browser.new_page()
        page.goto(s.show(open_browser=False))
        page.wait_for_function("() => [...document.images].some(i => i.naturalWidth > 300)")
        page.screenshot(path=str(artifacts / "viewer-matplotlib.png"), full_page=True)
        page.close()
