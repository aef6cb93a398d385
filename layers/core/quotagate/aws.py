"""boto3 clients with explicit timeouts: every external call is bounded."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def config() -> Any:
    """The botocore Config every AWS client of the gateway uses (short timeouts, few retries)."""
    from botocore.config import Config

    return Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3},
                  tcp_keepalive=True, max_pool_connections=64)


def client(service: str) -> Any:
    import boto3

    factory: Any = boto3.client  # the stubs only type literal service names
    return factory(service, config=config())


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
