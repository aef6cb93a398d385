"""API key secrets derived from a stack-held secret, so an idempotent retry needs no stored plaintext.

A ``create_key`` or ``rotate_key`` call that carries a ``request_id`` gets the secret part of its key
from ``HMAC-SHA512(derivation secret, action, request_id, key_id, record version)``. The idempotency
record stores the response *without* ``api_key``; a replay derives the same key again from the
stored key id and version. So no table (and no point-in-time backup of one) ever holds a plaintext
key, and a retried create still returns the key the first attempt issued.

The derivation secret is a Secrets Manager secret the stack creates (random, readable only by the
keys function), named by the environment variable ``QG_KEY_DERIVATION_SECRET``. Whoever can read it
and a request's ids could recompute that key; nobody else can, the ids being public.
Requests without ``request_id`` keep fully random secrets (nothing is recorded for them).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable

from quotagate import apikeys, settings

LOCAL_SECRET_NAME = "quotagate/keys/derivation-secret"  # noqa: S105 (a name, not a value)
SECRET_CACHE_SECONDS = 300
_DOMAIN = b"quotagate-api-key-v1"
MIN_SECRET_BYTES = 32

KeySecretSource = Callable[[str, int], str]  # (key id, record version) -> secret part of the key


class DerivationUnavailable(Exception):
    """The derivation secret cannot be read (the message never contains it)."""


def secret_name() -> str:
    return settings.env(settings.KEY_DERIVATION_SECRET, LOCAL_SECRET_NAME) or LOCAL_SECRET_NAME


def load_master() -> bytes:
    from quotagate import aws

    try:
        value = str(aws.secrets_provider().get(secret_name(), max_age=SECRET_CACHE_SECONDS))
    except Exception:
        raise DerivationUnavailable("the key derivation secret cannot be read") from None
    master = value.encode()
    if len(master) < MIN_SECRET_BYTES:
        raise DerivationUnavailable("the key derivation secret is too short")
    return master


def derive_secret(master: bytes, action: str, request_id: str, key_id: str, version: int) -> str:
    message = b"\0".join([_DOMAIN, action.encode(), request_id.encode(), key_id.encode(), str(version).encode()])
    return apikeys.secret_from_digest(hmac.new(master, message, hashlib.sha512).digest())


def source_for(master: bytes, action: str, request_id: str) -> KeySecretSource:
    """The secret source of one request (what KeysService uses to make the key)."""

    def secret(key_id: str, version: int) -> str:
        return derive_secret(master, action, request_id, key_id, version)

    return secret


def api_key(master: bytes, action: str, request_id: str, key_id: str, version: int) -> str:
    """The full key a request issued (re-derived for a replay)."""
    return apikeys.new_key(key_id, secret=derive_secret(master, action, request_id, key_id, version)).plaintext


def create_local_secret(client: object) -> None:
    """The derivation secret for local mode and tests (moto): random, created once."""
    import secrets

    try:
        client.create_secret(Name=LOCAL_SECRET_NAME, SecretString=secrets.token_urlsafe(48))  # type: ignore[attr-defined]
    except Exception as error:  # already there: keep it (keys issued so far stay replayable)
        if "ResourceExists" not in type(error).__name__ and "ResourceExists" not in str(error):
            raise
