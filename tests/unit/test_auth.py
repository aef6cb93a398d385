"""Unit tests of the shared authentication core (API keys; header parsing; dispatch to JWT)."""

from __future__ import annotations

import hmac

import pytest

from quotagate import apikeys
from quotagate.dal.keys_store import InMemoryKeyStore, KeyRecord
from quotagate.identity import Identity
from quotagate.logic.auth import Authenticator, credential_from_headers, looks_like_jwt, secret_still_accepted
from quotagate.logic.exceptions import AccessDenied, AuthUnavailable, MissingCredential
from tests.helpers import FakeClock

NOW = 1_800_000_000


class CountingStore(InMemoryKeyStore):
    def __init__(self) -> None:
        super().__init__()
        self.gets: list[str] = []

    def get(self, key_id: str) -> KeyRecord | None:
        self.gets.append(key_id)
        return super().get(key_id)


class BrokenStore(InMemoryKeyStore):
    def get(self, key_id: str) -> KeyRecord | None:
        raise RuntimeError("throttled")


class FakeVerifier:
    def __init__(self) -> None:
        self.tokens: list[str] = []

    def verify(self, token: str) -> Identity:
        self.tokens.append(token)
        return Identity("t-jwt", "user-1", "jwt:user-1", "pro", "jwt")


def make_record(key: apikeys.ParsedKey, **overrides) -> KeyRecord:
    fields = {
        "key_id": key.key_id,
        "tenant": "acme",
        "consumer": "svc-a",
        "plan": "pro",
        "secret_hash": apikeys.hash_key(key.plaintext),
        "created_at": NOW - 1000,
    }
    fields.update(overrides)
    return KeyRecord(**fields)


@pytest.fixture
def store() -> CountingStore:
    return CountingStore()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
def auth(store: CountingStore, clock: FakeClock) -> Authenticator:
    return Authenticator(store, None, clock=clock)


def add_key(store: InMemoryKeyStore, **overrides) -> apikeys.ParsedKey:
    key = apikeys.new_key()
    store.put_new(make_record(key, **overrides))
    return key


def denied_reason(auth: Authenticator, credential: str | None) -> str:
    with pytest.raises(AccessDenied) as info:
        auth.authenticate(credential)
    return info.value.reason


# --- credential_from_headers -------------------------------------------------------------------


AUTH = ("Authorization",)
API_KEY = ("x-api-key",)
SIGV4 = "AWS4-HMAC-SHA256 Credential=AKIA/..., SignedHeaders=host, Signature=ff"


@pytest.mark.parametrize(
    ("headers", "sources", "expected"),
    [
        ({"Authorization": "Bearer abc"}, AUTH, "abc"),
        ({"authorization": "bearer abc"}, AUTH, "abc"),
        ({"AUTHORIZATION": "BEARER   abc  "}, AUTH, "abc"),
        ({"x-api-key": "abc"}, API_KEY, "abc"),
        ({"X-Api-Key": " abc "}, ("X-API-KEY",), "abc"),
        # Only the identity sources are read: never another header, whatever it holds.
        ({"x-api-key": "abc"}, AUTH, None),
        ({"Authorization": "Bearer abc"}, API_KEY, None),
        ({"Authorization": "Bearer", "x-api-key": "abc"}, AUTH, None),
        ({"Authorization": "Bearer ", "x-api-key": "abc"}, AUTH, None),
        ({"Authorization": "Basic dXNlcjpwYXNz", "x-api-key": "abc"}, AUTH, None),
        ({"x-api-key": "", "Authorization": "Bearer abc"}, API_KEY, None),
        # Every credential header present must hold the same credential; a malformed one never falls through.
        ({"Authorization": "Bearer tok", "x-api-key": "other"}, ("Authorization", "x-api-key"), None),
        ({"Authorization": "Bearer tok", "x-api-key": "other"}, ("x-api-key", "Authorization"), None),
        ({"Authorization": "Bearer tok", "x-api-key": "tok"}, ("x-api-key", "Authorization"), "tok"),
        ({"x-api-key": "k", "Authorization": "Basic dXNlcjpwYXNz"}, ("x-api-key", "Authorization"), None),
        ({"Authorization": "Basic dXNlcjpwYXNz", "x-api-key": "k"}, ("Authorization", "x-api-key"), None),
        ({"x-api-key": "k"}, ("Authorization", "x-api-key"), "k"),
        # Not one well-formed token: another scheme, no token, several tokens, combined repeats.
        ({"Authorization": "Basic dXNlcjpwYXNz"}, AUTH, None),
        ({"Authorization": "Bearer"}, AUTH, None),
        ({"Authorization": "Bearer   "}, AUTH, None),
        ({"Authorization": "abc"}, AUTH, None),
        ({"Authorization": "Bearer a b"}, AUTH, None),
        ({"Authorization": "Bearer a, Bearer b"}, AUTH, None),
        ({"x-api-key": "a, b"}, API_KEY, None),
        ({"x-api-key": "Bearer abc"}, API_KEY, None),
        ({"x-api-key": ""}, API_KEY, None),
        ({"x-api-key": "   "}, API_KEY, None),
        ({"content-type": "application/json"}, AUTH, None),
        ({"Authorization": None, "x-api-key": None}, ("Authorization", "x-api-key"), None),
        ({"Authorization": "Bearer abc"}, (), None),
        ({}, AUTH, None),
        (None, AUTH, None),
        # An AWS signature is a credential for IAM only on the function-URL path.
        ({"Authorization": SIGV4, "x-api-key": "k"}, AUTH, None),
        ({"Authorization": SIGV4, "x-api-key": "k"}, ("Authorization", "x-api-key"), None),
    ],
)
def test_credential_from_headers(headers, sources, expected):
    assert credential_from_headers(headers, sources) == expected


@pytest.mark.parametrize(
    ("headers", "sources", "expected"),
    [
        ({"Authorization": SIGV4, "x-api-key": "k"}, ("Authorization", "x-api-key"), "k"),
        ({"Authorization": SIGV4, "x-api-key": "k"}, API_KEY, "k"),
        ({"Authorization": SIGV4, "x-api-key": "k"}, AUTH, None),  # never x-api-key unless configured
        ({"Authorization": "Bearer tok"}, AUTH, "tok"),
        ({"Authorization": "Basic dXNlcjpwYXNz", "x-api-key": "k"}, ("Authorization", "x-api-key"), None),
    ],
)
def test_credential_on_the_function_url_path(headers, sources, expected):
    assert credential_from_headers(headers, sources, aws_signed=True) == expected


def test_missing_credential_names_the_identity_sources():
    auth = Authenticator(InMemoryKeyStore())
    with pytest.raises(MissingCredential) as info:
        auth.authenticate_headers({"x-api-key": "k"}, ("Authorization",))
    error = info.value.gateway_error()
    assert error.status == 401
    assert "Authorization: Bearer <key>" in error.body()["error"]["message"]
    assert "x-api-key" not in error.body()["error"]["message"]


def test_looks_like_jwt():
    assert looks_like_jwt("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln")
    assert looks_like_jwt("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")  # alg none: routed to the verifier
    assert not looks_like_jwt(apikeys.new_key().plaintext)
    assert not looks_like_jwt("a.b")
    assert not looks_like_jwt("a.b.c.d")
    assert not looks_like_jwt("a b.c.d")


# --- API keys -----------------------------------------------------------------------------------


def test_missing_credential(auth):
    for credential in (None, "", "   "):
        with pytest.raises(MissingCredential):
            auth.authenticate(credential)


def test_valid_key(auth, store):
    key = add_key(store)
    identity = auth.authenticate(key.plaintext)
    assert identity == Identity(
        tenant="acme",
        consumer="svc-a",
        key_id=key.key_id,
        plan="pro",
        auth_type="api_key",
        secret_fingerprint=apikeys.secret_fingerprint(apikeys.hash_key(key.plaintext)),
    )
    assert store.gets == [key.key_id]


def test_secret_still_accepted_follows_rotation():
    old = apikeys.new_key()
    new = apikeys.new_key(old.key_id)
    old_fp = apikeys.secret_fingerprint(apikeys.hash_key(old.plaintext))
    new_fp = apikeys.secret_fingerprint(apikeys.hash_key(new.plaintext))
    record = make_record(new, previous_secret_hash=apikeys.hash_key(old.plaintext), previous_valid_until=NOW + 60)
    assert secret_still_accepted(record, new_fp, NOW + 3600)
    assert secret_still_accepted(record, old_fp, NOW + 59)
    assert not secret_still_accepted(record, old_fp, NOW + 60)
    assert not secret_still_accepted(make_record(new), old_fp, NOW)  # rotated without grace
    assert not secret_still_accepted(record, None, NOW)
    assert not secret_still_accepted(record, "", NOW)


@pytest.mark.parametrize(
    "credential",
    [
        "not-a-key",
        "qg_",
        "qg_abcdefghijkl_short",
        "sk-" + "a" * 48,
        "qg_ABCDEFGHIJKL_" + "a" * 46,  # key id must be lowercase base32
        "x" * 10_000,
        "qg_abcdefghijkl_" + "a" * 46 + "\n",
    ],
)
def test_malformed_key_is_denied_without_any_store_call(auth, store, credential):
    assert denied_reason(auth, credential) in ("malformed_key", "credential_too_long")
    assert store.gets == []


def test_bad_checksum_is_denied_without_any_store_call(auth, store):
    key = add_key(store)
    last = key.plaintext[-1]
    tampered = key.plaintext[:-1] + ("A" if last != "A" else "B")
    assert denied_reason(auth, tampered) == "malformed_key"
    # A changed secret character breaks the checksum too.
    body = key.plaintext
    index = len("qg_") + apikeys.KEY_ID_LENGTH + 1
    flipped = body[:index] + ("x" if body[index] != "x" else "y") + body[index + 1 :]
    assert denied_reason(auth, flipped) == "malformed_key"
    assert store.gets == []


def test_unknown_key_id(auth, store):
    key = apikeys.new_key()  # well-formed, valid checksum, never stored
    with pytest.raises(AccessDenied) as info:
        auth.authenticate(key.plaintext)
    assert info.value.reason == "unknown_key"
    assert info.value.key_id == key.key_id
    assert store.gets == [key.key_id]


def test_wrong_secret(auth, store):
    stored = add_key(store)
    other = apikeys.new_key(stored.key_id)  # same id, different secret, valid checksum
    assert denied_reason(auth, other.plaintext) == "invalid_secret"


@pytest.mark.parametrize("status", ["revoked", "disabled"])
def test_inactive_key(auth, store, status):
    key = add_key(store, status=status)
    assert denied_reason(auth, key.plaintext) == f"key_{status}"


def test_inactive_key_with_wrong_secret_reveals_only_the_wrong_secret(auth, store):
    stored = add_key(store, status="revoked")
    other = apikeys.new_key(stored.key_id)
    assert denied_reason(auth, other.plaintext) == "invalid_secret"


def test_expired_key(auth, store, clock):
    key = add_key(store, expires_at=NOW + 60)
    assert auth.authenticate(key.plaintext).key_id == key.key_id
    clock.now = NOW + 59.9
    assert auth.authenticate(key.plaintext).key_id == key.key_id
    clock.now = NOW + 60
    assert denied_reason(auth, key.plaintext) == "key_expired"
    clock.now = NOW + 10_000
    assert denied_reason(auth, key.plaintext) == "key_expired"


def test_rotated_key_works_during_grace_only(auth, store, clock):
    old = apikeys.new_key()
    new = apikeys.new_key(old.key_id)
    store.put_new(
        make_record(
            new,
            previous_secret_hash=apikeys.hash_key(old.plaintext),
            previous_valid_until=NOW + 3600,
        )
    )
    assert auth.authenticate(new.plaintext).key_id == old.key_id
    assert auth.authenticate(old.plaintext).key_id == old.key_id  # within grace
    clock.now = NOW + 3599
    assert auth.authenticate(old.plaintext).key_id == old.key_id
    clock.now = NOW + 3600
    assert denied_reason(auth, old.plaintext) == "rotated_key_grace_expired"
    assert auth.authenticate(new.plaintext).key_id == old.key_id  # the new key keeps working


def test_previous_hash_without_grace_deadline_is_not_accepted(auth, store):
    old = apikeys.new_key()
    new = apikeys.new_key(old.key_id)
    store.put_new(make_record(new, previous_secret_hash=apikeys.hash_key(old.plaintext)))
    assert denied_reason(auth, old.plaintext) == "rotated_key_grace_expired"


def test_rotated_but_revoked_key_is_denied(auth, store):
    old = apikeys.new_key()
    new = apikeys.new_key(old.key_id)
    store.put_new(
        make_record(
            new,
            status="revoked",
            previous_secret_hash=apikeys.hash_key(old.plaintext),
            previous_valid_until=NOW + 3600,
        )
    )
    assert denied_reason(auth, old.plaintext) == "key_revoked"
    assert denied_reason(auth, new.plaintext) == "key_revoked"


def test_store_failure_is_unavailable_not_denied(clock):
    auth = Authenticator(BrokenStore(), None, clock=clock)
    with pytest.raises(AuthUnavailable) as info:
        auth.authenticate(apikeys.new_key().plaintext)
    assert info.value.gateway_error().status == 503


def test_gateway_errors_are_openai_shaped_and_generic():
    missing = MissingCredential().gateway_error()
    assert missing.status == 401
    assert set(missing.body()["error"]) == {"message", "type", "param", "code"}
    denied = AccessDenied("key_revoked", "abcdefghijkl").gateway_error()
    assert denied.status == 401 and denied.code == "invalid_api_key"  # the openai SDK's AuthenticationError
    assert "revoked" not in denied.body()["error"]["code"]
    assert denied.message == AccessDenied("unknown_key").gateway_error().message


# --- constant-time comparison -------------------------------------------------------------------


class CompareSpy:
    """Records every hmac.compare_digest call that compares two SHA-256 hex digests."""

    def __init__(self) -> None:
        self.hash_compares: list[tuple[bytes, bytes]] = []
        self._real = hmac.compare_digest

    def __call__(self, a, b):
        if len(a) == 64 and len(b) == 64:
            self.hash_compares.append((a, b))
        return self._real(a, b)


@pytest.fixture
def spy(monkeypatch) -> CompareSpy:
    spy = CompareSpy()
    monkeypatch.setattr(hmac, "compare_digest", spy)
    return spy


def test_constant_time_comparison_decides_for_existing_and_unknown_ids(auth, store, spy):
    existing = add_key(store)
    wrong = apikeys.new_key(existing.key_id)
    unknown = apikeys.new_key()

    with pytest.raises(AccessDenied):
        auth.authenticate(wrong.plaintext)
    compares_existing = len(spy.hash_compares)
    assert compares_existing >= 1
    assert (existing_hash := apikeys.hash_key(existing.plaintext).encode()) in {a for a, _ in spy.hash_compares}

    spy.hash_compares.clear()
    with pytest.raises(AccessDenied):
        auth.authenticate(unknown.plaintext)
    # The same constant-time work is done when the key id does not exist.
    assert len(spy.hash_compares) == compares_existing
    assert all(b == apikeys.hash_key(unknown.plaintext).encode() for _, b in spy.hash_compares)
    assert existing_hash not in {a for a, _ in spy.hash_compares}


def test_hashes_match_alone_decides_the_secret(auth, store, monkeypatch):
    """No other comparison (such as ``==``) can accept or refuse a secret."""
    key = add_key(store)
    wrong = apikeys.new_key(key.key_id)
    calls: list[tuple[str, str]] = []

    def never(stored: str, plaintext: str) -> bool:
        calls.append((stored, plaintext))
        return False

    monkeypatch.setattr(apikeys, "hashes_match", never)
    assert denied_reason(auth, key.plaintext) == "invalid_secret"
    assert calls and all(plaintext == key.plaintext for _, plaintext in calls)

    monkeypatch.setattr(apikeys, "hashes_match", lambda stored, plaintext: True)
    assert auth.authenticate(wrong.plaintext).key_id == key.key_id


def test_same_number_of_hash_comparisons_for_every_outcome(auth, store, clock, spy):
    valid = add_key(store)
    revoked = add_key(store, status="revoked")
    expired = add_key(store, expires_at=NOW - 1)
    counts = []
    for credential in (
        valid.plaintext,
        revoked.plaintext,
        expired.plaintext,
        apikeys.new_key(valid.key_id).plaintext,
        apikeys.new_key().plaintext,
    ):
        spy.hash_compares.clear()
        try:
            auth.authenticate(credential)
        except AccessDenied:
            pass
        counts.append(len(spy.hash_compares))
    assert len(set(counts)) == 1 and counts[0] == 2


# --- JWT dispatch -------------------------------------------------------------------------------


def test_jwt_shaped_tokens_go_to_the_verifier(store, clock):
    verifier = FakeVerifier()
    auth = Authenticator(store, verifier, clock=clock)
    token = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJl"
    identity = auth.authenticate(token)
    assert identity.auth_type == "jwt"
    assert verifier.tokens == [token]
    assert store.gets == []
    key = add_key(store)
    assert auth.authenticate(key.plaintext).auth_type == "api_key"
    assert verifier.tokens == [token]


def test_jwt_without_verifier_is_denied(auth, store):
    assert denied_reason(auth, "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2ln") == "jwt_not_configured"
    assert store.gets == []


def test_overlong_jwt_is_denied_before_verification(store, clock):
    verifier = FakeVerifier()
    auth = Authenticator(store, verifier, clock=clock)
    assert denied_reason(auth, "a" * 5000 + "." + "b" * 5000 + ".c") == "credential_too_long"
    assert verifier.tokens == []


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        ([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer b")], None),
        ([(b"authorization", b"Basic dXNlcjpwYXNz"), (b"authorization", b"Bearer b")], None),
        ([(b"x-api-key", b"a"), (b"x-api-key", b"b")], None),
        ([(b"authorization", b"Bearer a"), (b"x-api-key", b"b")], None),
        ([(b"authorization", b"Bearer a"), (b"authorization", b"Bearer a")], "a"),
        ([(b"authorization", b"Bearer a"), (b"x-api-key", b"a")], "a"),
    ],
)
def test_repeated_header_lines_are_never_one_of_the_candidates(lines, expected):
    """The proxy's function-URL path reads Starlette's Headers, which yields a repeated header once
    per line: two different credentials must not become the last one."""
    from starlette.datastructures import Headers

    assert credential_from_headers(Headers(raw=lines), ("Authorization", "x-api-key")) == expected
