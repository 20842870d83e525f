"""Kernels on a real Kernel Gateway (and Enterprise Gateway) through a real daemon: what a
notebook user sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from runtimed import PluginError
from runtimed.errors import InvalidRequest, KernelDied, KernelLaunchFailed
from runtimed.testing import Background, wait_until
from runtimed_gateway_kernel.testing import TOKEN, Gateway, Proxy, gateway_env

pytestmark = [pytest.mark.slow, pytest.mark.network]  # the gateways come from the package index

GATEWAYS = ["kernel_gateway", "enterprise_gateway"]
USER = "notebook-user"


@pytest.fixture(params=GATEWAYS)
def any_gateway(request, gateway_factory) -> Gateway:
    return gateway_factory(request.param)


@pytest.fixture
def any_gateway_daemon(runtimed_daemon_factory, any_gateway):
    # Enterprise Gateway refuses kernels for root (its unauthorized_users), as tests may run
    env = gateway_env(any_gateway, username=USER)
    return runtimed_daemon_factory(pool_sizes={"uv": 0}, hot_kernels=0, env=env)


def start_sleeping(s) -> Background:
    """A cell sleeping for 60 s, run in the background; returns once it has started."""
    sleeping = s.create_cell("import time; print('started', flush=True); time.sleep(60)")
    running = Background(s, sleeping, timeout_secs=90)
    wait_until(lambda: s.get_cell(sleeping).outputs != [], what="the sleep to start")
    return running


def test_cells_run_on_the_gateway(any_gateway_daemon, any_gateway):
    with any_gateway_daemon.session() as s:
        s.start_kernel(kernel_type="gateway:python3")
        assert s.env_source == "gateway:python3"
        assert s.kernel_status()["kernel_type"] == "gateway:python3"
        [kernel] = any_gateway.kernels()  # it runs there
        assert kernel["name"] == "python3"
        with pytest.raises(InvalidRequest, match="not reached over ZMQ"):
            s.connection_info()  # nothing for a local Jupyter client to connect to
        hello = s.run("import os; print('hello'); 6 * 7")
        assert hello.success and hello.stdout == "hello\n"
        assert hello.outputs[-1].data == {"text/plain": "42"}
        # KERNEL_* variables reach the kernel the way gateways take them from clients
        assert s.run("print(os.environ['KERNEL_USERNAME'])").stdout == USER + "\n"
        failed = s.run("1 / 0")
        assert not failed.success and failed.error.ename == "ZeroDivisionError"
        s.run("kept = 'state survives'")
        assert s.run("print(kept)").stdout == "state survives\n"
        display = s.run("from IPython.display import HTML; display(HTML('<b>hi</b>'))")
        assert display.display_data[0].data["text/html"] == "<b>hi</b>"
        lines = s.run("for i in range(5000): print(i)")
        assert lines.stdout == "".join(f"{i}\n" for i in range(5000))
        # the gateway's kernelspec is recorded in the new notebook
        assert json.loads(s.get_metadata("kernelspec")) == {
            "name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
        rooms = any_gateway_daemon.client().list_rooms()
        room = [r for r in rooms if r["notebook_id"] == s.notebook_id]
        assert room[0]["env_source"] == "gateway:python3" and room[0]["has_kernel"]
    # the session's exit shut the kernel down: deleted on the gateway
    wait_until(lambda: any_gateway.kernels() == [], "the gateway kernel to be deleted")


def test_interrupt_ends_a_sleep_within_2_s(any_gateway_daemon):
    with any_gateway_daemon.session() as s:
        s.start_kernel(kernel_type="gateway:python3")
        s.run("kept = 1")
        running = start_sleeping(s)
        started = time.monotonic()
        s.interrupt()
        result = running.join(timeout=15)
        assert time.monotonic() - started < 2
        assert not result.success and result.error.ename == "KeyboardInterrupt"
        assert s.run("print(kept + 1)").stdout == "2\n"  # the same kernel goes on


def test_restart_goes_through_the_gateway(any_gateway_daemon, any_gateway):
    with any_gateway_daemon.session() as s:
        s.start_kernel(kernel_type="gateway:python3")
        s.run("import os; lost = 1")
        pid = s.run("print(os.getpid())").stdout
        [before] = any_gateway.kernels()
        s.restart_kernel()
        assert s.run("import os; print(os.getpid())").stdout != pid  # a new kernel process...
        assert [k["id"] for k in any_gateway.kernels()] == [before["id"]]  # ...of the same kernel
        gone = s.run("lost")
        assert not gone.success and gone.error.ename == "NameError"
        assert s.kernel_status()["lifecycle"] == "running"


def test_a_kernel_that_exits_fails_its_cell_though_the_gateway_restarts_it(gateway_daemon,
                                                                           kernel_gateway):
    with gateway_daemon.session() as s:
        s.start_kernel(kernel_type="gateway:python3")
        s.run("kept = 1")
        with pytest.raises(KernelDied) as info:
            s.run("import os; os._exit(3)")
        assert str(info.value) == (f"The gateway:python3 kernel died: it died, and the gateway at "
                                   f"{kernel_gateway.url} restarted it (its variables are gone)")
        wait_until(lambda: kernel_gateway.kernels() == [], "the restarted kernel to be deleted")
        s.restart_kernel()
        assert s.run("print('again')").stdout == "again\n"


def test_a_wrong_token_fails_naming_the_url_without_retrying(runtimed_daemon_factory,
                                                             kernel_gateway):
    daemon = runtimed_daemon_factory(pool_sizes={"uv": 0}, hot_kernels=0, env={
        "RUNTIMED_GATEWAY_URL": kernel_gateway.url, "RUNTIMED_GATEWAY_TOKEN": "wrong"})
    refused_before = len(kernel_gateway.requests_answered(401))
    with daemon.session() as s:
        with pytest.raises(KernelLaunchFailed) as info:
            s.start_kernel(kernel_type="gateway:python3")
        message = str(info.value)
        assert kernel_gateway.url in message and "refused" in message and "HTTP 401" in message
        assert "RUNTIMED_GATEWAY_TOKEN" in message
        assert s.kernel_status()["lifecycle"] == "error"
        assert len(kernel_gateway.requests_answered(401)) == refused_before + 1  # one request
        with pytest.raises(KernelLaunchFailed):
            s.start_kernel(kernel_type="gateway:python3")
        assert len(kernel_gateway.requests_answered(401)) == refused_before + 2  # one per attempt
    assert kernel_gateway.kernels() == []


def test_no_gateway_configured_says_what_to_set(runtimed_daemon_factory):
    daemon = runtimed_daemon_factory(pool_sizes={"uv": 0}, hot_kernels=0)
    with daemon.session() as s, pytest.raises(PluginError, match="set RUNTIMED_GATEWAY_URL"):
        s.start_kernel(kernel_type="gateway:python3")


def test_an_unknown_kernel_name_lists_the_gateways(gateway_daemon):
    with gateway_daemon.session() as s, pytest.raises(PluginError) as info:
        s.start_kernel(kernel_type="gateway:nope")
    assert "'nope'" in str(info.value) and "python3, remote-py" in str(info.value)


def test_a_user_the_gateway_refuses_gets_its_reason(runtimed_daemon_factory, gateway_factory):
    gateway = gateway_factory("enterprise_gateway")
    daemon = runtimed_daemon_factory(pool_sizes={"uv": 0}, hot_kernels=0,
                                     env=gateway_env(gateway, username="root"))
    with daemon.session() as s, pytest.raises(KernelLaunchFailed) as info:
        s.start_kernel(kernel_type="gateway:python3")
    assert str(info.value).startswith(
        f"The gateway at {gateway.url} refused POST /api/kernels with HTTP 403: User 'root' is "
        "not authorized to start kernel")


def test_auto_picks_a_kernelspec_only_the_gateway_has(gateway_daemon):
    with gateway_daemon.session() as s:
        s.connect()
        s.set_metadata("kernelspec", json.dumps(
            {"name": "remote-py", "display_name": "Remote Python", "language": "python"}))
        s.start_kernel(kernel_type="auto")
        assert s.env_source == "gateway:remote-py"
        assert s.run("print(1 + 1)").stdout == "2\n"


def test_plugins_json_lists_the_gateways_kernelspecs(kernel_gateway):
    done = subprocess.run([sys.executable, "-m", "runtimed", "plugins", "--json"],
                          env={**os.environ, **gateway_env(kernel_gateway)}, capture_output=True,
                          text=True, timeout=60, check=True)
    [declared] = {p["name"]: p for p in json.loads(done.stdout)}["gateway_kernel"]["declares"]
    assert declared["kernel_type"] == "gateway"
    assert declared["kernelspecs"]["python3"]["display_name"] == "Python 3 (ipykernel)"
    assert declared["kernelspecs"]["remote-py"]["language"] == "python"
    assert {s["env"] for s in declared["settings"]} >= {
        "RUNTIMED_GATEWAY_URL", "RUNTIMED_GATEWAY_TOKEN", "RUNTIMED_GATEWAY_HEADERS",
        "RUNTIMED_GATEWAY_VALIDATE_CERT", "RUNTIMED_GATEWAY_CA_CERTS"}
    assert TOKEN not in done.stdout  # values are not listed, only defaults
    wrong = subprocess.run([sys.executable, "-m", "runtimed", "plugins"], capture_output=True,
                           env={**os.environ, **gateway_env(kernel_gateway, token="x")},
                           text=True, timeout=60, check=True)
    assert f"The gateway at {kernel_gateway.url} refused GET /api/kernelspecs" in wrong.stdout


def test_killing_the_gateway_mid_cell_fails_it_then_a_new_kernel_works(
        runtimed_daemon_factory, gateway_factory):
    gateway = gateway_factory()
    daemon = runtimed_daemon_factory(pool_sizes={"uv": 0}, hot_kernels=0, env=gateway_env(gateway))
    with daemon.session() as s:
        s.start_kernel(kernel_type="gateway:python3")
        running = start_sleeping(s)
        gateway.kill()
        gateway.start()  # back on the same port: it no longer knows the kernel
        started = time.monotonic()
        with pytest.raises(KernelDied) as info:
            running.join(timeout=30)
        assert time.monotonic() - started < 10
        message = str(info.value)
        assert message.startswith("The gateway:python3 kernel died: ")
        assert f"the gateway at {gateway.url} no longer has it" in message
        assert s.kernel_status()["lifecycle"] == "error"
        s.start_kernel(kernel_type="gateway:python3")  # a new kernel on the gateway that is back
        assert s.run("print('back')").stdout == "back\n"
        assert len(gateway.kernels()) == 1


def test_a_gateway_that_stays_down_fails_the_cell_after_the_reconnect_window(
        runtimed_daemon_factory, gateway_factory):
    gateway = gateway_factory()
    daemon = runtimed_daemon_factory(pool_sizes={"uv": 0}, hot_kernels=0,
                                     env=gateway_env(gateway, reconnect_secs="2"))
    with daemon.session() as s:
        s.start_kernel(kernel_type="gateway:python3")
        running = start_sleeping(s)
        gateway.kill()
        started = time.monotonic()
        with pytest.raises(KernelDied) as info:
            running.join(timeout=30)
        assert 2 <= time.monotonic() - started < 10
        assert f"the gateway at {gateway.url} could not be reached for 2 s" in str(info.value)
        unreachable = f"Could not reach the gateway at {gateway.url}"
        with pytest.raises(KernelLaunchFailed, match=unreachable):
            s.start_kernel(kernel_type="gateway:python3")


def test_a_dropped_connection_is_reconnected_and_nothing_is_lost(
        runtimed_daemon_factory, kernel_gateway):
    proxy = Proxy(kernel_gateway.port)
    try:
        env = {"RUNTIMED_GATEWAY_URL": proxy.url, "RUNTIMED_GATEWAY_TOKEN": kernel_gateway.token}
        daemon = runtimed_daemon_factory(pool_sizes={"uv": 0}, hot_kernels=0, env=env)
        with daemon.session() as s:
            s.start_kernel(kernel_type="gateway:python3")
            [kernel] = kernel_gateway.kernels()
            cell = s.create_cell(
                "import time\nprint('a', flush=True)\ntime.sleep(0.5)\nprint('b')\n7")
            running = Background(s, cell, timeout_secs=60)
            wait_until(lambda: s.get_cell(cell).outputs != [], what="the cell to start")
            connections = proxy.accepted
            proxy.holding = True
            proxy.drop()  # the WebSocket breaks mid-cell, and the gateway is out of reach...

            def idle() -> bool:
                model = kernel_gateway.get(f"/api/kernels/{kernel['id']}")[1]
                return model["execution_state"] == "idle"

            wait_until(idle, "the cell to finish on the gateway meanwhile")
            proxy.holding = False  # ...until now
            result = running.join(timeout=30)
            assert proxy.accepted > connections  # it connected again
            assert result.success and result.stdout == "a\nb\n"  # what ran meanwhile was replayed
            assert result.outputs[-1].data == {"text/plain": "7"}
            assert s.run("print('after')").stdout == "after\n"
            assert "the connection closed; reconnecting" in daemon.log()
    finally:
        proxy.close()


def test_a_kernel_the_gateway_culls_fails_with_a_clear_error(runtimed_daemon_factory,
                                                             gateway_factory):
    gateway = gateway_factory(extra_args=(
        "--MappingKernelManager.cull_idle_timeout=2", "--MappingKernelManager.cull_interval=1",
        "--MappingKernelManager.cull_connected=True"))
    daemon = runtimed_daemon_factory(pool_sizes={"uv": 0}, hot_kernels=0, env=gateway_env(gateway))
    with daemon.session() as s:
        s.start_kernel(kernel_type="gateway:python3")
        assert s.run("x = 1").success
        wait_until(lambda: s.kernel_status()["lifecycle"] == "error", "the cull to be noticed",
                   timeout=30)
        reason = s.kernel_status()["error"]
        assert reason.startswith("The gateway:python3 kernel died: ")
        assert f"the gateway at {gateway.url} shut it down (culled as idle" in reason
        with pytest.raises(KernelDied, match="culled as idle"):
            s.run("x")
        s.restart_kernel()  # a new kernel
        assert s.run("print('new')").stdout == "new\n"


def test_a_jupyter_server_serving_runtimed_python(runtimed_daemon, runtimed_gateway_venv,
                                                   runtimed_daemon_factory, tmp_path):
    """Both halves at once: a Kernel Gateway (jupyter_server, as JupyterLab runs it) whose
    `runtimed-python` kernels come from one daemon, used by another daemon's gateway launcher.
    The restart hands out a kernel on new ports: the launcher connects its WebSocket again."""
    done = subprocess.run([str(runtimed_gateway_venv / "bin" / "runtimed"), "kernelspec", "install",
                           "--prefix", str(tmp_path / "prefix"), "--socket",
                           str(runtimed_daemon.socket_path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    gateway = Gateway("kernel_gateway", runtimed_gateway_venv, tmp_path,
                      jupyter_path=tmp_path / "prefix" / "share" / "jupyter").start()
    try:
        runtimed_daemon.wait_for_pool(1)
        daemon = runtimed_daemon_factory(pool_sizes={"uv": 0}, hot_kernels=0,
                                         env=gateway_env(gateway))
        kernels = runtimed_daemon.client()

        def rooms() -> list[dict]:
            return [r for r in kernels.list_rooms() if r["notebook_id"].startswith("jupyter-")
                    and r["has_kernel"]]

        before = {r["notebook_id"] for r in rooms()}
        with daemon.session() as s:
            s.start_kernel(kernel_type="gateway:runtimed-python")
            s.run("kept = 1")
            [room] = [r for r in rooms() if r["notebook_id"] not in before]
            assert room["notebook_id"] == f"jupyter-{gateway.kernels()[0]['id']}"
            assert room["env_source"] == "uv:prewarmed"
            s.restart_kernel()
            assert s.run("kept").error.ename == "NameError"
            assert s.run("print('on runtimed')").stdout == "on runtimed\n"
        wait_until(lambda: room["notebook_id"] not in {r["notebook_id"] for r in rooms()},
                   "the kernel to be given back")
    finally:
        gateway.stop()
