"""Hot windows split into shards whose limits add up to the window's limit (pure arithmetic).

DynamoDB cancels a transaction that touches an item another transaction is working on, so a window
item written by every request of a busy key (or of a whole tenant) serializes them: at a lock time
``t`` one item passes about ``1 / t`` transactions per second. A window with a large limit is
therefore several items: a reservation charges one shard chosen at random (another one when it
conflicts) with the guard ``used_i <= share_i - amount``; when that shard is short, the ledger reads
every shard and takes the amount from several in one transaction, so a request is refused only when
the whole window is spent. Each ``used_i`` stays at most ``share_i`` (guarded adds; refunds only lower
it), so ``sum(used_i) <= sum(share_i) = limit``: exact, whichever shard a refund lands in.

The shares are blocks: shard ``i`` holds the ``i``-th ``BLOCK`` units of the limit (the last one the
rest), and past ``MAX_SHARDS`` blocks the limit is spread evenly over ``MAX_SHARDS`` shards. Every
shard's share only grows when the limit grows, so a limit raised in the middle of a window stays exact
(no shard ever holds more than its share), and a limit lowered in the middle of a window can never let
it pass the old limit (each shard holds at most its old share). A window whose limit fits one block is
one item, its own (shard 0), exactly as before sharding; shard ``i > 0`` is ``<pk>#s<i>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from quotagate.quota.windows import WindowUnit

if TYPE_CHECKING:
    import random

    from quotagate.quota.windows import WindowCharge

MAX_SHARDS = 256
# A shard's block: tens of typical requests (a typical request fits one shard).
BLOCK: dict[WindowUnit, int] = {
    WindowUnit.REQUESTS: 64,
    WindowUnit.TOKENS: 262_144,  # 64 requests of 4,096 tokens
    WindowUnit.USD: 16_000_000,  # $16 in micro-dollars
}


def shard_count(charge: WindowCharge) -> int:
    """How many items the charge's window is split into (1: not sharded; concurrency never is)."""
    block = BLOCK.get(charge.unit)
    if block is None or charge.limit <= block:
        return 1
    return min(MAX_SHARDS, -(-charge.limit // block))


def shard_share(charge: WindowCharge, shard: int) -> int:
    """Shard ``shard``'s part of the window's limit (the shares add up to the limit, and each one is
    non-decreasing in the limit)."""
    block = BLOCK.get(charge.unit)
    if block is None or charge.limit <= block:
        return charge.limit if shard == 0 else 0
    if charge.limit >= MAX_SHARDS * block:
        base, extra = divmod(charge.limit, MAX_SHARDS)
        return base + (1 if shard < extra else 0)
    return max(0, min(block, charge.limit - shard * block))


def random_shard(charge: WindowCharge, rng: random.Random) -> int:
    """A shard drawn in proportion to its share (so the partial last block is drawn less often)."""
    count = shard_count(charge)
    if count == 1:
        return 0
    block = BLOCK[charge.unit]
    if charge.limit >= MAX_SHARDS * block:
        return rng.randrange(count)
    return rng.randrange(charge.limit) // block


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
