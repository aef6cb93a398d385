"""A fuzz generated from the declared wire account (quotagate.wire): for every endpoint, bodies built
from the declaration — each declared field, at every depth, one variant of each union — with one
value replaced by a wrong type (a string, a number, a boolean, null, an array, an object, nested
containers, a huge integer), sent through the whole local gateway (emulator, authorizer, real proxy,
moto, the mock model) to OpenAI-compatible, Anthropic and Bedrock targets.

Properties, for every case: never a 5xx; a refusal is in the caller's protocol's shape, reached no
model and left the quota and circuit tables unchanged (``check_refusal_is_free``).

Seeded (``random.Random``): one case per declared field per round (``QG_FUZZ_ROUNDS``, default 1),
the same bodies on every run.
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

import httpx
import pytest

from quotagate.wire import chat, embeddings, messages, responses
from quotagate.wire.schema import Array, Bool, Int, Json, Map, Num, Obj, OneOf, Str, Tagged, Type
from tests.integration.gateway_stack import gateway_stack, mock_providers
from tests.integration.test_fuzz_hostile_json import check_refusal_is_free
from tests.integration.test_routing import clear_circuits

pytestmark = pytest.mark.timeout(600)

# Each round sends one case per declared top-level field (a wrong value somewhere inside it).
ROUNDS = int(os.environ.get("QG_FUZZ_ROUNDS", "1"))
SEED = 16
MODELS = ("via-openai", "via-anthropic", "via-bedrock")
CONFIG = {
    "providers": mock_providers(),
    "models": {
        "via-openai": {"provider": "openai", "upstream_model": "mock-gpt"},
        "via-anthropic": {"provider": "anthropic", "upstream_model": "claude-mock"},
        "via-bedrock": {"provider": "bedrock", "upstream_model": "amazon.nova-mock-v1:0"},
    },
    "plans": {"fuzz": {"limits": {"tokens_per_day": 10_000_000}, "models": "*", "default_max_tokens": 8}},
    "default_plan": "fuzz",
    "circuit_breaker": {"failure_threshold": 3, "cooldown_seconds": 30},
}
WRONG_VALUES: tuple[Any, ...] = (
    "x",
    "",
    7,
    -1,
    2.5,
    True,
    None,
    [],
    {},
    [[]],
    {"a": {}},
    [{"type": []}],
    10**30,
    "x" * 300,
)


def sample(kind: Type, rng: random.Random, depth: int = 0) -> Any:
    """A value the declaration accepts (its semantics may still be refused further on)."""
    if isinstance(kind, Str):
        return rng.choice(kind.values) if kind.values else "hi"
    if isinstance(kind, Int):
        return kind.minimum if kind.minimum is not None and kind.minimum > 0 else 1
    if isinstance(kind, Num):
        return kind.minimum if kind.minimum is not None and kind.minimum > 0 else 0.5
    if isinstance(kind, Bool):
        return rng.random() < 0.5
    if isinstance(kind, Json):
        return {"type": "object", "properties": {}} if kind.kind == "object" else {}
    if isinstance(kind, Array):
        return [sample(kind.items, rng, depth + 1) for _ in range(max(1, kind.min_items))] if depth < 6 else []
    if isinstance(kind, Map):
        return {"k": sample(kind.values, rng, depth + 1)}
    if isinstance(kind, OneOf):
        return sample(rng.choice(kind.options), rng, depth + 1)
    if isinstance(kind, Tagged):
        tag = rng.choice(sorted(kind.variants))
        return {**sample(kind.variants[tag], rng, depth + 1), kind.tag: tag}
    if isinstance(kind, Obj):
        value = {}
        for name, field in kind.fields.items():
            if field.required or (depth < 5 and rng.random() < 0.3):
                value[name] = sample(field.type, rng, depth + 1)
        return value
    raise AssertionError(kind)


def positions(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in ``value`` a wrong value can go."""
    found = [path]
    if isinstance(value, dict):
        for key, item in value.items():
            found += positions(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += positions(item, (*path, index))
    return found


def replaced(value: Any, path: tuple[Any, ...], wrong: Any) -> Any:
    if not path:
        return wrong
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, wrong)}
    copy = list(value)
    copy[head] = replaced(copy[head], rest, wrong)
    return copy


def cases(declaration: Obj, base: dict[str, Any], rounds: int, seed: int) -> list[bytes]:
    """Per round and declared field, a body: the base, the field sampled into it, one value made wrong."""
    rng = random.Random(seed)
    out = []
    for name in sorted(declaration.fields) * rounds:
        body = {**base, "model": rng.choice(MODELS)}
        body[name] = sample(declaration.fields[name].type, rng)
        if name == "model":
            body[name] = rng.choice(MODELS)
        path = rng.choice([p for p in positions(body) if p and p[0] == name] or [(name,)])
        body = replaced(body, path, rng.choice(WRONG_VALUES))
        out.append(json.dumps(body).encode())
    return out


HI = [{"role": "user", "content": "hi"}]
ENDPOINTS = {
    "chat": ("/v1/chat/completions", chat.CHAT, {"messages": HI, "max_tokens": 4}),
    "chat-stream": ("/v1/chat/completions", chat.CHAT, {"messages": HI, "max_tokens": 4, "stream": True}),
    "responses": ("/v1/responses", responses.RESPONSES, {"input": "hi", "max_output_tokens": 4}),
    "messages": ("/v1/messages", messages.MESSAGES, {"messages": HI, "max_tokens": 4}),
    "count_tokens": ("/v1/messages/count_tokens", messages.COUNT_TOKENS, {"messages": HI}),
    "embeddings": ("/v1/embeddings", embeddings.EMBEDDINGS, {"input": "hi"}),
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with gateway_stack(tmp_path_factory.mktemp("fuzz-declared"), CONFIG, token_delay=0.0) as running:
        clear_circuits()
        yield running
        clear_circuits()


@pytest.fixture(scope="module")
def api_key(stack):
    return stack.create_key(tenant="fuzz-declared", plan="fuzz")["api_key"]


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.base_url, timeout=60) as client:
        yield client


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_every_declared_field_with_a_wrong_type_is_never_a_5xx(stack, http, api_key, endpoint):
    path, declaration, base = ENDPOINTS[endpoint]
    for raw in cases(declaration, base, ROUNDS, SEED):
        check_refusal_is_free(stack, http, api_key, path, raw, anthropic_shaped=path.startswith("/v1/messages"))
