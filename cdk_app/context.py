"""Deployment options, read from CDK context (``cdk deploy -c quotagate:KEY=VALUE`` or cdk.json).

Every option has a default in code, so ``python -m cdk_app.app`` and ``cdk synth`` build the same
template when no context is given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from constructs import Node

from cdk_app import paths
from quotagate import settings

CONFIG_FILE = "quotagate:configFile"
IDENTITY_SOURCES = "quotagate:identitySources"
AUTHORIZER_CACHE_SECONDS = "quotagate:authorizerCacheSeconds"
LOG_RETENTION_DAYS = "quotagate:logRetentionDays"
THROTTLE_RATE_LIMIT = "quotagate:throttleRateLimit"
THROTTLE_BURST_LIMIT = "quotagate:throttleBurstLimit"
STAGE_NAME = "quotagate:stageName"
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

DEFAULT_IDENTITY_SOURCES = ("Authorization",)
DEFAULT_AUTHORIZER_CACHE_SECONDS = 300
MAX_AUTHORIZER_CACHE_SECONDS = 3600
DEFAULT_LOG_RETENTION_DAYS = 30
DEFAULT_THROTTLE_RATE_LIMIT = 200
DEFAULT_THROTTLE_BURST_LIMIT = 400
DEFAULT_STAGE_NAME = "prod"
SECRETS_PREFIX = "quotagate/providers/"


class ContextError(ValueError):
    pass


def _as_list(value: Any, key: str) -> list[str]:
    """A list from context: a JSON list, a JSON-encoded list, or a comma-separated string."""
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [p for p in text.split(",")]
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ContextError(f"context {key} must be a list of strings")
    return [v.strip() for v in value if v.strip()]


def _as_int(value: Any, key: str, low: int, high: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ContextError(f"context {key} must be an integer, got {value!r}") from None
    if number < low or (high is not None and number > high):
        raise ContextError(f"context {key} must be between {low} and {high}, got {number}")
    return number


def identity_source_expressions(names: list[str]) -> list[str]:
    """API Gateway identity source expressions; bare names are request headers."""
    expressions = []
    for name in names:
        expressions.append(
            name
            if name.startswith(("method.request.", "context.", "stageVariables."))
            else f"method.request.header.{name}"
        )
    return expressions


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
    identity_sources: tuple[str, ...] = tuple(identity_source_expressions(list(DEFAULT_IDENTITY_SOURCES)))
    authorizer_cache_seconds: int = DEFAULT_AUTHORIZER_CACHE_SECONDS
    log_retention_days: int = DEFAULT_LOG_RETENTION_DAYS
    throttle_rate_limit: int = DEFAULT_THROTTLE_RATE_LIMIT
    throttle_burst_limit: int = DEFAULT_THROTTLE_BURST_LIMIT
    stage_name: str = DEFAULT_STAGE_NAME
    jwt_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_context(cls, context: dict[str, Any]) -> DeploymentOptions:
        config_file = Path(context.get(CONFIG_FILE) or paths.DEFAULT_CONFIG_FILE)
        if not config_file.is_absolute():
            config_file = (Path.cwd() / config_file).resolve()
        names = _as_list(context.get(IDENTITY_SOURCES, list(DEFAULT_IDENTITY_SOURCES)), IDENTITY_SOURCES)
        cache = _as_int(
            context.get(AUTHORIZER_CACHE_SECONDS, DEFAULT_AUTHORIZER_CACHE_SECONDS),
            AUTHORIZER_CACHE_SECONDS,
            0,
            MAX_AUTHORIZER_CACHE_SECONDS,
        )
        if not names and cache:
            raise ContextError(f"{IDENTITY_SOURCES} is empty: the authorizer cache needs an identity source")
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
        )

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
        ]
        return cls.from_context({k: v for k in keys if (v := node.try_get_context(k)) is not None})
