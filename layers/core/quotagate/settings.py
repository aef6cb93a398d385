"""Environment variable names, in one place, shared by the CDK stack, the handlers and local mode."""

from __future__ import annotations

import json
import os

KEYS_TABLE = "QG_KEYS_TABLE"
QUOTA_TABLE = "QG_QUOTA_TABLE"
IDEMPOTENCY_TABLE = "QG_IDEMPOTENCY_TABLE"
CIRCUIT_TABLE = "QG_CIRCUIT_TABLE"
USAGE_TABLE = "QG_USAGE_TABLE"
# Usage events: the custom bus, budget threshold fractions ("0.5,0.8,1"), period-close grace (s).
EVENT_BUS = "QG_EVENT_BUS"
BUDGET_THRESHOLDS = "QG_BUDGET_THRESHOLDS"
PERIOD_CLOSE_GRACE_SECONDS = "QG_PERIOD_CLOSE_GRACE_SECONDS"
# Gateway configuration (plans, models, prices): an SSM parameter name in AWS, a file locally.
CONFIG_PARAMETER = "QG_CONFIG_PARAMETER"
CONFIG_FILE = "QG_CONFIG_FILE"
# JWT (customer IdP) settings for the authorizer and the function-URL path of the proxy.
JWT_ISSUER = "QG_JWT_ISSUER"
JWT_AUDIENCE = "QG_JWT_AUDIENCE"
JWT_JWKS_URL = "QG_JWT_JWKS_URL"
JWT_PUBLIC_KEYS = "QG_JWT_PUBLIC_KEYS"  # a JWKS document (JSON) with static public keys
JWT_TENANT_CLAIM = "QG_JWT_TENANT_CLAIM"
JWT_CONSUMER_CLAIM = "QG_JWT_CONSUMER_CLAIM"
JWT_PLAN_CLAIM = "QG_JWT_PLAN_CLAIM"
# The authorizer's identity sources (comma-separated header names), set by the stack from the same
# context value that configures the authorizer: the only headers a credential is read from.
IDENTITY_SOURCES = "QG_IDENTITY_SOURCES"
# Seconds the authorizer keeps its answer for a credential (API Gateway itself caches nothing: see
# quotagate.identity_sources); a revoked key is refused at the latest this long after revocation.
AUTHORIZER_CACHE_SECONDS = "QG_AUTHORIZER_CACHE_SECONDS"
DEFAULT_AUTHORIZER_CACHE_SECONDS = 300.0
# Secrets Manager secret the keys function derives idempotent keys from (quotagate.key_derivation).
KEY_DERIVATION_SECRET = "QG_KEY_DERIVATION_SECRET"  # noqa: S105 (an environment variable name)
# JSON object: a provider secret's name in the gateway configuration -> the name the stack created it
# under (unique per stack, so a rolled-back first deploy can be retried). Unset (local mode): as named.
PROVIDER_SECRET_NAMES = "QG_PROVIDER_SECRET_NAMES"  # noqa: S105 (an environment variable name)
# Upper bound for a request body the proxy will read (bytes).
MAX_BODY_BYTES = "QG_MAX_BODY_BYTES"
# Multiplies the quota store's timeouts and retry budgets (default 1, as deployed). Local mode and the
# integration tests serve moto one request at a time, far slower than DynamoDB under a burst: 10.
QUOTA_TIME_SCALE = "QG_QUOTA_TIME_SCALE"
# The longest a proxied request may take (its quota is settled before the Lambda timeout); the
# reaper treats a reservation older than this plus a margin as abandoned.
MAX_REQUEST_SECONDS = "QG_MAX_REQUEST_SECONDS"
DEFAULT_MAX_REQUEST_SECONDS = 870.0
# Seconds between the proxy's keep-alive comments while an upstream stream is silent.
KEEPALIVE_SECONDS = "QG_KEEPALIVE_SECONDS"
DEFAULT_KEEPALIVE_SECONDS = 15.0
REAPER_MARGIN_SECONDS = "QG_REAPER_MARGIN_SECONDS"
# "1": forward clients' ``mock_*`` body fields to the upstream (the integration tests' harness
# only; the mock model server reads them). Unset everywhere else, make dev included.
FORWARD_MOCK_CONTROLS = "QG_FORWARD_MOCK_CONTROLS"
# The durable retry path for settlements (an SQS queue URL; unset: failures are logged only).
SETTLEMENT_QUEUE_URL = "QG_SETTLEMENT_QUEUE_URL"


def env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def quota_time_scale() -> float:
    """``QG_QUOTA_TIME_SCALE`` as a number in [1, 100] (anything else: 1)."""
    try:
        scale = float(env(QUOTA_TIME_SCALE, "1") or "1")
    except ValueError:
        return 1.0
    return min(max(scale, 1.0), 100.0) if scale == scale else 1.0


def max_request_seconds() -> float:
    """``QG_MAX_REQUEST_SECONDS``: the longest a proxied request may take (default 870 s)."""
    return float(env(MAX_REQUEST_SECONDS) or DEFAULT_MAX_REQUEST_SECONDS)


def keepalive_seconds() -> float:
    """``QG_KEEPALIVE_SECONDS``: the proxy's keep-alive interval on a silent stream (default 15 s)."""
    return float(env(KEEPALIVE_SECONDS) or DEFAULT_KEEPALIVE_SECONDS)


def forward_mock_controls() -> bool:
    return env(FORWARD_MOCK_CONTROLS) == "1"


def table_name(variable: str, default: str) -> str:
    return env(variable, default) or default


def provider_secret_name(configured: str) -> str:
    """The Secrets Manager name of the provider secret the configuration calls ``configured``."""
    try:
        names = json.loads(env(PROVIDER_SECRET_NAMES) or "{}")
    except ValueError:
        names = {}
    resolved = names.get(configured) if isinstance(names, dict) else None
    return resolved if isinstance(resolved, str) and resolved else configured
