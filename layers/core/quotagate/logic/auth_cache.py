"""The authorizer's own answer cache, keyed by the credential it read.

API Gateway caches nothing (see :mod:`quotagate.identity_sources`), so every request reaches the
authorizer, which first reads the one credential of the request from every credential header
(refusing two different ones) and only then looks here: a cached answer can only ever be served to a
request that presented exactly that credential, whatever else it carries.

Keys are SHA-256 digests of the credential (the plaintext is never held); entries live ``ttl``
seconds (a JWT's never past its expiry), the store holds at most ``max_entries`` (oldest dropped
first). Allowed identities and refusals (:class:`AccessDenied`) are kept; a failing key store or
JWKS endpoint is never cached. The cache lives as long as the Lambda execution environment: each
warm instance has its own, so a revocation is seen by all of them at the latest ``ttl`` later.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING

from quotagate.logic.exceptions import AccessDenied

if TYPE_CHECKING:
    from collections.abc import Callable

    from quotagate.identity import Identity

DEFAULT_MAX_ENTRIES = 10_000


class AuthAnswerCache:
    def __init__(
        self, ttl_seconds: float, clock: Callable[[], float] = time.time, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        self.ttl = ttl_seconds
        self._clock = clock
        self._max_entries = max_entries
        self._entries: OrderedDict[bytes, tuple[float, Identity | AccessDenied]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(credential: str) -> bytes:
        return hashlib.sha256(credential.encode("utf-8", "surrogatepass")).digest()

    def authenticate(self, credential: str, authenticate: Callable[[str], Identity]) -> Identity:
        """The cached answer for ``credential``, or ``authenticate(credential)``'s, remembered."""
        if self.ttl <= 0:
            return authenticate(credential)
        key, now = self._key(credential), self._clock()
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and now < entry[0]:
            answer = entry[1]
            if isinstance(answer, AccessDenied):
                raise AccessDenied(answer.reason, answer.key_id)
            return answer
        try:
            identity = authenticate(credential)
        except AccessDenied as denied:
            self._remember(key, now + self.ttl, denied)
            raise
        expires = now + self.ttl
        if identity.expires_at is not None:
            expires = min(expires, float(identity.expires_at))
        self._remember(key, expires, identity)
        return identity

    def _remember(self, key: bytes, expires: float, answer: Identity | AccessDenied) -> None:
        with self._lock:
            self._entries[key] = (expires, answer)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
