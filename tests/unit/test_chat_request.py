import json

import pytest

from quotagate.errors import GatewayError
from quotagate.logic.chat_request import parse_chat_request


def body(**fields):
    base = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}]}
    base.update(fields)
    return json.dumps(base).encode()


def test_valid_request_is_parsed():
    request = parse_chat_request(body(stream=True, stream_options={"include_usage": True}, max_tokens=5))
    assert request.model == "mock-gpt"
    assert request.stream is True
    assert request.client_wants_usage is True
    assert request.max_output_tokens == 5


def test_max_completion_tokens_wins_over_max_tokens():
    assert parse_chat_request(body(max_tokens=50, max_completion_tokens=7)).max_output_tokens == 7


@pytest.mark.parametrize(
    ("raw", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (b"\xff\xfe", 400, None),
        (body(model=""), 400, "model"),
        (body(model=5), 400, "model"),
        (body(messages=[]), 400, "messages"),
        (body(messages="hi"), 400, "messages"),
        (body(messages=["hi"]), 400, "messages[0]"),
        (body(messages=[{"role": "wizard", "content": "x"}]), 400, "messages[0].role"),
        (body(messages=[{"role": "user", "content": 42}]), 400, "messages[0].content"),
        (body(stream="yes"), 400, "stream"),
        (body(max_tokens=0), 400, "max_tokens"),
        (body(max_tokens="10"), 400, "max_tokens"),
        (body(max_tokens=True), 400, "max_tokens"),
        (body(n=100), 400, "n"),
        (body(temperature="hot"), 400, "temperature"),
        (body(stream_options={"include_usage": True}), 400, "stream_options"),
    ],
)
def test_bad_input_is_a_clear_openai_error(raw, status, param):
    with pytest.raises(GatewayError) as caught:
        parse_chat_request(raw)
    error = caught.value
    assert error.status == status
    assert error.param == param
    shaped = error.body()["error"]
    assert set(shaped) == {"message", "type", "param", "code"}
    assert shaped["type"] == "invalid_request_error"


def test_oversize_body_is_413():
    with pytest.raises(GatewayError) as caught:
        parse_chat_request(b"x" * 101, max_bytes=100)
    assert caught.value.status == 413
