"""A quota store that stalls (issue 17): a stream under way is settled at what the provider billed,
and a new request fails within the reservation's documented time (2 s of attempts + one attempt of
0.75 s at time scale 1), not after the compensation's own retries as well. Real time, real sleeps:
each case takes a few seconds."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest
from botocore.exceptions import ReadTimeoutError

from quotagate.config_models import parse_config
from quotagate.errors import GatewayError
from quotagate.identity import Identity
from quotagate.logic.gateway import Gateway
from quotagate.providers.factory import HttpProviderFactory
from quotagate.quota import DynamoQuotaLedger, InMemoryQuotaLedger, QuotaService, ReservationRequest
from quotagate.quota.settlements import InMemorySettlementQueue
from quotagate.quota.windows import WindowScope, make_charge
from tests.billing_upstream import BillingUpstream

pytestmark = pytest.mark.timeout(60)
IDENTITY = Identity(tenant="acme", consumer="u1", key_id="jwt:u1", plan="pro", auth_type="jwt")
ATTEMPT_SECONDS = 0.75  # the ledger's default at time scale 1
RESERVE_SECONDS = 2.0
DOCUMENTED_RESERVE_SECONDS = RESERVE_SECONDS + ATTEMPT_SECONDS


class FrozenDynamo:
    """A DynamoDB client whose every call times out after a (shortened) read timeout."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.calls = 0

    def _frozen(self, **_: Any) -> Any:
        self.calls += 1
        time.sleep(self.timeout)
        raise ReadTimeoutError(endpoint_url="https://dynamodb.test")

    transact_write_items = update_item = batch_get_item = get_item = _frozen


@pytest.mark.parametrize("queue", [False, True], ids=["no-queue", "queue"])
def test_a_new_request_during_a_stall_fails_within_the_documented_time(queue):
    ledger = DynamoQuotaLedger(
        FrozenDynamo(0.5),
        "quota",
        reserve_seconds=RESERVE_SECONDS,
        settle_seconds=5.0,
        attempt_seconds=ATTEMPT_SECONDS,
    )
    settlements = InMemorySettlementQueue() if queue else None
    service = QuotaService(ledger, settlement_queue=settlements)
    started = time.monotonic()
    with pytest.raises(GatewayError) as refused:
        service.reserve(ReservationRequest("r-stall", "k", "t", {"tokens_per_day": 1000}, {}, 10, 100, 0.001))
    elapsed = time.monotonic() - started
    assert refused.value.status == 503 and refused.value.code == "quota_store_unavailable"
    assert elapsed <= DOCUMENTED_RESERVE_SECONDS + 0.2, f"503 after {elapsed:.2f} s"
    if settlements is not None:
        # The compensation still reaches the durable path (in the background, after the answer).
        deadline = time.monotonic() + 10
        while not settlements.messages and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(settlements.messages) == 1


class StallingLedger:
    """An in-memory ledger whose calls wait while ``stalled`` is set (a frozen store)."""

    def __init__(self) -> None:
        self.inner = InMemoryQuotaLedger()
        self.running = threading.Event()
        self.running.set()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.inner, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.running.wait(30)
            return method(*args, **kwargs)

        return call


def test_a_stream_under_a_frozen_store_is_settled_at_what_the_provider_billed():
    limit = 1200
    with BillingUpstream(tokens_per_second=500) as upstream:
        config = parse_config(
            {
                "providers": {"billing": {"type": "openai", "base_url": f"{upstream.base_url}/v1", "read_timeout": 5}},
                "models": {"m": {"provider": "billing", "price": {"input_per_million": 1, "output_per_million": 2}}},
                "plans": {"pro": {"models": "*", "limits": {"tokens_per_day": limit}, "default_max_tokens": 64}},
            }
        )
        ledger = StallingLedger()
        quota = QuotaService(ledger)

        async def run() -> tuple[int, str]:
            async with httpx.AsyncClient() as http:
                gateway = Gateway(lambda: config, None, quota, HttpProviderFactory(lambda: config, http))
                body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "run=stall"}]}
                response = await gateway.chat(IDENTITY, json.dumps(body).encode(), "req-stall")
                ledger.running.clear()  # the store freezes while the answer streams
                asyncio.get_running_loop().call_later(1.5, ledger.running.set)
                received = b"".join([chunk async for chunk in response.body()])
                await response.finish(200)
                return len(received), response.outcome.error or ""

        asyncio.run(run())
        upstream.wait_idle()
        billed = upstream.billed("stall")
        window = make_charge(WindowScope.KEY, "jwt:u1", "tokens_per_day", limit, 0, time.time())
        recorded = ledger.inner.get_used(window.pk, window.sk)
        assert billed <= limit
        assert recorded == billed, f"recorded {recorded}, billed {billed}"
