"""The authorizer's answer cache: keyed by the credential alone, bounded in time and size, and it never
remembers a failing key store."""

from __future__ import annotations

import pytest

from quotagate.identity import Identity
from quotagate.logic.auth_cache import AuthAnswerCache
from quotagate.logic.exceptions import AccessDenied, AuthUnavailable
from tests.helpers import FakeClock


class Counting:
    def __init__(self, answers: dict[str, Identity | Exception]) -> None:
        self.answers = answers
        self.calls: list[str] = []

    def __call__(self, credential: str) -> Identity:
        self.calls.append(credential)
        answer = self.answers[credential]
        if isinstance(answer, Exception):
            raise answer
        return answer


def identity(key_id: str, expires_at: int | None = None) -> Identity:
    return Identity(tenant="t", consumer="c", key_id=key_id, plan="free", expires_at=expires_at)


def test_an_answer_is_served_only_for_the_same_credential_until_the_ttl():
    clock = FakeClock(1000.0)
    cache = AuthAnswerCache(300, clock=clock)
    backend = Counting({"a": identity("A"), "b": identity("B")})
    assert cache.authenticate("a", backend).key_id == "A"
    assert cache.authenticate("b", backend).key_id == "B"
    clock.now += 299
    assert cache.authenticate("a", backend).key_id == "A"
    assert backend.calls == ["a", "b"]
    clock.now += 1
    cache.authenticate("a", backend)
    assert backend.calls == ["a", "b", "a"]


def test_a_refusal_is_remembered_and_a_failing_store_is_not():
    cache = AuthAnswerCache(300, clock=FakeClock(0.0))
    backend = Counting({"bad": AccessDenied("revoked", "K"), "down": AuthUnavailable("key_store_unavailable")})
    for _ in range(2):
        with pytest.raises(AccessDenied) as denied:
            cache.authenticate("bad", backend)
        assert denied.value.reason == "revoked" and denied.value.key_id == "K"
        with pytest.raises(AuthUnavailable):
            cache.authenticate("down", backend)
    assert backend.calls == ["bad", "down", "down"]


def test_a_jwt_answer_never_outlives_the_token():
    clock = FakeClock(1000.0)
    cache = AuthAnswerCache(300, clock=clock)
    backend = Counting({"jwt": identity("J", expires_at=1010)})
    cache.authenticate("jwt", backend)
    clock.now = 1009
    cache.authenticate("jwt", backend)
    clock.now = 1010
    cache.authenticate("jwt", backend)
    assert backend.calls == ["jwt", "jwt"]


def test_zero_ttl_caches_nothing_and_the_size_is_bounded():
    backend = Counting({str(i): identity(str(i)) for i in range(5)})
    uncached = AuthAnswerCache(0, clock=FakeClock(0.0))
    uncached.authenticate("1", backend)
    uncached.authenticate("1", backend)
    assert backend.calls == ["1", "1"]
    small = AuthAnswerCache(300, clock=FakeClock(0.0), max_entries=2)
    for credential in ("2", "3", "4", "2"):
        small.authenticate(credential, backend)
    # "2" was the oldest when "4" came in: asked again.
    assert backend.calls[2:] == ["2", "3", "4", "2"]
