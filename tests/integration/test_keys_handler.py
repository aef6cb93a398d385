"""The keys Lambda handler on moto's DynamoDB: round trips, idempotent retries, and refusals that
change nothing."""

from __future__ import annotations

import io
import json
import logging
import time
from typing import Any

import boto3
import pytest
from moto import mock_aws

from functions.keys import handler
from quotagate import apikeys, aws, config, key_derivation, settings, tables
from quotagate.dal.keys_store import DynamoKeyStore
from tests.helpers import FakeLambdaContext

CTX = FakeLambdaContext("quotagate-keys")


@pytest.fixture
def dynamodb(monkeypatch):
    for name in (
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "POWERTOOLS_IDEMPOTENCY_DISABLED",
        settings.KEYS_TABLE,
        settings.IDEMPOTENCY_TABLE,
        settings.CONFIG_PARAMETER,
        settings.CONFIG_FILE,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    config.reset_cache()
    handler.reset()
    aws.secrets_provider.cache_clear()  # a provider cached by an earlier test may point at a stopped moto server
    with mock_aws():
        client = boto3.client("dynamodb")
        tables.create_all(client)
        key_derivation.create_local_secret(boto3.client("secretsmanager"))
        yield client
    handler.reset()
    config.reset_cache()


def scan(client: Any, spec: tables.TableSpec) -> list[dict[str, Any]]:
    items = client.scan(TableName=spec.name(), ConsistentRead=True)["Items"]
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True))


def snapshot(client: Any) -> dict[str, list[dict[str, Any]]]:
    return {spec.name(): scan(client, spec) for spec in (tables.KEYS, tables.IDEMPOTENCY)}


def call(event: Any, context: Any = CTX) -> dict[str, Any]:
    response = handler.lambda_handler(event, context)
    json.dumps(response)  # what Lambda returns must be JSON
    return response


def ok(event: Any) -> dict[str, Any]:
    response = call(event)
    assert response["ok"] is True, response
    assert set(response) == {"ok", "result"}
    return response["result"]


def create_event(request_id: str | None = "req-create-1", **fields: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"action": "create_key", "tenant": "acme", "consumer": "backend", "plan": "free"}
    event.update(fields)
    if request_id is not None:
        event["request_id"] = request_id
    return event


def stored_strings(client: Any) -> set[str]:
    """Every hash stored in the keys table."""
    found = set()
    for item in scan(client, tables.KEYS):
        for attribute in ("secret_hash", "previous_secret_hash"):
            if attribute in item:
                found.add(item[attribute]["S"])
    return found


# --------------------------------------------------------------------------------------- round trip


def test_round_trip_on_the_real_store(dynamodb):
    expires_at = int(time.time()) + 86400
    created = ok(
        create_event(
            name="CI",
            expires_at=expires_at,
            allowed_models=["gpt-4o-mini"],
            metadata={"customer": "c-1", "weight": 0.25},
            limits={"tokens_per_day": 1000, "usd_per_day": 0.75},
        )
    )
    key_id = created["key_id"]
    plaintext = created["api_key"]
    assert apikeys.parse_key(plaintext).key_id == key_id
    assert created["limits"] == {"tokens_per_day": 1000, "usd_per_day": 0.75}

    store = DynamoKeyStore()
    record = store.get(key_id)
    assert apikeys.hashes_match(record.secret_hash, plaintext)
    assert record.metadata == {"customer": "c-1", "weight": 0.25} and record.expires_at == expires_at
    assert plaintext not in json.dumps(scan(dynamodb, tables.KEYS))

    got = ok({"action": "get_key", "key_id": key_id, "tenant": "acme"})
    assert "api_key" not in got
    assert got == {k: v for k, v in created.items() if k != "api_key"}

    other = ok(create_event(request_id=None, consumer="mobile"))
    listed = ok({"action": "list_keys", "tenant": "acme"})["keys"]
    assert {k["key_id"] for k in listed} == {key_id, other["key_id"]}
    mobile = ok({"action": "list_keys", "tenant": "acme", "consumer": "mobile"})["keys"]
    assert [k["key_id"] for k in mobile] == [other["key_id"]]

    updated = ok(
        {
            "action": "update_key",
            "request_id": "req-update-1",
            "key_id": key_id,
            "plan": "pro",
            "allowed_models": None,
            "limits": {"tokens_per_day": None, "tokens_per_minute": 500},
            "status": "disabled",
        }
    )
    assert (updated["plan"], updated["status"], updated["allowed_models"]) == ("pro", "disabled", None)
    assert updated["limits"] == {"usd_per_day": 0.75, "tokens_per_minute": 500}
    assert store.get(key_id).limits == updated["limits"]

    rotated = ok({"action": "rotate_key", "request_id": "req-rot-1", "key_id": key_id, "grace_seconds": 120})
    assert rotated["key_id"] == key_id and rotated["api_key"] != plaintext
    record = store.get(key_id)
    assert apikeys.hashes_match(record.secret_hash, rotated["api_key"])
    assert apikeys.hashes_match(record.previous_secret_hash, plaintext)
    assert record.previous_valid_until == rotated["rotation_grace_until"]
    assert 0 < record.previous_valid_until - time.time() <= 121

    revoked = ok({"action": "revoke_key", "request_id": "req-revoke-1", "key_id": key_id})
    assert revoked["status"] == "revoked" and revoked["rotation_grace_until"] is None
    refused = call({"action": "update_key", "request_id": "req-upd-2", "key_id": key_id, "status": "active"})
    assert refused == {"ok": False, "error": {"code": "conflict", "message": refused["error"]["message"]}}
    assert store.get(key_id).status == "revoked"

    # No view ever carried a hash.
    hashes = stored_strings(dynamodb)
    for view in (created, got, *listed, updated, rotated, revoked):
        assert not {"secret_hash", "previous_secret_hash"} & set(view)
        assert not hashes & {str(v) for v in view.values()}


# -------------------------------------------------------------------------------------- idempotency


def test_a_retried_create_returns_the_same_key_and_creates_one_item(dynamodb):
    first = call(create_event(request_id="retry-me"))
    second = call(create_event(request_id="retry-me"))
    assert first["ok"] and second == first
    assert second["result"]["api_key"] == first["result"]["api_key"]
    assert len(scan(dynamodb, tables.KEYS)) == 1
    [record] = scan(dynamodb, tables.IDEMPOTENCY)
    assert record["status"]["S"] == "COMPLETED"
    # The record holds the plaintext key: it must expire soon (10 minutes).
    assert int(record["expiration"]["N"]) - time.time() <= handler.IDEMPOTENCY_EXPIRY_SECONDS + 5
    assert handler.IDEMPOTENCY_EXPIRY_SECONDS <= 600


def test_the_same_request_id_with_another_payload_is_refused(dynamodb):
    first = ok(create_event(request_id="once"))
    before = snapshot(dynamodb)
    response = call(create_event(request_id="once", plan="pro"))
    assert response["ok"] is False and response["error"]["code"] == "conflict"
    assert snapshot(dynamodb) == before
    assert first["api_key"] not in json.dumps(response)


def test_request_ids_are_scoped_by_action(dynamodb):
    created = ok(create_event(request_id="shared"))
    revoked = ok({"action": "revoke_key", "request_id": "shared", "key_id": created["key_id"]})
    assert revoked["status"] == "revoked"


def test_without_a_request_id_every_create_is_new(dynamodb):
    first = ok(create_event(request_id=None))
    second = ok(create_event(request_id=None))
    assert first["key_id"] != second["key_id"]
    assert len(scan(dynamodb, tables.KEYS)) == 2
    assert scan(dynamodb, tables.IDEMPOTENCY) == []


def test_a_retried_rotate_returns_the_same_new_key_and_rotates_once(dynamodb):
    created = ok(create_event())
    event = {"action": "rotate_key", "request_id": "rot-1", "key_id": created["key_id"]}
    first = ok(event)
    second = ok(dict(event))
    assert second == first
    record = DynamoKeyStore().get(created["key_id"])
    assert record.version == created["version"] + 1
    assert apikeys.hashes_match(record.previous_secret_hash, created["api_key"])


def test_read_actions_record_nothing(dynamodb):
    created = ok(create_event(request_id=None))
    ok({"action": "get_key", "key_id": created["key_id"], "request_id": "read-1"})
    ok({"action": "list_keys", "tenant": "acme", "request_id": "read-2"})
    assert scan(dynamodb, tables.IDEMPOTENCY) == []


@pytest.mark.filterwarnings("ignore:Couldn't determine the remaining time left")
def test_works_without_a_lambda_context(dynamodb):
    response = call(create_event(request_id="no-context"), context=None)
    assert response["ok"] is True


# ----------------------------------------------------------------------------------------- refusals

EXISTING = "<existing key id>"
MISSING = "abcdefghijkl"

BAD_EVENTS: list[tuple[Any, str]] = [
    ({"action": "drop_table", "request_id": "bad-1"}, "unknown_action"),
    ({"request_id": "bad-1", "tenant": "acme"}, "unknown_action"),
    ({"action": None}, "unknown_action"),
    ([], "invalid_request"),
    ("create_key", "invalid_request"),
    (None, "invalid_request"),
    (42, "invalid_request"),
    (create_event(tenant=""), "invalid_request"),
    (create_event(tenant="a b"), "invalid_request"),
    (create_event(consumer=None), "invalid_request"),
    (create_event(plan="gold"), "unknown_plan"),
    (create_event(plan=7), "invalid_request"),
    (create_event(expires_at=1), "invalid_request"),
    (create_event(expires_at="yesterday"), "invalid_request"),
    (create_event(allowed_models="gpt-4o"), "invalid_request"),
    (create_event(metadata={"blob": "x" * 5000}), "invalid_request"),
    (create_event(limits={"tokens_per_day": -1}), "invalid_request"),
    (create_event(limits={"bananas": 1}), "invalid_request"),
    # Counts are whole numbers: a fractional request, token or concurrency limit is refused.
    (create_event(limits={"requests_per_minute": 2.5}), "invalid_request"),
    (create_event(limits={"max_concurrent_requests": 0.5}), "invalid_request"),
    (create_event(secret_hash="00"), "invalid_request"),
    (create_event(request_id=""), "invalid_request"),
    (create_event(request_id="x" * 129), "invalid_request"),
    (create_event(request_id=12345), "invalid_request"),
    (create_event(request_id="id\n"), "invalid_request"),
    ({"action": "create_key", "request_id": "bad-2", "tenant": "acme"}, "invalid_request"),
    ({"action": "list_keys", "request_id": "bad-3"}, "invalid_request"),
    ({"action": "get_key", "key_id": "qg_not_an_id"}, "invalid_request"),
    ({"action": "get_key", "key_id": MISSING}, "not_found"),
    ({"action": "get_key", "key_id": EXISTING, "tenant": "globex"}, "not_found"),
    ({"action": "revoke_key", "request_id": "bad-4", "key_id": MISSING}, "not_found"),
    ({"action": "revoke_key", "request_id": "bad-5", "key_id": EXISTING, "tenant": "globex"}, "not_found"),
    ({"action": "rotate_key", "request_id": "bad-6", "key_id": MISSING}, "not_found"),
    ({"action": "rotate_key", "request_id": "bad-7", "key_id": EXISTING, "grace_seconds": 10**9}, "invalid_request"),
    ({"action": "update_key", "request_id": "bad-8", "key_id": MISSING, "plan": "pro"}, "not_found"),
    ({"action": "update_key", "request_id": "bad-9", "key_id": EXISTING}, "invalid_request"),
    ({"action": "update_key", "request_id": "bad-10", "key_id": EXISTING, "status": "revoked"}, "invalid_request"),
    ({"action": "update_key", "request_id": "bad-11", "key_id": EXISTING, "plan": "gold"}, "unknown_plan"),
    ({"action": "update_key", "request_id": "bad-12", "key_id": EXISTING, "limits": 5}, "invalid_request"),
]


@pytest.mark.parametrize(("event", "code"), BAD_EVENTS)
def test_bad_events_get_a_structured_error_and_change_nothing(dynamodb, event, code):
    existing = ok(create_event(request_id="setup"))
    if isinstance(event, dict) and event.get("key_id") == EXISTING:
        event = {**event, "key_id": existing["key_id"]}
    before = snapshot(dynamodb)
    response = call(event)
    assert response["ok"] is False
    assert set(response) == {"ok", "error"}
    assert response["error"]["code"] == code
    assert isinstance(response["error"]["message"], str) and response["error"]["message"]
    assert snapshot(dynamodb) == before


def test_a_revoked_key_stays_revoked_and_the_refusal_changes_nothing(dynamodb):
    created = ok(create_event())
    ok({"action": "revoke_key", "request_id": "rv", "key_id": created["key_id"]})
    before = snapshot(dynamodb)
    for event in (
        {"action": "update_key", "request_id": "re-1", "key_id": created["key_id"], "status": "active"},
        {"action": "rotate_key", "request_id": "re-2", "key_id": created["key_id"]},
    ):
        assert call(event)["error"]["code"] == "conflict"
    assert snapshot(dynamodb) == before


def test_a_failing_store_is_an_error_response_not_an_exception(dynamodb):
    dynamodb.delete_table(TableName=tables.KEYS.name())
    response = call({"action": "list_keys", "tenant": "acme"})
    assert response["ok"] is False and set(response["error"]) == {"code", "message"}
    assert response["error"]["code"] == "internal_error"
    response = call(create_event(request_id="fails"))
    assert response["ok"] is False and response["error"]["code"] == "internal_error"
    # The failed request left no idempotency record behind: a retry runs again.
    assert scan(dynamodb, tables.IDEMPOTENCY) == []


@pytest.fixture
def captured_logs():
    """Everything the handler's Powertools logger writes, formatted as in Lambda."""
    stream = io.StringIO()
    extra = logging.StreamHandler(stream)
    extra.setFormatter(handler.logger.registered_formatter)
    previous_level = handler.logger.log_level
    handler.logger.setLevel("INFO")  # tests/conftest.py sets WARNING
    handler.logger.addHandler(extra)
    yield stream
    handler.logger.removeHandler(extra)
    handler.logger.setLevel(previous_level)


def test_logs_carry_no_key_and_no_hash(dynamodb, captured_logs):
    created = ok(create_event(metadata={"note": "hello"}))
    rotated = ok({"action": "rotate_key", "request_id": "log-rot", "key_id": created["key_id"]})
    call(create_event(plan="gold"))
    call(create_event(request_id="log-other", consumer="bad consumer"))
    hashes = stored_strings(dynamodb)
    assert len(hashes) == 2
    dynamodb.delete_table(TableName=tables.KEYS.name())
    call({"action": "rotate_key", "request_id": "log-fail", "key_id": created["key_id"]})  # logs a traceback
    logs = captured_logs.getvalue()
    assert "keys request failed" in logs and "keys request refused" in logs
    assert created["key_id"] in logs  # it does log (key ids are not secret)...
    for secret in (created["api_key"], rotated["api_key"], *hashes):
        assert secret not in logs  # ...but never a key or a hash
