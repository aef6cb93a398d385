"""boto3 clients with explicit timeouts: every external call is bounded."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def config() -> Any:
    """The botocore Config every AWS client of the gateway uses (short timeouts, few retries)."""
    from botocore.config import Config

    return Config(
        connect_timeout=2,
        read_timeout=5,
        retries={"mode": "standard", "max_attempts": 3},
        tcp_keepalive=True,
        max_pool_connections=64,
    )


# The quota ledger's DynamoDB client: one botocore attempt and short timeouts, so retries never nest
# and the ledger's own (idempotent) retries carry the time budget (quota.ledger).
QUOTA_CONNECT_TIMEOUT = 0.25
QUOTA_READ_TIMEOUT = 0.5
# The settlement retry queue's client: bounded so an enqueue fits the settle budget (README).
QUEUE_CONNECT_TIMEOUT = 1.0
QUEUE_READ_TIMEOUT = 2.0


@functools.cache
def quota_config(scale: float = 1.0) -> Any:
    """``scale``: ``settings.quota_time_scale()`` (1 in AWS)."""
    from botocore.config import Config

    return Config(
        connect_timeout=QUOTA_CONNECT_TIMEOUT * scale,
        read_timeout=QUOTA_READ_TIMEOUT * scale,
        retries={"total_max_attempts": 1, "mode": "standard"},
        tcp_keepalive=True,
        max_pool_connections=64,
        # The ledger builds every request itself (typed, tested); botocore's check of each one
        # against the model costs ~1 ms of CPU a call on the request path and finds nothing.
        parameter_validation=False,
    )


@functools.cache
def queue_config() -> Any:
    from botocore.config import Config

    return Config(
        connect_timeout=QUEUE_CONNECT_TIMEOUT,
        read_timeout=QUEUE_READ_TIMEOUT,
        retries={"total_max_attempts": 2, "mode": "standard"},
        tcp_keepalive=True,
    )


def quota_client() -> Any:
    """The DynamoDB client for the quota ledger (see ``quota_config``)."""
    import boto3

    factory: Any = boto3.client
    from quotagate import settings

    return factory("dynamodb", config=quota_config(settings.quota_time_scale()))


def client(service: str, client_config: Any = None) -> Any:
    import boto3

    factory: Any = boto3.client  # the stubs only type literal service names
    return factory(service, config=client_config or config())


def resource(service: str) -> Any:
    import boto3

    factory: Any = boto3.resource
    return factory(service, config=config())


@functools.cache
def secrets_provider() -> Any:
    """Powertools' Secrets Manager provider (its own cache), with the same timeouts."""
    from aws_lambda_powertools.utilities import parameters

    return parameters.SecretsProvider(boto_config=config())


@functools.cache
def ssm_provider() -> Any:
    from aws_lambda_powertools.utilities import parameters

    return parameters.SSMProvider(boto_config=config())
