"""The durable retry path for settlements the ledger could not write in time.

A settlement (or the zero-usage compensation of a reservation whose outcome is unknown) that still
fails after the ledger's bounded retries is not dropped: it becomes a :class:`PendingSettlement`
message on a queue (SQS in the cloud, with a dead-letter queue; drained by the settlements Lambda,
``functions/settlements``; in memory for tests and local mode). Applying it later is exactly-once
because the ledger's settle flips the reservation's status from ``reserved`` in the same
transaction as the window deltas: a second delivery, or a settlement whose first write did commit,
finds the status already flipped and changes nothing.
"""

from __future__ import annotations

import json
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from quotagate.quota.windows import WindowCharge, WindowScope

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from quotagate.quota.ledger import QuotaLedger

MESSAGE_VERSION = 1
SettlementKind = Literal["settle", "compensate"]


@dataclass(frozen=True)
class PendingSettlement:
    request_id: str
    adjustments: tuple[tuple[WindowCharge, int], ...]
    usage: Mapping[str, int] = field(default_factory=dict)
    kind: SettlementKind = "settle"
    record: Mapping[str, Any] | None = None  # the completed usage record (quotagate.usage.record)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": MESSAGE_VERSION,
                "kind": self.kind,
                "request_id": self.request_id,
                "adjustments": [{"charge": asdict(c), "delta": d} for c, d in self.adjustments],
                "usage": dict(self.usage),
                **({"record": dict(self.record)} if self.record is not None else {}),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> PendingSettlement:
        data = json.loads(text)
        if data.get("version") != MESSAGE_VERSION:
            raise ValueError(f"unknown settlement message version {data.get('version')!r}")
        kind = data["kind"]
        if kind not in ("settle", "compensate"):
            raise ValueError(f"unknown settlement kind {kind!r}")
        return cls(
            request_id=str(data["request_id"]),
            adjustments=tuple(
                (WindowCharge(**{**a["charge"], "scope": WindowScope(a["charge"]["scope"])}), int(a["delta"]))
                for a in data["adjustments"]
            ),
            usage={str(k): int(v) for k, v in data.get("usage", {}).items()},
            kind=kind,
            record=data.get("record"),
        )

    def apply(self, ledger: QuotaLedger) -> bool:
        """Settle through the ledger (exactly once: False if it was already settled or expired).
        Raises LedgerBusy while the store still fails (the message is then delivered again)."""
        compensating = self.kind == "compensate"
        if self.record is not None:
            return ledger.settle(
                self.request_id, list(self.adjustments), self.usage, record=self.record, compensating=compensating
            )
        if compensating:
            return ledger.settle(self.request_id, list(self.adjustments), self.usage, compensating=True)
        return ledger.settle(self.request_id, list(self.adjustments), self.usage)


def compensation(
    request_id: str, charges: Sequence[WindowCharge], record: Mapping[str, Any] | None = None
) -> PendingSettlement:
    """The zero-usage settlement of a reservation that may or may not have committed: a no-op if
    it never did, a full refund (and released concurrency slots) if it did. ``record``: the usage
    record to leave on the item (zero usage), if the reservation carried one."""
    return PendingSettlement(request_id, tuple((c, -c.amount) for c in charges), {}, "compensate", record)


class SettlementQueue(Protocol):
    def put(self, pending: PendingSettlement) -> None:
        """Store durably for a later exactly-once application; raises if it cannot."""
        ...


class InMemorySettlementQueue:
    """For tests and local mode: ``drain`` applies what is queued (failures stay queued)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.messages: list[str] = []

    def put(self, pending: PendingSettlement) -> None:
        with self._lock:
            self.messages.append(pending.to_json())

    def drain(self, ledger: QuotaLedger) -> int:
        """Apply every queued settlement once; returns how many were applied (or already were)."""
        with self._lock:
            batch, self.messages = self.messages, []
        done = 0
        for index, message in enumerate(batch):
            try:
                PendingSettlement.from_json(message).apply(ledger)
            except Exception:
                with self._lock:
                    self.messages[:0] = batch[index:]
                raise
            done += 1
        return done


class SqsSettlementQueue:
    """An SQS queue (``QG_SETTLEMENT_QUEUE_URL``) with a dead-letter queue behind it."""

    def __init__(self, client: Any, queue_url: str) -> None:
        self._client = client
        self.queue_url = queue_url

    def put(self, pending: PendingSettlement) -> None:
        self._client.send_message(QueueUrl=self.queue_url, MessageBody=pending.to_json())
