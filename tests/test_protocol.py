"""Wire protocol: framing limits, validation and the error table."""

from __future__ import annotations

import socket
import struct

import msgpack
import pytest
import trio
import trio.testing

from qmdd.protocol import framing
from qmdd.protocol.errors import ERRORS, ErrorCode, QmddError, unwrap_error
from qmdd.protocol.wire import MAX_FRAME_BYTES, validate_params


def test_every_error_code_has_a_distinct_exit_code_and_hints() -> None:
    assert set(ERRORS) == set(ErrorCode)
    exit_codes = [spec.exit_code for spec in ERRORS.values()]
    assert len(exit_codes) == len(set(exit_codes))
    assert all(spec.hints and 400 <= spec.status < 600 for spec in ERRORS.values())
    # 2 is the usage error's, as argparse, click and qmd use it; only USAGE_ERROR has it.
    assert ERRORS[ErrorCode.USAGE_ERROR].exit_code == 2


def test_validate_params_fills_defaults_and_rejects_bad_types() -> None:
    assert validate_params("search", {"query": "x"})["limit"] == 5
    with pytest.raises(QmddError) as e:
        validate_params("search", {"query": 3})
    assert e.value.code is ErrorCode.INVALID_INPUT
    with pytest.raises(QmddError):
        validate_params("search", {"query": "x", "limit": True})  # bool is not an int here
    with pytest.raises(QmddError):
        validate_params("search", {"query": "x", "bogus": 1})
    with pytest.raises(QmddError):
        validate_params("search", {})
    with pytest.raises(QmddError):
        validate_params("update", {"collections": ["a", 3]})
    with pytest.raises(QmddError) as e:
        validate_params("nope", {})
    assert e.value.code is ErrorCode.UNKNOWN_METHOD


def test_error_round_trip_and_unknown_code() -> None:
    err = QmddError(ErrorCode.NOT_FOUND, "gone", details={"candidates": ["a"]})
    back = QmddError.from_wire(err.to_wire())
    assert (back.code, back.message, back.hints, back.details) == (err.code, "gone", err.hints, err.details)
    assert QmddError.from_wire({"code": "FUTURE_CODE", "message": "m"}).code is ErrorCode.INTERNAL
    assert QmddError.from_wire("junk").code is ErrorCode.PROTOCOL_ERROR


def test_unwrap_error_looks_inside_exception_groups() -> None:
    inner = QmddError(ErrorCode.TIMEOUT, "t")
    assert unwrap_error(ExceptionGroup("g", [ValueError(), ExceptionGroup("h", [inner])])) is inner
    assert unwrap_error(ValueError()) is None


def test_blocking_frames_round_trip_and_reject_oversize() -> None:
    a, b = socket.socketpair()
    with a, b:
        framing.send_frame(a, {"type": "req", "id": 1, "text": "é" * 10})
        assert framing.recv_frame(b)["text"] == "é" * 10
        a.sendall(struct.pack(">I", MAX_FRAME_BYTES + 1))
        with pytest.raises(QmddError) as e:
            framing.recv_frame(b)
        assert e.value.code is ErrorCode.FRAME_TOO_LARGE
    with pytest.raises(QmddError):
        framing.encode({"type": "x", "blob": b"x" * 100}, max_bytes=50)


@pytest.mark.parametrize("body", [b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"no": "type"}),
                                  msgpack.packb({1: 2})])
def test_decode_rejects_malformed_bodies(body: bytes) -> None:
    with pytest.raises(QmddError) as e:
        framing.decode_body(body)
    assert e.value.code is ErrorCode.PROTOCOL_ERROR


def test_frame_reader_handles_split_frames_eof_and_truncation() -> None:
    async def main() -> None:
        with trio.fail_after(5):
            a, b = trio.testing.memory_stream_pair()
            reader = framing.FrameReader(b)
            data = framing.encode({"type": "hello"}) + framing.encode({"type": "req", "id": 2})
            for i in range(len(data)):  # one byte at a time
                await a.send_all(data[i:i + 1])
            assert framing.decode_body(await reader.read_body() or b"")["type"] == "hello"
            assert framing.decode_body(await reader.read_body() or b"")["id"] == 2
            await a.send_all(framing.encode({"type": "x"})[:7])
            await a.aclose()
            with pytest.raises(QmddError):
                await reader.read_body()

    trio.run(main)
