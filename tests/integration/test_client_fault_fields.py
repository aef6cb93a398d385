"""A client cannot use the mock model server's fault-injection body field (``mock_fault``) to make
the target fail. Through ``make dev`` any client could send ``"mock_fault": "status=500"`` on chat
the Responses API or embeddings; the gateway forwarded it, the mock answered 500, and three such requests
opened the shared circuit breaker, so every other tenant got 503 for the cool-down. Faults are the
operator's to inject (the model suffix in the configuration), never the caller's."""

from __future__ import annotations

import pytest

from tests.integration.test_hostile_input import TARGET, chat_body, circuit_item, post, stack  # noqa: F401

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(autouse=True)
def as_deployed(monkeypatch):
    """Forwarding off, as in make dev and in AWS (only the test harness turns it on)."""
    monkeypatch.delenv("QG_FORWARD_MOCK_CONTROLS", raising=False)


FAULTS = [b'"status=500"', b'{"status": 503}', b'"drop_after=0"']


@pytest.mark.parametrize("fault", FAULTS, ids=["status 500", "status 503 object", "drop"])
@pytest.mark.parametrize("path", ["chat/completions", "responses", "embeddings"])
def test_a_clients_mock_fault_field_never_reaches_the_target(stack, fault, path):  # noqa: F811
    attacker = stack.create_key(tenant=f"faulty-{abs(hash((fault, path))) % 10**8}", plan="free")
    victim = stack.create_key(tenant=f"victim-{abs(hash((fault, path))) % 10**8}", plan="free")
    before = circuit_item()
    if path == "chat/completions":
        raw = chat_body(b', "max_tokens": 3, "mock_fault": ' + fault)
    elif path == "responses":
        raw = b'{"model": "mock-gpt", "input": "hi", "max_output_tokens": 16, "mock_fault": ' + fault + b"}"
    else:
        raw = b'{"model": "mock-gpt", "input": "hi", "mock_fault": ' + fault + b"}"
    for _ in range(3):  # the test stack's failure threshold
        response = post(stack, attacker["api_key"], path, raw)
        assert response.status_code == 200, response.text
    assert circuit_item() == before
    served = post(stack, victim["api_key"], "chat/completions", chat_body(b', "max_tokens": 3'))
    assert served.status_code == 200, served.text
    assert served.headers["x-quotagate-target"] == TARGET


@pytest.mark.parametrize("path", ["chat/completions", "responses", "embeddings"])
def test_no_mock_control_field_of_a_client_reaches_the_target(stack, path):  # noqa: F811
    """``mock_token_delay`` stalled the mock for as long as the client liked: three such requests timed
    out and opened the shared circuit, like ``mock_fault``."""
    caller = stack.create_key(tenant=f"controls-{path.replace('/', '-')}", plan="free")
    controls = b', "mock_token_delay": 45, "mock_reply_tokens": 3000, "mock_fault": "status=500"'
    if path == "chat/completions":
        raw = chat_body(b', "max_tokens": 3' + controls)
    elif path == "responses":
        raw = b'{"model": "mock-gpt", "input": "hi", "max_output_tokens": 16' + controls + b"}"
    else:
        raw = b'{"model": "mock-gpt", "input": "hi"' + controls + b"}"
    response = post(stack, caller["api_key"], path, raw)
    assert response.status_code == 200, response.text
    forwarded = stack.mock.stats.last_request["body"]
    assert not [name for name in forwarded if name.startswith("mock_")], forwarded
