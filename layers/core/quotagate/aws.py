"""boto3 clients with explicit timeouts: every external call is bounded."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def _config() -> Any:
    from botocore.config import Config

    return Config(connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 3},
                  tcp_keepalive=True, max_pool_connections=64)


def client(service: str) -> Any:
    import boto3

    factory: Any = boto3.client  # the stubs only type literal service names
    return factory(service, config=_config())


def resource(service: str) -> Any:
    import boto3

    factory: Any = boto3.resource
    return factory(service, config=_config())
