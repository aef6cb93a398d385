"""Unit tests of IdP JWT verification (keys generated here; JWKS static or served on 127.0.0.1)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from quotagate import settings
from quotagate.dal.keys_store import InMemoryKeyStore
from quotagate.identity import Identity
from quotagate.jwt_auth import JwtConfigurationError, JwtVerifier, from_env
from quotagate.logic.auth import Authenticator
from quotagate.logic.exceptions import AccessDenied, AuthUnavailable

if TYPE_CHECKING:
    from collections.abc import Iterator

ISSUER = "https://idp.example.com/"
AUDIENCE = "quotagate-api"
RSA_KID = "rsa-1"
EC_KID = "ec-1"


# --- keys and tokens ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def jwks(rsa_key, ec_key) -> dict:
    rsa_jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    rsa_jwk.update(kid=RSA_KID, use="sig", alg="RS256")
    ec_jwk = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    ec_jwk.update(kid=EC_KID, use="sig")  # no "alg": inferred from the P-256 curve
    return {"keys": [rsa_jwk, ec_jwk]}


@pytest.fixture
def verifier(jwks) -> JwtVerifier:
    return JwtVerifier(ISSUER, AUDIENCE, static_jwks=jwks)


def claims(**overrides) -> dict:
    now = int(time.time())
    values = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "tenant_id": "acme",
        "plan": "pro",
        "iat": now,
        "exp": now + 600,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def sign_rs256(key, kid: str | None = RSA_KID, **overrides) -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(claims(**overrides), key, algorithm="RS256", headers=headers)


def sign_es256(key, kid: str = EC_KID, **overrides) -> str:
    return jwt.encode(claims(**overrides), key, algorithm="ES256", headers={"kid": kid})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def handmade(header: dict, payload: dict, sign=None) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    signature = sign(signing_input.encode()) if sign else b""
    return f"{signing_input}.{b64url(signature)}"


def reason(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(AccessDenied) as info:
        verifier.verify(token)
    return info.value.reason


# --- valid tokens -------------------------------------------------------------------------------


def test_valid_rs256(verifier, rsa_key):
    exp = int(time.time()) + 600
    identity = verifier.verify(sign_rs256(rsa_key, exp=exp))
    assert identity == Identity(
        tenant="acme",
        consumer="user-42",
        key_id="jwt:acme:user-42",
        plan="pro",
        auth_type="jwt",
        expires_at=exp + int(verifier.leeway),  # when the verifier itself would refuse it
    )


def test_same_subject_in_two_tenants_has_two_windows(verifier, rsa_key):
    """Per-consumer quota windows are keyed on the identity's key_id: the same ``sub`` issued by two
    tenants is two consumers, never one shared window."""
    acme = verifier.verify(sign_rs256(rsa_key, sub="user-42", tenant_id="acme"))
    globex = verifier.verify(sign_rs256(rsa_key, sub="user-42", tenant_id="globex"))
    assert acme.key_id != globex.key_id
    assert acme.key_id == "jwt:acme:user-42"
    # A tenant containing the separator cannot collide with another (tenant, sub) pair.
    tricky = verifier.verify(sign_rs256(rsa_key, sub="b:c", tenant_id="a"))
    other = verifier.verify(sign_rs256(rsa_key, sub="c", tenant_id="a:b"))
    assert tricky.key_id != other.key_id


def test_valid_es256(verifier, ec_key):
    identity = verifier.verify(sign_es256(ec_key))
    assert identity.tenant == "acme"
    assert identity.key_id == "jwt:acme:user-42"
    assert identity.auth_type == "jwt"


def test_default_plan_and_custom_claims(jwks, rsa_key):
    verifier = JwtVerifier(
        ISSUER,
        AUDIENCE,
        static_jwks=jwks,
        tenant_claim="custom:org",
        consumer_claim="client_id",
        plan_claim="tier",
        default_plan="starter",
    )
    identity = verifier.verify(sign_rs256(rsa_key, **{"custom:org": "globex", "client_id": "app-7", "plan": None}))
    assert identity.tenant == "globex"
    assert identity.consumer == "app-7"
    assert identity.plan == "starter"
    assert identity.key_id == "jwt:globex:user-42"  # tenant and sub


def test_audience_list_in_token(verifier, rsa_key):
    assert verifier.verify(sign_rs256(rsa_key, aud=["other", AUDIENCE])).tenant == "acme"


def test_verifier_accepting_several_audiences(jwks, rsa_key):
    verifier = JwtVerifier(ISSUER, ["a", AUDIENCE], static_jwks=jwks)
    assert verifier.verify(sign_rs256(rsa_key)).tenant == "acme"


def test_through_the_authenticator(verifier, rsa_key):
    store = InMemoryKeyStore()
    auth = Authenticator(store, verifier)
    assert auth.authenticate(sign_rs256(rsa_key)).auth_type == "jwt"
    with pytest.raises(AccessDenied):
        auth.authenticate(sign_rs256(rsa_key, iss="https://evil.example.com/"))


# --- time claims --------------------------------------------------------------------------------


def test_expired(verifier, rsa_key):
    now = int(time.time())
    assert reason(verifier, sign_rs256(rsa_key, iat=now - 3600, exp=now - 120)) == "token_expired"


def test_expiry_leeway(verifier, rsa_key):
    now = int(time.time())
    assert verifier.verify(sign_rs256(rsa_key, exp=now - 5)).tenant == "acme"  # within 30 s leeway


def test_nbf_in_future(verifier, rsa_key):
    now = int(time.time())
    assert reason(verifier, sign_rs256(rsa_key, nbf=now + 300)) == "token_not_yet_valid"
    assert verifier.verify(sign_rs256(rsa_key, nbf=now + 5)).tenant == "acme"  # within leeway


def test_iat_in_future(verifier, rsa_key):
    assert reason(verifier, sign_rs256(rsa_key, iat=int(time.time()) + 600)) == "token_not_yet_valid"


# --- issuer, audience, required claims ----------------------------------------------------------


def test_wrong_issuer(verifier, rsa_key):
    assert reason(verifier, sign_rs256(rsa_key, iss="https://evil.example.com/")) == "invalid_issuer"


def test_wrong_audience(verifier, rsa_key):
    assert reason(verifier, sign_rs256(rsa_key, aud="some-other-api")) == "invalid_audience"


@pytest.mark.parametrize("claim", ["exp", "iss", "aud"])
def test_required_claims(verifier, rsa_key, claim):
    assert reason(verifier, sign_rs256(rsa_key, **{claim: None})) == f"missing_claim_{claim}"


@pytest.mark.parametrize("tenant", [None, "", {"id": "acme"}, ["acme"], True, "a" * 300, "ac\nme"])
def test_missing_or_invalid_tenant_claim(verifier, rsa_key, tenant):
    assert reason(verifier, sign_rs256(rsa_key, tenant_id=tenant)) == "missing_tenant_claim"


def test_missing_subject(verifier, rsa_key):
    assert reason(verifier, sign_rs256(rsa_key, sub=None)) == "missing_consumer_claim"


# --- algorithms and keys ------------------------------------------------------------------------


def test_alg_none_rejected(verifier):
    token = handmade({"alg": "none", "typ": "JWT", "kid": RSA_KID}, claims())
    assert token.endswith(".")
    assert reason(verifier, token) == "unsupported_alg"
    with pytest.raises(AccessDenied):
        Authenticator(InMemoryKeyStore(), verifier).authenticate(token)


@pytest.mark.parametrize("alg", ["None", "NONE", "", None])
def test_alg_none_variants_rejected(verifier, alg):
    header = {"kid": RSA_KID} if alg is None else {"alg": alg, "kid": RSA_KID}
    assert reason(verifier, handmade(header, claims())) == "unsupported_alg"


def test_hs256_key_confusion_rejected(verifier, rsa_key):
    """HS256 signed with the RSA *public key* (PEM) as the HMAC secret: the classic confusion attack."""
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (public_pem, public_pem.strip()):
        token = handmade(
            {"alg": "HS256", "typ": "JWT", "kid": RSA_KID},
            claims(),
            lambda data, secret=secret: hmac.new(secret, data, hashlib.sha256).digest(),
        )
        assert reason(verifier, token) == "unsupported_alg"


def test_symmetric_keys_in_jwks_are_never_used(jwks, rsa_key):
    secret = b"s" * 32
    oct_key = {"kty": "oct", "kid": "hmac-1", "k": b64url(secret), "alg": "HS256"}
    verifier = JwtVerifier(ISSUER, AUDIENCE, static_jwks={"keys": [*jwks["keys"], oct_key]})
    token = handmade(
        {"alg": "HS256", "kid": "hmac-1"},
        claims(),
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )
    assert reason(verifier, token) == "unsupported_alg"
    # Even a token claiming RS256 cannot select the symmetric key.
    assert reason(verifier, sign_rs256(rsa_key, kid="hmac-1")) == "unknown_kid"


def test_only_oct_keys_is_a_configuration_error():
    with pytest.raises(JwtConfigurationError):
        JwtVerifier(ISSUER, AUDIENCE, static_jwks={"keys": [{"kty": "oct", "kid": "k", "k": "c2VjcmV0"}]})


@pytest.mark.parametrize("alg", ["RS512", "PS256", "ES384", "HS512", "EdDSA"])
def test_other_algorithms_rejected_before_verification(verifier, alg):
    assert reason(verifier, handmade({"alg": alg, "kid": RSA_KID}, claims(), lambda data: b"x" * 64)) == (
        "unsupported_alg"
    )


def test_unknown_kid(verifier, rsa_key):
    assert reason(verifier, sign_rs256(rsa_key, kid="rotated-away")) == "unknown_kid"


def test_missing_kid(verifier, rsa_key):
    assert reason(verifier, sign_rs256(rsa_key, kid=None)) == "missing_kid"


def test_alg_must_match_the_key(verifier, rsa_key, ec_key):
    assert reason(verifier, sign_rs256(rsa_key, kid=EC_KID)) == "alg_key_mismatch"
    assert reason(verifier, sign_es256(ec_key, kid=RSA_KID)) == "alg_key_mismatch"


def test_signed_by_another_key(verifier, other_rsa_key):
    assert reason(verifier, sign_rs256(other_rsa_key)) == "invalid_signature"


def test_tampered_payload(verifier, rsa_key):
    header, _, signature = sign_rs256(rsa_key).split(".")
    forged = b64url(json.dumps(claims(tenant_id="victim")).encode())
    assert reason(verifier, f"{header}.{forged}.{signature}") == "invalid_signature"


def test_header_supplied_keys_are_ignored(verifier, other_rsa_key):
    """An attacker's own key in the header (jwk/jku/x5u) must not be trusted."""
    attacker_jwk = RSAAlgorithm.to_jwk(other_rsa_key.public_key(), as_dict=True)
    token = jwt.encode(
        claims(),
        other_rsa_key,
        algorithm="RS256",
        headers={"kid": RSA_KID, "jwk": attacker_jwk, "jku": "https://evil.example.com/jwks.json"},
    )
    assert reason(verifier, token) == "invalid_signature"


@pytest.mark.parametrize("token", ["abc.def.ghi", "e30.e30.", "!!.??.**"])
def test_malformed_tokens(verifier, token):
    assert reason(verifier, token) in ("malformed_token", "unsupported_alg")


# --- configuration ------------------------------------------------------------------------------


def test_configuration_validation(jwks):
    with pytest.raises(JwtConfigurationError):
        JwtVerifier("", AUDIENCE, static_jwks=jwks)
    with pytest.raises(JwtConfigurationError):
        JwtVerifier(ISSUER, "", static_jwks=jwks)
    with pytest.raises(JwtConfigurationError):
        JwtVerifier(ISSUER, AUDIENCE)
    with pytest.raises(JwtConfigurationError):
        JwtVerifier(ISSUER, AUDIENCE, jwks_url="https://idp.example.com/jwks", static_jwks=jwks)
    with pytest.raises(JwtConfigurationError):
        JwtVerifier(ISSUER, AUDIENCE, jwks_url="http://idp.example.com/jwks")  # plain http off loopback
    with pytest.raises(JwtConfigurationError):
        JwtVerifier(ISSUER, AUDIENCE, jwks_url="file:///etc/passwd")
    # https and loopback http are fine; nothing is fetched at construction.
    JwtVerifier(ISSUER, AUDIENCE, jwks_url="https://idp.example.com/.well-known/jwks.json")
    JwtVerifier(ISSUER, AUDIENCE, jwks_url="http://127.0.0.1:1/jwks")


JWT_VARS = (
    settings.JWT_ISSUER,
    settings.JWT_AUDIENCE,
    settings.JWT_JWKS_URL,
    settings.JWT_PUBLIC_KEYS,
    settings.JWT_TENANT_CLAIM,
    settings.JWT_CONSUMER_CLAIM,
    settings.JWT_PLAN_CLAIM,
)


@pytest.fixture
def clean_env(monkeypatch):
    for name in JWT_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_from_env_unconfigured(clean_env):
    assert from_env() is None
    assert JwtVerifier.from_env() is None


def test_from_env_static_keys(clean_env, jwks, rsa_key):
    clean_env.setenv(settings.JWT_ISSUER, ISSUER)
    clean_env.setenv(settings.JWT_AUDIENCE, f"other, {AUDIENCE}")
    clean_env.setenv(settings.JWT_PUBLIC_KEYS, json.dumps(jwks))
    clean_env.setenv(settings.JWT_TENANT_CLAIM, "org")
    verifier = from_env()
    assert verifier is not None
    assert verifier.verify(sign_rs256(rsa_key, org="initech")).tenant == "initech"


@pytest.mark.parametrize(
    "present",
    [
        {settings.JWT_ISSUER: ISSUER},
        {settings.JWT_ISSUER: ISSUER, settings.JWT_AUDIENCE: AUDIENCE},
        {settings.JWT_AUDIENCE: AUDIENCE, settings.JWT_JWKS_URL: "https://idp.example.com/jwks"},
        {settings.JWT_ISSUER: ISSUER, settings.JWT_AUDIENCE: AUDIENCE, settings.JWT_PUBLIC_KEYS: "{not json"},
    ],
)
def test_from_env_incomplete_fails_loudly(clean_env, present):
    for name, value in present.items():
        clean_env.setenv(name, value)
    with pytest.raises(JwtConfigurationError):
        from_env()


# --- JWKS over HTTP -----------------------------------------------------------------------------


class JwksServer:
    def __init__(self, document: dict | None = None, delay: float = 0.0) -> None:
        self.document = document
        self.delay = delay
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if outer.delay:
                    time.sleep(outer.delay)
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> JwksServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server(jwks) -> Iterator[JwksServer]:
    with JwksServer(jwks) as server:
        yield server


def test_jwks_url_valid_tokens_and_caching(jwks_server, rsa_key, ec_key):
    verifier = JwtVerifier(ISSUER, AUDIENCE, jwks_url=jwks_server.url, jwks_timeout=2)
    assert verifier.verify(sign_rs256(rsa_key)).tenant == "acme"
    assert verifier.verify(sign_es256(ec_key)).tenant == "acme"
    assert verifier.verify(sign_rs256(rsa_key, sub="someone-else")).consumer == "someone-else"
    assert jwks_server.requests == 1  # the JWKS is cached


def test_jwks_url_unknown_kid_refetches_at_most_once_per_cooldown(jwks_server, rsa_key):
    verifier = JwtVerifier(ISSUER, AUDIENCE, jwks_url=jwks_server.url)
    assert verifier.verify(sign_rs256(rsa_key)).tenant == "acme"
    for kid in ("nope-1", "nope-2", "nope-3"):
        assert reason(verifier, sign_rs256(rsa_key, kid=kid)) == "unknown_kid"
    assert jwks_server.requests == 1  # within the cooldown, random kids cannot force refetches


def test_jwks_url_rejects_bad_algorithms_without_fetching(jwks_server, rsa_key):
    verifier = JwtVerifier(ISSUER, AUDIENCE, jwks_url=jwks_server.url)
    public_pem = rsa_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    confusion = handmade(
        {"alg": "HS256", "kid": RSA_KID},
        claims(),
        lambda data: hmac.new(public_pem, data, hashlib.sha256).digest(),
    )
    assert reason(verifier, confusion) == "unsupported_alg"
    assert reason(verifier, handmade({"alg": "none", "kid": RSA_KID}, claims())) == "unsupported_alg"
    assert jwks_server.requests == 0


def test_jwks_url_oct_key_is_not_usable(rsa_key):
    secret = b"k" * 32
    document = {"keys": [{"kty": "oct", "kid": RSA_KID, "k": b64url(secret)}]}
    with JwksServer(document) as server:
        verifier = JwtVerifier(ISSUER, AUDIENCE, jwks_url=server.url)
        assert reason(verifier, sign_rs256(rsa_key)) in ("unusable_key", "alg_key_mismatch")


def test_jwks_url_unreachable_is_unavailable_not_denied(rsa_key):
    with JwksServer({"keys": []}) as server:
        url = server.url
    verifier = JwtVerifier(ISSUER, AUDIENCE, jwks_url=url, jwks_timeout=1)
    with pytest.raises(AuthUnavailable) as info:
        verifier.verify(sign_rs256(rsa_key))
    assert info.value.reason == "jwks_unavailable"


def test_jwks_url_fetch_has_a_timeout(jwks, rsa_key):
    with JwksServer(jwks, delay=3) as server:
        verifier = JwtVerifier(ISSUER, AUDIENCE, jwks_url=server.url, jwks_timeout=0.3)
        started = time.monotonic()
        with pytest.raises(AuthUnavailable):
            verifier.verify(sign_rs256(rsa_key))
        assert time.monotonic() - started < 2
