"""Hot windows split into shards whose limits add up to the window's limit (pure arithmetic).

DynamoDB cancels a transaction that touches an item another transaction is working on, so a window
item written by every request of a busy key (or of a whole tenant) serializes them: at a lock time
``t`` one item passes about ``1 / t`` transactions per second. A window with a large limit is
therefore ``N`` items (shard ``i`` has the share ``limit // N``, plus one for the first
``limit % N``): a reservation charges one shard chosen at random (another one when it conflicts)
with the guard ``used_i <= share_i - amount``; when that shard is short, the ledger reads every shard
and takes the amount from several in one transaction, so a request is refused only when the whole
window is spent. Each ``used_i`` stays at most ``share_i`` (guarded adds; refunds only lower it), so
``sum(used_i) <= sum(share_i) = limit``: exact, whichever shard a refund lands in.

``N`` grows with the limit (a shard holds at least ``MIN_SHARE`` units, so a typical request fits one
shard), in powers of two, up to ``MAX_SHARDS``. A limit changed across a power of two changes ``N``
in the middle of a window, which that window's sum does not survive exactly (docs/quotas.md bounds it). Shard 0's item is the unsharded window's item, so a
window with ``N = 1`` is stored exactly as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quotagate.quota.windows import WindowUnit

if TYPE_CHECKING:
    from quotagate.quota.windows import WindowCharge

MAX_SHARDS = 256
# A shard's share holds at least this many units: tens of typical requests.
MIN_SHARE: dict[WindowUnit, int] = {
    WindowUnit.REQUESTS: 32,
    WindowUnit.TOKENS: 131_072,  # 32 requests of 4,096 tokens
    WindowUnit.USD: 8_000_000,  # $8 in micro-dollars
}


def shard_count(charge: WindowCharge) -> int:
    """How many items the charge's window is split into (1: not sharded; concurrency never is)."""
    min_share = MIN_SHARE.get(charge.unit)
    if min_share is None or charge.limit < 2 * min_share:
        return 1
    return min(MAX_SHARDS, 1 << ((charge.limit // min_share).bit_length() - 1))


def shard_share(charge: WindowCharge, shard: int) -> int:
    """Shard ``shard``'s part of the window's limit (the shares add up to the limit)."""
    count = shard_count(charge)
    base, extra = divmod(charge.limit, count)
    return base + (1 if shard < extra else 0)


def shard_pk(charge: WindowCharge, shard: int) -> str:
    """The partition key of a shard's item (shard 0 is the window's own item). Shards are separate
    partitions: DynamoDB's 1,000 write units/s are per partition, not per item."""
    return charge.pk if shard == 0 else f"{charge.pk}#s{shard}"


def split(amount: int, rooms: list[tuple[int, int]]) -> list[tuple[int, int]] | None:
    """Parts ``(shard, n)`` that take ``amount`` from shards with room (largest first), or None when
    the rooms ``(shard, room)`` add up to less than ``amount``."""
    parts: list[tuple[int, int]] = []
    left = amount
    for shard, room in sorted(rooms, key=lambda r: -r[1]):
        if left <= 0:
            break
        if room <= 0:
            continue
        take = min(room, left)
        parts.append((shard, take))
        left -= take
    return parts if left <= 0 else None
