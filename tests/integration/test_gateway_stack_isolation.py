"""The tests' gateway stack leaves no AWS client behind: the cached Secrets Manager provider it made
points at its moto server, which is gone once the stack stops, so a later test (the keys handler's,
on in-process moto) would read the key derivation secret from a dead endpoint."""

from __future__ import annotations

import boto3
from moto import mock_aws

from quotagate import aws, key_derivation
from tests.integration.gateway_stack import gateway_stack


def test_a_stopped_gateway_stack_leaves_no_aws_client_behind(tmp_path, monkeypatch):
    with gateway_stack(tmp_path) as stack:
        # An idempotent create derives the key from the secret it reads through aws.secrets_provider().
        stack.create_key("acme", request_id="isolation-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        key_derivation.create_local_secret(boto3.client("secretsmanager"))
        aws.secrets_provider().clear_cache()  # as after SECRET_CACHE_SECONDS: the provider calls the service
        assert len(key_derivation.load_master()) >= key_derivation.MIN_SECRET_BYTES
