"""The gateway's failover loop with fake providers, a fake clock and a fake sleep: which errors move
on, Retry-After within the budget (never past the deadline), what is reserved and settled, and
what the circuit breaker is told. No network."""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import pytest

from quotagate.config_models import parse_config
from quotagate.dal.circuit_store import InMemoryCircuitStore
from quotagate.errors import GatewayError
from quotagate.identity import Identity
from quotagate.logic.breaker import CircuitBreaker, caller_circuit, caller_of
from quotagate.logic.gateway import Gateway
from quotagate.logic.router import Router
from quotagate.providers.base import DONE_EVENT, SSEEvent
from quotagate.providers.exceptions import StreamInterrupted, UpstreamError, UpstreamTimeout
from quotagate.quota import Reservation, ReservationRequest
from tests.helpers import FakeClock

IDENTITY = Identity(tenant="acme", consumer="u1", key_id="jwt:u1", plan="pro", auth_type="jwt")
A, B = "p/model-a", "p/model-b"


def config(deadline: float | None = 10, threshold: int = 2, **alias: Any):
    return parse_config(
        {
            "providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:1/v1", "read_timeout": 5}},
            "models": {
                "alias": {
                    "targets": [
                        {
                            "provider": "p",
                            "upstream_model": "model-a",
                            "price": {"input_per_million": 10, "output_per_million": 20},
                        },
                        {
                            "provider": "p",
                            "upstream_model": "model-b",
                            "price": {"input_per_million": 1, "output_per_million": 2},
                        },
                    ],
                    **({"deadline": deadline} if deadline else {}),
                    **alias,
                }
            },
            "plans": {"pro": {"models": "*", "default_max_tokens": 50}},
            "circuit_breaker": {"failure_threshold": threshold, "cooldown_seconds": 30},
        }
    )


def completion(model: str) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
    }


class FakeProvider:
    """Plays a script per target: each call takes the next step (an exception, or 'ok')."""

    def __init__(self, target: str, script: list[Any], clock: FakeClock) -> None:
        self.target, self.script, self.clock, self.calls = target, script, clock, 0

    def _step(self) -> Any:
        self.calls += 1
        return self.script.pop(0) if self.script else "ok"

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        step = self._step()
        if isinstance(step, float):  # a slow upstream: never answers in time
            await asyncio.sleep(step)
        if isinstance(step, Exception):
            raise step
        return completion(body["model"])

    async def stream(self, body: dict[str, Any]):
        # The gateway always streams from the upstream (and assembles JSON for JSON clients).
        step = self._step()
        if isinstance(step, float):
            await asyncio.sleep(step)
        if isinstance(step, Exception):
            raise step
        yield SSEEvent(b": upstream keep-alive\n\n")
        chunk = {
            "object": "chat.completion.chunk",
            "model": body["model"],
            "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
        }
        yield SSEEvent.from_chunk(chunk)
        if step == "drop":
            raise StreamInterrupted("dropped")
        yield SSEEvent.from_chunk(
            {
                "object": "chat.completion.chunk",
                "model": body["model"],
                "choices": [],
                "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
            }
        )
        yield DONE_EVENT


class FakeFactory:
    def __init__(self, scripts: dict[str, list[Any]], clock: FakeClock) -> None:
        self.providers = {t: FakeProvider(t, s, clock) for t, s in scripts.items()}

    def for_target(self, target):
        return self.providers[target.id]


class FakeQuota:
    blocking = False  # waits on nothing: called on the event loop

    def __init__(self) -> None:
        self.reserved_usd: list[float] = []
        self.settled: list[tuple[int, int, float]] = []

    def reserve(self, request: ReservationRequest) -> Reservation:
        self.reserved_usd.append(request.reserve_usd)
        return Reservation(request.request_id, (), (), 0.0)

    def settle(self, reservation, prompt_tokens, completion_tokens, actual_usd, settlement=None) -> bool:
        self.settled.append((prompt_tokens, completion_tokens, actual_usd))
        return True

    def top_up(self, reservation: Reservation, extra_tokens: int, extra_usd: float) -> bool:
        return True

    def read_remaining(self, reservation: Reservation) -> None:
        pass


def make(scripts: dict[str, list[Any]], deadline: float | None = 10, seed: int = 0, threshold: int = 2, **alias: Any):
    clock = FakeClock()
    cfg = config(deadline, threshold, **alias)
    store = InMemoryCircuitStore()
    gateway = Gateway(
        lambda: cfg,
        key_records=None,
        quota=FakeQuota(),
        providers=FakeFactory(scripts, clock),
        router=Router(random.Random(seed)),
        breaker=CircuitBreaker(store, cfg.circuit_breaker, clock=lambda: clock.now),
        clock=clock,
        sleep=clock.async_sleep,
        max_retry_wait=20,
    )
    return gateway, clock, store


def chat(gateway, stream: bool = False, **body: Any):
    async def run():
        request = {"model": "alias", "messages": [{"role": "user", "content": "hi"}], "stream": stream, **body}
        response = await gateway.chat(IDENTITY, json.dumps(request).encode(), "req-1")
        chunks = []
        if stream:
            chunks = [chunk async for chunk in response.body()]
        await response.finish(200)
        return response, b"".join(chunks)

    return asyncio.run(run())


def rate_limited(after: float) -> UpstreamError:
    return UpstreamError(429, "slow down", retry_after=after, code="upstream_rate_limited")


def test_server_error_fails_over_and_settles_with_the_serving_price():
    gateway, _, store = make({A: [UpstreamError(502, "boom")], B: []})
    response, _ = chat(gateway)
    assert response.target.id == B
    assert response.headers["x-quotagate-target"] == B
    assert response.json["model"] == "model-b"
    # Reserved at the dearer target's price; settled at the serving one's.
    assert gateway.quota.reserved_usd[0] > (7 * 10) / 1e6
    assert gateway.quota.settled == [(7, 1, (7 * 1 + 1 * 2) / 1e6)]
    assert store.get_many([A])[A].failures == 1
    assert response.outcome.attempts == [f"{A}: 502 upstream_error"]


@pytest.mark.parametrize(
    "error",
    [
        UpstreamTimeout("slow"),
        UpstreamError(503, "x"),
        UpstreamError(429, "x"),
        UpstreamError(502, "refused", code="upstream_unreachable"),
    ],
)
def test_retryable_errors_move_on(error):
    gateway, _, _ = make({A: [error], B: []})
    assert chat(gateway)[0].target.id == B


def test_client_errors_are_returned_without_failover():
    gateway, _, store = make({A: [UpstreamError(400, "bad", error_type="invalid_request_error", code=None)], B: []})
    with pytest.raises(GatewayError) as refused:
        chat(gateway)
    assert refused.value.status == 400
    assert gateway.providers.providers[B].calls == 0
    assert gateway.quota.settled == [(0, 0, 0.0)]  # nothing produced, nothing charged
    assert store.get_many([A]) == {}


def test_a_target_that_cannot_express_the_request_is_skipped_without_blame():
    unsupported = UpstreamError(400, "n>1", code="unsupported_for_provider")
    gateway, _, store = make({A: [unsupported], B: []})
    assert chat(gateway)[0].target.id == B
    assert store.get_many([A]) == {}


def test_retry_after_is_waited_for_when_no_target_is_left():
    gateway, clock, _ = make({A: [rate_limited(3)], B: [rate_limited(2)]})
    response, _ = chat(gateway)
    assert clock.sleeps == [2]  # the soonest Retry-After, then only that target again
    assert response.target.id == B


def test_retry_after_past_the_deadline_is_not_waited_for():
    gateway, clock, _ = make({A: [rate_limited(8)], B: [rate_limited(9)]}, deadline=5)
    with pytest.raises(GatewayError) as limited:
        chat(gateway)
    assert clock.sleeps == []
    assert limited.value.status == 429 and limited.value.headers["retry-after"] == "9"
    assert gateway.quota.settled == [(0, 0, 0.0)]


def test_retry_after_longer_than_max_retry_wait_is_passed_on():
    gateway, clock, _ = make({A: [rate_limited(25)], B: [rate_limited(25)]}, deadline=None)
    with pytest.raises(GatewayError) as limited:
        chat(gateway)
    assert clock.sleeps == [] and limited.value.headers["retry-after"] == "25"


def test_retry_rounds_are_bounded():
    gateway, clock, _ = make({A: [rate_limited(0.5)] * 10, B: [rate_limited(0.5)] * 10}, deadline=None, threshold=100)
    with pytest.raises(GatewayError):
        chat(gateway)
    assert len(clock.sleeps) == 2
    assert gateway.providers.providers[A].calls == 3


def test_retries_stop_when_the_breaker_opens():
    gateway, _, _ = make({A: [rate_limited(0.5)] * 10, B: [rate_limited(0.5)] * 10}, deadline=None)
    with pytest.raises(GatewayError) as limited:
        chat(gateway)
    assert limited.value.status == 429
    assert gateway.providers.providers[A].calls == 2  # the third round finds both circuits open


def test_breaker_opens_and_the_target_is_skipped_before_anything_is_called():
    gateway, _, store = make({A: [UpstreamError(502, "x")] * 5, B: []})
    chat(gateway)
    chat(gateway)  # the second consecutive failure opens A (threshold 2) for this tenant
    own = caller_circuit(A, caller_of(IDENTITY.tenant))
    assert store.get_many([own])[own].state == "open"
    assert store.get_many([A])[A].state == "closed", "one tenant's failures do not open A for everyone"
    response, _ = chat(gateway)
    assert response.target.id == B
    assert gateway.providers.providers[A].calls == 2


def test_every_circuit_open_is_503_without_reservation():
    gateway, clock, store = make({A: [], B: []})
    for target in (A, B):
        store.add_failure(target, clock.now, 1, 30)
    with pytest.raises(GatewayError) as unavailable:
        chat(gateway)
    assert unavailable.value.status == 503 and unavailable.value.code == "upstream_unavailable"
    assert gateway.quota.reserved_usd == []


def test_stream_fails_over_before_the_first_data_event_and_skips_upstream_comments():
    gateway, _, _ = make({A: [StreamInterrupted("reset before anything")], B: []})
    response, raw = chat(gateway, stream=True)
    assert response.target.id == B
    assert b"upstream keep-alive" not in raw and raw.endswith(b"data: [DONE]\n\n")
    assert gateway.quota.settled == [(7, 1, (7 * 1 + 1 * 2) / 1e6)]


def test_stream_failure_after_the_first_byte_is_an_error_event_and_counts_against_the_target():
    gateway, _, store = make({A: ["drop"], B: []})
    response, raw = chat(gateway, stream=True)
    assert response.target.id == A
    assert b'"upstream_stream_interrupted"' in raw and b"[DONE]" not in raw
    assert gateway.providers.providers[B].calls == 0
    assert store.get_many([A])[A].failures == 1


def test_first_byte_timeout_fails_over_in_real_time():
    cfg = parse_config(
        {
            "providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:1/v1"}},
            "models": {
                "alias": {
                    "targets": [
                        {"provider": "p", "upstream_model": "model-a", "timeouts": {"first_byte": 0.05}},
                        {"provider": "p", "upstream_model": "model-b"},
                    ]
                }
            },
            "plans": {"pro": {"models": "*"}},
        }
    )
    clock = FakeClock()
    factory = FakeFactory({A: [5.0], B: []}, clock)
    gateway = Gateway(lambda: cfg, None, FakeQuota(), factory, router=Router(random.Random(0)))
    response, _ = chat(gateway)
    assert response.target.id == B
    assert response.outcome.attempts == [f"{A}: 504 upstream_timeout"]


class BrokenSettlementQuota(FakeQuota):
    def settle(self, reservation, prompt_tokens, completion_tokens, actual_usd, settlement=None) -> bool:
        raise RuntimeError("quota store unavailable")


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_settlement_keeps_the_answer_and_the_reservation(stream):
    gateway, _, _ = make({A: [], B: []})
    gateway.quota = BrokenSettlementQuota()
    response, raw = chat(gateway, stream=stream)
    if stream:
        assert raw.rstrip().endswith(b"data: [DONE]")
    else:
        assert response.json["choices"][0]["message"]["content"]
    assert response.outcome.error == "settlement failed; the reservation stays charged"
