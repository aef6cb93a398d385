"""KeysService with the in-memory store and a fake clock: every action, every refusal."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from typing import Any

import pytest

from quotagate import apikeys
from quotagate.config_models import parse_config
from quotagate.dal.exceptions import KeyVersionConflict
from quotagate.dal.keys_store import InMemoryKeyStore, KeyRecord
from quotagate.logic.exceptions import KeysError
from quotagate.logic.keys_models import DEFAULT_GRACE_SECONDS, MAX_GRACE_SECONDS
from quotagate.logic.keys_service import (
    ACTIONS,
    MUTATING_ACTIONS,
    KeysService,
)
from tests.helpers import FakeClock

NOW = 1_800_000_000  # 2027-01-15


CONFIG = parse_config(
    {
        "default_plan": "free",
        "providers": {"mock": {"type": "openai", "base_url": "http://127.0.0.1:1/v1"}},
        "models": {"small": {"provider": "mock"}, "large": {"provider": "mock"}},
        "plans": {
            "free": {"limits": {"requests_per_minute": 10, "tokens_per_day": 1000}, "models": ["small"]},
            "pro": {"limits": {"requests_per_minute": 100}, "models": "*"},
        },
    }
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def store() -> InMemoryKeyStore:
    return InMemoryKeyStore()


@pytest.fixture
def service(store: InMemoryKeyStore, clock: FakeClock) -> KeysService:
    return KeysService(store, config_loader=lambda: CONFIG, clock=clock)


def snapshot(store: InMemoryKeyStore) -> dict[str, dict[str, Any]]:
    return {key_id: asdict(record) for key_id, record in store._items.items()}


def create(service: KeysService, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {"tenant": "acme", "consumer": "backend", "plan": "free"}
    fields.update(overrides)
    return service.create_key(**fields)


def all_strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *all_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in all_strings(v)]
    return []


# ------------------------------------------------------------------------------------------- create


def test_create_returns_plaintext_once_and_stores_only_its_hash(service, store):
    result = create(service, name="CI key")
    parsed = apikeys.parse_key(result["api_key"])
    assert parsed is not None and parsed.key_id == result["key_id"]
    record = store.get(result["key_id"])
    assert record is not None
    assert apikeys.hashes_match(record.secret_hash, result["api_key"])
    assert result["api_key"] not in json.dumps(asdict(record))
    assert "secret_hash" not in result and "previous_secret_hash" not in result
    assert record.secret_hash not in all_strings(result)
    assert result["tenant"] == "acme" and result["consumer"] == "backend" and result["plan"] == "free"
    assert result["status"] == "active" and result["name"] == "CI key"
    assert result["created_at"] == NOW and result["updated_at"] == NOW
    assert result["expires_at"] is None and result["allowed_models"] is None
    assert result["metadata"] == {} and result["limits"] == {}
    assert result["rotation_grace_until"] is None
    # Later reads never show the plaintext again.
    assert "api_key" not in service.get_key(result["key_id"])


def test_create_with_every_optional_field(service, store):
    result = create(
        service,
        plan="pro",
        expires_at=NOW + 86400,
        allowed_models=["small", "large", "small"],
        metadata={"customer": "c-42", "tags": ["a", "b"], "seats": 3, "ratio": 0.5},
        limits={"tokens_per_day": 1000, "usd_per_day": 2.5, "requests_per_minute": None},
    )
    record = store.get(result["key_id"])
    assert record.expires_at == NOW + 86400
    assert record.allowed_models == ["small", "large"]  # de-duplicated, order kept
    assert record.metadata == {"customer": "c-42", "tags": ["a", "b"], "seats": 3, "ratio": 0.5}
    assert record.limits == {"tokens_per_day": 1000, "usd_per_day": 2.5}
    assert result["limits"] == record.limits and result["plan"] == "pro"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2027-06-01T00:00:00Z", 1811808000),
        ("2027-06-01T02:00:00+02:00", 1811808000),
        ("2027-06-01T00:00:00", 1811808000),  # no offset: UTC
        ("2027-06-01", 1811808000),
    ],
)
def test_create_accepts_iso_8601_expiry(service, text, expected):
    assert create(service, expires_at=text)["expires_at"] == expected


def test_metadata_is_copied_not_shared(service, store):
    metadata = {"nested": {"a": 1}}
    result = create(service, metadata=metadata)
    metadata["nested"]["a"] = 2
    assert store.get(result["key_id"]).metadata == {"nested": {"a": 1}}


BAD_CREATE_FIELDS: list[tuple[dict[str, Any], str]] = [
    ({"tenant": ""}, "invalid_request"),
    ({"tenant": None}, "invalid_request"),
    ({"tenant": 42}, "invalid_request"),
    ({"tenant": "a" * 129}, "invalid_request"),
    ({"tenant": "acme corp"}, "invalid_request"),
    ({"tenant": "-acme"}, "invalid_request"),
    ({"tenant": "acme\n"}, "invalid_request"),
    ({"consumer": ""}, "invalid_request"),
    ({"consumer": ["x"]}, "invalid_request"),
    ({"plan": "gold"}, "unknown_plan"),
    ({"plan": ""}, "invalid_request"),
    ({"plan": 1}, "invalid_request"),
    ({"plan": None}, "invalid_request"),
    ({"name": ""}, "invalid_request"),
    ({"name": 5}, "invalid_request"),
    ({"name": "x" * 129}, "invalid_request"),
    ({"name": "bell\x07"}, "invalid_request"),
    ({"expires_at": NOW - 1}, "invalid_request"),
    ({"expires_at": NOW}, "invalid_request"),
    ({"expires_at": True}, "invalid_request"),
    ({"expires_at": float(NOW + 100)}, "invalid_request"),
    ({"expires_at": "tomorrow"}, "invalid_request"),
    ({"expires_at": "2020-01-01T00:00:00Z"}, "invalid_request"),
    ({"expires_at": "9999-12-31T00:00:00Z"}, "invalid_request"),
    ({"expires_at": 10**20}, "invalid_request"),
    ({"expires_at": ""}, "invalid_request"),
    ({"expires_at": {"at": 1}}, "invalid_request"),
    ({"allowed_models": "small"}, "invalid_request"),
    ({"allowed_models": []}, "invalid_request"),
    ({"allowed_models": ["small", 3]}, "invalid_request"),
    ({"allowed_models": [""]}, "invalid_request"),
    ({"allowed_models": ["m" * 129]}, "invalid_request"),
    ({"allowed_models": [f"m{i}" for i in range(65)]}, "invalid_request"),
    ({"metadata": "x"}, "invalid_request"),
    ({"metadata": ["x"]}, "invalid_request"),
    ({"metadata": {"k": "v" * 3000}}, "invalid_request"),
    ({"metadata": {f"k{i}": i for i in range(33)}}, "invalid_request"),
    ({"metadata": {"": 1}}, "invalid_request"),
    ({"metadata": {"k" * 65: 1}}, "invalid_request"),
    ({"metadata": {"n": float("nan")}}, "invalid_request"),
    ({"metadata": {"s": {1, 2}}}, "invalid_request"),
    ({"limits": {"tokens_per_year": 5}}, "invalid_request"),
    ({"limits": {"tokens_per_day": -1}}, "invalid_request"),
    ({"limits": {"tokens_per_day": "1000"}}, "invalid_request"),
    ({"limits": {"tokens_per_day": True}}, "invalid_request"),
    ({"limits": {"tokens_per_day": float("inf")}}, "invalid_request"),
    ({"limits": {"tokens_per_day": float("nan")}}, "invalid_request"),
    ({"limits": {"tokens_per_day": 1e16}}, "invalid_request"),
    ({"limits": [1]}, "invalid_request"),
]


@pytest.mark.parametrize(("fields", "code"), BAD_CREATE_FIELDS)
def test_create_refuses_bad_fields_and_changes_nothing(service, store, fields, code):
    create(service)  # something in the store to compare against
    before = snapshot(store)
    with pytest.raises(KeysError) as caught:
        create(service, **fields)
    assert caught.value.code == code
    assert caught.value.status == 400
    assert snapshot(store) == before


# ----------------------------------------------------------------------------------------- dispatch


def test_dispatch_runs_every_action(service, clock):
    created = service.dispatch(
        {"action": "create_key", "tenant": "acme", "consumer": "a", "plan": "free", "request_id": "r-1"}
    )
    key_id = created["key_id"]
    assert service.dispatch({"action": "get_key", "key_id": key_id})["key_id"] == key_id
    listed = service.dispatch({"action": "list_keys", "tenant": "acme"})["keys"]
    assert [k["key_id"] for k in listed] == [key_id]
    updated = service.dispatch({"action": "update_key", "key_id": key_id, "plan": "pro"})
    assert updated["plan"] == "pro"
    rotated = service.dispatch({"action": "rotate_key", "key_id": key_id, "grace_seconds": 60})
    assert rotated["rotation_grace_until"] == NOW + 60 and rotated["api_key"] != created["api_key"]
    assert service.dispatch({"action": "revoke_key", "key_id": key_id})["status"] == "revoked"
    assert set(ACTIONS) == {
        "create_key",
        "list_keys",
        "get_key",
        "revoke_key",
        "rotate_key",
        "update_key",
        "create_tenant",
        "get_tenant",
        "update_tenant",
        "get_usage",
    }
    mutating = {"create_key", "revoke_key", "rotate_key", "update_key", "create_tenant", "update_tenant"}
    assert mutating == MUTATING_ACTIONS


PLACEHOLDER_ID = "abcdefghijkl"  # replaced by a real key id in the test
CREATE = {"action": "create_key", "tenant": "acme", "consumer": "a", "plan": "free"}
GET = {"action": "get_key", "key_id": PLACEHOLDER_ID}
ROTATE = {"action": "rotate_key", "key_id": PLACEHOLDER_ID}
UPDATE = {"action": "update_key", "key_id": PLACEHOLDER_ID}

BAD_REQUESTS: list[tuple[Any, str]] = [
    ({"action": "delete_key", "key_id": PLACEHOLDER_ID}, "unknown_action"),
    ({"action": "", "tenant": "acme"}, "unknown_action"),
    ({"action": 7}, "unknown_action"),
    ({"tenant": "acme"}, "unknown_action"),
    ({"action": "x" * 500}, "unknown_action"),
    (["create_key"], "invalid_request"),
    ("create_key", "invalid_request"),
    (None, "invalid_request"),
    ({"action": "create_key", "tenant": "acme", "consumer": "a"}, "invalid_request"),  # no plan
    ({**CREATE, "color": "red"}, "invalid_request"),
    ({**CREATE, "status": "active"}, "invalid_request"),
    ({**CREATE, "key_id": PLACEHOLDER_ID}, "invalid_request"),
    ({**CREATE, "plan": "platinum"}, "unknown_plan"),
    ({"action": "list_keys"}, "invalid_request"),
    ({"action": "list_keys", "tenant": "acme", "consumer": ""}, "invalid_request"),
    ({"action": "list_keys", "tenant": "acme", "limit": 5}, "invalid_request"),
    ({"action": "get_key"}, "invalid_request"),
    ({**GET, "key_id": "short"}, "invalid_request"),
    ({**GET, "key_id": "ABCDEFGHIJKL"}, "invalid_request"),
    ({**GET, "key_id": 123456789012}, "invalid_request"),
    ({**GET, "key_id": "abcdefghijkl\n"}, "invalid_request"),
    ({**GET, "tenant": ""}, "invalid_request"),
    ({"action": "revoke_key"}, "invalid_request"),
    ({"action": "revoke_key", "key_id": PLACEHOLDER_ID, "reason": "x"}, "invalid_request"),
    ({**ROTATE, "grace_seconds": -1}, "invalid_request"),
    ({**ROTATE, "grace_seconds": MAX_GRACE_SECONDS + 1}, "invalid_request"),
    ({**ROTATE, "grace_seconds": "60"}, "invalid_request"),
    ({**ROTATE, "grace_seconds": 1.5}, "invalid_request"),
    ({**ROTATE, "grace_seconds": True}, "invalid_request"),
    (UPDATE, "invalid_request"),  # nothing to update
    ({**UPDATE, "plan": "gold"}, "unknown_plan"),
    ({**UPDATE, "plan": None}, "invalid_request"),
    ({**UPDATE, "status": "revoked"}, "invalid_request"),
    ({**UPDATE, "status": "paused"}, "invalid_request"),
    ({**UPDATE, "status": None}, "invalid_request"),
    ({**UPDATE, "limits": "none"}, "invalid_request"),
    ({**UPDATE, "limits": {"rpm": 1}}, "invalid_request"),
    ({**UPDATE, "tenant": "acme", "consumer": "b"}, "invalid_request"),
    ({**UPDATE, "expires_at": "soon"}, "invalid_request"),
]


@pytest.mark.parametrize(("request_", "code"), BAD_REQUESTS)
def test_dispatch_refuses_bad_requests_and_changes_nothing(service, store, request_, code):
    existing = create(service)
    # Point the key-id requests at a real key, so that only the bad field can be the reason.
    if isinstance(request_, dict) and request_.get("key_id") == PLACEHOLDER_ID:
        request_ = {**request_, "key_id": existing["key_id"]}
    before = snapshot(store)
    with pytest.raises(KeysError) as caught:
        service.dispatch(copy.deepcopy(request_))
    assert caught.value.code == code
    assert caught.value.status == 400
    assert caught.value.message
    assert snapshot(store) == before


class ExplodingStore:
    """Any store access fails: proves that parse() does no I/O."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"store.{name} used during validation")


def test_parse_validates_without_touching_the_store(clock):
    service = KeysService(ExplodingStore(), config_loader=lambda: CONFIG, clock=clock)  # type: ignore[arg-type]
    command = service.parse(
        {"action": "update_key", "key_id": "abcdefghijkl", "limits": {"tokens_per_day": 5}, "request_id": "x"}
    )
    assert command.action == "update_key"
    assert command.params["changes"] == {"limits": {"tokens_per_day": 5}}
    with pytest.raises(KeysError):
        service.parse({"action": "create_key", "tenant": "acme", "consumer": "a", "plan": "nope"})


def test_error_messages_never_echo_long_input(service):
    with pytest.raises(KeysError) as caught:
        service.dispatch({"action": "create_key", "tenant": "acme", "consumer": "a", "plan": "p" * 10_000})
    assert len(caught.value.message) < 300
    assert caught.value.to_dict() == {"code": "unknown_plan", "message": caught.value.message}


# ------------------------------------------------------------------------------------- list and get


def test_list_filters_by_tenant_and_consumer_and_never_shows_secrets(service, store, clock):
    a1 = create(service, consumer="alice")
    clock.advance(1)
    b1 = create(service, consumer="bob")
    clock.advance(1)
    a2 = create(service, consumer="alice")
    other = create(service, tenant="globex")
    rotated = service.rotate_key(a1["key_id"])  # a previous_secret_hash exists now

    listed = service.list_keys("acme")["keys"]
    assert [k["key_id"] for k in listed] == [a1["key_id"], b1["key_id"], a2["key_id"]]  # oldest first
    assert [k["key_id"] for k in service.list_keys("acme", consumer="alice")["keys"]] == [
        a1["key_id"],
        a2["key_id"],
    ]
    assert service.list_keys("acme", consumer="nobody") == {"keys": []}
    assert service.list_keys("initech") == {"keys": []}
    assert [k["key_id"] for k in service.list_keys("globex")["keys"]] == [other["key_id"]]

    secrets = set()
    for record in store._items.values():
        secrets.add(record.secret_hash)
        if record.previous_secret_hash:
            secrets.add(record.previous_secret_hash)
    secrets |= {a1["api_key"], b1["api_key"], a2["api_key"], rotated["api_key"]}
    assert len(secrets) == 4 + 1 + 4  # current hashes, one previous hash, plaintexts
    for view in listed:
        assert not {"secret_hash", "previous_secret_hash", "api_key"} & set(view)
        assert not secrets & set(all_strings(view))


def test_get_is_scoped_by_tenant(service):
    key = create(service)
    assert service.get_key(key["key_id"])["consumer"] == "backend"
    assert service.get_key(key["key_id"], tenant="acme")["key_id"] == key["key_id"]
    with pytest.raises(KeysError) as caught:
        service.get_key(key["key_id"], tenant="globex")
    assert (caught.value.code, caught.value.status) == ("not_found", 404)


def test_get_unknown_key_is_not_found(service):
    with pytest.raises(KeysError) as caught:
        service.get_key("abcdefghijkl")
    assert (caught.value.code, caught.value.status) == ("not_found", 404)


@pytest.mark.parametrize("action", ["revoke_key", "rotate_key"])
def test_key_actions_of_another_tenant_are_not_found_and_change_nothing(service, store, action):
    key = create(service)
    before = snapshot(store)
    with pytest.raises(KeysError) as caught:
        service.dispatch({"action": action, "key_id": key["key_id"], "tenant": "globex"})
    assert caught.value.code == "not_found"
    assert snapshot(store) == before


# -------------------------------------------------------------------------------------------- revoke


def test_revoke_is_final(service, store, clock):
    key = create(service)
    clock.advance(10)
    revoked = service.revoke_key(key["key_id"])
    assert revoked["status"] == "revoked" and revoked["updated_at"] == NOW + 10
    # Revoking again is harmless (a retried revoke must not fail) and changes nothing.
    before = snapshot(store)
    assert service.revoke_key(key["key_id"])["status"] == "revoked"
    assert snapshot(store) == before
    for attempt in (
        lambda: service.update_key(key["key_id"], status="active"),
        lambda: service.update_key(key["key_id"], plan="pro"),
        lambda: service.rotate_key(key["key_id"]),
    ):
        with pytest.raises(KeysError) as caught:
            attempt()
        assert (caught.value.code, caught.value.status) == ("conflict", 409)
        assert snapshot(store) == before
    assert store.get(key["key_id"]).status == "revoked"


def test_revoke_ends_a_rotation_grace(service, store):
    key = create(service)
    service.rotate_key(key["key_id"])
    service.revoke_key(key["key_id"])
    record = store.get(key["key_id"])
    assert record.previous_secret_hash is None and record.previous_valid_until is None


def test_revoke_unknown_key_is_not_found(service):
    with pytest.raises(KeysError) as caught:
        service.revoke_key("abcdefghijkl")
    assert caught.value.code == "not_found"


# -------------------------------------------------------------------------------------------- rotate


def in_grace(record: KeyRecord, now: float) -> bool:
    """The authorizer's rule for a rotated-out key."""
    return record.previous_valid_until is not None and now < record.previous_valid_until


def test_rotate_keeps_the_key_id_and_the_old_key_works_until_the_grace_ends(service, store, clock):
    key = create(service)
    old_plaintext = key["api_key"]
    clock.advance(100)
    rotated = service.rotate_key(key["key_id"], grace_seconds=600)
    new_plaintext = rotated["api_key"]
    assert rotated["key_id"] == key["key_id"]
    assert apikeys.parse_key(new_plaintext).key_id == key["key_id"]
    assert new_plaintext != old_plaintext
    assert rotated["rotation_grace_until"] == NOW + 100 + 600
    assert "previous_secret_hash" not in rotated and "secret_hash" not in rotated

    record = store.get(key["key_id"])
    assert apikeys.hashes_match(record.secret_hash, new_plaintext)
    assert not apikeys.hashes_match(record.secret_hash, old_plaintext)
    assert apikeys.hashes_match(record.previous_secret_hash, old_plaintext)
    assert record.previous_valid_until == NOW + 700
    assert in_grace(record, clock())
    clock.advance(599)
    assert in_grace(record, clock())
    clock.advance(1)
    assert not in_grace(record, clock())
    assert service.get_key(key["key_id"])["rotation_grace_until"] == NOW + 700


def test_rotate_default_grace_is_an_hour(service, store):
    key = create(service)
    assert service.rotate_key(key["key_id"])["rotation_grace_until"] == NOW + DEFAULT_GRACE_SECONDS
    assert DEFAULT_GRACE_SECONDS == 3600


def test_rotate_without_grace_retires_the_old_key_at_once(service, store):
    key = create(service)
    rotated = service.rotate_key(key["key_id"], grace_seconds=0)
    record = store.get(key["key_id"])
    assert record.previous_secret_hash is None and record.previous_valid_until is None
    assert rotated["rotation_grace_until"] is None


def test_a_second_rotation_ends_the_first_grace(service, store):
    key = create(service)
    first = service.rotate_key(key["key_id"])
    second = service.rotate_key(key["key_id"])
    record = store.get(key["key_id"])
    assert apikeys.hashes_match(record.secret_hash, second["api_key"])
    assert apikeys.hashes_match(record.previous_secret_hash, first["api_key"])
    assert not apikeys.hashes_match(record.previous_secret_hash, key["api_key"])


def test_rotate_a_disabled_key_keeps_it_disabled(service):
    key = create(service)
    service.update_key(key["key_id"], status="disabled")
    assert service.rotate_key(key["key_id"])["status"] == "disabled"


def test_rotate_unknown_key_is_not_found(service):
    with pytest.raises(KeysError) as caught:
        service.rotate_key("abcdefghijkl")
    assert caught.value.code == "not_found"


# -------------------------------------------------------------------------------------------- update


def test_update_changes_only_what_is_given(service, store, clock):
    key = create(service, name="n", metadata={"a": 1}, limits={"tokens_per_day": 10})
    clock.advance(5)
    updated = service.update_key(key["key_id"], plan="pro")
    assert updated["plan"] == "pro" and updated["updated_at"] == NOW + 5
    assert updated["version"] == key["version"] + 1
    for field in ("name", "metadata", "limits", "status", "allowed_models", "expires_at", "created_at"):
        assert updated[field] == key[field]
    assert apikeys.hashes_match(store.get(key["key_id"]).secret_hash, key["api_key"])


def test_update_every_field(service):
    key = create(service)
    key_id = key["key_id"]
    assert service.update_key(key_id, allowed_models=["small"])["allowed_models"] == ["small"]
    assert service.update_key(key_id, allowed_models=None)["allowed_models"] is None
    assert service.update_key(key_id, expires_at=NOW + 60)["expires_at"] == NOW + 60
    assert service.update_key(key_id, expires_at="2027-06-01T00:00:00Z")["expires_at"] == 1811808000
    assert service.update_key(key_id, expires_at=None)["expires_at"] is None
    assert service.update_key(key_id, status="disabled")["status"] == "disabled"
    assert service.update_key(key_id, status="active")["status"] == "active"
    assert service.update_key(key_id, name="renamed")["name"] == "renamed"
    assert service.update_key(key_id, name=None)["name"] is None
    assert service.update_key(key_id, metadata={"x": "y"})["metadata"] == {"x": "y"}
    assert service.update_key(key_id, metadata=None)["metadata"] == {}


def test_update_limits_merge_and_null_removes(service):
    key = create(service, limits={"tokens_per_day": 10, "requests_per_minute": 5})
    key_id = key["key_id"]
    merged = service.update_key(key_id, limits={"tokens_per_day": 20, "usd_per_day": 1.5})
    assert merged["limits"] == {"tokens_per_day": 20, "requests_per_minute": 5, "usd_per_day": 1.5}
    one_removed = service.update_key(key_id, limits={"requests_per_minute": None})
    assert one_removed["limits"] == {"tokens_per_day": 20, "usd_per_day": 1.5}
    assert service.update_key(key_id, limits=None)["limits"] == {}


def test_update_several_fields_at_once_via_dispatch(service):
    key = create(service)
    updated = service.dispatch(
        {
            "action": "update_key",
            "key_id": key["key_id"],
            "tenant": "acme",
            "plan": "pro",
            "status": "disabled",
            "limits": {"tokens_per_day": 5},
            "allowed_models": ["large"],
        }
    )
    assert (updated["plan"], updated["status"], updated["limits"], updated["allowed_models"]) == (
        "pro",
        "disabled",
        {"tokens_per_day": 5},
        ["large"],
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"plan": "gold"},
        {"status": "revoked"},
        {"expires_at": NOW - 5},
        {"allowed_models": []},
        {"limits": {"tokens_per_day": -5}},
        {"metadata": "text"},
        {"plan": "pro", "limits": {"bogus": 1}},  # one bad field: nothing at all changes
    ],
)
def test_update_refuses_bad_fields_and_changes_nothing(service, store, fields):
    key = create(service)
    before = snapshot(store)
    with pytest.raises(KeysError):
        service.update_key(key["key_id"], **fields)
    assert snapshot(store) == before


def test_update_unknown_key_is_not_found(service):
    with pytest.raises(KeysError) as caught:
        service.update_key("abcdefghijkl", plan="pro")
    assert caught.value.code == "not_found"


# ------------------------------------------------------------------------------------- concurrency


class RacingStore(InMemoryKeyStore):
    """Runs ``interference`` once, right after the service has read a record (a concurrent writer)."""

    def __init__(self) -> None:
        super().__init__()
        self.interference: Any = None

    def get(self, key_id: str) -> KeyRecord | None:
        record = super().get(key_id)
        if self.interference is not None:
            interference, self.interference = self.interference, None
            interference()
        return record


def test_a_concurrent_revoke_is_never_undone_by_an_update(clock):
    store = RacingStore()
    service = KeysService(store, config_loader=lambda: CONFIG, clock=clock)
    key = create(service)
    other_writer = KeysService(store, config_loader=lambda: CONFIG, clock=clock)
    store.interference = lambda: other_writer.revoke_key(key["key_id"])
    with pytest.raises(KeysError) as caught:
        service.update_key(key["key_id"], status="active", plan="pro")
    assert caught.value.code == "conflict"
    record = store.get(key["key_id"])
    assert record.status == "revoked" and record.plan == "free"


def test_a_concurrent_update_is_kept_by_a_revoke(clock):
    store = RacingStore()
    service = KeysService(store, config_loader=lambda: CONFIG, clock=clock)
    key = create(service)
    other_writer = KeysService(store, config_loader=lambda: CONFIG, clock=clock)
    store.interference = lambda: other_writer.update_key(key["key_id"], plan="pro")
    assert service.revoke_key(key["key_id"])["status"] == "revoked"
    record = store.get(key["key_id"])
    assert (record.status, record.plan, record.version) == ("revoked", "pro", 3)


def test_store_refuses_a_stale_version():
    store = InMemoryKeyStore()
    record = KeyRecord("abcdefghijkl", "acme", "c", "free", "h", NOW, version=1)
    store.put_new(record)
    from dataclasses import replace

    store.replace_if_version(replace(record, plan="pro", version=2), 1)
    with pytest.raises(KeyVersionConflict):
        store.replace_if_version(replace(record, plan="free", version=2), 1)
    assert store.get("abcdefghijkl").plan == "pro"


# ---- tenant records ---------------------------------------------------------------------------


def test_tenant_records_are_created_read_and_merged(service: KeysService, clock: FakeClock) -> None:
    created = service.dispatch(
        {"action": "create_tenant", "tenant": "acme", "limits": {"usd_per_month": 100, "tokens_per_day": 5000}}
    )
    assert created["limits"] == {"usd_per_month": 100, "tokens_per_day": 5000} and created["version"] == 1
    assert service.dispatch({"action": "get_tenant", "tenant": "acme"})["limits"] == created["limits"]
    updated = service.dispatch(
        {"action": "update_tenant", "tenant": "acme", "limits": {"tokens_per_day": None, "requests_per_minute": 60}}
    )
    assert updated["limits"] == {"usd_per_month": 100, "requests_per_minute": 60} and updated["version"] == 2
    cleared = service.dispatch({"action": "update_tenant", "tenant": "acme", "limits": None})
    assert cleared["limits"] == {}


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        ({"action": "get_tenant", "tenant": "nobody"}, "not_found"),
        ({"action": "update_tenant", "tenant": "nobody", "limits": {}}, "not_found"),
        ({"action": "create_tenant", "tenant": "acme", "limits": {"tokens_per_day": -1}}, "invalid_request"),
        ({"action": "create_tenant", "tenant": "acme", "limits": {"bogus": 1}}, "invalid_request"),
        ({"action": "create_tenant", "tenant": "bad tenant id"}, "invalid_request"),
        ({"action": "update_tenant", "tenant": "acme"}, "invalid_request"),
    ],
)
def test_bad_tenant_requests_are_refused(service: KeysService, request_: dict[str, Any], code: str) -> None:
    with pytest.raises(KeysError) as refused:
        service.dispatch(request_)
    assert refused.value.code == code


def test_a_tenant_is_created_once(service: KeysService) -> None:
    service.dispatch({"action": "create_tenant", "tenant": "acme"})
    with pytest.raises(KeysError) as refused:
        service.dispatch({"action": "create_tenant", "tenant": "acme", "limits": {"usd_per_month": 1}})
    assert refused.value.status == 409
    assert service.dispatch({"action": "get_tenant", "tenant": "acme"})["limits"] == {}
