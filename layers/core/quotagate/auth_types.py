"""Allowed values shared by API keys, authentication, configuration and usage records.

A leaf module (it imports nothing from quotagate), so the key store, the authenticator, the keys
service and the config models can all import it without cycles.
"""

from __future__ import annotations

from enum import StrEnum


class KeyStatus(StrEnum):
    """The state of a gateway API key record."""

    ACTIVE = "active"  # accepted (until ``expires_at``, if set)
    DISABLED = "disabled"  # refused, reversibly: an update back to ``active`` re-enables it
    REVOKED = "revoked"  # refused for good: no update changes a revoked key


class AuthType(StrEnum):
    """How a caller proved who it is."""

    API_KEY = "api_key"  # a gateway API key (``qg_...``)
    JWT = "jwt"  # a token from the tenant's identity provider
