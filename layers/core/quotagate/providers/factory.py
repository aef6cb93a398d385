"""Builds the adapter for a model's provider; provider API keys come from Secrets Manager."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from anyio import to_thread

from quotagate.config import GatewayConfig, Model, Provider
from quotagate.errors import GatewayError
from quotagate.providers.base import ChatProvider
from quotagate.providers.openai_compat import OpenAICompatibleProvider

SECRET_CACHE_SECONDS = 300


def secret_from_secrets_manager(name: str) -> str:
    # Powertools Parameters caches the value; a secret is never logged or put in an error.
    from aws_lambda_powertools.utilities import parameters

    return str(parameters.get_secret(name, max_age=SECRET_CACHE_SECONDS))


class HttpProviderFactory:
    def __init__(self, config: Callable[[], GatewayConfig], http: httpx.AsyncClient,
                 secrets: Callable[[str], str] = secret_from_secrets_manager) -> None:
        self._config = config
        self._http = http
        self._secrets = secrets

    def _provider(self, model: Model) -> Provider:
        return self._config().providers[model.provider]

    def for_model(self, model: Model) -> ChatProvider:
        provider = self._provider(model)
        if provider.type != "openai":
            raise GatewayError(500, f"Provider type '{provider.type}' is not supported.", "api_error",
                               "unsupported_provider")

        async def api_key() -> str | None:
            if not provider.api_key_secret:
                return None
            name = provider.api_key_secret
            try:
                return await to_thread.run_sync(self._secrets, name)
            except Exception:
                raise GatewayError(503, f"Credentials for provider '{provider.name}' are unavailable.",
                                   "api_error", "provider_credentials_unavailable") from None

        return OpenAICompatibleProvider(provider, self._http, api_key)
