"""Sans-IO tests for the wire framing: preamble, length-prefixed frames, caps, EOF."""

from __future__ import annotations

import random
import struct

import pytest

from runtimed.errors import ProtocolError, RuntimedError
from runtimed.protocol.framing import (
    FRAME_CAP,
    HANDSHAKE_CAP,
    MAGIC,
    PREAMBLE,
    PROTOCOL_VERSION,
    FrameDecoder,
    encode_frame,
)

PAYLOADS = [b'{"channel":"pool"}', b"\x00sync", b"x", bytes(range(256)) * 3, b"\x01" + b"{}"]


def stream(*payloads: bytes, preamble: bool = True) -> bytes:
    return (PREAMBLE if preamble else b"") + b"".join(encode_frame(p) for p in payloads)


def feed_all(decoder: FrameDecoder, chunks) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


# --- constants and encoding ------------------------------------------------------------------


def test_preamble_is_magic_then_version_byte():
    assert MAGIC == bytes([0xC0, 0xDE, 0x01, 0xAC])
    assert PREAMBLE == MAGIC + bytes([PROTOCOL_VERSION])
    assert len(PREAMBLE) == 5
    assert HANDSHAKE_CAP == 64 * 1024


def test_encode_frame_is_big_endian_length_prefix():
    assert encode_frame(b"abc") == b"\x00\x00\x00\x03abc"
    big = b"z" * 0x010203
    assert encode_frame(big)[:4] == b"\x00\x01\x02\x03"
    assert encode_frame(big)[4:] == big


def test_encode_empty_frame_is_refused():
    with pytest.raises(ProtocolError, match="empty"):
        encode_frame(b"")


def test_encode_oversized_frame_is_refused(monkeypatch):
    import runtimed.protocol.framing as framing

    monkeypatch.setattr(framing, "FRAME_CAP", 10)
    assert framing.encode_frame(b"x" * 10)[:4] == struct.pack(">I", 10)
    with pytest.raises(ProtocolError, match="cap"):
        framing.encode_frame(b"x" * 11)


def test_protocol_error_is_a_runtimed_error():
    with pytest.raises(RuntimedError):
        encode_frame(b"")


# --- decoding: whole, byte-by-byte, arbitrary splits -------------------------------------------


def test_decode_whole_stream_at_once():
    dec = FrameDecoder(expect_preamble=True)
    assert dec.feed(stream(*PAYLOADS)) == PAYLOADS
    dec.eof()  # nothing pending


def test_decode_byte_by_byte():
    data = stream(*PAYLOADS)
    dec = FrameDecoder(expect_preamble=True)
    out = feed_all(dec, (data[i : i + 1] for i in range(len(data))))
    assert out == PAYLOADS
    dec.eof()


def test_preamble_alone_yields_nothing_and_frame_completes_only_at_its_last_byte():
    dec = FrameDecoder(expect_preamble=True)
    assert dec.feed(PREAMBLE) == []
    frame = encode_frame(b"hello")
    assert dec.feed(frame[:-1]) == []
    assert dec.feed(frame[-1:]) == [b"hello"]


@pytest.mark.parametrize("seed", range(40))
def test_decode_arbitrary_splits(seed):
    rng = random.Random(seed)
    payloads = [
        bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 300))) for _ in range(rng.randint(1, 8))
    ]
    data = stream(*payloads)
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(0, 12))))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
    assert b"".join(chunks) == data
    dec = FrameDecoder(expect_preamble=True)
    assert feed_all(dec, chunks) == payloads
    dec.eof()


def test_empty_feed_is_harmless():
    dec = FrameDecoder(expect_preamble=True)
    assert dec.feed(b"") == []
    assert dec.feed(PREAMBLE) == []
    assert dec.feed(b"") == []
    assert dec.feed(encode_frame(b"a")) == [b"a"]


def test_connecting_side_expects_no_preamble():
    dec = FrameDecoder(expect_preamble=False)
    assert dec.feed(stream(b"one", b"two", preamble=False)) == [b"one", b"two"]


def test_connecting_side_rejects_a_stray_preamble_as_oversized_or_bad_frame():
    # C0 DE 01 AC read as a length is ~3.2 GB: far above any cap.
    dec = FrameDecoder(expect_preamble=False)
    with pytest.raises(ProtocolError):
        dec.feed(PREAMBLE + encode_frame(b"x"))


# --- preamble errors -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [b"GET / HTTP/1.1\r\n", b"\xc0\xde\x01\xad\x01", b"\x00\x00\x00\x05\x01"])
def test_wrong_magic_is_rejected(bad):
    dec = FrameDecoder(expect_preamble=True)
    with pytest.raises(ProtocolError, match="preamble"):
        dec.feed(bad)


def test_wrong_magic_is_rejected_on_the_first_wrong_byte():
    dec = FrameDecoder(expect_preamble=True)
    assert dec.feed(b"\xc0") == []
    assert dec.feed(b"\xde") == []
    with pytest.raises(ProtocolError, match="preamble"):
        dec.feed(b"\x02")


def test_wrong_version_is_rejected_and_named():
    dec = FrameDecoder(expect_preamble=True)
    with pytest.raises(ProtocolError, match="version 2"):
        dec.feed(MAGIC + bytes([2]) + encode_frame(b"x"))


def test_wrong_version_byte_by_byte():
    dec = FrameDecoder(expect_preamble=True)
    for b in MAGIC:
        assert dec.feed(bytes([b])) == []
    with pytest.raises(ProtocolError, match="version"):
        dec.feed(bytes([PROTOCOL_VERSION + 1]))


# --- frame errors ----------------------------------------------------------------------------


def test_empty_frame_is_an_error():
    dec = FrameDecoder(expect_preamble=True)
    with pytest.raises(ProtocolError, match="Empty frame"):
        dec.feed(PREAMBLE + b"\x00\x00\x00\x00")


def test_empty_frame_after_valid_frames_is_an_error():
    dec = FrameDecoder(expect_preamble=True)
    assert dec.feed(stream(b"hs")) == [b"hs"]
    with pytest.raises(ProtocolError, match="Empty frame"):
        dec.feed(b"\x00\x00\x00\x00")


def test_oversized_frame_is_rejected_from_its_header_alone():
    dec = FrameDecoder(expect_preamble=True, frame_cap=1000)
    assert dec.feed(stream(b"handshake")) == [b"handshake"]
    # Only the 4-byte header: the decoder must not wait for (or buffer) 1001 bytes.
    with pytest.raises(ProtocolError, match="1001 bytes exceeds the 1000-byte cap"):
        dec.feed(struct.pack(">I", 1001))


def test_frame_exactly_at_cap_is_accepted():
    dec = FrameDecoder(expect_preamble=True, frame_cap=1000)
    assert dec.feed(stream(b"handshake", b"y" * 1000)) == [b"handshake", b"y" * 1000]


def test_default_frame_cap_is_enforced():
    dec = FrameDecoder(expect_preamble=True)
    dec.feed(stream(b"hs"))
    with pytest.raises(ProtocolError, match="cap"):
        dec.feed(struct.pack(">I", FRAME_CAP + 1))


# --- handshake cap: 64 KiB, first frame only -------------------------------------------------


def test_handshake_at_exactly_64k_is_accepted():
    dec = FrameDecoder(expect_preamble=True)
    hs = b"h" * HANDSHAKE_CAP
    assert dec.feed(stream(hs)) == [hs]


def test_handshake_over_64k_is_rejected_before_its_payload_arrives():
    dec = FrameDecoder(expect_preamble=True)
    with pytest.raises(ProtocolError, match=f"{HANDSHAKE_CAP}-byte cap"):
        dec.feed(PREAMBLE + struct.pack(">I", HANDSHAKE_CAP + 1))


def test_handshake_cap_applies_to_first_frame_only():
    dec = FrameDecoder(expect_preamble=True)
    big = b"b" * (HANDSHAKE_CAP * 3)
    # handshake and a large second frame in one feed, and again in a later feed
    assert dec.feed(stream(b"hs", big)) == [b"hs", big]
    assert dec.feed(encode_frame(big)) == [big]


def test_handshake_cap_first_frame_only_byte_by_byte_header():
    dec = FrameDecoder(expect_preamble=True)
    dec.feed(stream(b"hs"))
    big = b"c" * (HANDSHAKE_CAP + 1)
    data = encode_frame(big)
    out = feed_all(dec, [data[i : i + 1] for i in range(4)] + [data[4:]])
    assert out == [big]


def test_connecting_side_accepts_a_large_first_frame():
    # The daemon's first frame to a client (e.g. the initial document sync of a big
    # notebook) is not a handshake and must not be held to the 64 KiB handshake cap.
    dec = FrameDecoder(expect_preamble=False)
    big = b"d" * (HANDSHAKE_CAP + 1)
    assert dec.feed(encode_frame(big)) == [big]


# --- eof -------------------------------------------------------------------------------------


def test_eof_on_a_clean_boundary_is_fine():
    dec = FrameDecoder(expect_preamble=True)
    dec.eof()  # closed before anything: nothing pending
    dec.feed(stream(b"a", b"b"))
    dec.eof()


@pytest.mark.parametrize("kept", [1, 3, 4, 5, 8, 12])
def test_truncated_frame_at_eof_is_an_error(kept):
    data = stream(b"complete", b"truncated")  # preamble 5 + frame 12 + frame 13 bytes
    dec = FrameDecoder(expect_preamble=True)
    assert dec.feed(data[: len(data) - 13 + kept]) == [b"complete"]
    with pytest.raises(ProtocolError, match="bytes pending"):
        dec.eof()


def test_truncated_preamble_at_eof_is_an_error():
    dec = FrameDecoder(expect_preamble=True)
    dec.feed(MAGIC[:2])
    with pytest.raises(ProtocolError, match="2 bytes pending"):
        dec.eof()


def test_eof_reports_how_many_bytes_were_pending():
    dec = FrameDecoder(expect_preamble=True)
    frame = encode_frame(b"0123456789")
    assert dec.feed(PREAMBLE + frame[:7]) == []
    with pytest.raises(ProtocolError, match="7 bytes pending"):
        dec.eof()
