"""QuotaService on the in-memory ledger with a fake clock: windows, 400 vs 429, headers, settlement."""

import random
import threading
from datetime import UTC, datetime

import pytest

from quotagate.errors import GatewayError
from quotagate.quota import InMemoryQuotaLedger, LedgerBusy, QuotaService, ReservationRequest
from tests.helpers import FakeClock
from tests.quota_table import QuotaTable

T0 = datetime(2026, 11, 17, 10, 5, 30, tzinfo=UTC).timestamp()  # 30 s into a minute


@pytest.fixture
def clock():
    return FakeClock(T0)


@pytest.fixture
def ledger():
    return InMemoryQuotaLedger()


@pytest.fixture
def service(ledger, clock):
    return QuotaService(ledger, clock=clock)


def reserve(
    service,
    request_id="r1",
    key_limits=None,
    tenant_limits=None,
    prompt=40,
    max_output=60,
    usd=0.0,
    key_id="k1",
    tenant="acme",
):
    return service.reserve(
        ReservationRequest(request_id, key_id, tenant, key_limits or {}, tenant_limits or {}, prompt, max_output, usd)
    )


@pytest.fixture
def table(ledger, clock):
    return QuotaTable(ledger, clock)


def used(table, pk, limit_name, at=None):
    return table.usage_of(pk, limit_name, at)


# ---- charges --------------------------------------------------------------------------------------


def test_one_charge_per_limit_per_scope(service):
    charges = service.plan_windows(
        ReservationRequest(
            "r1",
            "k1",
            "acme",
            {
                "requests_per_minute": 10,
                "tokens_per_minute": 1000,
                "tokens_per_day": 10_000,
                "usd_per_day": 1,
                "max_tokens_per_request": 100,
            },
            {"tokens_per_month": 1_000_000, "usd_per_month": 10},
            40,
            60,
            0.0123451,
        )
    )
    got = {(c.pk, c.limit_name): c.amount for c in charges}
    assert got == {
        ("key#k1", "requests_per_minute"): 1,
        ("key#k1", "tokens_per_minute"): 100,
        ("key#k1", "tokens_per_day"): 100,
        ("key#k1", "usd_per_day"): 12346,  # micro-dollars, rounded up
        ("tenant#acme", "tokens_per_month"): 100,
        ("tenant#acme", "usd_per_month"): 12346,
    }


# ---- 400: a request that can never fit -------------------------------------------------------------


def test_max_tokens_over_per_request_limit_is_400(service, ledger):
    with pytest.raises(GatewayError) as err:
        reserve(service, key_limits={"max_tokens_per_request": 50}, max_output=60)
    assert err.value.status == 400
    assert err.value.type == "invalid_request_error"
    assert err.value.code == "request_too_large_for_limit"
    assert err.value.param == "max_tokens"
    assert "max_tokens_per_request" in err.value.message and "50" in err.value.message
    with pytest.raises(GatewayError) as err:
        reserve(service, tenant_limits={"max_tokens_per_request": 59}, max_output=60)
    assert err.value.status == 400 and "tenant" in err.value.message
    assert ledger.calls["reserve"] == 0


def test_request_bigger_than_a_whole_window_is_400_not_429(service, ledger):
    with pytest.raises(GatewayError) as err:
        reserve(service, key_limits={"tokens_per_minute": 99}, prompt=40, max_output=60)
    assert err.value.status == 400
    assert err.value.param == "max_tokens"
    assert "tokens_per_minute" in err.value.message and "99" in err.value.message
    assert "at most 59" in err.value.message
    # The prompt alone is too big: lowering max_tokens cannot help.
    with pytest.raises(GatewayError) as err:
        reserve(service, key_limits={"tokens_per_day": 30}, prompt=40, max_output=0)
    assert err.value.status == 400 and err.value.param == "messages"
    # The worst-case cost is bigger than the budget.
    with pytest.raises(GatewayError) as err:
        reserve(service, tenant_limits={"usd_per_month": 0.01}, usd=0.010001)
    assert err.value.status == 400 and "usd_per_month" in err.value.message and "$0.01" in err.value.message
    assert ledger.calls["reserve"] == 0


def test_exactly_the_whole_limit_fits(service):
    reservation = reserve(service, key_limits={"tokens_per_minute": 100, "usd_per_day": 0.5}, usd=0.5)
    assert reservation.headers()["x-ratelimit-remaining-tokens"] == "0"


def test_zero_limit_is_a_non_retryable_429(service):
    with pytest.raises(GatewayError) as err:
        reserve(service, key_limits={"requests_per_minute": 0})
    assert err.value.status == 429 and err.value.code == "insufficient_quota"
    assert "retry-after" not in err.value.headers


# ---- 429 ------------------------------------------------------------------------------------------


def test_minute_window_429_is_rate_limit_with_retry_after(service, clock, table):
    limits = {"tokens_per_minute": 1000, "requests_per_minute": 100}
    for i in range(10):
        reserve(service, f"r{i}", key_limits=limits)
    with pytest.raises(GatewayError) as err:
        reserve(service, "r10", key_limits=limits)
    error = err.value
    assert error.status == 429
    assert error.type == "tokens"
    assert error.code == "rate_limit_exceeded"
    assert "API key" in error.message and "tokens_per_minute" in error.message
    assert 30 <= int(error.headers["retry-after"]) <= 34  # the reset, plus jitter
    assert error.headers["x-ratelimit-limit-tokens"] == "1000"
    assert error.headers["x-ratelimit-remaining-tokens"] == "0"
    assert error.headers["x-ratelimit-reset-tokens"] == "30s"
    # The requests window was not short: its remaining is reported as a lower bound (1, not 90).
    assert error.headers["x-ratelimit-limit-requests"] == "100"
    assert error.headers["x-ratelimit-remaining-requests"] == "1"
    assert error.headers["x-ratelimit-reset-requests"] == "30s"
    assert error.body()["error"]["code"] == "rate_limit_exceeded"
    # Nothing was kept by the rejected request, in any window.
    assert used(table, "key#k1", "requests_per_minute") == 10
    # The next minute is a new window.
    clock.now += 30
    reserve(service, "r11", key_limits=limits)
    assert used(table, "key#k1", "tokens_per_minute") == 100


def test_requests_window_429_has_type_requests(service):
    reserve(service, "a", key_limits={"requests_per_minute": 1})
    with pytest.raises(GatewayError) as err:
        reserve(service, "b", key_limits={"requests_per_minute": 1})
    assert err.value.type == "requests" and err.value.code == "rate_limit_exceeded"
    assert err.value.headers["x-ratelimit-remaining-requests"] == "0"


def test_budget_429_is_insufficient_quota_and_names_the_tenant(service, clock):
    tenant_limits = {"usd_per_day": 1}
    reserve(service, "a", tenant_limits=tenant_limits, usd=0.6)
    with pytest.raises(GatewayError) as err:
        reserve(service, "b", tenant_limits=tenant_limits, usd=0.5)
    error = err.value
    assert error.status == 429 and error.type == "usd" and error.code == "insufficient_quota"
    assert "tenant" in error.message and "usd_per_day" in error.message
    assert "$0.60" in error.message and "2026-11-18T00:00:00Z" in error.message
    seconds_to_midnight = datetime(2026, 11, 18, tzinfo=UTC).timestamp() - clock.now
    assert error.headers["retry-after"] == str(int(seconds_to_midnight))


def test_when_minute_and_day_are_both_short_the_day_decides(service):
    limits = {"tokens_per_minute": 100, "tokens_per_day": 100}
    reserve(service, "a", key_limits=limits)
    with pytest.raises(GatewayError) as err:
        reserve(service, "b", key_limits=limits)
    assert err.value.code == "insufficient_quota" and "tokens_per_day" in err.value.message


def test_one_short_window_keeps_no_partial_reservation(service, table):
    key_limits = {"requests_per_minute": 10, "tokens_per_minute": 10_000, "tokens_per_day": 1000}
    tenant_limits = {"usd_per_month": 5}
    reserve(service, "a", key_limits, tenant_limits, prompt=400, max_output=500, usd=0.1)
    with pytest.raises(GatewayError):
        reserve(service, "b", key_limits, tenant_limits, prompt=100, max_output=100, usd=0.1)
    assert used(table, "key#k1", "requests_per_minute") == 1
    assert used(table, "key#k1", "tokens_per_minute") == 900
    assert used(table, "key#k1", "tokens_per_day") == 900
    assert used(table, "tenant#acme", "usd_per_month") == 100_000


def test_contended_ledger_is_a_retryable_503_never_the_clients_limit(clock):
    class Busy(InMemoryQuotaLedger):
        def reserve(self, request_id, charges):
            raise LedgerBusy("contended")

    with pytest.raises(GatewayError) as err:
        reserve(QuotaService(Busy(), clock), key_limits={"requests_per_minute": 5})
    assert err.value.status == 503 and err.value.code == "quota_store_busy"
    assert err.value.headers["retry-after"] == "1"


def test_store_down_for_reserve_and_its_compensation_is_a_503_not_a_500(clock):
    from quotagate.quota import LedgerUnavailable

    warnings = []

    class Down(InMemoryQuotaLedger):
        def reserve(self, request_id, charges):
            raise LedgerUnavailable("timed out")

        def settle(self, *args, **kwargs):
            raise LedgerUnavailable("timed out")

    service = QuotaService(Down(), clock, on_warning=lambda message, **fields: warnings.append(message))
    with pytest.raises(GatewayError) as err:
        reserve(service, key_limits={"requests_per_minute": 5})
    assert err.value.status == 503 and err.value.code == "quota_store_unavailable"
    assert err.value.headers["retry-after"] == "1"
    assert warnings == ["compensating settlement failed"]


# ---- headers --------------------------------------------------------------------------------------


def test_headers_report_the_tightest_key_token_window(service):
    reservation = reserve(
        service,
        key_limits={"requests_per_minute": 60, "tokens_per_minute": 1000, "tokens_per_day": 500},
        tenant_limits={"tokens_per_minute": 50_000},
    )
    assert reservation.headers() == {
        "x-ratelimit-limit-requests": "60",
        "x-ratelimit-remaining-requests": "59",
        "x-ratelimit-reset-requests": "30s",
        "x-ratelimit-limit-tokens": "500",
        "x-ratelimit-remaining-tokens": "400",
        "x-ratelimit-reset-tokens": "13h54m30s",
    }


def test_headers_fall_back_to_tenant_and_exist_only_for_configured_limits(service, clock):
    reservation = reserve(service, key_limits={"usd_per_day": 5}, tenant_limits={"tokens_per_minute": 1000})
    clock.now += 29.988
    assert reservation.headers() == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "900",
        "x-ratelimit-reset-tokens": "12ms",
    }
    assert reserve(service, "r2", key_limits={"usd_per_day": 5}).headers() == {}


# ---- settlement -----------------------------------------------------------------------------------


def test_settle_refunds_and_charges_actual(service, table):
    limits = {"requests_per_minute": 10, "tokens_per_minute": 1000}
    tenant_limits = {"usd_per_day": 1}
    first = reserve(service, "a", limits, tenant_limits, prompt=40, max_output=60, usd=0.05)
    second = reserve(service, "b", limits, tenant_limits, prompt=40, max_output=60, usd=0.05)
    assert service.settle(first, 30, 10, 0.0123454)  # refund
    assert service.settle(second, 50, 60, 0.06)  # the prompt estimate was low: charge the excess
    assert used(table, "key#k1", "requests_per_minute") == 2
    assert used(table, "key#k1", "tokens_per_minute") == 40 + 110
    assert used(table, "tenant#acme", "usd_per_day") == 12346 + 60_000


def test_settle_is_exactly_once(service, ledger, table):
    limits = {"tokens_per_minute": 1000}
    reservation = reserve(service, "a", limits)
    assert service.settle(reservation, 10, 10, 0) is True
    assert service.settle(reservation, 1, 1, 0) is False
    assert ledger.calls["settle"] == 1
    # Another copy of the reservation (say, a second code path) reaches the ledger, which refuses.
    from dataclasses import replace

    copy = replace(reservation, settled=False)
    assert service.settle(copy, 1, 1, 0) is False
    assert used(table, "key#k1", "tokens_per_minute") == 20
    assert ledger.get_reservation("a")["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 10,
        "usd_micros": 0,
    }


def test_concurrent_settles_of_one_reservation_apply_once(service, table):
    reservation = reserve(service, "a", {"tokens_per_minute": 1000})
    results = []
    threads = [threading.Thread(target=lambda: results.append(service.settle(reservation, 1, 2, 0))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert used(table, "key#k1", "tokens_per_minute") == 3


def test_settle_after_rollover_hits_the_reserved_window(service, clock, table):
    limits = {"tokens_per_minute": 1000, "tokens_per_day": 5000}
    reserved_at = clock.now
    reservation = reserve(service, "a", limits)
    clock.now += 120  # two minutes later (e.g. a long stream)
    assert service.settle(reservation, 10, 5, 0)
    assert used(table, "key#k1", "tokens_per_minute", at=reserved_at) == 15
    assert used(table, "key#k1", "tokens_per_minute") == 0  # the current window is untouched
    assert used(table, "key#k1", "tokens_per_day") == 15


def test_settle_rejects_negative_usage(service):
    reservation = reserve(service, "a", {"tokens_per_minute": 1000})
    with pytest.raises(ValueError):
        service.settle(reservation, -1, 0, 0)
    assert service.settle(reservation, 0, 0, 0)  # still settleable


def test_no_limits_means_no_ledger_calls(service, ledger):
    reservation = reserve(service, "a")
    assert reservation.charges == () and reservation.headers() == {}
    assert service.settle(reservation, 1, 1, 0.1) is True
    assert service.settle(reservation, 1, 1, 0.1) is False
    assert ledger.calls == {"reserve": 0, "settle": 0}


def test_request_id_reuse_is_refused(service, table):
    from quotagate.quota import ReservationExists

    reserve(service, "a", {"tokens_per_minute": 1000})
    with pytest.raises(ReservationExists):
        reserve(service, "a", {"tokens_per_minute": 1000})
    assert used(table, "key#k1", "tokens_per_minute") == 100


# ---- the overshoot-proof property -----------------------------------------------------------------


def test_random_sequences_never_overshoot_and_admit_exactly_what_fits(service, clock, table):
    rng = random.Random(7)
    limits = {"tokens_per_minute": 5000, "requests_per_minute": 40}
    tenant_limits = {"usd_per_day": 0.2}
    expected_tokens = expected_requests = expected_micros = 0
    for i in range(300):
        prompt, max_output = rng.randint(0, 300), rng.randint(1, 400)
        usd = rng.randint(0, 3000) / 1e6
        fits = (
            expected_tokens + prompt + max_output <= 5000
            and expected_requests + 1 <= 40
            and expected_micros + round(usd * 1e6) <= 200_000
        )
        try:
            reservation = reserve(service, f"r{i}", limits, tenant_limits, prompt, max_output, usd)
        except GatewayError as error:
            assert error.status == 429 and not fits
            continue
        assert fits
        expected_tokens += prompt + max_output
        expected_requests += 1
        expected_micros += round(usd * 1e6)
        if rng.random() < 0.5:  # some settle (refund) right away
            actual_prompt, actual_out = rng.randint(0, prompt), rng.randint(0, max_output)
            actual_usd = rng.randint(0, round(usd * 1e6)) / 1e6
            service.settle(reservation, actual_prompt, actual_out, actual_usd)
            expected_tokens += actual_prompt + actual_out - prompt - max_output
            expected_micros += round(actual_usd * 1e6) - round(usd * 1e6)
        assert used(table, "key#k1", "tokens_per_minute") == expected_tokens <= 5000
        assert used(table, "tenant#acme", "usd_per_day") == expected_micros <= 200_000


def test_threads_on_the_in_memory_ledger_admit_exactly_the_limit(service, table):
    admitted, rejected = [], []
    barrier = threading.Barrier(40)

    def worker(i):
        barrier.wait()
        try:
            admitted.append(reserve(service, f"r{i}", {"tokens_per_minute": 1000}))
        except GatewayError as error:
            rejected.append(error.status)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(admitted) == 10 and rejected == [429] * 30
    assert used(table, "key#k1", "tokens_per_minute") == 1000


# ---- 429 headers: the refusing window, no retry for budgets, jittered retry-after --------------------


def test_a_requests_per_minute_429_describes_the_minute_not_a_day_window(service):
    limits = {"requests_per_minute": 1, "tokens_per_day": 1000}
    reserve(service, "a", key_limits=limits)
    with pytest.raises(GatewayError) as err:
        reserve(service, "b", key_limits=limits)
    headers = err.value.headers
    assert err.value.code == "rate_limit_exceeded" and err.value.type == "requests"
    assert headers["x-ratelimit-limit-requests"] == "1" and headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"] == "30s"
    # The day's token window did not refuse: nothing about it (it resets in 13 h, not in 30 s).
    assert not any(name.endswith("-tokens") for name in headers)
    assert "x-should-retry" not in headers


def test_budget_429s_tell_sdks_not_to_retry(service):
    limits = {"tokens_per_day": 150}
    reserve(service, "a", key_limits=limits)
    with pytest.raises(GatewayError) as err:
        reserve(service, "b", key_limits=limits)
    assert err.value.code == "insufficient_quota" and err.value.headers["x-should-retry"] == "false"
    assert err.value.headers["x-ratelimit-limit-tokens"] == "150"
    with pytest.raises(GatewayError) as zero:
        reserve(service, "c", key_limits={"tokens_per_month": 0})
    assert zero.value.code == "insufficient_quota" and zero.value.headers["x-should-retry"] == "false"


def test_per_minute_retry_after_is_spread_and_never_before_the_reset(service, clock):
    limits = {"requests_per_minute": 1}
    reserve(service, "a", key_limits=limits)
    seen = set()
    for i in range(40):
        with pytest.raises(GatewayError) as err:
            reserve(service, f"refused-{i}", key_limits=limits)
        seen.add(int(err.value.headers["retry-after"]))
    assert min(seen) >= 30 and max(seen) <= 34 and len(seen) > 1


# ---- refused requests -----------------------------------------------------------------------------


def test_a_refused_request_counts_in_request_windows_only_and_the_next_one_is_refused(service, table):
    key_limits = {"requests_per_minute": 2, "tokens_per_minute": 1000, "usd_per_day": 1.0}
    tenant_limits = {"requests_per_minute": 100, "usd_per_month": 10.0}
    assert service.count_refused("k1", "acme", key_limits, tenant_limits) == 2
    assert used(table, "key#k1", "requests_per_minute") == 1
    assert used(table, "tenant#acme", "requests_per_minute") == 1
    assert used(table, "key#k1", "tokens_per_minute") == 0
    assert used(table, "key#k1", "usd_per_day") == 0
    assert used(table, "tenant#acme", "usd_per_month") == 0
    service.count_refused("k1", "acme", key_limits, tenant_limits)
    with pytest.raises(GatewayError) as refused:
        reserve(service, key_limits=key_limits, tenant_limits=tenant_limits)
    assert refused.value.status == 429


def test_a_key_without_request_windows_counts_nothing(service, ledger):
    assert service.count_refused("k1", "acme", {"tokens_per_day": 10}, {"usd_per_month": 1.0}) == 0
    assert "count_requests" not in ledger.calls
