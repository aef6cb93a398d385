"""No plaintext API key is ever written anywhere: after create_key, rotate_key and their idempotent
replays, no table holds the key (nor its secret part), and every replay returns the same key."""

from __future__ import annotations

import json
from typing import Any

import pytest

from functions.keys import handler
from quotagate import apikeys, tables
from tests.integration.test_keys_handler import CTX, dynamodb  # noqa: F401  (the fixture)


@pytest.fixture
def stores(dynamodb):  # noqa: F811  (it also creates the local key derivation secret)
    return dynamodb


def _ok(event: dict[str, Any]) -> dict[str, Any]:
    response = handler.lambda_handler(event, CTX)
    assert response["ok"] is True, response
    return response["result"]


def _everything_stored(client: Any) -> str:
    """Every item of every table, as text."""
    dumps = []
    for name in client.list_tables()["TableNames"]:
        dumps.append(json.dumps(client.scan(TableName=name, ConsistentRead=True)["Items"], sort_keys=True))
    return "\n".join(dumps)


def _assert_not_stored(client: Any, api_key: str) -> None:
    stored = _everything_stored(client)
    secret_part = apikeys.parse_key(api_key).plaintext.split("_")[-1]
    assert api_key not in stored
    assert secret_part[: apikeys.SECRET_LENGTH] not in stored


def test_create_rotate_and_replays_store_no_plaintext(stores):
    create = {"action": "create_key", "request_id": "req-c-1", "tenant": "acme", "consumer": "u", "plan": "free"}
    created = _ok(create)
    key = created["api_key"]
    _assert_not_stored(stores, key)
    replay = _ok(create)
    assert replay == created  # the same key id and the same plaintext
    _assert_not_stored(stores, key)
    assert apikeys.hashes_match(tables_record(stores, created["key_id"])["secret_hash"]["S"], key)

    rotate = {"action": "rotate_key", "request_id": "req-r-1", "key_id": created["key_id"], "grace_seconds": 60}
    rotated = _ok(rotate)
    new_key = rotated["api_key"]
    assert new_key != key
    assert _ok(rotate) == rotated
    for plaintext in (key, new_key):
        _assert_not_stored(stores, plaintext)
    assert apikeys.hashes_match(tables_record(stores, created["key_id"])["secret_hash"]["S"], new_key)

    # The idempotency table does hold records of these requests (so the replays above were replays).
    idempotency = stores.scan(TableName=tables.IDEMPOTENCY.name())["Items"]
    assert len(idempotency) == 2


def test_a_second_rotation_with_another_request_id_issues_another_key(stores):
    created = _ok({"action": "create_key", "request_id": "c", "tenant": "acme", "consumer": "u", "plan": "free"})
    first = _ok({"action": "rotate_key", "request_id": "r1", "key_id": created["key_id"]})["api_key"]
    second = _ok({"action": "rotate_key", "request_id": "r2", "key_id": created["key_id"]})["api_key"]
    assert len({created["api_key"], first, second}) == 3


def test_requests_without_request_id_are_random_and_not_recorded(stores):
    event = {"action": "create_key", "tenant": "acme", "consumer": "u", "plan": "free"}
    assert _ok(event)["api_key"] != _ok(event)["api_key"]
    assert stores.scan(TableName=tables.IDEMPOTENCY.name())["Items"] == []


def tables_record(client: Any, key_id: str) -> dict[str, Any]:
    return client.get_item(TableName=tables.KEYS.name(), Key={"key_id": {"S": key_id}}, ConsistentRead=True)["Item"]
