"""The usage record rides on the reservation and its settlement (no extra ledger call)."""

from __future__ import annotations

from quotagate.quota import ReservationRequest
from quotagate.quota.ledger import InMemoryQuotaLedger
from quotagate.quota.service import QuotaService
from quotagate.usage.record import RECORD_ATTRIBUTE, Settlement, UsageOutcome, UsageSource

FIELDS = {
    "tenant": "acme",
    "consumer": "alice",
    "key_id": "k1",
    "auth_type": "api_key",
    "plan": "free",
    "requested_model": "chat-default",
    "model": "chat-default",
}


def test_reservation_writes_the_record_with_reserved_amounts_and_budgets():
    ledger = InMemoryQuotaLedger()
    service = QuotaService(ledger, clock=lambda: 1_790_000_000.0)
    service.reserve(
        ReservationRequest(
            "r1",
            "k1",
            "acme",
            {"tokens_per_day": 1000, "usd_per_month": 2.5},
            {"tokens_per_month": 50_000},
            30,
            100,
            0.001,
            usage_fields=FIELDS,
        )
    )
    record = ledger.get_reservation("r1")[RECORD_ATTRIBUTE]
    assert ledger.calls == {"reserve": 1, "settle": 0}
    assert (record["prompt_tokens"], record["completion_tokens"], record["cost_usd_micros"]) == (30, 100, 1000)
    assert (record["usage_source"], record["outcome"]) == (UsageSource.RESERVATION, UsageOutcome.EXPIRED)
    assert record["started_at_ms"] == 1_790_000_000_000
    assert record["budget_key_tokens_per_day"] == 1000
    assert record["budget_key_usd_per_month"] == 2_500_000
    assert record["budget_tenant_tokens_per_month"] == 50_000
    assert record["budget_tenant_usd_per_day"] == 0


def test_settlement_completes_the_record_in_the_same_call():
    ledger = InMemoryQuotaLedger()
    service = QuotaService(ledger)
    reservation = service.reserve(
        ReservationRequest("r1", "k1", "acme", {"tokens_per_day": 1000}, {}, 30, 100, 0.001, usage_fields=FIELDS)
    )
    settlement = Settlement(UsageOutcome.CLIENT_DISCONNECT, 200, UsageSource.TOKENIZER, "mock/mock-gpt", 15.5, 900.9, 2)
    assert service.settle(reservation, 25, 7, 0.00004, settlement=settlement)
    item = ledger.get_reservation("r1")
    record = item[RECORD_ATTRIBUTE]
    assert ledger.calls == {"reserve": 1, "settle": 1}
    assert item["status"] == "settled"
    assert (record["prompt_tokens"], record["completion_tokens"], record["total_tokens"]) == (25, 7, 32)
    assert record["cost_usd_micros"] == 40
    assert (record["outcome"], record["usage_source"]) == ("client_disconnect", "tokenizer")
    assert (record["target"], record["provider"], record["upstream_model"]) == ("mock/mock-gpt", "mock", "mock-gpt")
    assert (record["time_to_first_byte_ms"], record["duration_ms"], record["failovers"]) == (15, 900, 2)
    assert record["tenant"] == "acme" and record["key_id"] == "k1"


def test_a_key_without_limits_still_leaves_a_usage_record():
    # Billing must see every request, not only those of keys with limits.
    ledger = InMemoryQuotaLedger()
    service = QuotaService(ledger)
    reservation = service.reserve(ReservationRequest("r2", "k1", "acme", {}, {}, 30, 100, 0.001, usage_fields=FIELDS))
    service.settle(reservation, 3, 4, 0.0)
    item = ledger.get_reservation("r2")
    assert item["status"] == "settled"
    assert item[RECORD_ATTRIBUTE]["total_tokens"] == 7


def test_jwt_callers_are_recorded_by_subject():
    ledger = InMemoryQuotaLedger()
    fields = {**FIELDS, "key_id": "jwt:acme:user-7", "auth_type": "jwt"}
    service = QuotaService(ledger)
    reservation = service.reserve(
        ReservationRequest("r3", "jwt:acme:user-7", "acme", {}, {}, 1, 1, 0.0, usage_fields=fields)
    )
    service.write_record(reservation)  # a key without limits: written while the upstream answers
    record = ledger.get_reservation("r3")[RECORD_ATTRIBUTE]
    assert (record["key_id"], record["subject"], record["auth_type"]) == ("", "user-7", "jwt")
