"""The AWS event-stream binary framing (``application/vnd.amazon.eventstream``).

Bedrock's ConverseStream (and InvokeModelWithResponseStream, Lambda's InvokeWithResponseStream,
S3 Select, Transcribe...) sends its response body as a sequence of self-delimiting messages::

    +--------------------+--------------------+--------------------+
    | total length  (u32)| headers length(u32)| prelude CRC32 (u32)|   prelude: 12 bytes
    +--------------------+--------------------+--------------------+
    | headers (headers length bytes)                               |
    | payload (total - headers - 16 bytes)                         |
    +--------------------------------------------------------------+
    | message CRC32 (u32): of every byte before it                 |
    +--------------------------------------------------------------+

All integers are big-endian. The prelude CRC covers the first 8 bytes; the message CRC covers the
whole message up to itself (prelude CRC included). CRC32 is the zlib/gzip one. Each header is::

    name length (u8) | name (UTF-8) | value type (u8) | value

with value types 0 bool true (no bytes), 1 bool false (no bytes), 2 byte (i8), 3 short (i16),
4 integer (i32), 5 long (i64), 6 byte array (u16 length + bytes), 7 string (u16 length + UTF-8),
8 timestamp (i64 milliseconds since the epoch), 9 uuid (16 bytes).

An event message carries ``:message-type: event``, ``:event-type: <member name>`` and
``:content-type: application/json``; a modelled exception carries ``:message-type: exception``
and ``:exception-type: <member name>``; an unmodelled error ``:message-type: error`` with
``:error-code`` and ``:error-message``. botocore's ``EventStreamBuffer`` is the reference
parser (the tests decode everything this module encodes with it).

The mock server encodes with :func:`encode_event`; :class:`EventStreamDecoder` is a small strict
decoder for tests and tools.
"""

from __future__ import annotations

import datetime as _dt
import json
import struct
import uuid
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

CONTENT_TYPE = "application/vnd.amazon.eventstream"

PRELUDE_LENGTH = 12  # total length, headers length, prelude CRC
MESSAGE_CRC_LENGTH = 4
OVERHEAD = PRELUDE_LENGTH + MESSAGE_CRC_LENGTH  # 16 bytes around headers and payload
# The limits botocore enforces when parsing (and the service documents).
MAX_HEADERS_LENGTH = 128 * 1024
MAX_PAYLOAD_LENGTH = 24 * 1024 * 1024
MAX_HEADER_NAME_LENGTH = 255
MAX_HEADER_VALUE_LENGTH = 32_767  # string / byte-array values: a u16 length, kept within i16

TYPE_TRUE = 0
TYPE_FALSE = 1
TYPE_BYTE = 2
TYPE_SHORT = 3
TYPE_INTEGER = 4
TYPE_LONG = 5
TYPE_BYTE_ARRAY = 6
TYPE_STRING = 7
TYPE_TIMESTAMP = 8
TYPE_UUID = 9

_INT_FORMATS = {TYPE_BYTE: "!b", TYPE_SHORT: "!h", TYPE_INTEGER: "!i", TYPE_LONG: "!q", TYPE_TIMESTAMP: "!q"}
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


class EventStreamEncodeError(ValueError):
    """A message that cannot be represented in the framing (too long, bad header value)."""


class EventStreamDecodeError(ValueError):
    """Bytes that are not a valid event-stream message (bad CRC, lengths, header type...)."""


@dataclass(frozen=True)
class HeaderValue:
    """A header value with an explicit wire type, for the types a plain Python value cannot pick
    (``HeaderValue(TYPE_SHORT, 7)``). Plain values map as: ``bool`` -> true/false, ``int`` ->
    integer (long if it does not fit in 32 bits), ``str`` -> string, ``bytes`` -> byte array,
    ``datetime`` -> timestamp, ``uuid.UUID`` -> uuid."""

    type: int
    value: Any


@dataclass(frozen=True)
class Message:
    """One decoded message: its headers (plain Python values) and raw payload."""

    headers: dict[str, Any]
    payload: bytes

    @property
    def message_type(self) -> str | None:
        value = self.headers.get(":message-type")
        return value if isinstance(value, str) else None

    @property
    def event_type(self) -> str | None:
        value = self.headers.get(":event-type")
        return value if isinstance(value, str) else None

    def json(self) -> Any:
        return json.loads(self.payload) if self.payload else None


def crc32(data: bytes, crc: int = 0) -> int:
    return zlib.crc32(data, crc) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------------------------


def _typed(value: Any) -> HeaderValue:
    if isinstance(value, HeaderValue):
        return value
    if isinstance(value, bool):
        return HeaderValue(TYPE_TRUE if value else TYPE_FALSE, value)
    if isinstance(value, int):
        return HeaderValue(TYPE_INTEGER if _INT32[0] <= value <= _INT32[1] else TYPE_LONG, value)
    if isinstance(value, str):
        return HeaderValue(TYPE_STRING, value)
    if isinstance(value, bytes | bytearray | memoryview):
        return HeaderValue(TYPE_BYTE_ARRAY, bytes(value))
    if isinstance(value, _dt.datetime):
        return HeaderValue(TYPE_TIMESTAMP, value)
    if isinstance(value, uuid.UUID):
        return HeaderValue(TYPE_UUID, value)
    raise EventStreamEncodeError(f"cannot encode a header value of type {type(value).__name__}")


def _encode_value(header: HeaderValue) -> bytes:
    kind, value = header.type, header.value
    if kind in (TYPE_TRUE, TYPE_FALSE):
        return bytes([kind])
    if kind == TYPE_TIMESTAMP and isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise EventStreamEncodeError("timestamp header values must be timezone-aware")
        value = round(value.timestamp() * 1000)
    if kind in _INT_FORMATS:
        if isinstance(value, bool) or not isinstance(value, int):
            raise EventStreamEncodeError(f"header type {kind} needs an integer")
        try:
            return bytes([kind]) + struct.pack(_INT_FORMATS[kind], value)
        except struct.error:
            raise EventStreamEncodeError(f"integer {value} does not fit header type {kind}") from None
    if kind in (TYPE_STRING, TYPE_BYTE_ARRAY):
        if kind == TYPE_STRING:
            if not isinstance(value, str):
                raise EventStreamEncodeError("string header values must be str")
            raw = value.encode("utf-8")
        else:
            if not isinstance(value, bytes | bytearray | memoryview):
                raise EventStreamEncodeError("byte-array header values must be bytes")
            raw = bytes(value)
        if len(raw) > MAX_HEADER_VALUE_LENGTH:
            raise EventStreamEncodeError(f"header value of {len(raw)} bytes is too long")
        return bytes([kind]) + struct.pack("!H", len(raw)) + raw
    if kind == TYPE_UUID:
        raw = value.bytes if isinstance(value, uuid.UUID) else value
        if not isinstance(raw, bytes) or len(raw) != 16:
            raise EventStreamEncodeError("uuid header values must be a UUID or 16 bytes")
        return bytes([kind]) + raw
    raise EventStreamEncodeError(f"unknown header value type {kind}")


def encode_headers(headers: Mapping[str, Any]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        raw_name = name.encode("utf-8")
        if not 0 < len(raw_name) <= MAX_HEADER_NAME_LENGTH:
            raise EventStreamEncodeError(f"header name {name!r} must be 1 to 255 bytes")
        out += bytes([len(raw_name)]) + raw_name + _encode_value(_typed(value))
    return bytes(out)


def encode_message(headers: Mapping[str, Any], payload: bytes = b"") -> bytes:
    """One complete message (prelude, headers, payload, CRCs)."""
    raw_headers = encode_headers(headers)
    if len(raw_headers) > MAX_HEADERS_LENGTH:
        raise EventStreamEncodeError(f"headers of {len(raw_headers)} bytes exceed {MAX_HEADERS_LENGTH}")
    if len(payload) > MAX_PAYLOAD_LENGTH:
        raise EventStreamEncodeError(f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_LENGTH}")
    total = OVERHEAD + len(raw_headers) + len(payload)
    prelude = struct.pack("!II", total, len(raw_headers))
    prelude += struct.pack("!I", crc32(prelude))
    body = prelude + raw_headers + bytes(payload)
    return body + struct.pack("!I", crc32(body))


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_event(event_type: str, payload: Any) -> bytes:
    """An ``event`` message whose JSON payload is one member of an event-stream union
    (``encode_event("contentBlockDelta", {"delta": {"text": "Hi"}, "contentBlockIndex": 0})``)."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_message(headers, _json_bytes(payload))


def encode_exception(exception_type: str, message: str) -> bytes:
    """A modelled exception inside the stream (``throttlingException``, ``modelStreamErrorException``...)."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_message(headers, _json_bytes({"message": message}))


def encode_error(code: str, message: str) -> bytes:
    """An unmodelled error message (``:message-type: error``)."""
    headers = {":error-code": code, ":error-message": message, ":message-type": "error"}
    return encode_message(headers)


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def _need(data: bytes, offset: int, count: int) -> None:
    if offset + count > len(data):
        raise EventStreamDecodeError("header section is truncated")


def decode_headers(data: bytes) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    offset = 0
    while offset < len(data):
        name_length = data[offset]
        offset += 1
        _need(data, offset, name_length + 1)
        try:
            name = data[offset : offset + name_length].decode("utf-8")
        except UnicodeDecodeError:
            raise EventStreamDecodeError("header name is not UTF-8") from None
        offset += name_length
        kind = data[offset]
        offset += 1
        value: Any
        if kind == TYPE_TRUE:
            value = True
        elif kind == TYPE_FALSE:
            value = False
        elif kind in _INT_FORMATS:
            size = struct.calcsize(_INT_FORMATS[kind])
            _need(data, offset, size)
            value = struct.unpack(_INT_FORMATS[kind], data[offset : offset + size])[0]
            offset += size
            if kind == TYPE_TIMESTAMP:
                value = _dt.datetime.fromtimestamp(value / 1000, tz=_dt.UTC)
        elif kind in (TYPE_STRING, TYPE_BYTE_ARRAY):
            _need(data, offset, 2)
            (length,) = struct.unpack("!H", data[offset : offset + 2])
            offset += 2
            _need(data, offset, length)
            raw = data[offset : offset + length]
            offset += length
            if kind == TYPE_STRING:
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise EventStreamDecodeError(f"header {name!r} is not UTF-8") from None
            else:
                value = raw
        elif kind == TYPE_UUID:
            _need(data, offset, 16)
            value = uuid.UUID(bytes=data[offset : offset + 16])
            offset += 16
        else:
            raise EventStreamDecodeError(f"header {name!r} has unknown value type {kind}")
        if name in headers:
            raise EventStreamDecodeError(f"duplicate header {name!r}")
        headers[name] = value
    return headers


class EventStreamDecoder:
    """Incremental, strict decoder: ``feed(bytes)`` returns the messages completed so far.

    Raises :class:`EventStreamDecodeError` on a CRC mismatch, impossible lengths or bad headers
    (after which the decoder is unusable). ``pending`` is the number of buffered bytes that do not
    yet form a message: non-zero at the end of a stream means it was truncated.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Message]:
        self._buffer += data
        return list(self._drain())

    def _drain(self) -> Iterator[Message]:
        while len(self._buffer) >= PRELUDE_LENGTH:
            total, headers_length, prelude_crc = struct.unpack("!III", self._buffer[:PRELUDE_LENGTH])
            if crc32(bytes(self._buffer[:8])) != prelude_crc:
                raise EventStreamDecodeError("prelude CRC mismatch")
            if headers_length > MAX_HEADERS_LENGTH:
                raise EventStreamDecodeError(f"headers length {headers_length} is too large")
            payload_length = total - headers_length - OVERHEAD
            if payload_length < 0:
                raise EventStreamDecodeError(f"total length {total} is smaller than its parts")
            if payload_length > MAX_PAYLOAD_LENGTH:
                raise EventStreamDecodeError(f"payload length {payload_length} is too large")
            if len(self._buffer) < total:
                return
            frame = bytes(self._buffer[:total])
            del self._buffer[:total]
            (message_crc,) = struct.unpack("!I", frame[-MESSAGE_CRC_LENGTH:])
            if crc32(frame[:-MESSAGE_CRC_LENGTH]) != message_crc:
                raise EventStreamDecodeError("message CRC mismatch")
            headers_end = PRELUDE_LENGTH + headers_length
            headers = decode_headers(frame[PRELUDE_LENGTH:headers_end])
            yield Message(headers, frame[headers_end:-MESSAGE_CRC_LENGTH])


def decode_all(data: bytes) -> list[Message]:
    """Every message in ``data``, which must hold whole messages only."""
    decoder = EventStreamDecoder()
    messages = decoder.feed(data)
    if decoder.pending:
        raise EventStreamDecodeError(f"{decoder.pending} trailing bytes do not form a message")
    return messages
