"""The parts without a gateway: frames, settings, what a start sends."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runtimed.config import DaemonConfig
from runtimed.plugins import Registry, get_plugin_manager
from runtimed_gateway_kernel import GatewayLauncher
from runtimed_gateway_kernel.client import Gateway, header_map, http_url, ws_url
from runtimed_gateway_kernel.hooks import runtimed_kernel_launchers
from runtimed_gateway_kernel.wire import FrameError, binary_frame, new_message, parse_frame


def test_registered_through_the_entry_point():
    assert Registry.load(get_plugin_manager()).launchers["gateway"] is GatewayLauncher
    assert runtimed_kernel_launchers() == [GatewayLauncher]
    assert GatewayLauncher.needs_env is False and GatewayLauncher.hot is False


def test_a_request_frame_is_a_jupyter_message_with_its_channel():
    msg_id, text = new_message("control", "interrupt_request", {}, session="s1", username="ann")
    frame = json.loads(text)
    assert frame["channel"] == "control" and frame["content"] == {} and frame["buffers"] == []
    header = frame["header"]
    assert (header["msg_id"], header["msg_type"], header["session"], header["username"]) == (
        msg_id, "interrupt_request", "s1", "ann")
    assert header["version"] == "5.3" and header["date"].endswith("+00:00")
    assert frame["parent_header"] == {} and frame["metadata"] == {}
    with pytest.raises(ValueError, match="unknown channel"):
        new_message("hb", "ping", {}, session="s", username="u")


def test_text_and_binary_frames_parse_to_the_daemons_messages():
    msg = {"header": {"msg_id": "m", "msg_type": "comm_msg"}, "parent_header": {"msg_id": "p"},
           "metadata": {}, "content": {"data": {}}, "channel": "iopub"}
    channel, parsed = parse_frame(json.dumps(msg))
    assert channel == "iopub" and parsed["msg_type"] == "comm_msg" and parsed["buffers"] == []
    assert parsed["parent_header"] == {"msg_id": "p"}
    channel, parsed = parse_frame(binary_frame(msg, [b"\x00\x01", b"", b"xyz"]))
    assert channel == "iopub" and parsed["buffers"] == [b"\x00\x01", b"", b"xyz"]
    assert parsed["content"] == {"data": {}}


@pytest.mark.parametrize(("frame", "problem"), [
    ("not json", "not JSON"),
    ("[1]", "not a JSON object"),
    (json.dumps({"header": {"msg_type": "x"}, "channel": "hb"}), "no known channel"),
    (json.dumps({"header": {}, "channel": "shell"}), "no header with a msg_type"),
    (b"\x00\x00", "a binary frame of 2 bytes"),
    (b"\x00\x00\x00\x09" + b"\x00" * 8, "announcing 9 parts"),
])
def test_a_bad_frame_is_refused_with_the_reason(frame, problem):
    with pytest.raises(FrameError, match=problem):
        parse_frame(frame)


def test_settings_parse_and_refuse_with_reasons():
    assert http_url(" https://gw.example.com:8888/base/ ") == "https://gw.example.com:8888/base"
    assert http_url("") == "" and ws_url("wss://gw/") == "wss://gw"
    for bad in ("gw:8888", "ftp://gw", "http://", "http://gw/?x=1"):
        with pytest.raises(ValueError):
            http_url(bad)
    assert header_map('{"X-Team": "ml"}') == {"X-Team": "ml"}
    for bad in ("X-Team: ml", '{"n": 1}', "[]"):
        with pytest.raises(ValueError, match="JSON object"):
            header_map(bad)


def test_urls_and_headers_sent():
    gw = Gateway(url="https://gw.example.com/eg", token="t0k", headers={"X-Team": "ml"})
    assert gw.channels_url("k 1", "s") == (
        "wss://gw.example.com/eg/api/kernels/k%201/channels?session_id=s")
    other = Gateway(url="http://h:1", ws_url="ws://other:2")
    assert other.channels_url("k", "s").startswith("ws://other:2/api")
    assert gw.http_headers() == {"X-Team": "ml", "Authorization": "token t0k"}
    bearer = Gateway(url="http://h", token="t", auth_scheme="Bearer")
    assert bearer.http_headers() == {"Authorization": "Bearer t"}
    assert Gateway(url="http://h").http_headers() == {}
    assert Gateway(url="http://h").ssl_context("http://h") is None
    unverified = Gateway(url="https://h", validate_cert=False).ssl_context("wss://h")
    assert unverified is not None and unverified.check_hostname is False


def test_a_start_sends_kernel_variables_and_the_username(monkeypatch):
    monkeypatch.setenv("RUNTIMED_GATEWAY_ENV", "PROJECT,ABSENT")
    launcher = GatewayLauncher(DaemonConfig())
    env = launcher.kernel_env({"KERNEL_NAMESPACE": "ml", "PROJECT": "p", "HOME": "/h",
                               "SECRET": "s"})
    import getpass

    assert env == {"KERNEL_NAMESPACE": "ml", "PROJECT": "p", "KERNEL_USERNAME": getpass.getuser()}
    assert launcher.kernel_env({"KERNEL_USERNAME": "svc"})["KERNEL_USERNAME"] == "svc"
    monkeypatch.setenv("RUNTIMED_GATEWAY_USERNAME", "ann")
    assert GatewayLauncher(DaemonConfig()).kernel_env({})["KERNEL_USERNAME"] == "ann"


def test_a_bad_setting_stops_the_daemon_naming_the_variable(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "runtimed", "run", "--socket", str(tmp_path / "s.sock"),
         "--cache-dir", str(tmp_path / "c"), "--state-dir", str(tmp_path / "st")],
        env={**os.environ, "RUNTIMED_GATEWAY_URL": "gateway:8888"}, capture_output=True, text=True,
        timeout=60, check=False)
    assert done.returncode != 0
    assert "RUNTIMED_GATEWAY_URL='gateway:8888' is not a valid value for gateway.url" in done.stderr
