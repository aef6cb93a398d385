"""Quota-store calls from the event loop: in a worker thread when the store waits on I/O (the
DynamoDB ledger: boto3 blocks), on the loop itself when it waits on nothing (the in-memory ledger).
A thread hand-off costs more than such a call: about 0.15 ms of CPU and two context switches
(``bench/overhead.py``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar, TypeVarTuple, Unpack

from anyio import to_thread

if TYPE_CHECKING:
    from collections.abc import Callable

    from quotagate.logic.request_types import Quota

T = TypeVar("T")
Args = TypeVarTuple("Args")


async def quota_call(quota: Quota, call: Callable[[Unpack[Args]], T], *args: *Args) -> T:
    """``call(*args)``, one of ``quota``'s blocking methods, without holding the event loop on I/O."""
    if not quota.blocking:
        return call(*args)
    return await to_thread.run_sync(call, *args)
