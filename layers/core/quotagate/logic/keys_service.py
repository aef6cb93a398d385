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

``parse`` validates a request ``{"action": ..., **fields}`` without any store I/O (the handler calls
it before it records an idempotent request): the models of :mod:`quotagate.logic.keys_models`,
parsed with Powertools' parser, check every field (unknown actions and unknown fields are refused,
each error names its field); then what needs context (the plan exists, the expiry is in the future,
the usage period). ``run`` executes the command through an explicit table of handlers; ``dispatch``
does both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.parser import parse as parse_event
from pydantic import ValidationError

from quotagate import apikeys, strict_json
from quotagate.auth_types import KeyStatus
from quotagate.config_models import Limits, describe, load_validated_config
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
from quotagate.logic.exceptions import KeysError
from quotagate.logic.keys_models import (
    ACTIONS,
    DEFAULT_GRACE_SECONDS,
    KEY_ISSUING_ACTIONS,
    MUTATING_ACTIONS,
    AnyKeysRequest,
    CreateKey,
    CreateTenant,
    GetKey,
    GetTenant,
    GetUsage,
    KeysRequest,
    ListKeys,
    RevokeKey,
    RotateKey,
    UpdateKey,
    UpdateTenant,
)
from quotagate.usage.periods import Granularity
from quotagate.usage.query import DynamoUsageReader, GroupBy, UsageQuery, UsageReader, period_range, read_usage

if TYPE_CHECKING:
    from quotagate.config import GatewayConfig
    from quotagate.key_derivation import KeySecretSource

__all__ = ["ACTIONS", "KEY_ISSUING_ACTIONS", "MUTATING_ACTIONS", "Command", "KeysError", "KeysService"]

_CREATE_ATTEMPTS = 3  # key id collisions (60 random bits) are practically impossible; retry anyway
_UPDATE_ATTEMPTS = 5  # re-reads after a concurrent change
MAX_SHOWN_ACTION = 64


def invalid(message: str) -> KeysError:
    return KeysError("invalid_request", message, 400)


def not_found(key_id: str) -> KeysError:
    return KeysError("not_found", f"key '{key_id}' not found", 404)


@dataclass(frozen=True)
class Command:
    """A validated request: ``KeysService.run`` executes it."""

    action: str
    params: dict[str, Any]


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

        # What each action runs: its checks that need context, then its change. Explicit tables,
        # so an action is a name in ACTIONS, a model in keys_models and one entry in each.
        self._resolvers: dict[str, Callable[[Any], dict[str, Any]]] = {
            "create_key": self._resolve_create_key,
            "list_keys": self._resolve_list_keys,
            "get_key": self._resolve_key_id,
            "revoke_key": self._resolve_key_id,
            "rotate_key": self._resolve_rotate_key,
            "update_key": self._resolve_update_key,
            "create_tenant": self._resolve_create_tenant,
            "get_tenant": self._resolve_get_tenant,
            "update_tenant": self._resolve_update_tenant,
            "get_usage": self._resolve_get_usage,
        }
        self._handlers: dict[str, Callable[..., dict[str, Any]]] = {
            "create_key": self._do_create_key,
            "list_keys": self._do_list_keys,
            "get_key": self._do_get_key,
            "revoke_key": self._do_revoke_key,
            "rotate_key": self._do_rotate_key,
            "update_key": self._do_update_key,
            "create_tenant": self._do_create_tenant,
            "get_tenant": self._do_get_tenant,
            "update_tenant": self._do_update_tenant,
            "get_usage": self._do_get_usage,
        }
        assert set(self._resolvers) == set(self._handlers) == set(ACTIONS)

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
        if action not in ACTIONS:
            shown = action if len(action) <= MAX_SHOWN_ACTION else action[:MAX_SHOWN_ACTION] + "..."
            raise KeysError("unknown_action", f"unknown action '{shown}' (one of: {', '.join(ACTIONS)})")
        try:
            parsed: AnyKeysRequest = parse_event(event=dict(request), model=KeysRequest).root
        except ValidationError as error:
            raise invalid(describe(error, skip=1)) from None  # skip: the union's tag (the action)
        return Command(action, self._resolvers[action](parsed))

    def run(self, command: Command, key_secret: KeySecretSource | None = None) -> Any:
        """Execute a validated command. ``key_secret`` makes the secret part of the key that
        ``create_key``/``rotate_key`` issue (from the key id and the record's new version; default:
        random) — for idempotent requests, derived so that a replay needs no stored plaintext."""
        handler = self._handlers[command.action]
        if command.action in KEY_ISSUING_ACTIONS:
            return handler(**command.params, key_secret=key_secret)
        return handler(**command.params)

    def dispatch(self, request: Any) -> Any:
        return self.run(self.parse(request))

    # The actions as methods (for Python callers and tests): ``dispatch`` of their fields.
    def create_key(self, **fields: Any) -> dict[str, Any]:
        """A new key. The result is the public record plus ``api_key``: the plaintext, shown once."""
        return dict(self.dispatch({"action": "create_key", **fields}))

    def list_keys(self, tenant: Any, **fields: Any) -> dict[str, Any]:
        """Public views of a tenant's keys (optionally one consumer's), oldest first."""
        return dict(self.dispatch({"action": "list_keys", "tenant": tenant, **fields}))

    def get_key(self, key_id: Any, **fields: Any) -> dict[str, Any]:
        """The public view of one key; with ``tenant``, a key of another tenant is 'not found'."""
        return dict(self.dispatch({"action": "get_key", "key_id": key_id, **fields}))

    def revoke_key(self, key_id: Any, **fields: Any) -> dict[str, Any]:
        """Revoke for good. Revoking a revoked key changes nothing and returns it."""
        return dict(self.dispatch({"action": "revoke_key", "key_id": key_id, **fields}))

    def rotate_key(self, key_id: Any, **fields: Any) -> dict[str, Any]:
        """A new secret for the same key id (plaintext in ``api_key``, once); the replaced key keeps
        working for ``grace_seconds`` (default an hour; 0: not at all)."""
        return dict(self.dispatch({"action": "rotate_key", "key_id": key_id, **fields}))

    def update_key(self, key_id: Any, **fields: Any) -> dict[str, Any]:
        """Change a key. Fields not given stay as they are; ``None`` clears ``allowed_models`` (all
        the plan's models), ``expires_at`` (never expires), ``name``, ``metadata`` and ``limits`` (no
        overrides). ``limits`` given as an object is merged into the current overrides (a null value
        removes that one override). ``status`` is "active" or "disabled"; a revoked key is final."""
        return dict(self.dispatch({"action": "update_key", "key_id": key_id, **fields}))

    def create_tenant(self, tenant: Any, **fields: Any) -> dict[str, Any]:
        """A tenant record: ``limits`` shared by every key and JWT of the tenant (whatever their
        plans). A tenant without a record gets the config's ``default_tenant_limits``."""
        return dict(self.dispatch({"action": "create_tenant", "tenant": tenant, **fields}))

    def get_tenant(self, tenant: Any) -> dict[str, Any]:
        """The tenant's record."""
        return dict(self.dispatch({"action": "get_tenant", "tenant": tenant}))

    def update_tenant(self, tenant: Any, **fields: Any) -> dict[str, Any]:
        """Change a tenant's limits: an object is merged (a null value removes that limit); null
        removes them all (the tenant then has no limits, not the defaults)."""
        return dict(self.dispatch({"action": "update_tenant", "tenant": tenant, **fields}))

    def get_usage(self, tenant: Any, **fields: Any) -> dict[str, Any]:
        """A tenant's usage series (requests, tokens, micro-dollars, requests by outcome) per hour, day
        or month from the rollup's aggregates: the tenant's, one key's, one consumer's (its keys
        summed), one model's, or ``by`` model or key. ``from``/``to``: ISO dates or date-times."""
        return dict(self.dispatch({"action": "get_usage", "tenant": tenant, **fields}))

    # ------------------------------------------------------------- checks that need context

    def _resolve_create_key(self, request: CreateKey) -> dict[str, Any]:
        return {
            "tenant": request.tenant,
            "consumer": request.consumer,
            "plan": self._plan(request.plan),
            "name": request.name,
            "expires_at": self._expires_at(request.expires_at),
            "allowed_models": request.allowed_models,
            "metadata": request.metadata or {},
            "limits": _set_limits(request.limits),
        }

    def _resolve_list_keys(self, request: ListKeys) -> dict[str, Any]:
        return {"tenant": request.tenant, "consumer": request.consumer}

    def _resolve_key_id(self, request: GetKey | RevokeKey) -> dict[str, Any]:
        return {"key_id": request.key_id, "tenant": request.tenant}

    def _resolve_rotate_key(self, request: RotateKey) -> dict[str, Any]:
        grace = DEFAULT_GRACE_SECONDS if request.grace_seconds is None else request.grace_seconds
        return {"key_id": request.key_id, "grace_seconds": grace, "tenant": request.tenant}

    def _resolve_update_key(self, request: UpdateKey) -> dict[str, Any]:
        changes: dict[str, Any] = {name: getattr(request, name) for name in request.changed_fields()}
        if "plan" in changes:
            changes["plan"] = self._plan(request.plan)
        if "expires_at" in changes:
            changes["expires_at"] = self._expires_at(request.expires_at)
        if "status" in changes:
            changes["status"] = KeyStatus(changes["status"])
        if "limits" in changes:
            # None removes every override; an object is merged (its null values remove one override).
            changes["limits"] = _changed_limits(request.limits)
        return {"key_id": request.key_id, "tenant": request.tenant, "changes": changes}

    def _resolve_create_tenant(self, request: CreateTenant) -> dict[str, Any]:
        return {"tenant": request.tenant, "limits": _set_limits(request.limits)}

    def _resolve_get_tenant(self, request: GetTenant) -> dict[str, Any]:
        return {"tenant": request.tenant}

    def _resolve_update_tenant(self, request: UpdateTenant) -> dict[str, Any]:
        # Like update_key: null removes every limit; an object is merged (null values remove one).
        return {"tenant": request.tenant, "limits": _changed_limits(request.limits)}

    def _resolve_get_usage(self, request: GetUsage) -> dict[str, Any]:
        granularity = request.granularity or Granularity.DAY
        try:
            start, end = period_range(granularity, request.from_, request.to, self._clock())
        except ValueError as error:
            raise invalid(f"bad period: {error}") from None
        return {
            "tenant": request.tenant,
            "granularity": granularity,
            "start": start,
            "end": end,
            "key_id": request.key_id,
            "consumer": request.consumer,
            "model": request.model,
            "by": request.by,
        }

    def _plan(self, plan: str | None) -> str:
        assert plan is not None  # the models refuse a null plan
        config = self._config_loader()
        if config.plan(plan) is None:
            shown = plan if len(plan) <= 64 else plan[:64] + "..."
            raise KeysError("unknown_plan", f"unknown plan '{shown}' (known: {', '.join(sorted(config.plans))})", 400)
        return plan

    def _expires_at(self, epoch: int | None) -> int | None:
        if epoch is not None and epoch <= self._clock():
            raise invalid("expires_at: must be in the future")
        return epoch

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
                status=KeyStatus.ACTIVE,
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
            if record.status == KeyStatus.REVOKED:
                return None  # already revoked: nothing to do
            # The grace of a rotated-out key ends with the key.
            return replace(
                record,
                status=KeyStatus.REVOKED,
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
    if record.status == KeyStatus.REVOKED:
        raise KeysError("conflict", f"key '{record.key_id}' is revoked; a revoked key cannot be changed", 409)


def _set_limits(limits: Limits | None) -> dict[str, Any]:
    """The limits a new record gets: those set (a null value is no limit)."""
    return {} if limits is None else limits.model_dump(exclude_none=True)


def _changed_limits(limits: Limits | None) -> dict[str, Any] | None:
    """An update's limits: None removes them all; else the given ones, a null removing that one."""
    return None if limits is None else limits.model_dump(exclude_unset=True)
