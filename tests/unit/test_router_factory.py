"""The provider factory: the adapter by provider type, the target's timeouts applied, secrets
fetched lazily and never shown."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from quotagate.config_models import parse_config
from quotagate.errors import GatewayError
from quotagate.providers.factory import HttpProviderFactory

CONFIG = parse_config(
    {
        "providers": {
            "oa": {
                "type": "openai",
                "base_url": "http://127.0.0.1:1/v1",
                "api_key_secret": "quotagate/providers/oa",
                "connect_timeout": 4,
                "read_timeout": 50,
            },
            "an": {
                "type": "anthropic",
                "base_url": "http://127.0.0.1:1/v1",
                "api_key_secret": "quotagate/providers/an",
            },
            "br": {"type": "bedrock", "region": "eu-central-1"},
        },
        "models": {
            "m": {
                "targets": [
                    {
                        "provider": "oa",
                        "upstream_model": "gpt",
                        "timeouts": {"connect": 1.5, "first_byte": 8, "idle": 20},
                    },
                    {"provider": "an", "upstream_model": "claude"},
                    {"provider": "br", "upstream_model": "amazon.nova-lite-v1:0", "timeouts": {"first_byte": 30}},
                ]
            }
        },
        "plans": {"p": {}},
    }
)
OA, AN, BR = CONFIG.models["m"].targets


def factory(secrets=lambda name: "sk-secret-value"):
    return HttpProviderFactory(lambda: CONFIG, httpx.AsyncClient(), secrets)


def test_adapter_by_provider_type_with_the_target_timeouts():
    from quotagate.providers.anthropic import AnthropicProvider
    from quotagate.providers.bedrock import BedrockProvider
    from quotagate.providers.openai_compat import OpenAICompatibleProvider

    f = factory()
    openai = f.for_target(OA)
    assert isinstance(openai, OpenAICompatibleProvider)
    assert openai._provider.connect_timeout == 1.5 and openai._provider.read_timeout == 20  # max(first_byte, idle)
    anthropic = f.for_target(AN)
    assert isinstance(anthropic, AnthropicProvider)
    assert anthropic._provider.connect_timeout == 5 and anthropic._provider.read_timeout == 120
    bedrock = f.for_target(BR)
    assert isinstance(bedrock, BedrockProvider)
    assert bedrock._provider.region == "eu-central-1" and bedrock._provider.read_timeout == 120
    assert f.for_target(BR) is bedrock, "one Bedrock adapter (and boto3 client) per provider settings"


def test_provider_keys_come_from_secrets_and_never_appear_in_errors():
    fetched = []

    def secrets(name):
        fetched.append(name)
        return "sk-secret-value"

    f = factory(secrets)
    assert asyncio.run(f._api_key(CONFIG.providers["oa"])()) == "sk-secret-value"
    assert fetched == ["quotagate/providers/oa"]

    def broken(name):
        raise RuntimeError(f"cannot read {name}: sk-leaked")

    with pytest.raises(GatewayError) as unavailable:
        asyncio.run(factory(broken)._api_key(CONFIG.providers["an"])())
    assert unavailable.value.status == 503 and unavailable.value.code == "provider_credentials_unavailable"
    assert "sk-" not in unavailable.value.message and "quotagate/providers" not in unavailable.value.message
    assert asyncio.run(f._api_key(CONFIG.providers["br"])()) is None  # bedrock: IAM, no key
