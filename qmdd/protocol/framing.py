"""Length-prefixed msgpack frames: 4-byte big-endian length, then a msgpack map.

Blocking helpers serve `qmdctl`; the daemon side uses `FrameReader` over a trio stream. Both enforce
the same maximum frame size, so a hostile or confused peer cannot make either side allocate
without bound.
"""

from __future__ import annotations

import socket
import struct

import msgpack

from qmdd.protocol.errors import ErrorCode, QmddError
from qmdd.protocol.wire import MAX_FRAME_BYTES

TYPE_CHECKING = False  # not typing's: importing typing costs ~10 ms per qmdctl call
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, Protocol

    class ReceiveStream(Protocol):
        async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...

_HEADER = struct.Struct(">I")


def encode(message: Mapping[str, Any], max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > max_bytes:
        raise QmddError(ErrorCode.FRAME_TOO_LARGE, f"frame of {len(body)} bytes exceeds {max_bytes}")
    return _HEADER.pack(len(body)) + body


def decode_body(body: bytes) -> dict[str, Any]:
    try:
        message = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise QmddError(ErrorCode.PROTOCOL_ERROR, f"undecodable frame: {exc}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise QmddError(ErrorCode.PROTOCOL_ERROR, "a frame must be a map with a string 'type'")
    return message


class FrameTooLarge(QmddError):
    """The peer announced a frame beyond the limit; the stream cannot be resynchronised."""

    def __init__(self, size: int, max_bytes: int) -> None:
        super().__init__(ErrorCode.FRAME_TOO_LARGE, f"frame of {size} bytes exceeds {max_bytes}")


class FrameStalled(QmddError):
    """A frame began but did not complete in time; the stream cannot be resynchronised."""

    def __init__(self, received: int, seconds: float) -> None:
        super().__init__(ErrorCode.PROTOCOL_ERROR,
                         f"a frame stalled: {received} byte(s) of it came, then not the rest within {seconds:g}s")


def parse_header(header: bytes, max_bytes: int) -> int:
    (size,) = _HEADER.unpack(header)
    if size > max_bytes:
        raise FrameTooLarge(size, max_bytes)
    return size


# --- blocking side (qmdctl) ----------------------------------------------------------------------

def send_frame(sock: socket.socket, message: Mapping[str, Any]) -> None:
    sock.sendall(encode(message))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < n:
        got = sock.recv(min(n - len(chunks), 1 << 20))
        if not got:
            raise ConnectionError("daemon closed the connection")
        chunks += got
    return bytes(chunks)


def recv_frame(sock: socket.socket, max_bytes: int = MAX_FRAME_BYTES) -> dict[str, Any]:
    size = parse_header(_recv_exact(sock, _HEADER.size), max_bytes)
    return decode_body(_recv_exact(sock, size))


# --- trio side (daemon) --------------------------------------------------------------------------

class FrameReader:
    """Reads whole frames from a trio byte stream. Returns None on a clean EOF between frames."""

    def __init__(self, stream: ReceiveStream, max_bytes: int = MAX_FRAME_BYTES) -> None:
        self._stream = stream
        self._max = max_bytes
        self._buf = bytearray()

    async def _fill(self, n: int) -> bool:
        while len(self._buf) < n:
            data = await self._stream.receive_some(1 << 16)
            if not data:
                return False
            self._buf += data
        return True

    async def frame_started(self) -> bool:
        """Wait for the first byte of the next frame; False on a clean EOF between frames."""
        return await self._fill(1)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    async def read_body(self) -> bytes | None:
        if not await self._fill(_HEADER.size):
            if self._buf:
                raise QmddError(ErrorCode.PROTOCOL_ERROR, "connection closed inside a frame header")
            return None
        size = parse_header(bytes(self._buf[: _HEADER.size]), self._max)
        if not await self._fill(_HEADER.size + size):
            raise QmddError(ErrorCode.PROTOCOL_ERROR, "connection closed inside a frame")
        body = bytes(self._buf[_HEADER.size: _HEADER.size + size])
        del self._buf[: _HEADER.size + size]
        return body
