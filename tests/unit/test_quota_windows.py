"""Pure quota arithmetic: windows, units, rounding, formatting."""

from datetime import UTC, datetime

import pytest

from quotagate.quota.windows import (
    format_duration,
    iso_utc,
    limit_units,
    make_charge,
    retry_after_seconds,
    usd_to_micros_ceil,
    usd_to_micros_floor,
    window_bounds,
)


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_minute_window_boundaries():
    assert window_bounds("minute", ts(2026, 11, 1, 10, 5, 0)) == (
        ts(2026, 11, 1, 10, 5),
        ts(2026, 11, 1, 10, 6),
    )
    assert window_bounds("minute", ts(2026, 11, 1, 10, 5, 59) + 0.999)[0] == ts(2026, 11, 1, 10, 5)
    # The first instant of a minute belongs to the new window.
    assert window_bounds("minute", ts(2026, 11, 1, 10, 6, 0))[0] == ts(2026, 11, 1, 10, 6)


def test_day_and_month_windows_are_utc():
    assert window_bounds("day", ts(2026, 11, 1, 23, 59, 59)) == (ts(2026, 11, 1), ts(2026, 11, 2))
    assert window_bounds("month", ts(2026, 11, 30, 23, 59, 59)) == (ts(2026, 11, 1), ts(2026, 12, 1))
    assert window_bounds("month", ts(2026, 12, 31, 12)) == (ts(2026, 12, 1), ts(2027, 1, 1))
    assert window_bounds("month", ts(2028, 2, 29, 12)) == (ts(2028, 2, 1), ts(2028, 3, 1))
    with pytest.raises(ValueError):
        window_bounds("week", 0)


def test_micro_dollars_round_up_for_charges_and_down_for_limits():
    assert usd_to_micros_ceil(0.1) == 100_000  # no float noise
    assert usd_to_micros_ceil(0.0000001) == 1
    assert usd_to_micros_ceil(0.0000015) == 2
    assert usd_to_micros_ceil(0) == 0
    assert usd_to_micros_floor(0.0000015) == 1
    assert limit_units("usd_per_day", 0.5) == 500_000
    assert limit_units("tokens_per_minute", 1000.7) == 1000
    with pytest.raises(ValueError):
        usd_to_micros_ceil(-1)


def test_charge_keys():
    charge = make_charge("tenant", "acme", "usd_per_month", 10, 5, ts(2026, 11, 17, 8, 30))
    assert charge.pk == "tenant#acme"
    assert charge.sk == "usd_per_month#2026-11-01T00:00:00Z"
    assert charge.limit == 10_000_000
    assert charge.max_used_before == 10_000_000 - 5
    assert charge.unit == "usd" and charge.period == "month" and not charge.is_rate_limit
    assert charge.expires_at > charge.window_end
    assert iso_utc(int(ts(2026, 11, 1, 10, 5))) == "2026-11-01T10:05:00Z"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.012, "12ms"),
        (0.0121, "13ms"),
        (1, "1s"),
        (59.5, "59.5s"),
        (360, "6m0s"),
        (61.25, "1m1.25s"),
        (3723, "1h2m3s"),
        (86400, "24h0m0s"),
        (-3, "0s"),
    ],
)
def test_format_duration_like_openai(seconds, text):
    assert format_duration(seconds) == text


def test_retry_after_is_whole_seconds_at_least_one():
    assert retry_after_seconds(100, 99.999) == 1
    assert retry_after_seconds(100, 100) == 1
    assert retry_after_seconds(100, 40.2) == 60
