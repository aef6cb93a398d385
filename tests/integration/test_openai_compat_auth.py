"""OpenAI-compatible providers send their key as a Bearer token, or as Azure OpenAI's api-key header."""

import httpx
import pytest

from quotagate.config_models import parse_config
from quotagate.providers.openai_compat import OpenAICompatibleProvider
from quotagate_tools.mock import MockServer, MockSettings


@pytest.fixture(scope="module")
def mock():
    with MockServer(MockSettings(token_delay=0, api_key="sk-provider")) as server:
        yield server


async def _complete(mock, auth_header):
    raw = {
        "providers": {"p": {"type": "openai", "base_url": mock.openai_base_url, "auth_header": auth_header}},
        "models": {"m": {"provider": "p", "upstream_model": "mock-gpt"}},
        "plans": {"free": {"models": "*"}},
        "default_plan": "free",
    }
    provider = parse_config(raw).providers["p"]

    async def key():
        return "sk-provider"

    async with httpx.AsyncClient() as http:
        return await OpenAICompatibleProvider(provider, http, key).complete(
            {"model": "mock-gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        )


@pytest.mark.parametrize(
    ("auth_header", "sent", "not_sent"),
    [
        ("authorization", "authorization", "api-key"),
        ("api-key", "api-key", "authorization"),
    ],
)
def test_the_key_goes_in_the_configured_header(mock, auth_header, sent, not_sent):
    import anyio

    answer = anyio.run(_complete, mock, auth_header)
    assert answer["usage"]["completion_tokens"] == 2  # the mock accepted the key
    headers = mock.stats.last_request["headers"]
    assert sent in headers and not_sent not in headers
