"""Only failures a target produced count toward its circuit breaker. An exception raised by the
gateway's own code (serialising the upstream body, an adapter or translation bug) is a gateway
error: the client gets a logged 500 ``internal_error`` — not a 502 that blames the target — and the
target's circuit is never touched. Gateway-side unavailability (e.g. its credentials for a
provider) moves on to the next target without counting against this one."""

from __future__ import annotations

import pytest

from quotagate.errors import GatewayError
from quotagate.providers.base import SSEEvent
from quotagate.providers.exceptions import UpstreamError
from tests.unit.test_router_failover import A, B, FakeProvider, chat, make


class BuggyMidStream(FakeProvider):
    """Sends a first chunk, then the adapter's own code fails."""

    async def stream(self, body):
        self._step()
        yield SSEEvent.from_chunk(
            {
                "object": "chat.completion.chunk",
                "model": body["model"],
                "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
            }
        )
        raise KeyError("a translation bug")


def serialisation_error() -> ValueError:
    # What httpx raises for a body it cannot encode (json.dumps with allow_nan=False).
    return ValueError("Out of range float values are not JSON compliant")


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "error",
    [
        serialisation_error(),
        TypeError("adapter bug"),
        UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"),
    ],
)
def test_an_exception_of_the_gateway_is_a_500_that_never_touches_the_breaker(stream, error):
    gateway, _, store = make({A: [error] * 5, B: []}, threshold=2)
    for _ in range(3):  # more than the failure threshold
        with pytest.raises(GatewayError) as failed:
            chat(gateway, stream=stream)
        assert failed.value.status == 500
        assert failed.value.code == "internal_error" and failed.value.type == "api_error"
        assert "model-a" not in failed.value.message and "'p'" not in failed.value.message
    assert store.get_many([A, B]) == {}
    assert gateway.providers.providers[A].calls == 3
    assert gateway.providers.providers[B].calls == 0  # the same bug would hit the next target
    assert gateway.quota.settled == [(0, 0, 0.0)] * 3  # nothing produced, nothing charged


def test_an_exception_of_the_gateway_mid_stream_ends_the_stream_without_blaming_the_target():
    gateway, _, store = make({A: [], B: []})
    gateway.providers.providers[A] = BuggyMidStream(A, [], gateway.clock)
    response, raw = chat(gateway, stream=True)
    assert response.target.id == A
    assert b'"internal_error"' in raw and b"[DONE]" not in raw
    assert store.get_many([A]) == {}


def test_gateway_side_unavailability_fails_over_without_counting_against_the_target():
    unavailable = GatewayError(
        503, "Credentials for provider 'p' are unavailable.", "api_error", "provider_credentials_unavailable"
    )
    gateway, _, store = make({A: [unavailable] * 3, B: []}, threshold=2)
    for _ in range(3):
        response, _ = chat(gateway)
        assert response.target.id == B
    assert store.get_many([A]) == {}


@pytest.mark.parametrize(
    "error",
    [
        UpstreamError(503, "Credentials for provider 'p' are unavailable.", code="provider_credentials_unavailable"),
        UpstreamError(502, "Provider 'p' has no AWS region (set AWS_REGION).", code="provider_misconfigured"),
    ],
)
def test_an_adapter_reporting_the_gateways_own_setup_fails_over_without_blame(error):
    # Bedrock's adapter reports missing AWS credentials or region as UpstreamErrors with these codes.
    gateway, _, store = make({A: [error] * 3, B: []}, threshold=2)
    for _ in range(3):
        assert chat(gateway)[0].target.id == B
    assert store.get_many([A]) == {}
