"""Configuration from SSM and provider keys from Secrets Manager, through Powertools Parameters."""

import json
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from quotagate import aws, config
from quotagate.providers.factory import secret_from_secrets_manager


@pytest.fixture
def aws_mock(monkeypatch):
    with mock_aws():
        for cached in (aws.secrets_provider, aws.ssm_provider):
            cached.cache_clear()
        config.reset_cache()
        yield
        for cached in (aws.secrets_provider, aws.ssm_provider):
            cached.cache_clear()
        config.reset_cache()


def test_config_is_read_from_the_ssm_parameter(aws_mock, monkeypatch):
    raw = json.loads(Path(config.DEFAULT_CONFIG_FILE).read_text())
    raw["plans"]["free"]["default_max_tokens"] = 123
    boto3.client("ssm").put_parameter(Name="/quotagate/config", Value=json.dumps(raw), Type="String")
    monkeypatch.setenv("QG_CONFIG_PARAMETER", "/quotagate/config")
    assert config.load_config(force=True).plans["free"].default_max_tokens == 123


def test_provider_key_comes_from_secrets_manager(aws_mock):
    boto3.client("secretsmanager").create_secret(Name="quotagate/providers/openai", SecretString="sk-test")
    assert secret_from_secrets_manager("quotagate/providers/openai") == "sk-test"
