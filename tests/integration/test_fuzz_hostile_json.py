"""Property-based fuzzing (hypothesis) of everything a client sends, through the whole local gateway:
chat completions, embeddings, responses, Anthropic messages and every keys-API action, with hostile
JSON — wrong types, sizes, deep nesting, NaN / Infinity / huge numbers, unicode, lone surrogates as
raw ``\\ud800`` escapes in the bytes, broken UTF-8, non-objects.

Properties, for every example:
- never a 5xx (and for the keys API never ``internal_error`` nor an unhandled function error);
- a refusal is OpenAI-shaped (``{"error": {"message", "type", "param", "code"}}``; on ``/v1/messages``
  Anthropic-shaped, ``{"type": "error", "error": {"type", "message"}}``), or keys-API-shaped
  (``{"ok": false, "error": {"code", "message"}}``);
- a refused request made zero upstream calls (the mock's counters) and left nothing charged or
  written: the quota table moved only in the caller's request-count windows (a refusal counts as a
  request, issue 18 item 6: no tokens, no dollars, no reservation item), the circuit table is
  unchanged (and, for the keys API, every table).

Fixed seed (``derandomize=True``: the examples are the same on every run), bounded example counts
(see ``*_EXAMPLES``), no deadline, no example database.
"""

from __future__ import annotations

import json
from typing import Any

import boto3
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quotagate import tables
from quotagate.logic.keys_service import ACTIONS
from tests.integration.gateway_stack import gateway_stack
from tests.integration.refusal_counts import scan_but_request_counts
from tests.integration.test_routing import clear_circuits

pytestmark = [
    pytest.mark.timeout(300),
    # deeply nested examples have long reprs; hypothesis warns about printing them
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning"),
]

CHAT_EXAMPLES = 100
EMBEDDINGS_EXAMPLES = 40
RESPONSES_EXAMPLES = 40
MESSAGES_EXAMPLES = 40
KEYS_EXAMPLES_PER_ACTION = 10
KEYS_RAW_EXAMPLES = 40


def fuzz(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# -- hostile JSON text ----------------------------------------------------------------------------
LONE_SURROGATES = st.sampled_from(["\\ud800", "\\udfff", "\\udbff", "\\ude00", "\\uD83D"])
HOSTILE_NUMBERS = st.sampled_from(
    [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e400",
        "-1e400",
        "1e309",
        "1e300",
        "-0",
        "1E-400",
        "0.0",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775809",
        "1" + "0" * 400,
        "0." + "1" * 200,
        "123456789012345678901234567890",
        "4e-320",
    ]
)


def _escaped(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]


STRINGS = st.one_of(
    st.text(max_size=24).map(lambda s: json.dumps(s, ensure_ascii=False)),
    st.text(max_size=12).map(json.dumps),  # \\uXXXX escapes, surrogate pairs for astral characters
    st.tuples(st.text(max_size=8), LONE_SURROGATES, st.text(max_size=4)).map(
        lambda t: f'"{_escaped(t[0])}{t[1]}{_escaped(t[2])}"'
    ),
    st.sampled_from(['"mock-gpt"', '"user"', '"assistant"', '""', '"' + "x" * 5000 + '"']),
)
NUMBERS = st.one_of(
    HOSTILE_NUMBERS,
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(json.dumps),
)
ATOMS = st.one_of(st.sampled_from(["true", "false", "null"]), NUMBERS, STRINGS)


def _containers(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    arrays = st.lists(children, max_size=4).map(lambda items: "[" + ",".join(items) + "]")
    objects = st.lists(st.tuples(STRINGS, children), max_size=4).map(
        lambda pairs: "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"
    )
    return st.one_of(arrays, objects)


DEEP = st.tuples(st.integers(60, 3000), st.booleans()).map(
    lambda t: "[" * t[0] + "]" * t[0] if t[1] else '{"a":' * t[0] + "1" + "}" * t[0]
)
VALUES = st.one_of(st.recursive(ATOMS, _containers, max_leaves=12), DEEP)
MESSAGES = st.one_of(
    st.just('[{"role": "user", "content": "hi"}]'),
    st.tuples(st.sampled_from(["user", "system", "assistant", "tool", "robot"]), VALUES).map(
        lambda t: f'[{{"role": "{t[0]}", "content": {t[1]}}}]'
    ),
    st.tuples(VALUES, VALUES).map(lambda t: f'[{{"role": {t[0]}, "content": {t[1]}}}]'),
    VALUES,
)


@st.composite
def bodies(draw: Any, base: dict[str, Any], fields: list[str]) -> bytes:
    """A request body: a plausible one with one to three fields made hostile (and sometimes an
    unknown hostile key), or something that is not a request at all."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(VALUES).encode()  # not an object, or an object without the fields
    if kind == 1:
        return draw(st.binary(max_size=64))  # not UTF-8, not JSON
    members = dict(base)
    for name in draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True)):
        members[name] = draw(MESSAGES) if name == "messages" else draw(VALUES)
    pairs = [f"{json.dumps(name)}: {value}" for name, value in members.items()]
    if draw(st.booleans()):
        pairs.append(f"{draw(STRINGS)}: {draw(VALUES)}")
    text = "{" + ", ".join(pairs) + "}"
    if kind == 2:
        text = text[: draw(st.integers(0, len(text)))]  # truncated
    return text.encode("utf-8")


CHAT_BASE = {"model": '"mock-gpt"', "messages": '[{"role": "user", "content": "hi"}]', "max_tokens": "3"}
CHAT_FIELDS = [
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "user",
    "tools",
    "tool_choice",
    "response_format",
    "logit_bias",
    "metadata",
]
EMBEDDINGS_BASE = {"model": '"mock-gpt"', "input": '"hello"'}
EMBEDDINGS_FIELDS = ["model", "input", "dimensions", "encoding_format", "user"]
RESPONSES_BASE = {"model": '"mock-gpt"', "input": '"hi"', "max_output_tokens": "16"}
RESPONSES_FIELDS = [
    "model",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "tools",
    "tool_choice",
    "text",
    "stream",
    "store",
    "previous_response_id",
    "metadata",
    "user",
    "parallel_tool_calls",
    "reasoning",
    "truncation",
]


MESSAGES_BASE = {"model": '"mock-gpt"', "max_tokens": "16", "messages": '[{"role": "user", "content": "hi"}]'}
MESSAGES_FIELDS = [
    "model",
    "max_tokens",
    "messages",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "stream",
    "tools",
    "tool_choice",
    "metadata",
    "thinking",
]


# -- the stack and what is observed ---------------------------------------------------------------
@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    overrides = {"circuit_breaker": {"failure_threshold": 3, "cooldown_seconds": 30}}
    with gateway_stack(
        tmp_path_factory.mktemp("fuzz"), overrides, token_delay=0.0, authorizer_cache_seconds=300
    ) as running:
        clear_circuits()
        yield running
        clear_circuits()


@pytest.fixture(scope="module")
def api_key(stack):
    return stack.create_key(tenant="fuzz", plan="free")["api_key"]


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        yield client


def scan(*specs: tables.TableSpec) -> dict[str, list]:
    client = boto3.client("dynamodb")
    return {
        spec.name(): sorted(
            json.dumps(item, sort_keys=True) for item in client.scan(TableName=spec.name()).get("Items", [])
        )
        for spec in specs
    }


def upstream_calls(stack) -> int:
    return sum(count for name, count in stack.mock.stats.snapshot().items() if name.endswith("_requests"))


def check_refusal_is_free(stack, http, api_key, path: str, raw: bytes, anthropic_shaped: bool = False) -> None:
    before, calls = scan_but_request_counts(tables.QUOTA, tables.CIRCUIT), upstream_calls(stack)
    response = http.post(
        path, content=raw, headers={"authorization": f"Bearer {api_key}", "content-type": "application/json"}
    )
    assert response.status_code < 500, (raw[:300], response.status_code, response.text[:300])
    if response.status_code < 400:
        return  # a valid request (it happens): served and charged like any other
    body = response.json()
    if anthropic_shaped:  # the Messages API's own error shape
        assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, response.text
    else:
        assert set(body["error"]) == {"message", "type", "param", "code"}, response.text
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert upstream_calls(stack) == calls, raw[:300]
    assert scan_but_request_counts(tables.QUOTA, tables.CIRCUIT) == before, raw[:300]


@fuzz(CHAT_EXAMPLES)
@given(raw=bodies(CHAT_BASE, CHAT_FIELDS))
def test_fuzz_chat_completions(stack, http, api_key, raw):
    check_refusal_is_free(stack, http, api_key, "/v1/chat/completions", raw)


@fuzz(EMBEDDINGS_EXAMPLES)
@given(raw=bodies(EMBEDDINGS_BASE, EMBEDDINGS_FIELDS))
def test_fuzz_embeddings(stack, http, api_key, raw):
    check_refusal_is_free(stack, http, api_key, "/v1/embeddings", raw)


@fuzz(RESPONSES_EXAMPLES)
@given(raw=bodies(RESPONSES_BASE, RESPONSES_FIELDS))
def test_fuzz_responses(stack, http, api_key, raw):
    check_refusal_is_free(stack, http, api_key, "/v1/responses", raw)


@fuzz(MESSAGES_EXAMPLES)
@given(raw=bodies(MESSAGES_BASE, MESSAGES_FIELDS))
def test_fuzz_anthropic_messages(stack, http, api_key, raw):
    check_refusal_is_free(stack, http, api_key, "/v1/messages", raw, anthropic_shaped=True)


# -- the keys API ---------------------------------------------------------------------------------
KEYS_ERROR_CODES = {"invalid_request", "unknown_action", "unknown_plan", "not_found", "conflict", "in_progress"}
PY_ATOMS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**80), 2**80),
    st.floats(),
    st.sampled_from([10**400, -(10**400), 2**63, 1e308, float("nan"), float("inf")]),
    st.text(max_size=16),
    st.text(max_size=8).map(lambda s: s + "\ud800"),
    st.sampled_from(["free", "pro", "fuzz", "c", "k" * 200, "2030-01-01T00:00:00Z", "qg_abc_def", "active"]),
)


def _deep_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


PY_VALUES = st.one_of(
    st.recursive(
        PY_ATOMS,
        lambda c: (
            st.lists(c, max_size=4)
            | st.dictionaries(
                st.one_of(
                    st.text(max_size=8), st.just("\udfff"), st.sampled_from(["tokens_per_day", "requests_per_minute"])
                ),
                c,
                max_size=4,
            )
        ),
        max_leaves=10,
    ),
    st.integers(60, 2000).map(_deep_list),
)


@st.composite
def keys_events(draw: Any, action: str) -> dict[str, Any]:
    spec = ACTIONS[action]
    names = sorted(spec.required | spec.optional)
    event: dict[str, Any] = {"action": action}
    for name in draw(st.lists(st.sampled_from(names), min_size=0, max_size=len(names), unique=True)):
        event[name] = draw(PY_VALUES)
    if draw(st.integers(0, 3)) == 0:
        event[draw(st.one_of(st.text(max_size=8), st.just("\ud800x")))] = draw(PY_VALUES)
    if draw(st.booleans()):
        event["request_id"] = draw(st.one_of(PY_VALUES, st.sampled_from(["fuzz-1", "fuzz-2"])))
    return event


def check_keys_refusal_writes_nothing(stack, event: Any) -> None:
    before = scan(*tables.ALL_TABLES)
    response = stack.invoke_keys(event)
    assert set(response) in ({"ok", "result"}, {"ok", "error"}), response
    if response["ok"]:
        return
    assert set(response["error"]) == {"code", "message"}, response
    assert response["error"]["code"] in KEYS_ERROR_CODES, (event, response)
    assert scan(*tables.ALL_TABLES) == before, event


@pytest.mark.parametrize("action", sorted(ACTIONS))
def test_fuzz_every_keys_action(stack, action):
    @fuzz(KEYS_EXAMPLES_PER_ACTION)
    @given(event=keys_events(action))
    def run(event):
        check_keys_refusal_writes_nothing(stack, event)

    run()


KEYS_RAW_BASE = {"tenant": '"fuzz-raw"', "consumer": '"c"', "plan": '"free"', "key_id": '"qg_abc"'}


@st.composite
def raw_keys_payloads(draw: Any) -> bytes:
    action = draw(st.sampled_from(sorted(ACTIONS)))
    fields = [
        "tenant",
        "consumer",
        "plan",
        "key_id",
        "limits",
        "name",
        "metadata",
        "expires_at",
        "allowed_models",
        "grace_seconds",
        "status",
        "request_id",
    ]
    return draw(bodies({"action": json.dumps(action), **KEYS_RAW_BASE}, fields))


@fuzz(KEYS_RAW_EXAMPLES)
@given(raw=raw_keys_payloads())
def test_fuzz_keys_api_over_the_invoke_api(stack, http, raw):
    before = scan(*tables.ALL_TABLES)
    response = http.post("/2015-03-31/functions/quotagate-keys/invocations", content=raw)
    assert response.status_code < 500 and "x-amz-function-error" not in response.headers, (
        raw[:300],
        response.status_code,
        response.text[:300],
    )
    if response.status_code == 400:  # the Invoke API could not decode the payload: nothing ran
        assert response.headers["x-amzn-errortype"] == "InvalidRequestContentException"
    else:
        result = response.json()
        if result.get("ok"):
            return
        assert result["error"]["code"] in KEYS_ERROR_CODES, (raw[:300], result)
    assert scan(*tables.ALL_TABLES) == before, raw[:300]
