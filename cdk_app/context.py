"""Deployment options, read from CDK context (``cdk deploy -c quotagate:KEY=VALUE`` or cdk.json).

Every option has a default in code, so ``python -m cdk_app.app`` and ``cdk synth`` build the same
template when no context is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cdk_app import paths
from quotagate import settings
from quotagate.identity_sources import (
    DEFAULT_IDENTITY_SOURCES,
    IdentitySourceError,
    authorizer_cache_environment,
    identity_source_environment,
    identity_source_expressions,
    parse_identity_sources,
)

if TYPE_CHECKING:
    from constructs import Node

CONFIG_FILE = "quotagate:configFile"
IDENTITY_SOURCES = "quotagate:identitySources"
AUTHORIZER_CACHE_SECONDS = "quotagate:authorizerCacheSeconds"
LOG_RETENTION_DAYS = "quotagate:logRetentionDays"
THROTTLE_RATE_LIMIT = "quotagate:throttleRateLimit"
THROTTLE_BURST_LIMIT = "quotagate:throttleBurstLimit"
STAGE_NAME = "quotagate:stageName"
# Deploy safety and operations (see README "Deploying").
FUNCTION_URL = "quotagate:functionUrl"
WEB_ADAPTER_LAYER_ARN = "quotagate:webAdapterLayerArn"
RETAIN_DATA = "quotagate:retainData"
TERMINATION_PROTECTION = "quotagate:terminationProtection"
AUTHORIZER_CONCURRENCY = "quotagate:authorizerReservedConcurrency"
KEYS_CONCURRENCY = "quotagate:keysReservedConcurrency"
PROXY_CONCURRENCY = "quotagate:proxyReservedConcurrency"
REAPER_CONCURRENCY = "quotagate:reaperReservedConcurrency"
ACCOUNT_CONCURRENCY = "quotagate:accountConcurrencyLimit"
SECRETS_KMS_KEY_ARN = "quotagate:secretsKmsKeyArn"
ALARM_EMAIL = "quotagate:alarmEmail"
# JWT (customer IdP) settings: context key -> environment variable of the authorizer and the proxy.
JWT_CONTEXT_TO_ENV = {
    "quotagate:jwtIssuer": settings.JWT_ISSUER,
    "quotagate:jwtAudience": settings.JWT_AUDIENCE,
    "quotagate:jwtJwksUrl": settings.JWT_JWKS_URL,
    "quotagate:jwtPublicKeys": settings.JWT_PUBLIC_KEYS,
    "quotagate:jwtTenantClaim": settings.JWT_TENANT_CLAIM,
    "quotagate:jwtConsumerClaim": settings.JWT_CONSUMER_CLAIM,
    "quotagate:jwtPlanClaim": settings.JWT_PLAN_CLAIM,
}

OPERATIONS_KEYS = (
    FUNCTION_URL,
    WEB_ADAPTER_LAYER_ARN,
    RETAIN_DATA,
    TERMINATION_PROTECTION,
    AUTHORIZER_CONCURRENCY,
    KEYS_CONCURRENCY,
    PROXY_CONCURRENCY,
    REAPER_CONCURRENCY,
    ACCOUNT_CONCURRENCY,
    SECRETS_KMS_KEY_ARN,
    ALARM_EMAIL,
)

DEFAULT_AUTHORIZER_CACHE_SECONDS = 300
MAX_AUTHORIZER_CACHE_SECONDS = 3600
DEFAULT_LOG_RETENTION_DAYS = 30
DEFAULT_THROTTLE_RATE_LIMIT = 200
DEFAULT_THROTTLE_BURST_LIMIT = 400
DEFAULT_STAGE_NAME = "prod"
SECRETS_PREFIX = "quotagate/providers/"
# Reserved concurrency: none by default. Lambda keeps 100 of the account's concurrency unreserved, and
# a new account's quota can be far below 100, so any reservation can fail a first deploy. An operator
# who has checked the quota ("Concurrent executions", Service Quotas) sets it as ACCOUNT_CONCURRENCY
# and may then reserve; synthesis refuses reservations that would leave less than 100 unreserved.
DEFAULT_AUTHORIZER_CONCURRENCY = 0
DEFAULT_KEYS_CONCURRENCY = 0
DEFAULT_PROXY_CONCURRENCY = 0
DEFAULT_REAPER_CONCURRENCY = 0
# What Lambda always keeps unreserved in an account and region.
MINIMUM_UNRESERVED_CONCURRENCY = 100


class ContextError(ValueError):
    pass


def _as_int(value: Any, key: str, low: int, high: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ContextError(f"context {key} must be an integer, got {value!r}") from None
    if number < low or (high is not None and number > high):
        raise ContextError(f"context {key} must be between {low} and {high}, got {number}")
    return number


def _as_bool(value: Any, key: str) -> bool:
    """A boolean from context: JSON true/false, or the strings "true"/"false" of ``-c key=value``."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ContextError(f"context {key} must be true or false, got {value!r}")


def jwt_environment(context: dict[str, Any]) -> dict[str, str]:
    """Environment variables for the JWT settings that are configured (and only those)."""
    env = {}
    for key, variable in JWT_CONTEXT_TO_ENV.items():
        value = context.get(key)
        if value in (None, ""):
            continue
        # A JWKS given as a JSON object in cdk.json travels as a JSON string.
        env[variable] = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return env


@dataclass(frozen=True)
class DeploymentOptions:
    config_file: Path = paths.DEFAULT_CONFIG_FILE
    identity_sources: tuple[str, ...] = tuple(identity_source_expressions(DEFAULT_IDENTITY_SOURCES))
    authorizer_cache_seconds: int = DEFAULT_AUTHORIZER_CACHE_SECONDS
    log_retention_days: int = DEFAULT_LOG_RETENTION_DAYS
    throttle_rate_limit: int = DEFAULT_THROTTLE_RATE_LIMIT
    throttle_burst_limit: int = DEFAULT_THROTTLE_BURST_LIMIT
    stage_name: str = DEFAULT_STAGE_NAME
    jwt_env: dict[str, str] = field(default_factory=dict)
    function_url: bool = True
    web_adapter_layer_arn: str | None = None
    retain_data: bool = True
    # Off by default: the CDK CLI turns it on before executing a new stack's change set, and a stack
    # that failed creation must then be unprotected by hand before the retry can delete it.
    termination_protection: bool = False
    authorizer_concurrency: int = DEFAULT_AUTHORIZER_CONCURRENCY
    keys_concurrency: int = DEFAULT_KEYS_CONCURRENCY
    proxy_concurrency: int = DEFAULT_PROXY_CONCURRENCY
    reaper_concurrency: int = DEFAULT_REAPER_CONCURRENCY
    account_concurrency_limit: int | None = None
    secrets_kms_key_arn: str | None = None
    alarm_email: str | None = None
    # For the functions that authenticate: the credential headers, and how long the authorizer keeps
    # an answer per credential (API Gateway caches nothing: quotagate.identity_sources).
    identity_source_env: dict[str, str] = field(
        default_factory=lambda: {
            **identity_source_environment(DEFAULT_IDENTITY_SOURCES),
            **authorizer_cache_environment(DEFAULT_AUTHORIZER_CACHE_SECONDS),
        }
    )

    @classmethod
    def from_context(cls, context: dict[str, Any]) -> DeploymentOptions:
        config_file = Path(context.get(CONFIG_FILE) or paths.DEFAULT_CONFIG_FILE)
        if not config_file.is_absolute():
            config_file = (Path.cwd() / config_file).resolve()
        try:
            names = parse_identity_sources(context.get(IDENTITY_SOURCES))
        except IdentitySourceError as error:
            raise ContextError(f"context {IDENTITY_SOURCES}: {error}") from None
        cache = _as_int(
            context.get(AUTHORIZER_CACHE_SECONDS, DEFAULT_AUTHORIZER_CACHE_SECONDS),
            AUTHORIZER_CACHE_SECONDS,
            0,
            MAX_AUTHORIZER_CACHE_SECONDS,
        )
        if not names:
            raise ContextError(f"{IDENTITY_SOURCES} is empty: the credential is read only from identity sources")
        return cls(
            config_file=config_file,
            identity_sources=tuple(identity_source_expressions(names)),
            authorizer_cache_seconds=cache,
            log_retention_days=_as_int(
                context.get(LOG_RETENTION_DAYS, DEFAULT_LOG_RETENTION_DAYS), LOG_RETENTION_DAYS, 1
            ),
            throttle_rate_limit=_as_int(
                context.get(THROTTLE_RATE_LIMIT, DEFAULT_THROTTLE_RATE_LIMIT), THROTTLE_RATE_LIMIT, 1
            ),
            throttle_burst_limit=_as_int(
                context.get(THROTTLE_BURST_LIMIT, DEFAULT_THROTTLE_BURST_LIMIT), THROTTLE_BURST_LIMIT, 1
            ),
            stage_name=str(context.get(STAGE_NAME) or DEFAULT_STAGE_NAME),
            jwt_env=jwt_environment(context),
            function_url=_as_bool(context.get(FUNCTION_URL, True), FUNCTION_URL),
            web_adapter_layer_arn=str(context[WEB_ADAPTER_LAYER_ARN]) if context.get(WEB_ADAPTER_LAYER_ARN) else None,
            retain_data=_as_bool(context.get(RETAIN_DATA, True), RETAIN_DATA),
            termination_protection=_as_bool(context.get(TERMINATION_PROTECTION, False), TERMINATION_PROTECTION),
            authorizer_concurrency=_as_int(
                context.get(AUTHORIZER_CONCURRENCY, DEFAULT_AUTHORIZER_CONCURRENCY), AUTHORIZER_CONCURRENCY, 0
            ),
            keys_concurrency=_as_int(context.get(KEYS_CONCURRENCY, DEFAULT_KEYS_CONCURRENCY), KEYS_CONCURRENCY, 0),
            proxy_concurrency=_as_int(context.get(PROXY_CONCURRENCY, DEFAULT_PROXY_CONCURRENCY), PROXY_CONCURRENCY, 0),
            reaper_concurrency=_as_int(
                context.get(REAPER_CONCURRENCY, DEFAULT_REAPER_CONCURRENCY), REAPER_CONCURRENCY, 0
            ),
            account_concurrency_limit=(
                _as_int(context[ACCOUNT_CONCURRENCY], ACCOUNT_CONCURRENCY, 1)
                if context.get(ACCOUNT_CONCURRENCY) not in (None, "")
                else None
            ),
            secrets_kms_key_arn=str(context[SECRETS_KMS_KEY_ARN]) if context.get(SECRETS_KMS_KEY_ARN) else None,
            alarm_email=str(context[ALARM_EMAIL]) if context.get(ALARM_EMAIL) else None,
            identity_source_env={**identity_source_environment(names), **authorizer_cache_environment(cache)},
        )

    def __post_init__(self) -> None:
        check_reservations(self)

    @property
    def reserved_concurrency_total(self) -> int:
        return self.authorizer_concurrency + self.keys_concurrency + self.proxy_concurrency + self.reaper_concurrency

    @classmethod
    def from_node(cls, node: Node) -> DeploymentOptions:
        keys = [
            CONFIG_FILE,
            IDENTITY_SOURCES,
            AUTHORIZER_CACHE_SECONDS,
            LOG_RETENTION_DAYS,
            THROTTLE_RATE_LIMIT,
            THROTTLE_BURST_LIMIT,
            STAGE_NAME,
            *JWT_CONTEXT_TO_ENV,
            *OPERATIONS_KEYS,
        ]
        return cls.from_context({k: v for k in keys if (v := node.try_get_context(k)) is not None})


def check_reservations(options: DeploymentOptions) -> None:
    """Reservations only against a concurrency quota the operator has checked, and never more than
    it can give while keeping Lambda's 100 unreserved (else CloudFormation fails the deploy)."""
    total = options.reserved_concurrency_total
    if total == 0:
        return
    limit = options.account_concurrency_limit
    if limit is None:
        raise ContextError(
            f"reserved concurrency ({total} in all) needs {ACCOUNT_CONCURRENCY}: the account's "
            '"Concurrent executions" quota (Service Quotas, Lambda) in the target region, which must keep '
            f"{MINIMUM_UNRESERVED_CONCURRENCY} unreserved"
        )
    if total + MINIMUM_UNRESERVED_CONCURRENCY > limit:
        raise ContextError(
            f"reserved concurrency {total} leaves less than {MINIMUM_UNRESERVED_CONCURRENCY} of the account's "
            f"{limit} unreserved: lower the quotagate:*ReservedConcurrency settings or raise the quota "
            f"to at least {total + MINIMUM_UNRESERVED_CONCURRENCY}"
        )
