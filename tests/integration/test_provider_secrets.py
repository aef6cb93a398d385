"""Provider keys in Secrets Manager (moto): the stack's placeholder and a missing secret answer a
clear 503 naming the provider; `quotagate providers set-key` stores the key from stdin."""

from __future__ import annotations

import asyncio
import io
import json

import boto3
import httpx
import pytest
from moto import mock_aws

from quotagate import aws
from quotagate.config_models import parse_config
from quotagate.errors import GatewayError
from quotagate.provider_secrets import PLACEHOLDER_TEMPLATE
from quotagate.providers.factory import HttpProviderFactory, secret_from_secrets_manager
from quotagate_tools import cli

CONFIG = parse_config(
    {
        "providers": {
            "oa": {"type": "openai", "base_url": "http://127.0.0.1:1/v1", "api_key_secret": "quotagate/providers/oa"},
            "br": {"type": "bedrock", "region": "eu-central-1"},
        },
        "models": {"m": {"provider": "oa", "upstream_model": "gpt"}},
        "plans": {"p": {}},
    }
)


@pytest.fixture
def secretsmanager(monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    aws.secrets_provider.cache_clear()
    with mock_aws():
        yield boto3.client("secretsmanager")
    aws.secrets_provider.cache_clear()


def _api_key() -> str | None:
    factory = HttpProviderFactory(lambda: CONFIG, httpx.AsyncClient(), secret_from_secrets_manager)
    return asyncio.run(factory._api_key(CONFIG.providers["oa"])())


def test_the_stacks_placeholder_is_a_503_naming_the_provider(secretsmanager):
    # What CloudFormation's GenerateSecretString makes of the stack's template.
    placeholder = json.dumps({**json.loads(PLACEHOLDER_TEMPLATE), "nonce": "Zx81hQ"})
    secretsmanager.create_secret(Name="quotagate/providers/oa", SecretString=placeholder)
    with pytest.raises(GatewayError) as error:
        _api_key()
    assert error.value.status == 503 and error.value.code == "provider_credentials_unavailable"
    assert "'oa'" in error.value.message and "set-key oa" in error.value.message
    assert "Zx81hQ" not in error.value.message


def test_a_missing_secret_is_a_503_naming_the_provider(secretsmanager):
    with pytest.raises(GatewayError) as error:
        _api_key()
    assert error.value.status == 503 and "'oa'" in error.value.message


def test_set_key_reads_stdin_and_the_proxy_then_uses_it(secretsmanager, monkeypatch, tmp_path, capsys):
    secretsmanager.create_secret(Name="quotagate/providers/oa", SecretString=PLACEHOLDER_TEMPLATE)
    config_file = tmp_path / "config.json"
    config_file.write_text(
        json.dumps(
            {
                "providers": {
                    "oa": {
                        "type": "openai",
                        "base_url": "http://127.0.0.1:1/v1",
                        "api_key_secret": "quotagate/providers/oa",
                    }
                },
                "models": {"m": {"provider": "oa", "upstream_model": "gpt"}},
                "plans": {"p": {}},
            }
        )
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-live-123456\n"))
    assert cli.main(["providers", "set-key", "oa", "--config-file", str(config_file)]) == 0
    out, err = capsys.readouterr()
    assert "sk-live" not in out + err
    assert json.loads(out) == {"provider": "oa", "secret": "quotagate/providers/oa", "status": "set"}
    stored = secretsmanager.get_secret_value(SecretId="quotagate/providers/oa")["SecretString"]
    assert stored == "sk-live-123456"
    aws.secrets_provider.cache_clear()
    assert _api_key() == "sk-live-123456"


@pytest.mark.parametrize(
    ("stdin", "message"),
    [("", "no key"), ("sk one two", "whitespace"), (PLACEHOLDER_TEMPLATE, "placeholder")],
)
def test_set_key_refuses_what_is_not_a_key(secretsmanager, monkeypatch, capsys, stdin, message):
    secretsmanager.create_secret(Name="quotagate/providers/openai", SecretString=PLACEHOLDER_TEMPLATE)
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    assert cli.main(["providers", "set-key", "openai"]) == 1
    assert message in capsys.readouterr().err
    stored = secretsmanager.get_secret_value(SecretId="quotagate/providers/openai")["SecretString"]
    assert stored == PLACEHOLDER_TEMPLATE


def test_set_key_names_unknown_providers_and_missing_secrets(secretsmanager, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-x"))
    assert cli.main(["providers", "set-key", "nope"]) == 1
    assert "unknown provider 'nope'" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-x"))
    assert cli.main(["providers", "set-key", "bedrock"]) == 1
    assert "no API key" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-x"))
    assert cli.main(["providers", "set-key", "anthropic"]) == 1  # the stack was not deployed here
    err = capsys.readouterr().err
    assert "quotagate/providers/anthropic" in err and "does not exist" in err and "sk-x" not in err


# ---- secrets the stack created under a name unique to it (a failed first deploy can be retried) ----

CREATED = "quotagate/providers/oa-1a2b3c4d5e6f"


def test_the_proxy_reads_the_secret_under_the_name_the_stack_created(secretsmanager, monkeypatch):
    from quotagate import settings

    secretsmanager.create_secret(Name=CREATED, SecretString="sk-created")
    monkeypatch.setenv(settings.PROVIDER_SECRET_NAMES, json.dumps({"quotagate/providers/oa": CREATED}))
    assert _api_key() == "sk-created"


def test_set_key_writes_the_secret_the_stack_output_names(secretsmanager, monkeypatch, tmp_path, capsys):
    from quotagate.provider_secrets import STACK_OUTPUT

    secretsmanager.create_secret(Name=CREATED, SecretString=PLACEHOLDER_TEMPLATE)
    template = {
        "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
        "Outputs": {STACK_OUTPUT: {"Value": json.dumps({"quotagate/providers/oa": CREATED})}},
    }
    boto3.client("cloudformation").create_stack(StackName="Quotagate", TemplateBody=json.dumps(template))
    config_file = tmp_path / "config.json"
    config_file.write_text(
        json.dumps(
            {
                "providers": {
                    "oa": {
                        "type": "openai",
                        "base_url": "http://127.0.0.1:1/v1",
                        "api_key_secret": "quotagate/providers/oa",
                    }
                },
                "models": {"m": {"provider": "oa", "upstream_model": "gpt"}},
                "plans": {"p": {}},
            }
        )
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("sk-live-created"))
    assert cli.main(["providers", "set-key", "oa", "--config-file", str(config_file)]) == 0
    assert json.loads(capsys.readouterr().out)["secret"] == CREATED
    assert secretsmanager.get_secret_value(SecretId=CREATED)["SecretString"] == "sk-live-created"
