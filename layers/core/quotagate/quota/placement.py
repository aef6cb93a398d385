"""Where one ledger call's amounts land among a window's shards (``quota.shards``).

A :class:`Placement` holds, per ``(charge, amount)``, the parts ``(shard, n)`` of the current
attempt. A window with one shard always has the single part ``(0, amount)`` (its own item, as
before sharding). For a sharded window a fresh placement is one random shard whose share can hold
the amount; after a conflict on it, :meth:`repick` draws another; after its guard failed,
:meth:`rebalance` reads every shard (one strongly consistent read) and takes the amount from
several, or reports the window short with its exact ``used`` as of that read.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from quotagate.quota.shards import random_shard, shard_count, shard_share, split
from quotagate.quota.windows import WindowUsage

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from quotagate.quota.windows import WindowCharge

Part = tuple[int, int]  # (shard, units)
_RNG = random.Random()  # spreads load over shards; not a secret


class Placement:
    def __init__(
        self,
        items: Sequence[tuple[WindowCharge, int]],
        read_shards: Callable[[WindowCharge], list[int]],
        guarded: bool,
        rng: random.Random | None = None,
    ) -> None:
        """``read_shards(charge)``: ``used`` of each of the charge's shards (0 when absent).
        ``guarded``: the parts must fit their shard's share (reservations, top-ups); refunds and
        overruns of a settlement go to any shard."""
        self.items = list(items)
        self._read_shards = read_shards
        self._guarded = guarded
        self._rng = rng or _RNG
        self.parts: list[list[Part]] = [[] for _ in self.items]
        self.short: dict[int, WindowUsage] = {}
        self.version = 0  # changes whenever a part moves (the next attempt is a new request)
        for index in range(len(self.items)):
            self.repick(index)

    def sharded(self, index: int) -> bool:
        return shard_count(self.items[index][0]) > 1

    def repick(self, index: int) -> None:
        """A fresh single-shard placement of item ``index`` (reads the shards if none can hold it)."""
        charge, amount = self.items[index]
        count = shard_count(charge)
        self.version += 1
        if count == 1:
            self.parts[index] = [(0, amount)]
            return
        shard = random_shard(charge, self._rng)
        if not self._guarded or amount <= shard_share(charge, shard):
            self.parts[index] = [(shard, amount)]
            return
        self.rebalance(index)

    def rebalance(self, index: int) -> None:
        """Take item ``index``'s amount from the shards that have room now; when all of them
        together have less, record the window in ``short`` (exact ``used`` as of the read)."""
        charge, amount = self.items[index]
        self.version += 1
        used = self._read_shards(charge)
        rooms = [(shard, shard_share(charge, shard) - u) for shard, u in enumerate(used)]
        parts = split(amount, rooms)
        if parts is None:
            self.short[index] = WindowUsage(charge, sum(used))
            self.parts[index] = []
            return
        self.parts[index] = parts or [(self._rng.randrange(len(used)), 0)]

    def actions(self) -> list[tuple[int, WindowCharge, int, int]]:
        """``(item index, charge, shard, units)`` per part, in a stable order."""
        return [
            (index, self.items[index][0], shard, units)
            for index in range(len(self.items))
            for shard, units in self.parts[index]
        ]

    @staticmethod
    def guard(charge: WindowCharge, shard: int, units: int) -> int:
        """The condition operand of a guarded part: it fits iff ``used <= share - units``."""
        return shard_share(charge, shard) - units
