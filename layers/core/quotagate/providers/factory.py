"""Builds the adapter for a routing target, by provider type; provider API keys come from Secrets
Manager (through Powertools Parameters, cached) and are never logged nor put in an error.

- ``openai``: any OpenAI-compatible HTTP API (:mod:`quotagate.providers.openai_compat`);
- ``anthropic``: the Anthropic Messages API (:mod:`quotagate.providers.anthropic`);
- ``bedrock``: Amazon Bedrock Converse (:mod:`quotagate.providers.bedrock`), IAM-authenticated.

The Anthropic and Bedrock modules are imported on first use only (cold start). Each adapter gets
the provider with the target's timeouts applied: ``connect_timeout`` is the target's connect
timeout and ``read_timeout`` the larger of its first-byte and idle timeouts (the socket-level
bound; the gateway enforces first byte and idle exactly).
"""

from __future__ import annotations

import threading
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from anyio import to_thread

from quotagate.errors import GatewayError
from quotagate.provider_secrets import is_placeholder, unset_key_message
from quotagate.providers.openai_compat import OpenAICompatibleProvider
from quotagate.redaction import remember_secret

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    import httpx

    from quotagate.config import GatewayConfig, Provider, Target
    from quotagate.providers.base import ChatProvider

SECRET_CACHE_SECONDS = 300
_MAX_CACHED_ADAPTERS = 64


def secret_from_secrets_manager(name: str) -> str:
    # Powertools Parameters caches the value; a secret is never logged or put in an error.
    from quotagate import aws, settings

    return str(aws.secrets_provider().get(settings.provider_secret_name(name), max_age=SECRET_CACHE_SECONDS))


class HttpProviderFactory:
    def __init__(
        self,
        config: Callable[[], GatewayConfig],
        http: httpx.AsyncClient,
        secrets: Callable[[str], str] = secret_from_secrets_manager,
        bedrock_client_factory: Callable[[Provider], Callable[[], Any]] | None = None,
    ) -> None:
        self._config = config
        self._http = http
        self._secrets = secrets
        self._bedrock_client_factory = bedrock_client_factory
        # Bedrock adapters hold a boto3 client (costly to build): one per effective provider.
        self._cached: dict[Provider, ChatProvider] = {}
        self._lock = threading.Lock()

    def _api_key(self, provider: Provider) -> Callable[[], Awaitable[str | None]]:
        async def api_key() -> str | None:
            if not provider.api_key_secret:
                return None
            name = provider.api_key_secret
            try:
                key = await to_thread.run_sync(self._secrets, name)
            except Exception:
                raise GatewayError(
                    503,
                    f"Credentials for provider '{provider.name}' are unavailable.",
                    "api_error",
                    "provider_credentials_unavailable",
                ) from None
            if is_placeholder(key):  # the stack's placeholder: the operator has not set the key yet
                raise GatewayError(
                    503, unset_key_message(provider.name), "api_error", "provider_credentials_unavailable"
                )
            remember_secret(key)  # before any upstream answer can quote it: no log line will
            return key

        return api_key

    def for_target(self, target: Target) -> ChatProvider:
        config = self._config()
        provider = config.providers[target.provider]
        timeouts = config.timeouts_for(target)
        effective = replace(
            provider, connect_timeout=timeouts.connect, read_timeout=max(timeouts.first_byte, timeouts.idle)
        )
        if provider.type == "openai":
            return OpenAICompatibleProvider(effective, self._http, self._api_key(provider))
        if provider.type == "anthropic":
            from quotagate.providers.anthropic import AnthropicProvider

            return AnthropicProvider(effective, self._http, self._api_key(provider))
        if provider.type == "bedrock":
            return self._bedrock(effective)
        raise GatewayError(
            500, f"Provider type '{provider.type}' is not supported.", "api_error", "unsupported_provider"
        )

    def _bedrock(self, provider: Provider) -> ChatProvider:
        with self._lock:
            cached = self._cached.get(provider)
        if cached is not None:
            return cached
        from quotagate.providers.bedrock import BedrockProvider

        client_factory = self._bedrock_client_factory(provider) if self._bedrock_client_factory else None
        adapter: ChatProvider = BedrockProvider(provider, client_factory=client_factory)
        with self._lock:
            if len(self._cached) >= _MAX_CACHED_ADAPTERS:
                self._cached.clear()
            return self._cached.setdefault(provider, adapter)
