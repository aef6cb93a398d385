"""The mock app in-process (Starlette TestClient, no sockets): shapes, validation, faults, stats."""

from __future__ import annotations

import json

import pytest
from starlette.testclient import TestClient

from quotagate import tokens
from quotagate_tools.mock import MockSettings, StreamCut, create_app, reply_text

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is a token bucket?", "name": "alice"},
]


def chat(client, **body):
    body.setdefault("model", "mock-gpt")
    body.setdefault("messages", MESSAGES)
    headers = body.pop("headers", {})
    return client.post("/v1/chat/completions", json=body, headers=headers)


def sse_events(text: str) -> list:
    assert text.endswith("\n\n")
    events = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_non_stream_shape_and_usage(client, app):
    r = chat(client)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "mock-gpt"
    [choice] = body["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop" and choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert content == reply_text(MESSAGES, 24)
    usage = body["usage"]
    assert usage["prompt_tokens"] == tokens.chat_prompt_tokens(MESSAGES)
    assert usage["completion_tokens"] == tokens.count_text(content) == 24
    assert usage["total_tokens"] == usage["prompt_tokens"] + 24
    assert app.state.stats.snapshot() == {
        "chat_requests": 1,
        "completed": 1,
        "streams_cut": 0,
        "client_disconnects": 0,
        "error_responses": 0,
        "in_flight": 0,
        "prompt_tokens": usage["prompt_tokens"],
        "completion_tokens": 24,
    }


def test_reply_length_and_truncation(client):
    assert chat(client, mock_reply_tokens=5).json()["usage"]["completion_tokens"] == 5
    r = chat(client, mock_reply_tokens=10, max_tokens=4).json()
    assert r["choices"][0]["finish_reason"] == "length"
    assert r["usage"]["completion_tokens"] == 4
    assert r["choices"][0]["message"]["content"] == reply_text(MESSAGES, 4)
    # max_completion_tokens wins over max_tokens
    r = chat(client, mock_reply_tokens=10, max_tokens=2, max_completion_tokens=3).json()
    assert r["usage"]["completion_tokens"] == 3
    # limit equal to the natural length: a natural stop
    r = chat(client, mock_reply_tokens=6, max_tokens=6).json()
    assert r["choices"][0]["finish_reason"] == "stop"
    # a zero-length reply
    r = chat(client, mock_reply_tokens=0).json()
    assert r["choices"][0]["message"]["content"] == ""
    assert r["usage"]["completion_tokens"] == 0
    # tokens= in the fault spec, overridden by the body field
    assert chat(client, model="mock-gpt@tokens=3").json()["usage"]["completion_tokens"] == 3
    assert chat(client, model="mock-gpt@tokens=3", mock_reply_tokens=2).json()["usage"]["completion_tokens"] == 2


def test_stream_shape(client):
    r = chat(client, stream=True, stream_options={"include_usage": True}, mock_reply_tokens=6)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "mock-gpt" for c in chunks)
    first, tokens_chunks, finish, usage_chunk = chunks[0], chunks[1:-2], chunks[-2], chunks[-1]
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert first["choices"][0]["delta"]["content"] == ""
    assert len(tokens_chunks) == 6
    pieces = [c["choices"][0]["delta"]["content"] for c in tokens_chunks]
    assert all(tokens.count_text(p) == 1 for p in pieces)
    assert "".join(pieces) == reply_text(MESSAGES, 6)
    assert finish["choices"][0]["finish_reason"] == "stop" and finish["choices"][0]["delta"] == {}
    for c in chunks[:-1]:
        assert "usage" in c and c["usage"] is None
        assert c is finish or c["choices"][0]["finish_reason"] is None
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["prompt_tokens"] == tokens.chat_prompt_tokens(MESSAGES)
    assert usage_chunk["usage"]["completion_tokens"] == 6
    assert usage_chunk["usage"]["total_tokens"] == tokens.chat_prompt_tokens(MESSAGES) + 6


def test_stream_without_usage_and_truncated(client):
    events = sse_events(chat(client, stream=True, mock_reply_tokens=6, max_tokens=2).text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all("usage" not in c for c in chunks)
    assert len(chunks) == 1 + 2 + 1
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_omit_usage(client):
    assert "usage" not in chat(client, mock_fault="omit_usage=1").json()
    events = sse_events(
        chat(client, stream=True, stream_options={"include_usage": True}, model="mock-gpt@omit_usage").text
    )
    assert events[-1] == "[DONE]"
    assert all("usage" not in c for c in events[:-1])
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 429, 500, 502, 503, 504, 418])
def test_injected_status(client, app, status):
    r = chat(client, headers={"x-mock-fault": f"status={status}"}, stream=True)
    assert r.status_code == status
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    if status == 429:
        assert err["code"] == "rate_limit_exceeded"
        assert r.headers["retry-after"] == "1"
    assert app.state.stats.error_responses == 1
    assert app.state.stats.completed == 0


def test_insufficient_quota_and_retry_after(client):
    r = chat(client, mock_fault={"status": 429, "code": "insufficient_quota", "retry_after": 7})
    assert r.status_code == 429
    assert r.json()["error"]["code"] == "insufficient_quota"
    assert r.json()["error"]["type"] == "insufficient_quota"
    assert r.headers["retry-after"] == "7"


def test_fault_precedence(client):
    # model < header < body
    r = chat(client, model="mock-gpt@status=500", headers={"x-mock-fault": "status=502"}, mock_fault="status=503")
    assert r.status_code == 503
    r = chat(client, model="mock-gpt@status=500", headers={"x-mock-fault": "status=502"})
    assert r.status_code == 502
    assert chat(client, model="mock-gpt@status=500").status_code == 500
    # a body spec can switch off a model-level fault key
    assert "usage" in chat(client, model="mock-gpt@omit_usage=1", mock_fault="omit_usage=0").json()


def test_default_fault_from_settings():
    with TestClient(create_app(MockSettings(token_delay=0, default_fault="status=503"))) as c:
        assert chat(c).status_code == 503
        assert chat(c, mock_fault="tokens=1").status_code == 503
    with pytest.raises(ValueError):
        create_app(MockSettings(default_fault="nope=1"))
    with pytest.raises(ValueError):
        create_app(MockSettings(token_delay=-1))


def test_drop_after_raises_inside_the_app(app):
    # In-process the abrupt close shows up as the exception the ASGI server would abort on.
    with TestClient(app) as c:
        with pytest.raises(StreamCut):
            chat(c, stream=True, mock_fault="drop_after=2")
        with pytest.raises(StreamCut):
            chat(c, mock_fault="drop_after=2")
    assert app.state.stats.streams_cut == 2
    assert app.state.stats.completed == 0
    assert app.state.stats.in_flight == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": MESSAGES}, "model"),
        ({"model": "", "messages": MESSAGES}, "model"),
        ({"model": "@status=500", "messages": MESSAGES}, "model"),
        ({"model": "mock-gpt"}, "messages"),
        ({"model": "mock-gpt", "messages": []}, "messages"),
        ({"model": "mock-gpt", "messages": "hi"}, "messages"),
        ({"model": "mock-gpt", "messages": [{"content": "no role"}]}, "messages[0]"),
        ({"model": "mock-gpt", "messages": MESSAGES, "stream": "yes"}, "stream"),
        ({"model": "mock-gpt", "messages": MESSAGES, "max_tokens": 0}, "max_tokens"),
        ({"model": "mock-gpt", "messages": MESSAGES, "max_tokens": "5"}, "max_tokens"),
        ({"model": "mock-gpt", "messages": MESSAGES, "max_completion_tokens": True}, "max_completion_tokens"),
        ({"model": "mock-gpt", "messages": MESSAGES, "mock_reply_tokens": -1}, "mock_reply_tokens"),
        ({"model": "mock-gpt", "messages": MESSAGES, "mock_token_delay": -1}, "mock_token_delay"),
        ({"model": "mock-gpt", "messages": MESSAGES, "mock_fault": "what=1"}, "mock_fault"),
        ({"model": "mock-gpt@drop_after=x", "messages": MESSAGES}, "model"),
    ],
)
def test_bad_requests_are_openai_shaped_400s(client, app, body, param):
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert app.state.stats.error_responses == 1


def test_bad_json_and_bad_header(client):
    r = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "error" in r.json()
    assert client.post("/v1/chat/completions", json=[1, 2]).status_code == 400
    r = chat(client, headers={"x-mock-fault": "status=99"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "x-mock-fault"


def test_models(client):
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["mock-gpt", "mock-gpt-mini"]
    assert all(m["object"] == "model" for m in body["data"])
    assert client.get("/v1/models/anything-goes").json()["id"] == "anything-goes"
    assert client.get("/v1/models/mock-gpt@status=503").json()["id"] == "mock-gpt"
    # any model name is accepted
    assert chat(client, model="gpt-4o").json()["model"] == "gpt-4o"


def test_api_key_required_when_configured():
    app = create_app(MockSettings(token_delay=0, api_key="sk-upstream"))
    with TestClient(app) as c:
        r = chat(c)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert chat(c, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert chat(c, headers={"authorization": "Bearer sk-upstream"}).status_code == 200
        assert chat(c, headers={"api-key": "sk-upstream"}).status_code == 200
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"authorization": "Bearer sk-upstream"}).status_code == 200
        # credentials are never kept in the request log
        recorded = [r["headers"] for r in app.state.stats.recent_requests]
        assert recorded[0]["authorization"] == "<redacted>"
        assert recorded[-1]["api-key"] == "<redacted>"
        assert "sk-upstream" not in json.dumps(app.state.stats.recent_requests)


def test_stats_endpoints_and_request_log(client, app):
    chat(client, mock_reply_tokens=2, headers={"x-tenant-id": "t1"})
    chat(client, mock_fault="status=500")
    stats = client.get("/mock/stats").json()
    assert stats["chat_requests"] == 2 and stats["completed"] == 1 and stats["error_responses"] == 1
    log = client.get("/mock/requests").json()["data"]
    assert [e["body"].get("mock_fault") for e in log] == [None, "status=500"]
    assert log[0]["headers"]["x-tenant-id"] == "t1"
    assert app.state.stats.last_request["body"]["mock_fault"] == "status=500"
    reset = client.post("/mock/stats/reset").json()
    assert reset["chat_requests"] == 0 and reset["completed"] == 0
    assert app.state.stats.snapshot() == reset
    assert app.state.stats.recent_requests == []


def test_unknown_route_is_openai_shaped(client):
    r = client.get("/v2/nothing")
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"
    assert client.get("/health").json() == {"status": "ok"}
