"""Sans-IO tests for the message layer: handshakes and typed notebook frames."""

from __future__ import annotations

import json

import pytest

from runtimed.errors import ProtocolError
from runtimed.protocol import messages as m
from runtimed.protocol.framing import FrameDecoder, PREAMBLE, encode_frame


# --- handshakes ------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["pool", "create_notebook", "blob"])
def test_handshake_channels_without_required_fields(channel):
    hs = m.parse_handshake(m.encode_handshake(channel))
    assert hs == m.Handshake(channel=channel)


def test_notebook_sync_handshake_round_trip():
    payload = m.encode_handshake("notebook_sync", notebook_id="nb-1")
    assert json.loads(payload) == {"channel": "notebook_sync", "notebook_id": "nb-1"}
    hs = m.parse_handshake(payload)
    assert hs.channel == "notebook_sync"
    assert hs.notebook_id == "nb-1"
    assert hs.path is None


def test_open_notebook_handshake_round_trip():
    hs = m.parse_handshake(m.encode_handshake("open_notebook", path="/tmp/ä b.ipynb"))
    assert hs == m.Handshake(channel="open_notebook", path="/tmp/ä b.ipynb")


def test_encode_handshake_drops_none_fields():
    assert json.loads(m.encode_handshake("pool", notebook_id=None)) == {"channel": "pool"}


def test_handshake_passes_the_framing_handshake_cap_end_to_end():
    dec = FrameDecoder(expect_preamble=True)
    payload = m.encode_handshake("notebook_sync", notebook_id="x" * 100)
    (frame,) = dec.feed(PREAMBLE + encode_frame(payload))
    assert m.parse_handshake(frame).notebook_id == "x" * 100


@pytest.mark.parametrize(
    "obj", [{"channel": "bogus"}, {"channel": "POOL"}, {"channel": None}, {}, {"channel": ["pool"]}]
)
def test_unknown_or_missing_channel(obj):
    with pytest.raises(ProtocolError, match="Unknown channel"):
        m.parse_handshake(json.dumps(obj).encode())


def test_unknown_channel_error_lists_valid_channels():
    with pytest.raises(ProtocolError) as info:
        m.parse_handshake(b'{"channel":"nope"}')
    for channel in m.CHANNELS:
        assert channel in str(info.value)


@pytest.mark.parametrize(
    "obj",
    [
        {"channel": "notebook_sync"},
        {"channel": "notebook_sync", "notebook_id": ""},
        {"channel": "notebook_sync", "notebook_id": None},
        {"channel": "notebook_sync", "notebook_id": 42},
        {"channel": "notebook_sync", "notebook_id": ["a"]},
    ],
)
def test_notebook_sync_needs_a_non_empty_string_notebook_id(obj):
    with pytest.raises(ProtocolError, match="notebook_id"):
        m.parse_handshake(json.dumps(obj).encode())


@pytest.mark.parametrize("obj", [{"channel": "open_notebook"}, {"channel": "open_notebook", "path": 3}])
def test_open_notebook_needs_a_path(obj):
    with pytest.raises(ProtocolError, match="path"):
        m.parse_handshake(json.dumps(obj).encode())


@pytest.mark.parametrize(
    "payload", [b"", b"not json", b"{", b'{"channel": "pool"', b"\xff\xfe\x00garbage", b"{'channel': 'pool'}"]
)
def test_non_json_handshake(payload):
    with pytest.raises(ProtocolError, match="not JSON"):
        m.parse_handshake(payload)


@pytest.mark.parametrize("payload", [b"[]", b'["pool"]', b'"pool"', b"42", b"null", b"true"])
def test_non_object_handshake(payload):
    with pytest.raises(ProtocolError, match="expected a JSON object"):
        m.parse_handshake(payload)


def test_handshake_error_messages_say_handshake():
    with pytest.raises(ProtocolError, match="Malformed handshake"):
        m.parse_handshake(b"[]")


# --- typed frames ----------------------------------------------------------------------------


def test_frame_type_bytes_match_the_wire_format():
    assert (m.DOC_SYNC, m.REQUEST, m.RESPONSE, m.BROADCAST, m.STATE_SYNC) == (0, 1, 2, 3, 5)


@pytest.mark.parametrize("kind", [m.DOC_SYNC, m.REQUEST, m.RESPONSE, m.BROADCAST, m.STATE_SYNC, 0x7F])
def test_typed_round_trip(kind):
    body = b"\x00\x01binary\xff"
    payload = m.typed(kind, body)
    assert payload[0] == kind
    got_kind, got_body = m.split_typed(payload)
    assert got_kind == kind
    assert bytes(got_body) == body


def test_typed_with_empty_body_is_one_byte():
    payload = m.typed(m.DOC_SYNC, b"")
    assert payload == b"\x00"
    kind, body = m.split_typed(payload)
    assert kind == m.DOC_SYNC and bytes(body) == b""


def test_request_frame_round_trip_through_framing():
    req = m.request(7, "execute_cell", cell_id="cell-1", required_heads=["ab" * 32])
    assert req == {"id": 7, "type": "execute_cell", "cell_id": "cell-1", "required_heads": ["ab" * 32]}
    dec = FrameDecoder(expect_preamble=False)
    (frame,) = dec.feed(encode_frame(m.typed(m.REQUEST, m.dumps(req))))
    kind, body = m.split_typed(frame)
    assert kind == m.REQUEST
    assert m.loads(body) == req  # body is a memoryview: loads must accept it


def test_loads_accepts_memoryview_and_reports_bad_json():
    _, body = m.split_typed(m.typed(m.RESPONSE, b"{oops"))
    with pytest.raises(ProtocolError, match="Malformed response: not JSON"):
        m.loads(body, "response")
    _, body = m.split_typed(m.typed(m.RESPONSE, b"[1]"))
    with pytest.raises(ProtocolError, match="expected a JSON object"):
        m.loads(body, "response")


def test_dumps_is_compact_utf8_json():
    assert m.dumps({"a": [1, 2], "b": "ü"}) == b'{"a":[1,2],"b":"\\u00fc"}'
    assert m.loads(m.dumps({"b": "ü"})) == {"b": "ü"}


def test_ok_and_fail_responses_carry_the_request_id():
    assert m.ok(3, {"x": 1}) == {"id": 3, "result": {"x": 1}}
    assert m.ok(4) == {"id": 4, "result": None}
    err = {"type": "CellNotFound", "message": "Cell not found: c", "cell_id": "c"}
    assert m.fail(5, err) == {"id": 5, "error": err}
    assert m.loads(m.dumps(m.fail(5, err))) == {"id": 5, "error": err}


def test_jupyter_codec_round_trip_and_signature():
    from runtimed.protocol.jupyter import DELIM, JupyterCodec

    codec = JupyterCodec(b"secret")
    msg_id, frames = codec.message("execute_request", {"code": "1+1"})
    msg = codec.parse([b"identity", *frames])
    assert msg["header"]["msg_id"] == msg_id and msg["content"] == {"code": "1+1"}
    assert msg["msg_type"] == "execute_request" and msg["parent_header"] == {}
    tampered = list(frames)
    tampered[-1] = b'{"code": "import os"}'
    with pytest.raises(ProtocolError, match="bad signature"):
        codec.parse(tampered)
    with pytest.raises(ProtocolError, match="delimiter"):
        codec.parse([b"a", b"b"])
    assert DELIM in frames


def test_jupyter_codec_matches_jupyter_client():
    """Messages we sign verify in jupyter_client, and its messages verify in ours."""
    session_mod = pytest.importorskip("jupyter_client.session")
    from runtimed.protocol.jupyter import JupyterCodec

    theirs = session_mod.Session(key=b"k3y", signature_scheme="hmac-sha256")
    ours = JupyterCodec(b"k3y")
    _, frames = ours.message("kernel_info_request", {})
    idents, parts = theirs.feed_identities(frames)
    assert theirs.deserialize(parts)["header"]["msg_type"] == "kernel_info_request"
    msg = theirs.msg("status", {"execution_state": "idle"})
    assert ours.parse(theirs.serialize(msg))["content"] == {"execution_state": "idle"}


def test_connection_file(tmp_path):
    import json
    import os
    import stat

    from runtimed.protocol.jupyter import write_connection_file

    info = write_connection_file(tmp_path / "k.json", b"abc", "python")
    on_disk = json.loads((tmp_path / "k.json").read_text())
    assert on_disk == info and on_disk["key"] == "abc" and on_disk["signature_scheme"] == "hmac-sha256"
    ports = {info[k] for k in ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")}
    assert len(ports) == 5
    assert stat.S_IMODE(os.stat(tmp_path / "k.json").st_mode) == 0o600
