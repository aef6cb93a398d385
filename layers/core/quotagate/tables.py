"""DynamoDB table definitions, written once: the CDK stack and local mode both build from these."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quotagate import settings


@dataclass(frozen=True)
class Index:
    name: str
    partition_key: str
    sort_key: str | None = None


@dataclass(frozen=True)
class TableSpec:
    logical_id: str  # CDK construct id
    env_var: str  # environment variable that carries the physical name
    local_name: str  # name used by local mode and tests
    partition_key: str
    sort_key: str | None = None
    ttl_attribute: str | None = None
    indexes: tuple[Index, ...] = field(default_factory=tuple)

    def name(self) -> str:
        return settings.table_name(self.env_var, self.local_name)


KEYS = TableSpec(
    logical_id="KeysTable",
    env_var=settings.KEYS_TABLE,
    local_name="quotagate-keys",
    partition_key="key_id",
    indexes=(Index("by_tenant", "tenant", "key_id"),),
)
# Quota windows and per-request reservations; every item expires (TTL is clean-up only).
QUOTA = TableSpec(
    logical_id="QuotaTable",
    env_var=settings.QUOTA_TABLE,
    local_name="quotagate-quota",
    partition_key="pk",
    sort_key="sk",
    ttl_attribute="expires_at",
)
# Powertools idempotency records for the keys function.
IDEMPOTENCY = TableSpec(
    logical_id="IdempotencyTable",
    env_var=settings.IDEMPOTENCY_TABLE,
    local_name="quotagate-idempotency",
    partition_key="id",
    ttl_attribute="expiration",
)

# Circuit-breaker state per upstream target, shared by every proxy container (TTL is clean-up only:
# a missing item is a closed circuit).
CIRCUIT = TableSpec(
    logical_id="CircuitTable",
    env_var=settings.CIRCUIT_TABLE,
    local_name="quotagate-circuits",
    partition_key="target",
    ttl_attribute="expires_at",
)

ALL_TABLES: tuple[TableSpec, ...] = (KEYS, QUOTA, IDEMPOTENCY, CIRCUIT)


def create_table_request(spec: TableSpec) -> dict[str, Any]:
    """Arguments for ``dynamodb.create_table`` (local mode and tests); mirrors the CDK definition."""
    attributes = {spec.partition_key}
    schema = [{"AttributeName": spec.partition_key, "KeyType": "HASH"}]
    if spec.sort_key:
        attributes.add(spec.sort_key)
        schema.append({"AttributeName": spec.sort_key, "KeyType": "RANGE"})
    gsis = []
    for index in spec.indexes:
        attributes.add(index.partition_key)
        index_schema = [{"AttributeName": index.partition_key, "KeyType": "HASH"}]
        if index.sort_key:
            attributes.add(index.sort_key)
            index_schema.append({"AttributeName": index.sort_key, "KeyType": "RANGE"})
        gsis.append({"IndexName": index.name, "KeySchema": index_schema, "Projection": {"ProjectionType": "ALL"}})
    request: dict[str, Any] = {
        "TableName": spec.name(),
        "KeySchema": schema,
        "AttributeDefinitions": [{"AttributeName": a, "AttributeType": "S"} for a in sorted(attributes)],
        "BillingMode": "PAY_PER_REQUEST",
    }
    if gsis:
        request["GlobalSecondaryIndexes"] = gsis
    return request


def create_all(dynamodb_client: Any) -> None:
    """Create every table (and its TTL setting) if missing. Used by local mode and tests."""
    existing = set(dynamodb_client.list_tables().get("TableNames", []))
    for spec in ALL_TABLES:
        if spec.name() in existing:
            continue
        dynamodb_client.create_table(**create_table_request(spec))
        if spec.ttl_attribute:
            dynamodb_client.update_time_to_live(
                TableName=spec.name(),
                TimeToLiveSpecification={"Enabled": True, "AttributeName": spec.ttl_attribute},
            )
