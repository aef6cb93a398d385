"""Provisioning of API keys (create, list, get, revoke, rotate, update) and of tenant records
(create_tenant, get_tenant, update_tenant: the limits all of a tenant's keys and JWTs share).

Used by the keys Lambda (``functions/keys``) that a SaaS backend invokes with IAM. Every action
validates its whole input before touching the store, so a bad request changes nothing; every
failure is a :class:`KeysError` with a stable ``code`` and an HTTP-like ``status``.

* The plaintext key is returned by ``create_key`` and ``rotate_key`` only, once; the store keeps
  its SHA-256 hash. Views of records (``list_keys``, ``get_key``...) never contain a hash.
* ``rotate_key`` issues a new secret for the *same* key id. The old key keeps working until
  ``rotation_grace_until`` (now + ``grace_seconds``); only the last replaced key is kept, so a
  second rotation ends the grace of the first one immediately.
* ``revoked`` is final: a revoked key cannot be re-activated, rotated or updated. ``disabled`` is
  reversible (``update_key(status="active")``).
* Changes are read-modify-write guarded by the record's ``version`` (optimistic concurrency), so a
  concurrent update can never undo a revocation.

``dispatch`` maps a request ``{"action": ..., **fields}`` onto these methods; unknown actions and
unknown fields are rejected. ``parse`` does all of the validation without any store I/O (used by the
handler before it records an idempotent request).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec

from pydantic import ValidationError

from quotagate import apikeys, strict_json
from quotagate.auth_types import KeyStatus
from quotagate.config import GatewayConfig, limits_of, load_validated_config
from quotagate.config_models import Limits, describe
from quotagate.dal.exceptions import (
    KeyAlreadyExists,
    KeyNotFound,
    KeyVersionConflict,
    TenantAlreadyExists,
    TenantNotFound,
    TenantVersionConflict,
)
from quotagate.dal.keys_store import KeyRecord, KeyStore
from quotagate.dal.tenants_store import TenantRecord, TenantStore
from quotagate.key_derivation import KeySecretSource
from quotagate.logic.exceptions import KeysError
from quotagate.usage.periods import Granularity
from quotagate.usage.query import DynamoUsageReader, GroupBy, UsageQuery, UsageReader, period_range, read_usage

STATUS_ACTIVE = KeyStatus.ACTIVE
STATUS_DISABLED = KeyStatus.DISABLED
STATUS_REVOKED = KeyStatus.REVOKED
SETTABLE_STATUSES = (STATUS_ACTIVE, STATUS_DISABLED)

DEFAULT_GRACE_SECONDS = 3600
MAX_GRACE_SECONDS = 7 * 24 * 3600
MAX_NAME_LENGTH = 128
MAX_ALLOWED_MODELS = 64
MAX_MODEL_NAME_LENGTH = 128
MAX_METADATA_BYTES = 2048  # compact JSON
MAX_METADATA_KEYS = 32
MAX_METADATA_KEY_LENGTH = 64
MAX_LIMIT_VALUE = 1e15
# Epoch seconds bounds for expires_at: after 2000-01-01, before 3000-01-01.
_MIN_EPOCH = 946684800
_MAX_EPOCH = 32503680000
# Tenant and consumer ids: what SaaS backends commonly use (slugs, UUIDs, emails, "org:123").
_IDENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,127}$")
_CREATE_ATTEMPTS = 3  # key id collisions (60 random bits) are practically impossible; retry anyway
_UPDATE_ATTEMPTS = 5  # re-reads after a concurrent change


def invalid(message: str) -> KeysError:
    return KeysError("invalid_request", message, 400)


def not_found(key_id: str) -> KeysError:
    return KeysError("not_found", f"key '{key_id}' not found", 404)


class _Unset:
    """Marks an update field the caller did not send (as opposed to an explicit null)."""

    _instance: _Unset | None = None

    def __new__(cls) -> _Unset:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSET"

    def __bool__(self) -> bool:
        return False


UNSET: Any = _Unset()


@dataclass(frozen=True)
class _ActionSpec:
    method: str
    required: frozenset[str]
    optional: frozenset[str]
    mutating: bool


ACTIONS: dict[str, _ActionSpec] = {
    "create_key": _ActionSpec(
        "create_key",
        frozenset({"tenant", "consumer", "plan"}),
        frozenset({"name", "expires_at", "allowed_models", "metadata", "limits"}),
        True,
    ),
    "list_keys": _ActionSpec("list_keys", frozenset({"tenant"}), frozenset({"consumer"}), False),
    "get_key": _ActionSpec("get_key", frozenset({"key_id"}), frozenset({"tenant"}), False),
    "revoke_key": _ActionSpec("revoke_key", frozenset({"key_id"}), frozenset({"tenant"}), True),
    "rotate_key": _ActionSpec("rotate_key", frozenset({"key_id"}), frozenset({"tenant", "grace_seconds"}), True),
    "update_key": _ActionSpec(
        "update_key",
        frozenset({"key_id"}),
        frozenset({"tenant", "plan", "allowed_models", "expires_at", "status", "limits", "name", "metadata"}),
        True,
    ),
    "create_tenant": _ActionSpec("create_tenant", frozenset({"tenant"}), frozenset({"limits"}), True),
    "get_tenant": _ActionSpec("get_tenant", frozenset({"tenant"}), frozenset(), False),
    "update_tenant": _ActionSpec("update_tenant", frozenset({"tenant", "limits"}), frozenset(), True),
    "get_usage": _ActionSpec(
        "get_usage",
        frozenset({"tenant"}),
        frozenset({"key_id", "consumer", "model", "granularity", "from", "to", "by"}),
        False,
    ),
}
# Actions whose result carries a new plaintext key (``api_key``).
KEY_ISSUING_ACTIONS = frozenset({"create_key", "rotate_key"})
MUTATING_ACTIONS = frozenset(name for name, spec in ACTIONS.items() if spec.mutating)
# Fields of an update that change something (at least one is required).
_UPDATE_FIELDS = ("plan", "allowed_models", "expires_at", "status", "limits", "name", "metadata")


@dataclass(frozen=True)
class Command:
    """A validated request: ``KeysService.run`` executes it."""

    action: str
    params: dict[str, Any]


_P = ParamSpec("_P")


def _action(
    name: str, validate: Callable[Concatenate[KeysService, _P], dict[str, Any]], doc: str
) -> Callable[Concatenate[KeysService, _P], dict[str, Any]]:
    """The public method of an action: it takes the arguments of ``validate``, validates them all,
    then runs the action."""

    def method(self: KeysService, *args: _P.args, **kwargs: _P.kwargs) -> dict[str, Any]:
        result: dict[str, Any] = self.run(Command(name, validate(self, *args, **kwargs)))
        return result

    method.__name__ = name
    method.__qualname__ = f"KeysService.{name}"
    method.__doc__ = doc
    method.__wrapped__ = validate  # type: ignore[attr-defined]  # inspect.signature: the action's parameters
    return method


class KeysService:
    def __init__(
        self,
        store: KeyStore,
        config_loader: Callable[[], GatewayConfig] = load_validated_config,
        clock: Callable[[], float] = time.time,
        tenants: TenantStore | None = None,
        usage: UsageReader | None = None,
    ) -> None:
        self._store = store
        self._config_loader = config_loader
        self._clock = clock
        self._tenant_store = tenants
        self._usage_reader = usage

    # ----------------------------------------------------------------------------------- requests

    def parse(self, request: Any) -> Command:
        """Validate a request ``{"action": ..., **fields}`` (no store I/O). Raises KeysError."""
        if not isinstance(request, Mapping):
            raise invalid("the request must be a JSON object")
        try:
            # The same rules as request bodies: finite numbers in range, valid text, bounded depth.
            strict_json.check_value(request)
        except strict_json.StrictJSONError as error:
            raise invalid(error.message) from None
        action = request.get("action")
        if not isinstance(action, str) or not action:
            raise KeysError("unknown_action", f"'action' is required (one of: {', '.join(ACTIONS)})")
        spec = ACTIONS.get(action)
        if spec is None:
            shown = action if len(action) <= 64 else action[:64] + "..."
            raise KeysError("unknown_action", f"unknown action '{shown}' (one of: {', '.join(ACTIONS)})")
        fields = {k: v for k, v in request.items() if k not in ("action", "request_id")}
        unknown = sorted(str(k) for k in fields if k not in spec.required and k not in spec.optional)
        if unknown:
            raise invalid(f"unknown field(s) for {action}: {', '.join(unknown)}")
        missing = sorted(k for k in spec.required if k not in fields)
        if missing:
            raise invalid(f"missing required field(s) for {action}: {', '.join(missing)}")
        validator = getattr(self, f"_validate_{action}")
        return Command(action, validator(**fields))

    def run(self, command: Command, key_secret: KeySecretSource | None = None) -> Any:
        """Execute a validated command. ``key_secret`` makes the secret part of the key that
        ``create_key``/``rotate_key`` issue (from the key id and the record's new version; default:
        random) — for idempotent requests, derived so that a replay needs no stored plaintext."""
        if command.action in KEY_ISSUING_ACTIONS:
            return getattr(self, f"_do_{command.action}")(**command.params, key_secret=key_secret)
        return getattr(self, f"_do_{command.action}")(**command.params)

    def dispatch(self, request: Any) -> Any:
        return self.run(self.parse(request))

    # --------------------------------------------------------------------------------- validation

    def _validate_create_key(
        self,
        tenant: Any,
        consumer: Any,
        plan: Any,
        name: Any = None,
        expires_at: Any = None,
        allowed_models: Any = None,
        metadata: Any = None,
        limits: Any = None,
    ) -> dict[str, Any]:
        return {
            "tenant": _identifier(tenant, "tenant"),
            "consumer": _identifier(consumer, "consumer"),
            "plan": self._plan(plan),
            "name": _name(name),
            "expires_at": self._expires_at(expires_at),
            "allowed_models": _allowed_models(allowed_models),
            "metadata": _metadata(metadata),
            "limits": _limits(limits),
        }

    def _validate_list_keys(self, tenant: Any, consumer: Any = None) -> dict[str, Any]:
        return {
            "tenant": _identifier(tenant, "tenant"),
            "consumer": None if consumer is None else _identifier(consumer, "consumer"),
        }

    def _validate_get_key(self, key_id: Any, tenant: Any = None) -> dict[str, Any]:
        return {"key_id": _key_id(key_id), "tenant": _optional_tenant(tenant)}

    _validate_revoke_key = _validate_get_key

    def _validate_rotate_key(
        self, key_id: Any, grace_seconds: Any = DEFAULT_GRACE_SECONDS, tenant: Any = None
    ) -> dict[str, Any]:
        if grace_seconds is None:
            grace_seconds = DEFAULT_GRACE_SECONDS
        if isinstance(grace_seconds, bool) or not isinstance(grace_seconds, int):
            raise invalid("'grace_seconds' must be an integer number of seconds")
        if not 0 <= grace_seconds <= MAX_GRACE_SECONDS:
            raise invalid(f"'grace_seconds' must be between 0 and {MAX_GRACE_SECONDS}")
        return {"key_id": _key_id(key_id), "grace_seconds": grace_seconds, "tenant": _optional_tenant(tenant)}

    def _validate_update_key(
        self,
        key_id: Any,
        plan: Any = UNSET,
        allowed_models: Any = UNSET,
        expires_at: Any = UNSET,
        status: Any = UNSET,
        limits: Any = UNSET,
        name: Any = UNSET,
        metadata: Any = UNSET,
        tenant: Any = None,
    ) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        if plan is not UNSET:
            changes["plan"] = self._plan(plan)
        if allowed_models is not UNSET:
            changes["allowed_models"] = _allowed_models(allowed_models)
        if expires_at is not UNSET:
            changes["expires_at"] = self._expires_at(expires_at)
        if status is not UNSET:
            if status == STATUS_REVOKED:
                raise invalid("use the revoke_key action to revoke a key")
            if not isinstance(status, str) or status not in SETTABLE_STATUSES:
                raise invalid(f"'status' must be one of: {', '.join(SETTABLE_STATUSES)}")
            changes["status"] = KeyStatus(status)
        if limits is not UNSET:
            # None removes every override; an object is merged (its null values remove one override).
            if limits is not None and not isinstance(limits, Mapping):
                raise invalid("'limits' must be an object or null")
            changes["limits"] = None if limits is None else _limits(limits, allow_null_values=True)
        if name is not UNSET:
            changes["name"] = _name(name)
        if metadata is not UNSET:
            changes["metadata"] = _metadata(metadata)
        if not changes:
            raise invalid(f"nothing to update: give at least one of {', '.join(_UPDATE_FIELDS)}")
        return {"key_id": _key_id(key_id), "tenant": _optional_tenant(tenant), "changes": changes}

    def _validate_create_tenant(self, tenant: Any, limits: Any = None) -> dict[str, Any]:
        return {"tenant": _identifier(tenant, "tenant"), "limits": _limits(limits)}

    def _validate_get_tenant(self, tenant: Any) -> dict[str, Any]:
        return {"tenant": _identifier(tenant, "tenant")}

    def _validate_get_usage(
        self,
        tenant: Any,
        key_id: Any = None,
        consumer: Any = None,
        model: Any = None,
        granularity: Any = "day",
        by: Any = None,
        **period: Any,  # "from" and "to" (Python keywords)
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"tenant": _identifier(tenant, "tenant")}
        if granularity is None:
            granularity = "day"
        if granularity not in tuple(Granularity):
            raise invalid("'granularity' must be one of: hour, day, month")
        params["granularity"] = Granularity(granularity)
        if by is not None and by not in tuple(GroupBy):
            raise invalid("'by' must be 'model' or 'key'")
        params["by"] = GroupBy(by) if by is not None else None
        params["key_id"] = None if key_id is None else _usage_key(key_id)
        params["consumer"] = None if consumer is None else _identifier(consumer, "consumer")
        if model is not None and (not isinstance(model, str) or not 0 < len(model) <= 256):
            raise invalid("'model' must be a model or alias name (1-256 characters)")
        params["model"] = model
        chosen = [name for name in ("key_id", "consumer", "model", "by") if params[name] is not None]
        if len(chosen) > 1:
            raise invalid(
                "usage is aggregated per tenant, per key and per model: give at most one of "
                f"key_id, consumer, model, by (got {', '.join(chosen)})"
            )
        for name in ("from", "to"):
            value = period.get(name)
            if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 64):
                raise invalid(f"'{name}' must be an ISO-8601 date or date-time such as 2026-11-30")
        try:
            params["start"], params["end"] = period_range(
                params["granularity"], period.get("from"), period.get("to"), self._clock()
            )
        except ValueError as error:
            raise invalid(f"bad period: {error}") from None
        return params

    def _validate_update_tenant(self, tenant: Any, limits: Any) -> dict[str, Any]:
        # Like update_key: null removes every limit; an object is merged (null values remove one).
        if limits is not None and not isinstance(limits, Mapping):
            raise invalid("'limits' must be an object or null")
        return {
            "tenant": _identifier(tenant, "tenant"),
            "limits": None if limits is None else _limits(limits, allow_null_values=True),
        }

    def _plan(self, plan: Any) -> str:
        if not isinstance(plan, str) or not plan:
            raise invalid("'plan' must be a non-empty string")
        config = self._config_loader()
        if config.plan(plan) is None:
            shown = plan if len(plan) <= 64 else plan[:64] + "..."
            raise KeysError("unknown_plan", f"unknown plan '{shown}' (known: {', '.join(sorted(config.plans))})", 400)
        return plan

    def _expires_at(self, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise invalid("'expires_at' must be epoch seconds (integer) or an ISO-8601 date-time")
        if isinstance(value, int):
            epoch = value
        elif isinstance(value, str):
            epoch = _parse_iso8601(value)
        else:
            raise invalid("'expires_at' must be epoch seconds (integer) or an ISO-8601 date-time")
        if not _MIN_EPOCH <= epoch < _MAX_EPOCH:
            raise invalid("'expires_at' is out of range")
        if epoch <= self._clock():
            raise invalid("'expires_at' must be in the future")
        return epoch

    # ------------------------------------------------------------------------------------ actions
    # Each takes the arguments of its validator, which it runs before it changes anything.

    create_key = _action(
        "create_key",
        _validate_create_key,
        """A new key. The result is the public record plus ``api_key``: the plaintext, shown once.""",
    )
    list_keys = _action(
        "list_keys",
        _validate_list_keys,
        """Public views of a tenant's keys (optionally one consumer's), oldest first.""",
    )
    get_key = _action(
        "get_key",
        _validate_get_key,
        """The public view of one key; with ``tenant``, a key of another tenant is 'not found'.""",
    )
    revoke_key = _action(
        "revoke_key",
        _validate_revoke_key,
        """Revoke for good. Revoking a revoked key changes nothing and returns it.""",
    )
    rotate_key = _action(
        "rotate_key",
        _validate_rotate_key,
        """A new secret for the same key id (plaintext in ``api_key``, once); the replaced key keeps
        working for ``grace_seconds`` (0: not at all).""",
    )
    update_key = _action(
        "update_key",
        _validate_update_key,
        """Change a key. Fields not given stay as they are; ``None`` clears ``allowed_models`` (all
        the plan's models), ``expires_at`` (never expires), ``name``, ``metadata`` and ``limits`` (no
        overrides). ``limits`` given as an object is merged into the current overrides (a null value
        removes that one override). ``status`` is "active" or "disabled"; a revoked key is final.""",
    )

    create_tenant = _action(
        "create_tenant",
        _validate_create_tenant,
        """A tenant record: ``limits`` shared by every key and JWT of the tenant (whatever their
        plans). A tenant without a record gets the config's ``default_tenant_limits``.""",
    )
    get_tenant = _action("get_tenant", _validate_get_tenant, """The tenant's record.""")
    get_usage = _action(
        "get_usage",
        _validate_get_usage,
        """A tenant's usage series (requests, tokens, micro-dollars, requests by outcome) per hour, day
        or month from the rollup's aggregates: the tenant's, one key's, one consumer's (its keys
        summed), one model's, or ``by`` model or key. ``from``/``to``: ISO dates or date-times.""",
    )
    update_tenant = _action(
        "update_tenant",
        _validate_update_tenant,
        """Change a tenant's limits: an object is merged (a null value removes that limit); null
        removes them all (the tenant then has no limits, not the defaults).""",
    )

    # ---------------------------------------------------------------------------------- execution

    def _do_create_key(
        self,
        tenant: str,
        consumer: str,
        plan: str,
        name: str | None,
        expires_at: int | None,
        allowed_models: list[str] | None,
        metadata: dict[str, Any],
        limits: dict[str, float],
        key_secret: KeySecretSource | None = None,
    ) -> dict[str, Any]:
        now = int(self._clock())
        for _ in range(_CREATE_ATTEMPTS):
            key_id = apikeys.new_key_id()
            key = apikeys.new_key(key_id, secret=key_secret(key_id, 1) if key_secret else None)
            record = KeyRecord(
                key_id=key.key_id,
                tenant=tenant,
                consumer=consumer,
                plan=plan,
                secret_hash=apikeys.hash_key(key.plaintext),
                created_at=now,
                status=STATUS_ACTIVE,
                name=name,
                expires_at=expires_at,
                allowed_models=allowed_models,
                metadata=metadata,
                limits=limits,
                updated_at=now,
                version=1,
            )
            try:
                self._store.put_new(record)
            except KeyAlreadyExists:
                continue
            return {**record.public_view(), "api_key": key.plaintext}
        raise KeysError("internal_error", "could not allocate a key id; retry", 500)

    def _do_list_keys(self, tenant: str, consumer: str | None) -> dict[str, Any]:
        records = self._store.list_by_tenant(tenant)
        if consumer is not None:
            records = [r for r in records if r.consumer == consumer]
        records = sorted(records, key=lambda r: (r.created_at, r.key_id))
        return {"keys": [r.public_view() for r in records]}

    def _do_get_key(self, key_id: str, tenant: str | None) -> dict[str, Any]:
        return self._load(key_id, tenant).public_view()

    def _do_revoke_key(self, key_id: str, tenant: str | None) -> dict[str, Any]:
        def change(record: KeyRecord, now: int) -> KeyRecord | None:
            if record.status == STATUS_REVOKED:
                return None  # already revoked: nothing to do
            # The grace of a rotated-out key ends with the key.
            return replace(
                record,
                status=STATUS_REVOKED,
                previous_secret_hash=None,
                previous_valid_until=None,
            )

        return self._modify(key_id, tenant, change).public_view()

    def _do_rotate_key(
        self, key_id: str, grace_seconds: int, tenant: str | None, key_secret: KeySecretSource | None = None
    ) -> dict[str, Any]:
        issued: list[apikeys.ParsedKey] = []

        def change(record: KeyRecord, now: int) -> KeyRecord:
            _refuse_revoked(record)
            # The record's version after this change (_modify) is part of a derived secret.
            key = apikeys.new_key(key_id, secret=key_secret(key_id, record.version + 1) if key_secret else None)
            issued.append(key)
            return replace(
                record,
                secret_hash=apikeys.hash_key(key.plaintext),
                previous_secret_hash=record.secret_hash if grace_seconds > 0 else None,
                previous_valid_until=now + grace_seconds if grace_seconds > 0 else None,
            )

        record = self._modify(key_id, tenant, change)
        return {**record.public_view(), "api_key": issued[-1].plaintext}

    def _do_update_key(self, key_id: str, tenant: str | None, changes: dict[str, Any]) -> dict[str, Any]:
        def change(record: KeyRecord, now: int) -> KeyRecord:
            _refuse_revoked(record)
            updates = {k: v for k, v in changes.items() if k != "limits"}
            if "limits" in changes:
                if changes["limits"] is None:
                    updates["limits"] = {}
                else:
                    merged = dict(record.limits)
                    for limit, value in changes["limits"].items():
                        if value is None:
                            merged.pop(limit, None)
                        else:
                            merged[limit] = value
                    updates["limits"] = merged
            if "metadata" in changes and changes["metadata"] is None:
                updates["metadata"] = {}
            return replace(record, **updates)

        return self._modify(key_id, tenant, change).public_view()

    @property
    def _tenants(self) -> TenantStore:
        if self._tenant_store is None:  # on first use: validation never touches a store
            self._tenant_store = _tenant_store_beside(self._store)
        return self._tenant_store

    def _do_create_tenant(self, tenant: str, limits: dict[str, float]) -> dict[str, Any]:
        now = int(self._clock())
        record = TenantRecord(tenant=tenant, limits=limits, created_at=now, updated_at=now, version=1)
        try:
            self._tenants.put_new(record)
        except TenantAlreadyExists as error:
            raise KeysError("conflict", f"tenant '{tenant}' already exists; use update_tenant", 409) from error
        return record.public_view()

    @property
    def _usage(self) -> UsageReader:
        if self._usage_reader is None:  # on first use: validation never touches a store
            from quotagate import aws

            self._usage_reader = DynamoUsageReader(aws.client("dynamodb"))
        return self._usage_reader

    def _do_get_usage(
        self,
        tenant: str,
        granularity: Granularity,
        start: str,
        end: str,
        key_id: str | None,
        consumer: str | None,
        model: str | None,
        by: GroupBy | None,
    ) -> dict[str, Any]:
        keys: tuple[str, ...] = ()
        if consumer is not None:
            # A consumer's usage: its gateway keys', and its JWT subject's (key id "jwt:<subject>").
            owned = [r.key_id for r in self._store.list_by_tenant(tenant) if r.consumer == consumer]
            keys = (*sorted(owned), f"jwt:{consumer}")
        query = UsageQuery(
            tenant, granularity, start, end, key_id=key_id, keys=keys, consumer=consumer, model=model, by=by
        )
        return read_usage(self._usage, query)

    def _do_get_tenant(self, tenant: str) -> dict[str, Any]:
        record = self._tenants.get(tenant)
        if record is None:
            raise KeysError("not_found", f"tenant '{tenant}' has no record", 404)
        return record.public_view()

    def _do_update_tenant(self, tenant: str, limits: dict[str, Any] | None) -> dict[str, Any]:
        for _ in range(_UPDATE_ATTEMPTS):
            record = self._tenants.get(tenant)
            if record is None:
                raise KeysError("not_found", f"tenant '{tenant}' has no record; use create_tenant", 404)
            merged: dict[str, float] = {}
            if limits is not None:
                merged = dict(record.limits)
                for limit, value in limits.items():
                    if value is None:
                        merged.pop(limit, None)
                    else:
                        merged[limit] = value
            now = int(self._clock())
            changed = replace(record, limits=merged, updated_at=now, version=record.version + 1)
            try:
                self._tenants.replace_if_version(changed, record.version)
            except TenantVersionConflict:
                continue
            except TenantNotFound as error:
                raise KeysError("not_found", f"tenant '{tenant}' has no record", 404) from error
            return changed.public_view()
        raise KeysError("conflict", f"tenant '{tenant}' is being changed concurrently; retry", 409)

    # ------------------------------------------------------------------------------------ helpers

    def _load(self, key_id: str, tenant: str | None) -> KeyRecord:
        record = self._store.get(key_id)
        # A key of another tenant is reported exactly like a missing one.
        if record is None or (tenant is not None and record.tenant != tenant):
            raise not_found(key_id)
        return record

    def _modify(
        self,
        key_id: str,
        tenant: str | None,
        change: Callable[[KeyRecord, int], KeyRecord | None],
    ) -> KeyRecord:
        """Read, change, write back if the record did not change in between (else read again)."""
        for _ in range(_UPDATE_ATTEMPTS):
            record = self._load(key_id, tenant)
            now = int(self._clock())
            changed = change(record, now)
            if changed is None:
                return record
            changed = replace(changed, updated_at=now, version=record.version + 1)
            try:
                self._store.replace_if_version(changed, record.version)
            except KeyVersionConflict:
                continue
            except KeyNotFound as error:
                raise not_found(key_id) from error
            return changed
        raise KeysError("conflict", f"key '{key_id}' is being changed concurrently; retry", 409)


def _tenant_store_beside(store: KeyStore) -> TenantStore:
    """Tenant records live in the keys table: beside a DynamoDB key store, or in memory."""
    from quotagate.dal.tenants_store import DynamoTenantStore, InMemoryTenantStore

    table = getattr(store, "table", None)
    return DynamoTenantStore(table) if table is not None else InMemoryTenantStore()


def _refuse_revoked(record: KeyRecord) -> None:
    if record.status == STATUS_REVOKED:
        raise KeysError("conflict", f"key '{record.key_id}' is revoked; a revoked key cannot be changed", 409)


def _identifier(value: Any, field_name: str) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(f"'{field_name}' must be a non-empty string")
    if not _IDENT_RE.fullmatch(value):
        raise invalid(
            f"'{field_name}' must be 1-128 characters: letters, digits and . _ : @ + / - "
            "(starting with a letter or digit)"
        )
    return value


def _usage_key(value: Any) -> str:
    """A key dimension of usage: a gateway key id, or ``jwt:<subject>`` for a JWT caller."""
    if isinstance(value, str) and value.startswith("jwt:") and 4 < len(value) <= 260:
        return value
    return _key_id(value)


def _optional_tenant(value: Any) -> str | None:
    return None if value is None else _identifier(value, "tenant")


def _key_id(value: Any) -> str:
    if not isinstance(value, str) or not apikeys.KEY_ID_RE.fullmatch(value):
        raise invalid(f"'key_id' must be a key id ({apikeys.KEY_ID_LENGTH} characters a-z, 2-7)")
    return value


def _printable(value: str) -> bool:
    return all(ch.isprintable() for ch in value)


def _name(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise invalid("'name' must be a non-empty string or null")
    if len(value) > MAX_NAME_LENGTH or not _printable(value):
        raise invalid(f"'name' must be at most {MAX_NAME_LENGTH} printable characters")
    return value


def _allowed_models(value: Any) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid("'allowed_models' must be a list of model names or null (all models of the plan)")
    if not value:
        raise invalid("'allowed_models' must not be empty (use null for all models of the plan)")
    if len(value) > MAX_ALLOWED_MODELS:
        raise invalid(f"'allowed_models' may name at most {MAX_ALLOWED_MODELS} models")
    models: list[str] = []
    for model in value:
        if (
            not isinstance(model, str)
            or not model.strip()
            or len(model) > MAX_MODEL_NAME_LENGTH
            or not _printable(model)
        ):
            raise invalid(f"'allowed_models' entries must be model names of 1-{MAX_MODEL_NAME_LENGTH} characters")
        if model not in models:
            models.append(model)
    return models


def _metadata(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid("'metadata' must be an object")
    if len(value) > MAX_METADATA_KEYS:
        raise invalid(f"'metadata' may have at most {MAX_METADATA_KEYS} keys")
    for key in value:
        if not isinstance(key, str) or not key or len(key) > MAX_METADATA_KEY_LENGTH:
            raise invalid(f"'metadata' keys must be strings of 1-{MAX_METADATA_KEY_LENGTH} characters")
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as error:
        raise invalid("'metadata' must contain only JSON values (no NaN or infinity)") from error
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise invalid(f"'metadata' must be at most {MAX_METADATA_BYTES} bytes as JSON")
    if not all(storable_number(number) for number in _numbers_in(value)):
        raise invalid(
            f"'metadata' numbers must be 0 or of a magnitude from {MIN_STORED_MAGNITUDE:.0e} "
            f"to {MAX_STORED_MAGNITUDE:.0e}"
        )
    # A copy through JSON: what is stored is exactly what was validated (no shared references).
    return json.loads(encoded)


# DynamoDB's number range: a number outside it fails the write, which the caller would otherwise
# see as internal_error for its own bad input.
MIN_STORED_MAGNITUDE = 1e-130
MAX_STORED_MAGNITUDE = 1e125


def storable_number(number: float) -> bool:
    return number == 0 or MIN_STORED_MAGNITUDE <= abs(number) <= MAX_STORED_MAGNITUDE


def _numbers_in(value: Any) -> Iterator[float]:
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _numbers_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from _numbers_in(item)


def _limits(value: Any, allow_null_values: bool = False) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise invalid("'limits' must be an object")
    try:
        Limits.model_validate(dict(value))
    except ValidationError as error:
        raise invalid(describe(error, "limits")) from None
    checked: dict[str, Any] = limits_of(dict(value))
    if allow_null_values:
        for limit_name, number in value.items():
            if number is None:
                checked[limit_name] = None
    return checked


def _parse_iso8601(value: str) -> int:
    text = value.strip()
    if not text or len(text) > 64:
        raise invalid("'expires_at' must be epoch seconds (integer) or an ISO-8601 date-time")
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError as error:
        raise invalid("'expires_at' is not a valid ISO-8601 date-time") from error
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # a date-time without offset is UTC
    try:
        return math.floor(parsed.timestamp())
    except (OverflowError, ValueError, OSError) as error:
        raise invalid("'expires_at' is out of range") from error
