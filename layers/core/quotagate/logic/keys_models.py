"""The keys API's requests as pydantic models: one model per action, a discriminated union on
``action`` (:data:`KeysRequest`), parsed with Powertools' parser by
:meth:`quotagate.logic.keys_service.KeysService.parse`.

The models check everything that needs no context: types (no coercion: ``"60"`` is not 60, ``true``
is not 1), ranges, formats and unknown fields. What needs the configuration, the clock or the store
(the plan exists, the expiry is in the future, the usage period) is checked by the service.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    RootModel,
    model_validator,
)
from pydantic_core import PydanticCustomError

from quotagate import apikeys
from quotagate.auth_types import KeyStatus
from quotagate.config_models import Limits, StrictModel, storable_number
from quotagate.usage.periods import Granularity
from quotagate.usage.query import GroupBy

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

DEFAULT_GRACE_SECONDS = 3600
MAX_GRACE_SECONDS = 7 * 24 * 3600
MAX_NAME_LENGTH = 128
MAX_ALLOWED_MODELS = 64
MAX_MODEL_NAME_LENGTH = 128
MAX_METADATA_BYTES = 2048  # compact JSON
MAX_METADATA_KEYS = 32
MAX_METADATA_KEY_LENGTH = 64
MAX_USAGE_MODEL_LENGTH = 256
# Epoch seconds bounds for expires_at: after 2000-01-01, before 3000-01-01.
MIN_EPOCH = 946684800
MAX_EPOCH = 32503680000
# Tenant and consumer ids: what SaaS backends commonly use (slugs, UUIDs, emails, "org:123").
IDENTIFIER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+/-]{0,127}$")
REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


def _fail(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


def _matching(pattern: re.Pattern[str], message: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise _fail("format", message)
        return value

    return check


Identifier = Annotated[
    str,
    AfterValidator(
        _matching(
            IDENTIFIER_RE,
            "must be 1-128 characters: letters, digits and . _ : @ + / - (starting with a letter or digit)",
        )
    ),
]
KeyId = Annotated[
    str,
    AfterValidator(_matching(apikeys.KEY_ID_RE, f"must be a key id ({apikeys.KEY_ID_LENGTH} characters a-z, 2-7)")),
]
RequestId = Annotated[
    str,
    AfterValidator(
        _matching(
            REQUEST_ID_RE, "must be 1-128 characters: letters, digits and . _ : - (starting with a letter or digit)"
        )
    ),
]
PlanName = Annotated[str, Field(min_length=1)]


def _usage_key(value: str) -> str:
    """A key dimension of usage: a gateway key id, or ``jwt:<subject>`` for a JWT caller."""
    if value.startswith("jwt:") and 4 < len(value) <= 260:
        return value
    if apikeys.KEY_ID_RE.fullmatch(value):
        return value
    raise _fail("format", f"must be a key id ({apikeys.KEY_ID_LENGTH} characters a-z, 2-7) or jwt:<subject>")


UsageKey = Annotated[str, AfterValidator(_usage_key)]


def _printable_text(max_length: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not value.strip() or len(value) > max_length or not value.isprintable():
            raise _fail("text", f"must be 1-{max_length} printable characters, not only spaces")
        return value

    return check


Name = Annotated[str, AfterValidator(_printable_text(MAX_NAME_LENGTH))]
ModelName = Annotated[str, AfterValidator(_printable_text(MAX_MODEL_NAME_LENGTH))]


def _unique(models: list[str]) -> list[str]:
    return list(dict.fromkeys(models))


# null (the default) means every model of the plan: an empty list would allow none.
AllowedModels = Annotated[list[ModelName], Field(min_length=1, max_length=MAX_ALLOWED_MODELS), AfterValidator(_unique)]


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


def _metadata(value: dict[str, Any]) -> dict[str, Any]:
    if len(value) > MAX_METADATA_KEYS:
        raise _fail("metadata", f"may have at most {MAX_METADATA_KEYS} keys")
    if not all(0 < len(key) <= MAX_METADATA_KEY_LENGTH for key in value):
        raise _fail("metadata", f"keys must be strings of 1-{MAX_METADATA_KEY_LENGTH} characters")
    try:
        encoded = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        raise _fail("metadata", "must contain only JSON values (no NaN or infinity)") from None
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        raise _fail("metadata", f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    if not all(storable_number(number) for number in _numbers_in(value)):
        # DynamoDB's number range: a number outside it would fail the write as an internal error.
        raise _fail("metadata", "numbers must be 0 or of a magnitude from 1e-130 to 1e+125")
    # A copy through JSON: what is stored is exactly what was validated (no shared references).
    copied: dict[str, Any] = json.loads(encoded)
    return copied


Metadata = Annotated[dict[str, Any], AfterValidator(_metadata)]


def _epoch_seconds(value: Any) -> Any:
    """``expires_at``: epoch seconds, or an ISO-8601 date-time (UTC when it has no offset)."""
    if isinstance(value, str):
        text = value.strip()
        if not text or len(text) > 64:
            raise _fail("expires_at", "must be epoch seconds (integer) or an ISO-8601 date-time")
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise _fail("expires_at", "is not a valid ISO-8601 date-time") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        try:
            return math.floor(parsed.timestamp())
        except (OverflowError, ValueError, OSError):
            raise _fail("expires_at", "is out of range") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail("expires_at", "must be epoch seconds (integer) or an ISO-8601 date-time")
    return value


# Epoch seconds after validation (the service checks that it is in the future).
ExpiresAt = Annotated[int, Field(ge=MIN_EPOCH, lt=MAX_EPOCH), BeforeValidator(_epoch_seconds)]

SettableStatus = Literal["active", "disabled"]  # revoke_key revokes
assert set(get_args(SettableStatus)) == {KeyStatus.ACTIVE, KeyStatus.DISABLED}


def _not_revoked(value: Any) -> Any:
    if value == KeyStatus.REVOKED:
        raise _fail("status", "use the revoke_key action to revoke a key")
    return value


Status = Annotated[SettableStatus, BeforeValidator(_not_revoked)]
GranularityField = Annotated[Granularity, Field(strict=False)]
GroupByField = Annotated[GroupBy, Field(strict=False)]
PeriodBound = Annotated[str, Field(min_length=1, max_length=64)]  # an ISO-8601 date or date-time
UsageModel = Annotated[str, Field(min_length=1, max_length=MAX_USAGE_MODEL_LENGTH)]


# -- requests -------------------------------------------------------------------------------------
class KeysRequestBase(StrictModel):
    # A caller's id for idempotent retries of mutating actions (see functions/keys/handler.py).
    request_id: RequestId | None = None


class CreateKey(KeysRequestBase):
    action: Literal["create_key"]
    tenant: Identifier
    consumer: Identifier
    plan: PlanName
    name: Name | None = None
    expires_at: ExpiresAt | None = None
    allowed_models: AllowedModels | None = None
    metadata: Metadata | None = None
    limits: Limits | None = None


class ListKeys(KeysRequestBase):
    action: Literal["list_keys"]
    tenant: Identifier
    consumer: Identifier | None = None


class GetKey(KeysRequestBase):
    action: Literal["get_key"]
    key_id: KeyId
    tenant: Identifier | None = None  # a key of another tenant is "not found"


class RevokeKey(KeysRequestBase):
    action: Literal["revoke_key"]
    key_id: KeyId
    tenant: Identifier | None = None


class RotateKey(KeysRequestBase):
    action: Literal["rotate_key"]
    key_id: KeyId
    tenant: Identifier | None = None
    grace_seconds: Annotated[int, Field(ge=0, le=MAX_GRACE_SECONDS)] | None = None  # None: the default


# The fields of update_key that change something (at least one is required). None clears
# allowed_models, expires_at, name, metadata and limits; it is refused for plan and status.
UPDATE_FIELDS = ("plan", "allowed_models", "expires_at", "status", "limits", "name", "metadata")
NOT_NULLABLE_UPDATE_FIELDS = ("plan", "status")


class UpdateKey(KeysRequestBase):
    action: Literal["update_key"]
    key_id: KeyId
    tenant: Identifier | None = None
    plan: PlanName | None = None
    allowed_models: AllowedModels | None = None
    expires_at: ExpiresAt | None = None
    status: Status | None = None
    limits: Limits | None = None  # merged into the key's overrides (a null value removes one)
    name: Name | None = None
    metadata: Metadata | None = None

    @model_validator(mode="after")
    def _changes_something(self) -> UpdateKey:
        given = self.changed_fields()
        if not given:
            raise _fail("nothing_to_update", f"nothing to update: give at least one of {', '.join(UPDATE_FIELDS)}")
        for name in NOT_NULLABLE_UPDATE_FIELDS:
            if name in given and getattr(self, name) is None:
                raise _fail("null", f"{name} may not be null")
        return self

    def changed_fields(self) -> list[str]:
        return [name for name in UPDATE_FIELDS if name in self.model_fields_set]


class CreateTenant(KeysRequestBase):
    action: Literal["create_tenant"]
    tenant: Identifier
    limits: Limits | None = None


class GetTenant(KeysRequestBase):
    action: Literal["get_tenant"]
    tenant: Identifier


class UpdateTenant(KeysRequestBase):
    action: Literal["update_tenant"]
    tenant: Identifier
    limits: Limits | None  # required: an object is merged (a null value removes one), null removes all


class GetUsage(KeysRequestBase):
    action: Literal["get_usage"]
    tenant: Identifier
    key_id: UsageKey | None = None
    consumer: Identifier | None = None
    model: UsageModel | None = None
    granularity: GranularityField | None = None  # None: day
    by: GroupByField | None = None
    from_: PeriodBound | None = Field(default=None, alias="from")
    to: PeriodBound | None = None

    @model_validator(mode="after")
    def _one_dimension(self) -> GetUsage:
        chosen = [name for name in ("key_id", "consumer", "model", "by") if getattr(self, name) is not None]
        if len(chosen) > 1:
            raise _fail(
                "dimensions",
                "usage is aggregated per tenant, per key and per model: give at most one of "
                f"key_id, consumer, model, by (got {', '.join(chosen)})",
            )
        return self


AnyKeysRequest = (
    CreateKey
    | ListKeys
    | GetKey
    | RevokeKey
    | RotateKey
    | UpdateKey
    | CreateTenant
    | GetTenant
    | UpdateTenant
    | GetUsage
)


class KeysRequest(RootModel[Annotated[AnyKeysRequest, Field(discriminator="action")]]):
    """A keys API request: the model of its ``action``."""


@dataclass(frozen=True)
class ActionSpec:
    model: type[KeysRequestBase]
    mutating: bool  # changes a record (idempotent with a request_id)

    def _fields(self) -> dict[str, bool]:
        return {
            info.alias or name: info.is_required()
            for name, info in self.model.model_fields.items()
            if name not in ("action", "request_id")
        }

    @property
    def required(self) -> frozenset[str]:
        return frozenset(name for name, required in self._fields().items() if required)

    @property
    def optional(self) -> frozenset[str]:
        return frozenset(name for name, required in self._fields().items() if not required)


ACTIONS: dict[str, ActionSpec] = {
    "create_key": ActionSpec(CreateKey, mutating=True),
    "list_keys": ActionSpec(ListKeys, mutating=False),
    "get_key": ActionSpec(GetKey, mutating=False),
    "revoke_key": ActionSpec(RevokeKey, mutating=True),
    "rotate_key": ActionSpec(RotateKey, mutating=True),
    "update_key": ActionSpec(UpdateKey, mutating=True),
    "create_tenant": ActionSpec(CreateTenant, mutating=True),
    "get_tenant": ActionSpec(GetTenant, mutating=False),
    "update_tenant": ActionSpec(UpdateTenant, mutating=True),
    "get_usage": ActionSpec(GetUsage, mutating=False),
}
assert set(ACTIONS) == {get_args(m.model_fields["action"].annotation)[0] for m in get_args(AnyKeysRequest)}
# Actions whose result carries a new plaintext key (``api_key``).
KEY_ISSUING_ACTIONS = frozenset({"create_key", "rotate_key"})
MUTATING_ACTIONS = frozenset(name for name, spec in ACTIONS.items() if spec.mutating)
