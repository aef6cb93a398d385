"""The configuration document as pydantic models: every field typed, unknown fields refused.

:func:`parse_config` validates with these models where a configuration comes from a
person (the CDK synth, which writes the SSM parameter the functions read, the keys function, local
mode's start-up, the CLI); the proxy's hot path builds its plain dataclasses from the already
validated document without importing pydantic (see :func:`quotagate.config.load_config`).

Every error is a :class:`~quotagate.config.ConfigError` naming the dotted path of the bad field, e.g.
``plans.pro.default_max_tokens: must be greater than 0``; all of a document's errors are reported at once.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

from quotagate.config import (
    LIMIT_NAMES,
    AuthHeader,
    ConfigError,
    GatewayConfig,
    HostedTool,
    MaxOutputField,
    ProviderType,
    TierMismatchPolicy,
    UnknownFieldsPolicy,
    build_config,
    expand_variables,
    load_cached,
)

# Limits are stored in DynamoDB (key and tenant records): numbers in its range only.
MAX_LIMIT_VALUE = 1e15
MIN_STORED_MAGNITUDE = 1e-130
MAX_STORED_MAGNITUDE = 1e125


def storable_number(number: float) -> bool:
    """Whether DynamoDB can store the number (0, or a magnitude from 1e-130 to 1e125)."""
    return number == 0 or MIN_STORED_MAGNITUDE <= abs(number) <= MAX_STORED_MAGNITUDE


def _dollars(number: float) -> float:
    if not math.isfinite(number):
        raise PydanticCustomError("finite_number", "must be a finite number")
    if not 0 <= number <= MAX_LIMIT_VALUE:
        raise PydanticCustomError("range", "must be from 0 to {maximum}", {"maximum": MAX_LIMIT_VALUE})
    if not storable_number(number):
        raise PydanticCustomError("not_storable", "must be 0 or at least {minimum}", {"minimum": MIN_STORED_MAGNITUDE})
    return number


def one_error(message: str) -> WrapValidator:
    """Report a union's failure as one message instead of one per member."""

    def validate(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("type", message) from None

    return WrapValidator(validate)


class StrictModel(BaseModel):
    """No field beyond the declared ones, no type coercion (``"5"`` is not 5, ``true`` is not 1)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# A StrEnum field takes its values as JSON strings (strict mode would want enum instances).
ProviderTypeField = Annotated[ProviderType, Field(strict=False)]
TierMismatchPolicyField = Annotated[TierMismatchPolicy, Field(strict=False)]
HostedToolField = Annotated[HostedTool, Field(strict=False)]
UnknownFieldsPolicyField = Annotated[UnknownFieldsPolicy, Field(strict=False)]
Count = Annotated[int, Field(ge=0, le=MAX_LIMIT_VALUE)]
# int | float: a whole number of dollars stays an int (as given) in the records and the answers.
Dollars = Annotated[int | float, one_error("must be a number"), AfterValidator(_dollars)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Text = Annotated[str, Field(min_length=1)]


def _http_url(value: str) -> str:
    if value and not re.fullmatch(r"https?://\S+", value):
        raise PydanticCustomError("url", "must be an http:// or https:// URL")
    return value


BaseUrl = Annotated[str, AfterValidator(_http_url)]  # "" for bedrock (the AWS endpoint)


def _plan_models(value: Any) -> Any:
    if value is None or value == "*" or (isinstance(value, list) and all(isinstance(m, str) for m in value)):
        return value
    raise PydanticCustomError("plan_models", 'must be "*" or a list of model names')


PlanModels = Annotated[Any, AfterValidator(_plan_models)]  # None and "*": every model


class Limits(StrictModel):
    """Limits of a plan (per key), of a tenant, or a key's overrides. A null value is no limit.
    Requests and tokens are whole numbers; dollars may be fractional."""

    requests_per_minute: Count | None = None
    tokens_per_minute: Count | None = None
    tokens_per_day: Count | None = None
    tokens_per_month: Count | None = None
    usd_per_day: Dollars | None = None
    usd_per_month: Dollars | None = None
    max_tokens_per_request: Count | None = None
    max_concurrent_requests: Count | None = None


assert tuple(Limits.model_fields) == LIMIT_NAMES


class ProviderDocument(StrictModel):
    type: ProviderTypeField = ProviderType.OPENAI
    base_url: BaseUrl | None = None
    api_key_secret: Text | None = None
    connect_timeout: Seconds | None = None
    read_timeout: Seconds | None = None
    region: str | None = None
    prompt_token_factor: Annotated[float, Field(ge=1, allow_inf_nan=False)] | None = None
    auth_header: AuthHeader = "authorization"
    max_output_field: MaxOutputField = "max_tokens"

    @model_validator(mode="after")
    def _base_url_unless_bedrock(self) -> ProviderDocument:
        if not self.base_url and self.type != ProviderType.BEDROCK:
            raise PydanticCustomError(
                "base_url_required", "base_url is required for a provider of type '{kind}'", {"kind": str(self.type)}
            )
        return self


# A price multiplier (service tier, inference geography, fast mode): flex tiers cost less than 1x.
Factor = Annotated[float, Field(gt=0, le=1000, allow_inf_nan=False)]
OptionName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9_-]+$")]


class PriceDocument(StrictModel):
    """Token prices, and what changes them (see :class:`quotagate.config.Price`)."""

    input_per_million: NonNegative = 0.0
    output_per_million: NonNegative = 0.0
    audio_input_per_million: NonNegative | None = None
    audio_output_per_million: NonNegative | None = None
    service_tiers: dict[OptionName, Factor] | None = None
    inference_geos: dict[OptionName, Factor] | None = None
    fast_mode: Factor | None = None
    tool_calls_usd: dict[HostedToolField, NonNegative] | None = None


class TimeoutsDocument(StrictModel):
    connect: Seconds | None = None
    first_byte: Seconds | None = None
    idle: Seconds | None = None


class TargetDocument(StrictModel):
    provider: str
    upstream_model: Text | None = None
    price: PriceDocument | None = None
    weight: NonNegative | None = None
    plans: list[str] | None = None
    timeouts: TimeoutsDocument | None = None
    max_output_tokens: PositiveInt | None = None
    max_output_field: MaxOutputField | None = None
    image_tokens: PositiveInt | None = None
    reasoning: bool = False


TARGET_FIELDS = frozenset(TargetDocument.model_fields)


class ModelDocument(StrictModel):
    """A model name: an alias with ``targets``, or the simple form (one target's fields inline)."""

    targets: Annotated[list[TargetDocument], Field(min_length=1)] | None = None
    on_tier_mismatch: TierMismatchPolicyField | None = None
    downgrade_to: Text | None = None
    sticky: bool = False
    deadline: Seconds | None = None
    created: Annotated[int, Field(ge=0)] | None = None  # Unix seconds
    # Request fields the gateway does not declare: dropped and named (default), or a 400.
    unknown_fields: UnknownFieldsPolicyField | None = None
    # The simple form's target.
    provider: str | None = None
    upstream_model: Text | None = None
    price: PriceDocument | None = None
    weight: NonNegative | None = None
    plans: list[str] | None = None
    timeouts: TimeoutsDocument | None = None
    max_output_tokens: PositiveInt | None = None
    max_output_field: MaxOutputField | None = None
    image_tokens: PositiveInt | None = None
    reasoning: bool | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ModelDocument:
        inline = sorted(TARGET_FIELDS & self.model_fields_set)
        if self.targets is not None and inline:
            raise PydanticCustomError(
                "unknown_field",
                "unknown field(s) {fields}: an alias with targets takes them per target",
                {"fields": ", ".join(inline)},
            )
        if self.targets is None and self.provider is None:
            raise PydanticCustomError("model_form", "give either provider (one target) or targets")
        policy = self.on_tier_mismatch
        if self.downgrade_to is not None and policy not in (None, TierMismatchPolicy.DOWNGRADE):
            raise PydanticCustomError("downgrade", "downgrade_to needs on_tier_mismatch 'downgrade'")
        return self


class PlanDocument(StrictModel):
    limits: Limits | None = None
    models: PlanModels = None
    default_max_tokens: PositiveInt = 1024

    @model_validator(mode="before")
    @classmethod
    def _no_tenant_limits(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tenant_limits" in data:
            # A key's plan cannot decide what its whole tenant may spend (keys on different plans
            # would each bring their own tenant limit, and keys without one would not count).
            raise PydanticCustomError(
                "tenant_limits",
                "tenant_limits is no longer supported: tenant limits live on tenant records (keys API "
                "create_tenant/update_tenant); the config's default_tenant_limits apply to tenants without a record",
            )
        return data


class BreakerDocument(StrictModel):
    failure_threshold: PositiveInt = 5
    tenant_threshold: PositiveInt = 3
    cooldown_seconds: Seconds = 30.0
    probe_lease_seconds: Seconds = 60.0
    cache_seconds: NonNegative = 2.0


class GatewayDocument(StrictModel):
    providers: dict[str, ProviderDocument] = Field(default_factory=dict)
    models: dict[str, ModelDocument] = Field(default_factory=dict)
    plans: dict[str, PlanDocument] = Field(default_factory=dict)
    default_plan: str | None = None  # None: the first plan
    circuit_breaker: BreakerDocument | None = None
    default_tenant_limits: Limits | None = None


# -- errors ---------------------------------------------------------------------------------------
MAX_SHOWN_ERRORS = 10


def error_path(loc: tuple[int | str, ...], root: str = "") -> str:
    """``("models", "chat", "targets", 0, "weight")`` -> ``models.chat.targets[0].weight``."""
    path = root
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            shown = part if len(part) <= 64 else part[:64] + "..."
            path += f".{shown}" if path else shown
    return path


def error_message(error: ErrorDetails) -> str:
    """Pydantic's message, said the way the rest of the gateway says it."""
    kind = error["type"]
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "is required"
    if kind == "too_short" and isinstance(error.get("input"), list):
        return "must be a non-empty list"
    if kind == "string_too_short" and (error.get("ctx") or {}).get("min_length") == 1:
        return "must be a non-empty string"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be an object"
    if kind == "list_type":
        return "must be a list"
    if kind == "too_long" and isinstance(error.get("input"), list):
        return f"must have at most {(error.get('ctx') or {}).get('max_length')} items"
    message = error["msg"]
    if message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
    return message


def describe(error: ValidationError, root: str = "", skip: int = 0) -> str:
    """Every error of ``error`` as ``path: message``, separated by ``; ``. ``skip``: leading parts of
    each location to leave out (a discriminated union's tag)."""
    parts = []
    for detail in error.errors(include_url=False)[:MAX_SHOWN_ERRORS]:
        path = error_path(detail["loc"][skip:], root)
        message = error_message(detail)
        parts.append(f"{path}: {message}" if path else message)
    hidden = error.error_count() - MAX_SHOWN_ERRORS
    if hidden > 0:
        parts.append(f"and {hidden} more")
    return "; ".join(parts)


# -- the whole document ---------------------------------------------------------------------------
def validate_document(raw: Any) -> GatewayConfig:
    """The configuration of a document whose ``${VAR}`` references are already expanded: every field
    checked by the models, then the names that refer to one another. Raises ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError("the configuration must be a JSON object")
    try:
        GatewayDocument.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(describe(error)) from None
    config = build_config(raw)
    problems = reference_errors(config)
    if problems:
        raise ConfigError("; ".join(problems))
    return config


def reference_errors(config: GatewayConfig) -> list[str]:
    """Names that must exist: providers and plans of targets, downgrade models, the default plan."""
    problems: list[str] = []
    for model in config.models.values():
        where = f"models.{model.name}"
        for i, target in enumerate(model.targets):
            if target.provider not in config.providers:
                problems.append(f"{where}: target {i} names unknown provider {target.provider!r}")
            unknown = sorted(set(target.plans or ()) - set(config.plans))
            if unknown:
                problems.append(f"{where}: target {i} names unknown plan(s) {', '.join(unknown)}")
        ids = [t.id for t in model.targets]
        if len(set(ids)) != len(ids):
            problems.append(f"{where}.targets lists the same provider/upstream_model twice")
        if model.downgrade_to is not None and (
            model.downgrade_to not in config.models or model.downgrade_to == model.name
        ):
            problems.append(f"{where}.downgrade_to names unknown model {model.downgrade_to!r}")
    if config.default_plan not in config.plans:
        shown = config.default_plan[:64]
        problems.append(f"default_plan '{shown}' is not a plan")
    return problems


def parse_config(raw: Any) -> GatewayConfig:
    """Validate a configuration document with the models (every field, every cross-reference) and
    build it. Raises :class:`ConfigError` naming the path of each bad field."""
    return validate_document(expand_variables(raw))


def load_validated_config(force: bool = False) -> GatewayConfig:
    """The current configuration, validated with the models (raises ConfigError), re-read at most
    once a minute: for the keys function, local mode's start-up and the CLI."""
    return load_cached("validated", parse_config, force)
