"""A conflict-faithful DynamoDB for tests and benchmarks: :class:`ConflictFaithfulClient` applies
DynamoDB's transaction conflicts, per-item write capacity, latencies and client-token idempotency
(:class:`ConflictRules`, defined once) in front of moto's client or of :class:`InMemoryDynamo`."""

from quotagate_tools.faithful.conflicts import ConflictFaithfulClient, ConflictRules
from quotagate_tools.faithful.memory import InMemoryDynamo

__all__ = ["ConflictFaithfulClient", "ConflictRules", "InMemoryDynamo"]
