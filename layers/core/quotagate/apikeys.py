"""API key format: ``qg_<key id>_<secret><checksum>``.

* ``qg_`` is a fixed prefix, so leaked keys are easy to scan for (like ``ghp_``/``sk-``).
* The key id (12 chars, lowercase base32) names the stored record; it is not secret.
* The secret is 40 base62 characters (~238 bits) from ``secrets``.
* The checksum is CRC32 of everything before it, 6 base62 characters: typos and garbage are
  rejected without any I/O.

Only ``sha256(full key)`` is stored; comparison is constant time (``hmac.compare_digest``).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass

PREFIX = "qg_"
_BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
KEY_ID_LENGTH = 12
SECRET_LENGTH = 40
CHECKSUM_LENGTH = 6
_KEY_RE = re.compile(
    rf"^{PREFIX}([a-z2-7]{{{KEY_ID_LENGTH}}})_([0-9A-Za-z]{{{SECRET_LENGTH}}})([0-9A-Za-z]{{{CHECKSUM_LENGTH}}})$"
)
KEY_ID_RE = re.compile(rf"^[a-z2-7]{{{KEY_ID_LENGTH}}}$")


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    plaintext: str


def _base62(number: int, width: int) -> str:
    out = []
    for _ in range(width):
        number, digit = divmod(number, 62)
        out.append(_BASE62[digit])
    return "".join(reversed(out))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), CHECKSUM_LENGTH)


def new_key_id() -> str:
    return "".join(secrets.choice(_BASE32) for _ in range(KEY_ID_LENGTH))


def secret_from_digest(digest: bytes) -> str:
    """A key secret (SECRET_LENGTH base62 characters) from at least 256 random bits."""
    if len(digest) < 32:
        raise ValueError("a key secret needs at least 256 bits")
    return _base62(int.from_bytes(digest, "big"), SECRET_LENGTH)


def new_key(key_id: str | None = None, secret: str | None = None) -> ParsedKey:
    """A fresh key (optionally for an existing key id, when rotating; optionally with a given
    secret part, derived for idempotent requests)."""
    key_id = key_id or new_key_id()
    if secret is None:
        secret = "".join(secrets.choice(_BASE62) for _ in range(SECRET_LENGTH))
    elif len(secret) != SECRET_LENGTH or any(ch not in _BASE62 for ch in secret):
        raise ValueError(f"a key secret is {SECRET_LENGTH} base62 characters")
    body = f"{PREFIX}{key_id}_{secret}"
    return ParsedKey(key_id, body + _checksum(body))


def parse_key(candidate: str) -> ParsedKey | None:
    """The key id of a well-formed key with a valid checksum, else None. Pure: no I/O."""
    if not candidate or len(candidate) > 128:
        return None
    match = _KEY_RE.match(candidate)
    if not match:
        return None
    body = candidate[:-CHECKSUM_LENGTH]
    if not hmac.compare_digest(_checksum(body), match.group(3)):
        return None
    return ParsedKey(match.group(1), candidate)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def hashes_match(stored_hash: str, plaintext: str) -> bool:
    """Constant-time comparison of a stored hash with the hash of a presented key."""
    return hmac.compare_digest(stored_hash.encode(), hash_key(plaintext).encode())


# Domain separation: a fingerprint is never equal to, nor derivable into, the stored hash or the key.
_FINGERPRINT_KEY = b"quotagate/authorizer-context/secret-fingerprint/v1"
FINGERPRINT_LENGTH = 16


@functools.lru_cache(maxsize=4096)  # the proxy checks the cached record's fingerprint on every request
def secret_fingerprint(secret_hash: str) -> str:
    """Names which secret of a key the authorizer checked, for its (cached) context: a truncated HMAC
    of the stored hash, so the proxy can refuse a secret that has been rotated out without the
    context carrying the hash itself or anything that leads back to the key."""
    return hmac.new(_FINGERPRINT_KEY, secret_hash.encode(), hashlib.sha256).hexdigest()[:FINGERPRINT_LENGTH]
