"""An error event an upstream sends inside a stream that has already started is the upstream's own
text: like an upstream error body before the first byte, it never reaches the client. The client
gets the gateway's error event naming the provider; the text goes to the log, redacted; the target's
circuit hears of the failure."""

from __future__ import annotations

import pytest

from quotagate.logic.breaker import CircuitState
from quotagate.providers.base import SSEEvent
from tests.unit.test_router_failover import A, B, FakeProvider, chat, make

LEAK = "Incorrect API key provided: sk-proj-***************************abcd"


class ErrorMidStream(FakeProvider):
    """A first chunk, then an OpenAI-style error event (as vLLM and OpenAI send mid-stream)."""

    async def stream(self, body):
        self._step()
        yield SSEEvent.from_chunk(
            {
                "object": "chat.completion.chunk",
                "model": body["model"],
                "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
            }
        )
        yield SSEEvent.from_chunk(
            {"error": {"message": LEAK, "type": "invalid_request_error", "param": None, "code": "invalid_api_key"}}
        )


@pytest.mark.parametrize("stream", [True, False])
def test_an_upstream_error_event_mid_stream_never_reaches_the_client(stream, capsys):
    gateway, _, store = make({A: [], B: []})
    gateway.providers.providers[A] = ErrorMidStream(A, [], gateway.clock)
    if stream:
        response, raw = chat(gateway, stream=True)
        assert response.target.id == A
        assert b"sk-proj" not in raw and b"Incorrect API key" not in raw
        assert b'"upstream_error"' in raw and b"[DONE]" not in raw
        assert b"'p'" in raw or b"provider" in raw
    else:
        from quotagate.errors import GatewayError

        with pytest.raises(GatewayError) as failed:
            chat(gateway)
        assert "sk-proj" not in failed.value.message and failed.value.code == "upstream_error"
    circuit = store.get_many([A]).get(A)
    assert circuit is not None and (circuit.failures >= 1 or circuit.state != CircuitState.CLOSED), circuit
    assert "sk-proj-****" not in capsys.readouterr().out
