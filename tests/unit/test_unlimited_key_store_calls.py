"""A key without limits makes no quota-store round trip before the upstream call: its usage record
(the reservation item the usage pipeline publishes) is written while the model answers, then settled;
the pipeline still gets a settled record for every request, even when that early write fails."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from quotagate.config_models import parse_config
from quotagate.identity import Identity
from quotagate.logic.gateway import Gateway
from quotagate.providers.base import DONE_EVENT, SSEEvent
from quotagate.quota import InMemoryQuotaLedger, LedgerBusy, QuotaService
from quotagate.quota.ledger import ReservationStatus
from quotagate.usage.record import RECORD_ATTRIBUTE

IDENTITY = Identity(tenant="acme", consumer="u1", key_id="jwt:acme:u1", plan="free-of-limits", auth_type="jwt")
CONFIG = parse_config(
    {
        "providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:1/v1"}},
        "models": {"m": {"provider": "p", "upstream_model": "m"}},
        "plans": {"free-of-limits": {"models": "*", "default_max_tokens": 50}},
    }
)


class WatchedLedger(InMemoryQuotaLedger):
    """Notes each store call and whether the upstream had been called when it began; the record's
    write waits for the upstream call (a gateway that waits for it before calling deadlocks)."""

    def __init__(self, upstream_called: threading.Event, fail_first_write: bool = False) -> None:
        super().__init__()
        self.upstream_called = upstream_called
        self.fail_first_write = fail_first_write
        self.store_calls: list[tuple[str, bool]] = []

    def reserve(self, request_id, charges, record=None):
        self.store_calls.append(("reserve", self.upstream_called.is_set()))
        if not self.upstream_called.wait(2):
            raise AssertionError("the usage record's write held back the upstream call")
        if self.fail_first_write:
            self.fail_first_write = False
            raise LedgerBusy("throttled")
        return super().reserve(request_id, charges, record)

    def settle(self, request_id, adjustments, usage=None, record=None, **options):
        self.store_calls.append(("settle", self.upstream_called.is_set()))
        return super().settle(request_id, adjustments, usage, record, **options)


class Provider:
    def __init__(self, called: threading.Event) -> None:
        self.called = called

    async def stream(self, body: dict[str, Any]):
        self.called.set()
        yield SSEEvent.from_chunk(
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
            }
        )
        yield SSEEvent.from_chunk(
            {
                "id": "c1",
                "object": "chat.completion.chunk",
                "model": "m",
                "choices": [],
                "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8},
            }
        )
        yield DONE_EVENT


class Factory:
    def __init__(self, provider: Provider) -> None:
        self.provider = provider

    def for_target(self, target):
        return self.provider


def run(stream: bool, fail_first_write: bool = False) -> tuple[WatchedLedger, bytes | dict[str, Any]]:
    called = threading.Event()
    ledger = WatchedLedger(called, fail_first_write)
    gateway = Gateway(lambda: CONFIG, key_records=None, quota=QuotaService(ledger), providers=Factory(Provider(called)))

    async def go() -> bytes | dict[str, Any]:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": stream}
        response = await gateway.chat(IDENTITY, json.dumps(body).encode(), "req-1")
        answer: bytes | dict[str, Any] = (
            b"".join([chunk async for chunk in response.body()]) if stream else (response.json or {})
        )
        await response.finish(200)
        return answer

    return ledger, asyncio.run(go())


@pytest.mark.parametrize("stream", [False, True])
def test_no_store_call_before_the_upstream_call_and_the_record_is_settled(stream):
    ledger, answer = run(stream)
    # The record's put may begin before the upstream call (it runs beside it), but the upstream call
    # never waits for it: the put blocks until the upstream has been called, and it succeeded once.
    assert [name for name, _ in ledger.store_calls] == ["reserve", "settle"]
    assert ledger.store_calls[-1] == ("settle", True)
    if stream:
        assert b'"content": "hi"' in answer or b'"content":"hi"' in answer
    else:
        assert answer["choices"][0]["message"]["content"] == "hi"
    item = ledger.get_reservation("req-1")
    assert item is not None and item["status"] == ReservationStatus.SETTLED
    record = item[RECORD_ATTRIBUTE]
    assert (record["prompt_tokens"], record["completion_tokens"], record["consumer"]) == (7, 1, "u1")


def test_a_failed_early_write_is_made_good_at_settlement():
    ledger, answer = run(stream=False, fail_first_write=True)
    assert answer["choices"][0]["message"]["content"] == "hi"
    assert [name for name, _ in ledger.store_calls] == ["reserve", "reserve", "settle"]
    item = ledger.get_reservation("req-1")
    assert item is not None and item["status"] == ReservationStatus.SETTLED
    assert item[RECORD_ATTRIBUTE]["completion_tokens"] == 1
