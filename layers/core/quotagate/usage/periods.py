"""Hour, day and month periods of usage aggregates (fixed UTC, like the quota windows)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum


class Granularity(StrEnum):
    HOUR = "hour"
    DAY = "day"
    MONTH = "month"


_FORMATS = {Granularity.HOUR: "%Y-%m-%dT%H", Granularity.DAY: "%Y-%m-%d", Granularity.MONTH: "%Y-%m"}


def period_label(granularity: Granularity, epoch_seconds: float) -> str:
    """``2026-11-30T02`` (hour), ``2026-11-30`` (day), ``2026-11`` (month) containing the instant."""
    return datetime.fromtimestamp(epoch_seconds, UTC).strftime(_FORMATS[granularity])


def period_start(granularity: Granularity, label: str) -> datetime:
    return datetime.strptime(label, _FORMATS[granularity]).replace(tzinfo=UTC)


def period_end(granularity: Granularity, label: str) -> datetime:
    start = period_start(granularity, label)
    if granularity == Granularity.HOUR:
        return start + timedelta(hours=1)
    if granularity == Granularity.DAY:
        return start + timedelta(days=1)
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


def previous(granularity: Granularity, label: str) -> str:
    start = period_start(granularity, label)
    if granularity == Granularity.MONTH:
        return period_label(granularity, (start - timedelta(days=1)).timestamp())
    step = timedelta(hours=1) if granularity == Granularity.HOUR else timedelta(days=1)
    return period_label(granularity, (start - step).timestamp())


def parse_label(granularity: Granularity, text: str) -> str:
    """Normalise a user-given period or date (``2026-11-30``, ``2026-11-30T02:15:00Z``...) to the
    label of the period containing it. Raises ValueError."""
    value = text.strip()
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        try:
            moment = datetime.strptime(value, "%Y-%m")
        except ValueError:
            raise ValueError(f"not an ISO date or time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return period_label(granularity, moment.timestamp())
