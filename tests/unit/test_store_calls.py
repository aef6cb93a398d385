"""Where the proxy makes its quota-store calls: a store that waits on I/O (DynamoDB through boto3,
or any double that stands for it) in a worker thread, so the event loop keeps serving other
requests; the in-memory ledger, which waits on nothing, on the event loop (a thread hand-off costs
more than its call)."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from quotagate.config_models import parse_config
from quotagate.identity import Identity
from quotagate.logic.gateway import Gateway
from quotagate.providers.base import DONE_EVENT, SSEEvent
from quotagate.quota import DynamoQuotaLedger, InMemoryQuotaLedger, QuotaService, ReservationStatus

IDENTITY = Identity(tenant="acme", consumer="u1", key_id="jwt:acme:u1", plan="pro", auth_type="jwt")
CONFIG = parse_config(
    {
        "providers": {"p": {"type": "openai", "base_url": "http://127.0.0.1:1/v1"}},
        "models": {"m": {"provider": "p", "upstream_model": "m"}},
        "plans": {"pro": {"models": "*", "default_max_tokens": 50, "limits": {"tokens_per_minute": 10_000}}},
    }
)


class ThreadNoting(InMemoryQuotaLedger):
    """Notes the thread each reserve and settle ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def reserve(self, request_id, charges, record=None):
        self.threads.append(threading.get_ident())
        return super().reserve(request_id, charges, record)

    def settle(self, request_id, adjustments, usage=None, record=None, **options):
        self.threads.append(threading.get_ident())
        return super().settle(request_id, adjustments, usage, record, **options)


class NonBlocking(ThreadNoting):
    blocking = False


class Provider:
    async def stream(self, body: dict[str, Any]):
        yield SSEEvent.from_chunk(
            {"object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"}}]}
        )
        yield DONE_EVENT

    def for_target(self, target):
        return self


def threads_of(ledger: ThreadNoting) -> tuple[list[int], int, str]:
    """The threads of the ledger's calls during one request, the event loop's, and the status of
    the request's reservation item."""
    gateway = Gateway(lambda: CONFIG, key_records=None, quota=QuotaService(ledger), providers=Provider())
    loop_thread = threading.get_ident()

    async def go() -> None:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        response = await gateway.chat(IDENTITY, json.dumps(body).encode(), "req-1")
        await response.finish(200)

    asyncio.run(go())
    item = ledger.get_reservation("req-1")
    assert item is not None
    return ledger.threads, loop_thread, item["status"]


def test_a_ledger_that_may_block_is_called_in_a_worker_thread_and_the_request_is_settled():
    threads, loop_thread, status = threads_of(ThreadNoting())
    assert len(threads) == 2 and loop_thread not in threads
    assert status == ReservationStatus.SETTLED


def test_the_in_memory_ledger_is_called_on_the_event_loop_and_the_request_is_settled():
    threads, loop_thread, status = threads_of(NonBlocking())
    assert threads == [loop_thread, loop_thread]
    assert status == ReservationStatus.SETTLED


def test_which_ledgers_block():
    assert InMemoryQuotaLedger.blocking is False
    assert ThreadNoting.blocking is True  # a subclass may wait on anything unless it says otherwise
    assert DynamoQuotaLedger.blocking is True
    assert QuotaService(InMemoryQuotaLedger()).blocking is False
    assert QuotaService(InMemoryQuotaLedger(), settlement_queue=object()).blocking is True  # type: ignore[arg-type]
