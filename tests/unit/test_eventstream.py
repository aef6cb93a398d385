"""The AWS event-stream codec of the mock, checked against botocore's own parser."""

from __future__ import annotations

import datetime as dt
import json
import struct
import uuid
from typing import TYPE_CHECKING

import pytest
from botocore import eventstream as boto_es
from botocore.exceptions import EventStreamError
from botocore.parsers import EventStreamJSONParser

from quotagate_tools.mock import eventstream as es

if TYPE_CHECKING:
    from botocore.model import ServiceModel

# Published test vectors for the framing (AWS event-stream encoding, as also reproduced by
# independent implementations): payload {"foo": "bar"} without headers, and with one string header.
FOO_BAR = b'{"foo": "bar"}'
VECTOR_NO_HEADERS = bytes([0, 0, 0, 30, 0, 0, 0, 0, 186, 242, 246, 138]) + FOO_BAR + bytes([174, 114, 88, 228])
VECTOR_ONE_HEADER = (
    bytes([0, 0, 0, 62, 0, 0, 0, 32, 64, 93, 249, 70, 12])
    + b"content-type"
    + bytes([7, 0, 16])
    + b"application/json"
    + FOO_BAR
    + bytes([111, 162, 191, 59])
)


def botocore_messages(data: bytes, chunk: int | None = None) -> list[boto_es.EventStreamMessage]:
    buffer = boto_es.EventStreamBuffer()
    messages = []
    step = chunk or len(data) or 1
    for start in range(0, len(data), step):
        buffer.add_data(data[start : start + step])
        messages.extend(buffer)
    return messages


def test_published_vectors():
    assert es.encode_message({}, FOO_BAR) == VECTOR_NO_HEADERS
    assert es.encode_message({"content-type": "application/json"}, FOO_BAR) == VECTOR_ONE_HEADER
    (message,) = es.decode_all(VECTOR_ONE_HEADER)
    assert message.headers == {"content-type": "application/json"}
    assert message.payload == FOO_BAR


def test_event_parsed_by_botocore_buffer():
    frame = es.encode_event("contentBlockDelta", {"delta": {"text": "Hé ✓"}, "contentBlockIndex": 0})
    (message,) = botocore_messages(frame)
    assert message.headers == {
        ":event-type": "contentBlockDelta",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert json.loads(message.payload) == {"delta": {"text": "Hé ✓"}, "contentBlockIndex": 0}
    assert message.prelude.total_length == len(frame)
    assert message.to_response_dict()["status_code"] == 200


def test_all_header_types_parse_in_botocore_and_back():
    when = dt.datetime(2026, 11, 1, 12, 30, 15, 250000, tzinfo=dt.UTC)
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    headers = {
        "t": True,
        "f": False,
        "byte": es.HeaderValue(es.TYPE_BYTE, -7),
        "short": es.HeaderValue(es.TYPE_SHORT, 30_000),
        "int": 123_456,
        "long": 2**40,
        "bytes": b"\x00\x01\xff",
        "str": "value",
        "time": when,
        "uuid": ident,
    }
    frame = es.encode_message(headers, b"payload")
    (boto,) = botocore_messages(frame)
    assert boto.headers == {
        "t": True,
        "f": False,
        "byte": -7,
        "short": 30_000,
        "int": 123_456,
        "long": 2**40,
        "bytes": b"\x00\x01\xff",
        "str": "value",
        "time": int(when.timestamp() * 1000),  # botocore leaves timestamps as epoch milliseconds
        "uuid": ident.bytes,
    }
    (ours,) = es.decode_all(frame)
    assert ours.headers == {**boto.headers, "time": when, "uuid": ident}
    assert ours.payload == boto.payload == b"payload"


def test_many_messages_fed_byte_by_byte():
    frames = [es.encode_event("messageStart", {"role": "assistant"})]
    frames += [
        es.encode_event("contentBlockDelta", {"delta": {"text": f" w{i}"}, "contentBlockIndex": 0}) for i in range(20)
    ]
    frames.append(es.encode_message({":message-type": "event", ":event-type": "empty"}))  # empty payload
    data = b"".join(frames)
    boto = botocore_messages(data, chunk=1)
    decoder = es.EventStreamDecoder()
    ours = [m for i in range(len(data)) for m in decoder.feed(data[i : i + 1])]
    assert decoder.pending == 0
    assert len(boto) == len(ours) == 22
    for b, o in zip(boto, ours, strict=True):
        assert b.headers == o.headers and b.payload == o.payload
    assert ours[0].event_type == "messageStart" and ours[0].json() == {"role": "assistant"}
    assert ours[-1].payload == b"" and ours[-1].json() is None


def test_partial_message_stays_pending():
    frame = es.encode_event("messageStop", {"stopReason": "end_turn"})
    decoder = es.EventStreamDecoder()
    assert decoder.feed(frame[:-1]) == []
    assert decoder.pending == len(frame) - 1
    with pytest.raises(es.EventStreamDecodeError, match="trailing"):
        es.decode_all(frame[:-1])
    assert [m.event_type for m in decoder.feed(frame[-1:])] == ["messageStop"]


@pytest.mark.parametrize("position", [2, 9, 20, -10, -1])  # prelude, prelude CRC, headers, payload, CRC
def test_corruption_is_detected_by_both(position):
    frame = bytearray(es.encode_event("metadata", {"usage": {"inputTokens": 1}}))
    frame[position] ^= 0x01
    with pytest.raises(boto_es.ParserError):
        botocore_messages(bytes(frame))
    with pytest.raises(es.EventStreamDecodeError):
        es.decode_all(bytes(frame))


def test_exception_and_error_messages():
    (exc,) = botocore_messages(es.encode_exception("throttlingException", "slow down"))
    assert exc.headers[":message-type"] == "exception"
    assert exc.headers[":exception-type"] == "throttlingException"
    assert exc.to_response_dict()["status_code"] == 400
    (err,) = es.decode_all(es.encode_error("InternalFailure", "boom"))
    assert err.message_type == "error"
    assert err.headers[":error-code"] == "InternalFailure" and err.payload == b""


def test_botocore_event_stream_parses_converse_events():
    """The whole botocore path a bedrock-runtime client uses: buffer, event parser, output shape."""
    from botocore import session

    model: ServiceModel = session.get_session().get_service_model("bedrock-runtime")
    shape = model.operation_model("ConverseStream").output_shape.members["stream"]
    events = [
        ("messageStart", {"role": "assistant"}),
        ("contentBlockStart", {"start": {"toolUse": {"toolUseId": "t1", "name": "f"}}, "contentBlockIndex": 1}),
        ("contentBlockDelta", {"delta": {"toolUse": {"input": '{"a":'}}, "contentBlockIndex": 1}),
        ("messageStop", {"stopReason": "tool_use"}),
        ("metadata", {"usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}, "metrics": {"latencyMs": 12}}),
    ]
    data = b"".join(es.encode_event(name, payload) for name, payload in events)

    class Raw:
        def stream(self):
            yield data[:7]
            yield data[7:]

        def close(self):
            pass

    stream = boto_es.EventStream(Raw(), shape, EventStreamJSONParser(), "ConverseStream")
    assert list(stream) == [{name: payload} for name, payload in events]

    failing = data[: len(es.encode_event(*events[0]))] + es.encode_exception("throttlingException", "slow")

    class RawFailing(Raw):
        def stream(self):
            yield failing

    parsed = boto_es.EventStream(RawFailing(), shape, EventStreamJSONParser(), "ConverseStream")
    iterator = iter(parsed)
    assert next(iterator) == {"messageStart": {"role": "assistant"}}
    with pytest.raises(EventStreamError) as info:
        next(iterator)
    assert info.value.response["Error"] == {"Code": "throttlingException", "Message": "slow"}


def test_encoder_limits():
    with pytest.raises(es.EventStreamEncodeError):
        es.encode_message({"x" * 256: "v"})
    with pytest.raises(es.EventStreamEncodeError):
        es.encode_message({"big": "v" * (es.MAX_HEADER_VALUE_LENGTH + 1)})
    with pytest.raises(es.EventStreamEncodeError):
        es.encode_message({"naive": dt.datetime(2026, 1, 1)})
    with pytest.raises(es.EventStreamEncodeError):
        es.encode_message({"short": es.HeaderValue(es.TYPE_SHORT, 40_000)})
    with pytest.raises(es.EventStreamEncodeError):
        es.encode_message({"obj": object()})


def test_decoder_rejects_bad_headers():
    def frame_with(raw_headers: bytes) -> bytes:
        total = es.OVERHEAD + len(raw_headers)
        prelude = struct.pack("!II", total, len(raw_headers))
        prelude += struct.pack("!I", es.crc32(prelude))
        body = prelude + raw_headers
        return body + struct.pack("!I", es.crc32(body))

    duplicate = es.encode_headers({"a": "1"}) * 2
    with pytest.raises(es.EventStreamDecodeError, match="duplicate"):
        es.decode_all(frame_with(duplicate))
    with pytest.raises(es.EventStreamDecodeError, match="type"):
        es.decode_all(frame_with(b"\x01a\x0a"))
    with pytest.raises(es.EventStreamDecodeError, match="truncated"):
        es.decode_all(frame_with(b"\x01a\x07\x00\x09ab"))
