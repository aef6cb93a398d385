"""Authentication: the one code path that turns a presented credential into an :class:`Identity`.

Used by the Lambda authorizer and by the proxy's function-URL path (where no authorizer ran), so
both enforce exactly the same rules.

* ``credential_from_headers`` finds the credential: ``Authorization: Bearer <token>`` or
  ``x-api-key: <token>`` (header names case-insensitive).
* ``Authenticator.authenticate`` checks it:

  - gateway API keys (``qg_...``): format and checksum first (no I/O: garbage never reaches the
    store), then the stored record. The presented key's hash is compared in constant time with the
    current hash and with the previous hash (rotation grace) *always*, even when the key id is
    unknown (a dummy hash stands in), so response timing does not reveal which key ids exist.
    The secret is checked before the record's status or expiry, so someone who knows only a key
    id learns nothing about that key's state.
  - tokens shaped like a JWT (three base64url segments) go to the configured ``JwtVerifier``.

Outcomes (the exceptions are in :mod:`quotagate.logic.exceptions`): an :class:`Identity`;
:class:`MissingCredential` (HTTP 401: nothing presented);
:class:`AccessDenied` (HTTP 401 ``invalid_api_key``: presented but not acceptable; ``reason`` is for
logs only);
:class:`AuthUnavailable` (a dependency failed: the key store or the IdP's JWKS endpoint — a 5xx,
never a cached Deny).
"""

from __future__ import annotations

import hmac
import re
import time
from typing import TYPE_CHECKING

from quotagate import apikeys
from quotagate.auth_types import AuthType, KeyStatus
from quotagate.identity import Identity
from quotagate.logic.exceptions import AccessDenied, AuthUnavailable, MissingCredential

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from quotagate.dal.keys_store import KeyRecord, KeyStore
    from quotagate.jwt_auth import JwtVerifier

# Longest credential we look at at all (a JWT with a generous set of claims fits easily).
MAX_CREDENTIAL_LENGTH = 8192
# Three base64url segments; the signature may be empty (``alg: none``), which the verifier rejects
# explicitly rather than this shape check.
_JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
# What AWS puts in Authorization when it signs a request (function URL with AWS_IAM auth).
_SIGV4_SCHEME = "AWS4-"
_NOT_A_TOKEN = re.compile(r"[\s,]")
# Stands in for a stored hash when there is none, so that the constant-time comparison always runs.
# It is the hash of a value that can never be a key, so it can never match.
_DUMMY_HASH = apikeys.hash_key("quotagate:no-such-key")


def credential_from_headers(
    headers: Mapping[str, str | None] | None,
    identity_sources: Sequence[str],
    *,
    aws_signed: bool = False,
) -> str | None:
    """The one credential presented in the credential headers, or None (names are case-insensitive).

    Only the configured headers are read. Every one of them that is present must hold the same
    well-formed credential: ``Authorization: Basic ...``, an empty ``Bearer``, a header repeated with
    different values (API Gateway and the proxy see repeated headers combined with ``", "``), or two
    headers naming different keys give None — never one of the candidates, so no cache keyed by any
    single value can serve a request that also presented something else.

    ``aws_signed`` (the function-URL path, where Lambda has verified the caller's SigV4 signature):
    an ``Authorization`` value signed by AWS belongs to IAM, not to us, and counts as absent.
    """
    if not headers:
        return None
    lowered: dict[str, str] = {}
    for name, value in headers.items():  # Starlette's Headers yields a repeated header once per line
        if isinstance(name, str) and isinstance(value, str):
            name = name.lower()
            lowered[name] = value if lowered.get(name, value) == value else f"{lowered[name]}, {value}"
    found: set[str | None] = set()
    for source in identity_sources:
        source = source.lower()
        value = lowered.get(source, "").strip()
        if not value:  # empty carries nothing (a repeated header with an empty value is not empty)
            continue
        if source == "authorization":
            if aws_signed and value.startswith(_SIGV4_SCHEME):
                continue
            scheme, _, token = value.partition(" ")
            found.add(_single_token(token) if scheme.lower() == "bearer" else None)
        else:
            found.add(_single_token(value))
    if len(found) != 1:
        return None
    return found.pop()


def _single_token(value: str) -> str | None:
    """One token, or None: empty, or anything with whitespace or a comma (repeated headers are
    combined with ", "), is not a credential."""
    token = value.strip()
    if not token or _NOT_A_TOKEN.search(token):
        return None
    return token


def looks_like_jwt(credential: str) -> bool:
    return bool(_JWT_SHAPE.match(credential))


class Authenticator:
    def __init__(
        self,
        store: KeyStore,
        jwt_verifier: JwtVerifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._jwt_verifier = jwt_verifier
        self._clock = clock

    def authenticate_headers(
        self, headers: Mapping[str, str | None] | None, identity_sources: Sequence[str], *, aws_signed: bool = False
    ) -> Identity:
        """Authenticate the credential presented in the identity sources (see credential_from_headers)."""
        credential = credential_from_headers(headers, identity_sources, aws_signed=aws_signed)
        if credential is None:
            raise MissingCredential(identity_sources)
        return self.authenticate(credential)

    def authenticate(self, credential: str | None) -> Identity:
        if credential is None or not credential.strip():
            raise MissingCredential()
        credential = credential.strip()
        if len(credential) > MAX_CREDENTIAL_LENGTH:
            raise AccessDenied("credential_too_long")
        if looks_like_jwt(credential):
            if self._jwt_verifier is None:
                raise AccessDenied("jwt_not_configured")
            return self._jwt_verifier.verify(credential)
        return self._authenticate_key(credential)

    def _authenticate_key(self, credential: str) -> Identity:
        parsed = apikeys.parse_key(credential)
        if parsed is None:  # wrong shape or checksum: decided without any I/O
            raise AccessDenied("malformed_key")
        try:
            record = self._store.get(parsed.key_id)
        except Exception as error:
            raise AuthUnavailable("key_store_unavailable") from error
        now = self._clock()

        # Both comparisons always run, against a dummy hash when there is nothing to compare with,
        # so the work done does not depend on whether the key id exists or was rotated.
        current_hash = record.secret_hash if record is not None and record.secret_hash else _DUMMY_HASH
        previous_hash = (
            record.previous_secret_hash if record is not None and record.previous_secret_hash else _DUMMY_HASH
        )
        matches_current = apikeys.hashes_match(current_hash, parsed.plaintext)
        matches_previous = apikeys.hashes_match(previous_hash, parsed.plaintext)

        if record is None:
            raise AccessDenied("unknown_key", parsed.key_id)
        if not matches_current and not (matches_previous and _in_grace(record, now)):
            reason = "rotated_key_grace_expired" if matches_previous else "invalid_secret"
            raise AccessDenied(reason, parsed.key_id)
        if record.status != KeyStatus.ACTIVE:
            raise AccessDenied(f"key_{record.status}", parsed.key_id)
        if record.expires_at is not None and now >= record.expires_at:
            raise AccessDenied("key_expired", parsed.key_id)
        checked_hash = record.secret_hash if matches_current else record.previous_secret_hash
        assert checked_hash is not None
        return Identity(
            tenant=record.tenant,
            consumer=record.consumer,
            key_id=record.key_id,
            plan=record.plan,
            auth_type=AuthType.API_KEY,
            secret_fingerprint=apikeys.secret_fingerprint(checked_hash),
        )


def _in_grace(record: KeyRecord, now: float) -> bool:
    return record.previous_valid_until is not None and now < record.previous_valid_until


def secret_still_accepted(record: KeyRecord, fingerprint: str | None, now: float) -> bool:
    """Whether the secret the authorizer checked (named by its fingerprint in the cached context)
    is still the key's current secret, or its previous one within the rotation grace. A rotation
    thus revokes the old secret even while API Gateway still holds an Allow for it."""
    if not fingerprint:
        return False
    if hmac.compare_digest(fingerprint, apikeys.secret_fingerprint(record.secret_hash)):
        return True
    return (
        record.previous_secret_hash is not None
        and _in_grace(record, now)
        and hmac.compare_digest(fingerprint, apikeys.secret_fingerprint(record.previous_secret_hash))
    )
