"""The mock model server under a real uvicorn on 127.0.0.1, called with httpx and the openai SDK."""

from __future__ import annotations

import itertools
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from quotagate import tokens
from quotagate_tools.mock import MockServer, MockSettings, create_app, reply_text, run_in_thread
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(60)

MESSAGES = [
    {"role": "system", "content": "You answer in one line."},
    {"role": "user", "content": "Explain quotas to a new engineer, please."},
]
PROMPT_TOKENS = tokens.chat_prompt_tokens(MESSAGES)
TOKEN_DELAY = 0.002


@pytest.fixture(scope="module")
def mock():
    with MockServer(MockSettings(token_delay=TOKEN_DELAY)) as server:
        yield server


@pytest.fixture
def stats(mock):
    mock.stats.reset()
    return mock.stats


@pytest.fixture
def http(mock):
    with httpx.Client(base_url=mock.base_url, timeout=10) as client:
        yield client


@pytest.fixture
def sdk(mock):
    with openai.OpenAI(base_url=mock.openai_base_url, api_key="sk-test", max_retries=0, timeout=10) as client:
        yield client


def body(**overrides) -> dict:
    return {"model": "mock-gpt", "messages": MESSAGES, **overrides}


def read_sse(response: httpx.Response) -> tuple[list, list[float]]:
    """Parsed SSE data payloads and the monotonic time each arrived."""
    events, times = [], []
    for line in response.iter_lines():
        if not line:
            continue
        assert line.startswith("data: "), line
        data = line[len("data: ") :]
        events.append(data if data == "[DONE]" else json.loads(data))
        times.append(time.monotonic())
    return events, times


def read_sse_until_error(response: httpx.Response) -> tuple[list, BaseException | None]:
    events: list = []
    try:
        for line in response.iter_lines():
            if line:
                data = line[len("data: ") :]
                events.append(data if data == "[DONE]" else json.loads(data))
    except httpx.HTTPError as exc:
        return events, exc
    return events, None


# ------------------------------------------------------------------------------------------ runner


def test_run_in_thread_starts_serves_and_stops():
    base_url, stop = run_in_thread(MockSettings(token_delay=0))
    try:
        assert base_url.startswith("http://127.0.0.1:")
        port = int(base_url.rsplit(":", 1)[1])
        assert port > 0
        assert httpx.get(base_url + "/health", timeout=5).json() == {"status": "ok"}
    finally:
        started = time.monotonic()
        stop()
        stop()  # idempotent
        assert time.monotonic() - started < 5
    with pytest.raises(httpx.ConnectError):
        httpx.get(base_url + "/health", timeout=2)


def test_run_in_thread_on_a_chosen_port_with_a_prebuilt_app():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(MockSettings(token_delay=0))
    base_url, stop = run_in_thread(port=port, app=app)
    try:
        assert base_url == f"http://127.0.0.1:{port}"
        httpx.post(base_url + "/v1/chat/completions", json=body(), timeout=5).raise_for_status()
        assert eventually(lambda: app.state.stats.completed == 1)
    finally:
        stop()


def test_stop_is_bounded_with_a_stream_in_flight():
    server = MockServer(MockSettings(token_delay=0.5)).start()
    received = threading.Event()

    def consume() -> None:
        try:
            with httpx.stream(
                "POST", server.openai_base_url + "/chat/completions", json=body(stream=True), timeout=30
            ) as r:
                for _ in r.iter_lines():
                    received.set()
        except httpx.HTTPError:
            pass

    worker = threading.Thread(target=consume, daemon=True)
    worker.start()
    assert received.wait(5)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 5
    worker.join(5)
    assert not worker.is_alive()


def test_command_line():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quotagate_tools.mock",
            "--port",
            "0",
            "--token-delay",
            "0",
            "--reply-tokens",
            "3",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "http://127.0.0.1:" in line, line
        base = line.strip().rsplit(" ", 1)[1]  # .../v1
        deadline = time.monotonic() + 10
        while True:
            try:
                r = httpx.post(base + "/chat/completions", json=body(), timeout=5)
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert r.json()["usage"]["completion_tokens"] == 3
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ------------------------------------------------------------------------------- happy paths, httpx


def test_non_stream_usage_matches_tiktoken(http, stats):
    r = http.post("/v1/chat/completions", json=body())
    assert r.status_code == 200
    data = r.json()
    content = data["choices"][0]["message"]["content"]
    assert content == reply_text(MESSAGES, 24)
    assert data["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert data["usage"]["completion_tokens"] == tokens.count_text(content) == 24
    assert data["usage"]["total_tokens"] == PROMPT_TOKENS + 24
    assert stats.chat_requests == 1 and eventually(lambda: stats.completed == 1)
    # deterministic: same messages, same reply
    assert http.post("/v1/chat/completions", json=body()).json()["choices"][0]["message"]["content"] == content


def test_stream_chunks_usage_and_done(http, stats):
    with http.stream(
        "POST",
        "/v1/chat/completions",
        json=body(stream=True, stream_options={"include_usage": True}, mock_reply_tokens=12),
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events, _ = read_sse(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    pieces = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert len(pieces) == 12
    assert all(tokens.count_text(p) == 1 for p in pieces)
    text = "".join(pieces)
    assert tokens.count_text(text) == 12
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["prompt_tokens"] == PROMPT_TOKENS
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    assert chunks[-1]["usage"]["total_tokens"] == PROMPT_TOKENS + 12
    assert stats.snapshot()["completed"] == 1
    assert stats.snapshot()["completion_tokens"] == 12


def test_stream_chunks_are_spread_over_time(http):
    delay, n = 0.15, 8  # coarse enough to hold on a loaded 2-core machine
    started = time.monotonic()
    with http.stream(
        "POST", "/v1/chat/completions", json=body(stream=True, mock_reply_tokens=n, mock_token_delay=delay)
    ) as r:
        _events, times = read_sse(r)
    token_times = times[1 : 1 + n]
    assert len(token_times) == n
    # The first token arrives about one token-delay in, the last about n token-delays in.
    assert token_times[0] - started < (token_times[-1] - started) / 2
    assert token_times[-1] - token_times[0] >= 0.5 * (n - 1) * delay
    # and they arrive one by one (not in one burst)
    gaps = [b - a for a, b in itertools.pairwise(token_times)]
    assert sum(g > delay / 4 for g in gaps) >= (n - 1) // 2


def test_token_delay_from_fault_spec(http):
    started = time.monotonic()
    r = http.post("/v1/chat/completions", json=body(model="mock-gpt@token_delay=0.02&tokens=10"))
    assert r.json()["usage"]["completion_tokens"] == 10
    assert time.monotonic() - started >= 0.15  # non-stream responses take the generation time too


def test_concurrent_streams(mock, stats):
    results: list[int] = []

    def one(i: int) -> None:
        with httpx.stream(
            "POST",
            mock.openai_base_url + "/chat/completions",
            timeout=10,
            json=body(
                stream=True,
                messages=[{"role": "user", "content": f"q{i}"}],
                mock_reply_tokens=8,
                mock_token_delay=0.005,
            ),
        ) as r:
            events, _ = read_sse(r)
        results.append(len(events))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert results == [1 + 8 + 1 + 1] * 16  # role, tokens, finish, [DONE]
    assert stats.wait_for(lambda s: s["completed"] == 16 and s["in_flight"] == 0, timeout=5)


# ---------------------------------------------------------------------------------- openai SDK


def test_sdk_non_stream(sdk, stats):
    completion = sdk.chat.completions.create(
        model="mock-gpt", messages=MESSAGES, max_tokens=7, extra_body={"mock_reply_tokens": 20}
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == reply_text(MESSAGES, 7)
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == PROMPT_TOKENS
    assert completion.usage.completion_tokens == 7
    assert completion.usage.total_tokens == PROMPT_TOKENS + 7
    assert eventually(lambda: stats.completed == 1)


def test_sdk_stream_with_usage(sdk, stats):
    stream = sdk.chat.completions.create(
        model="mock-gpt-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    texts, usage, finish = [], None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
            continue
        delta = chunk.choices[0].delta
        if delta.content:
            texts.append(delta.content)
        finish = chunk.choices[0].finish_reason or finish
    text = "".join(texts)
    assert text == reply_text(MESSAGES, 24)
    assert finish == "stop"
    assert usage is not None
    assert usage.prompt_tokens == PROMPT_TOKENS
    assert usage.completion_tokens == tokens.count_text(text) == len(texts) == 24
    assert eventually(lambda: stats.completed == 1)


def test_sdk_models(sdk):
    assert {m.id for m in sdk.models.list()} >= {"mock-gpt", "mock-gpt-mini"}


def test_sdk_sees_injected_errors(sdk):
    with pytest.raises(openai.RateLimitError) as info:
        sdk.chat.completions.create(model="mock-gpt@status=429&retry_after=2", messages=MESSAGES)
    assert info.value.code == "rate_limit_exceeded"
    assert info.value.response.headers["retry-after"] == "2"
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(
            model="mock-gpt", messages=MESSAGES, stream=True, extra_headers={"x-mock-fault": "status=503"}
        )
    with pytest.raises(openai.APIConnectionError):
        sdk.chat.completions.create(model="mock-gpt@drop_after=1", messages=MESSAGES)


# --------------------------------------------------------------------------------------- faults


@pytest.mark.parametrize("status", [400, 429, 500, 502, 503])
def test_status_fault(http, stats, status):
    r = http.post("/v1/chat/completions", json=body(stream=True), headers={"x-mock-fault": f"status={status}"})
    assert r.status_code == status
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert ("retry-after" in r.headers) == (status in (429, 503))
    assert stats.error_responses == 1 and stats.completed == 0


def test_delay_first_byte(http, stats):
    started = time.monotonic()
    with http.stream(
        "POST",
        "/v1/chat/completions",
        json=body(stream=True, mock_fault="delay_first_byte=0.3", mock_reply_tokens=2),
    ) as r:
        headers_at = time.monotonic()
        events, _ = read_sse(r)
    assert headers_at - started >= 0.3
    assert events[-1] == "[DONE]"
    assert eventually(lambda: stats.completed == 1)


def test_delay_first_byte_then_client_timeout_is_seen_as_a_disconnect(mock, stats):
    with httpx.Client(base_url=mock.base_url, timeout=httpx.Timeout(5, read=0.2)) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", json=body(model="mock-gpt@delay_first_byte=10"))
    assert stats.wait_for(lambda s: s["client_disconnects"] == 1 and s["in_flight"] == 0, timeout=5)
    assert stats.completed == 0


def test_delay_first_byte_with_status(http):
    started = time.monotonic()
    r = http.post("/v1/chat/completions", json=body(model="mock-gpt@delay_first_byte=0.2&status=500"))
    assert r.status_code == 500
    assert time.monotonic() - started >= 0.2


def test_drop_after_cuts_the_stream_abruptly(http, stats):
    with http.stream(
        "POST",
        "/v1/chat/completions",
        json=body(stream=True, stream_options={"include_usage": True}),
        headers={"x-mock-fault": "drop_after=3"},
    ) as r:
        assert r.status_code == 200
        events, error = read_sse_until_error(r)
    assert isinstance(error, httpx.RemoteProtocolError)
    assert "[DONE]" not in events
    assert len(events) == 1 + 3  # role chunk + 3 token chunks, no finish, no usage
    assert all(e["choices"][0]["finish_reason"] is None for e in events)
    assert stats.wait_for(lambda s: s["streams_cut"] == 1 and s["in_flight"] == 0)
    assert stats.completed == 0


def test_drop_after_zero_and_beyond_the_reply(http, stats):
    for spec, token_chunks in (("drop_after=0", 0), ("drop_after=100&tokens=4", 4)):
        with http.stream("POST", "/v1/chat/completions", json=body(stream=True, mock_fault=spec)) as r:
            events, error = read_sse_until_error(r)
        assert isinstance(error, httpx.RemoteProtocolError)
        assert len(events) == 1 + token_chunks
    assert stats.wait_for(lambda s: s["streams_cut"] == 2)


def test_drop_after_non_stream_sends_a_partial_body(http, stats):
    with pytest.raises(httpx.RemoteProtocolError):
        http.post("/v1/chat/completions", json=body(model="mock-gpt@drop_after=2"))
    assert stats.wait_for(lambda s: s["streams_cut"] == 1 and s["in_flight"] == 0)


def test_omit_usage(http):
    assert "usage" not in http.post("/v1/chat/completions", json=body(mock_fault="omit_usage=1")).json()
    with http.stream(
        "POST",
        "/v1/chat/completions",
        json=body(model="mock-gpt@omit_usage=1", stream=True, stream_options={"include_usage": True}),
    ) as r:
        events, _ = read_sse(r)
    assert events[-1] == "[DONE]"
    assert all("usage" not in e for e in events[:-1])


def test_combined_faults(http, stats):
    started = time.monotonic()
    with http.stream(
        "POST",
        "/v1/chat/completions",
        json=body(
            model="mock-gpt@delay_first_byte=0.1&token_delay=0.01",
            stream=True,
            mock_fault={"drop_after": 2, "omit_usage": True},
        ),
    ) as r:
        events, error = read_sse_until_error(r)
    assert time.monotonic() - started >= 0.1 + 2 * 0.01
    assert isinstance(error, httpx.RemoteProtocolError)
    assert len(events) == 3
    assert stats.wait_for(lambda s: s["streams_cut"] == 1)


def test_client_disconnect_mid_stream_is_counted(http, stats):
    with http.stream(
        "POST", "/v1/chat/completions", json=body(stream=True, mock_reply_tokens=200, mock_token_delay=0.02)
    ) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    assert stats.wait_for(lambda s: s["client_disconnects"] == 1 and s["in_flight"] == 0, timeout=5)
    assert stats.completed == 0


# ---------------------------------------------------------------------------------- stats over HTTP


def test_stats_over_http(http, stats):
    http.post("/v1/chat/completions", json=body(mock_reply_tokens=3))
    http.post("/v1/chat/completions", json=body(mock_fault="status=500"))
    snapshot = http.get("/mock/stats").json()
    assert snapshot["chat_requests"] == 2
    assert snapshot["completed"] == 1
    assert snapshot["error_responses"] == 1
    assert snapshot["completion_tokens"] == 3
    assert snapshot == stats.snapshot()
    assert http.post("/mock/stats/reset").json()["chat_requests"] == 0
    assert stats.chat_requests == 0
    assert http.get("/mock/requests").json()["data"] == []
