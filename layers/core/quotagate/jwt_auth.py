"""Verification of JWTs issued by the customer's identity provider.

Rules (RFC 8725):

* Only RS256 and ES256. The allow-list is fixed here, never taken from the token; a token whose
  header names anything else (``none``, ``HS256`` — the HS/RS key-confusion attack —, ``RS512`` ...)
  is rejected before any key lookup or signature check. Keys in the JWKS that are not RSA/P-256
  signing keys (for example ``oct`` keys) are never used.
* The key is chosen by ``kid`` from a JWKS: a static document (``QG_JWT_PUBLIC_KEYS``) or an
  endpoint (``QG_JWT_JWKS_URL``) fetched with a timeout and cached (PyJWKClient, 5 minutes; an
  unknown ``kid`` forces at most one refetch per 30 s). Headers such as ``jku``/``x5u``/``jwk`` are
  ignored: keys come only from configuration.
* ``exp``, ``iss`` and ``aud`` are required; ``nbf`` and ``iat`` are checked when present; clock
  skew ``leeway`` seconds.
* The tenant claim is required; the consumer claim (``sub`` by default) too; the plan claim is
  optional (``default_plan``).

``jwt`` (PyJWT + cryptography, ~60 ms to import) is imported lazily so that deployments without
JWT configuration do not pay for it on cold start.
"""

from __future__ import annotations

import ipaddress
import json
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from quotagate import settings
from quotagate.auth_types import AuthType
from quotagate.identity import Identity, jwt_key_id
from quotagate.logic.exceptions import AccessDenied, AuthUnavailable

if TYPE_CHECKING:
    from collections.abc import Sequence

    from jwt import PyJWK

ALLOWED_ALGORITHMS: tuple[str, ...] = ("RS256", "ES256")
DEFAULT_JWKS_TIMEOUT = 3.0  # seconds, per JWKS fetch
DEFAULT_JWKS_CACHE_SECONDS = 300
_MAX_CLAIM_LENGTH = 256
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class JwtConfigurationError(ValueError):
    """JWT settings are present but incomplete or invalid."""


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_jwks(jwks: Any) -> dict[str, PyJWK]:
    """Usable signing keys by kid: RS256/ES256 only, with a kid, ``use`` absent or ``sig``."""
    from jwt import PyJWK
    from jwt.exceptions import PyJWTError

    if isinstance(jwks, str):
        jwks = json.loads(jwks)
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise JwtConfigurationError("static JWKS must be a JSON object with a 'keys' list")
    keys: dict[str, PyJWK] = {}
    for data in jwks["keys"]:
        if not isinstance(data, dict) or not isinstance(data.get("kid"), str):
            continue
        if data.get("use") not in (None, "sig"):
            continue
        try:
            key = PyJWK(data)
        except PyJWTError:
            continue
        if key.algorithm_name in ALLOWED_ALGORITHMS:
            keys[data["kid"]] = key
    if not keys:
        raise JwtConfigurationError("static JWKS holds no usable RS256/ES256 signing key with a kid")
    return keys


def _claim_string(payload: dict[str, Any], claim: str) -> str | None:
    value = payload.get(claim)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    text = str(value)
    if not text or len(text) > _MAX_CLAIM_LENGTH or _CONTROL_CHARS.search(text):
        return None
    return text


class JwtVerifier:
    def __init__(
        self,
        issuer: str,
        audience: str | Sequence[str],
        jwks_url: str | None = None,
        static_jwks: dict[str, Any] | None = None,
        tenant_claim: str = "tenant_id",
        consumer_claim: str = "sub",
        plan_claim: str = "plan",
        default_plan: str = "free",
        leeway: float = 30,
        jwks_timeout: float = DEFAULT_JWKS_TIMEOUT,
        jwks_cache_seconds: float = DEFAULT_JWKS_CACHE_SECONDS,
    ) -> None:
        if not issuer:
            raise JwtConfigurationError("issuer is required")
        if not audience:
            raise JwtConfigurationError("audience is required")
        if (jwks_url is None) == (static_jwks is None):
            raise JwtConfigurationError("exactly one of jwks_url and static_jwks is required")
        self.issuer = issuer
        self.audience: str | list[str] = audience if isinstance(audience, str) else list(audience)
        self.tenant_claim = tenant_claim
        self.consumer_claim = consumer_claim
        self.plan_claim = plan_claim
        self.default_plan = default_plan
        self.leeway = leeway
        self._static_keys: dict[str, PyJWK] | None = None
        self._client: Any = None
        if static_jwks is not None:
            self._static_keys = _parse_jwks(static_jwks)
        else:
            assert jwks_url is not None
            parsed = urlparse(jwks_url)
            if parsed.scheme != "https" and not (parsed.scheme == "http" and _is_loopback(parsed.hostname)):
                raise JwtConfigurationError("jwks_url must be https (plain http only on loopback)")
            from jwt import PyJWKClient

            self._client = PyJWKClient(
                jwks_url,
                cache_jwk_set=True,
                lifespan=jwks_cache_seconds,
                cache_keys=False,  # its LRU never expires: a key removed from the JWKS would live on
                timeout=jwks_timeout,
            )

    @classmethod
    def from_env(cls) -> JwtVerifier | None:
        """Build from ``QG_JWT_*`` variables; None when JWT authentication is not configured.

        Partial configuration raises :class:`JwtConfigurationError` (fail loudly rather than
        silently turning JWT authentication off). ``QG_JWT_AUDIENCE`` may list several audiences
        separated by commas. When both a JWKS URL and static keys are set, the URL is used.
        """
        issuer = settings.env(settings.JWT_ISSUER)
        audience = settings.env(settings.JWT_AUDIENCE)
        jwks_url = settings.env(settings.JWT_JWKS_URL)
        public_keys = settings.env(settings.JWT_PUBLIC_KEYS)
        if not any((issuer, audience, jwks_url, public_keys)):
            return None
        missing = [
            name
            for name, value in (
                (settings.JWT_ISSUER, issuer),
                (settings.JWT_AUDIENCE, audience),
                (f"{settings.JWT_JWKS_URL} or {settings.JWT_PUBLIC_KEYS}", jwks_url or public_keys),
            )
            if not value
        ]
        if missing:
            raise JwtConfigurationError(f"incomplete JWT configuration, missing: {', '.join(missing)}")
        assert issuer is not None and audience is not None
        audiences = [a.strip() for a in audience.split(",") if a.strip()]
        static_jwks = None
        if public_keys and not jwks_url:
            try:
                static_jwks = json.loads(public_keys)
            except ValueError as error:
                raise JwtConfigurationError(f"{settings.JWT_PUBLIC_KEYS} is not valid JSON") from error
        return cls(
            issuer=issuer,
            audience=audiences[0] if len(audiences) == 1 else audiences,
            jwks_url=jwks_url,
            static_jwks=static_jwks,
            tenant_claim=settings.env(settings.JWT_TENANT_CLAIM, "tenant_id") or "tenant_id",
            consumer_claim=settings.env(settings.JWT_CONSUMER_CLAIM, "sub") or "sub",
            plan_claim=settings.env(settings.JWT_PLAN_CLAIM, "plan") or "plan",
        )

    def _signing_key(self, kid: str) -> PyJWK:
        if self._static_keys is not None:
            key = self._static_keys.get(kid)
            if key is None:
                raise AccessDenied("unknown_kid")
            return key
        from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError, PyJWTError

        try:
            key = self._client.get_signing_key(kid)
        except PyJWKClientConnectionError as error:
            raise AuthUnavailable("jwks_unavailable") from error
        except PyJWKClientError as error:
            raise AccessDenied("unknown_kid") from error
        except PyJWTError as error:  # a JWKS document we cannot use
            raise AuthUnavailable("jwks_invalid") from error
        if key.algorithm_name not in ALLOWED_ALGORITHMS or key.public_key_use not in (None, "sig"):
            raise AccessDenied("unusable_key")
        return key

    def verify(self, token: str) -> Identity:
        """The identity a valid token carries; AccessDenied(reason) otherwise."""
        import jwt
        from jwt import exceptions as jwt_errors

        try:
            header = jwt.get_unverified_header(token)
        except jwt_errors.PyJWTError as error:
            raise AccessDenied("malformed_token") from error
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:  # none, HS*, anything else: before any key lookup
            raise AccessDenied("unsupported_alg")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise AccessDenied("missing_kid")
        key = self._signing_key(kid)
        if key.algorithm_name != alg:
            raise AccessDenied("alg_key_mismatch")

        try:
            payload = jwt.decode(
                token,
                key=key,
                algorithms=list(ALLOWED_ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={
                    "require": ["exp", "iss", "aud"],
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_iss": True,
                    "verify_aud": True,
                },
            )
        except jwt_errors.ExpiredSignatureError as error:
            raise AccessDenied("token_expired") from error
        except jwt_errors.ImmatureSignatureError as error:
            raise AccessDenied("token_not_yet_valid") from error
        except jwt_errors.InvalidIssuerError as error:
            raise AccessDenied("invalid_issuer") from error
        except jwt_errors.InvalidAudienceError as error:
            raise AccessDenied("invalid_audience") from error
        except jwt_errors.MissingRequiredClaimError as error:
            raise AccessDenied(f"missing_claim_{error.claim}") from error
        except jwt_errors.InvalidAlgorithmError as error:
            raise AccessDenied("unsupported_alg") from error
        except jwt_errors.InvalidSignatureError as error:
            raise AccessDenied("invalid_signature") from error
        except jwt_errors.PyJWTError as error:
            raise AccessDenied("invalid_token") from error

        tenant = _claim_string(payload, self.tenant_claim)
        if tenant is None:
            raise AccessDenied("missing_tenant_claim")
        consumer = _claim_string(payload, self.consumer_claim)
        if consumer is None:
            raise AccessDenied("missing_consumer_claim")
        plan = _claim_string(payload, self.plan_claim) or self.default_plan
        subject = _claim_string(payload, "sub") or consumer
        # When this verifier would refuse the token (exp plus the leeway): the proxy refuses it then
        # too, even while API Gateway still holds the Allow.
        expires_at = int(float(payload["exp"]) + self.leeway)
        return Identity(
            tenant=tenant,
            consumer=consumer,
            key_id=jwt_key_id(tenant, subject),
            plan=plan,
            auth_type=AuthType.JWT,
            expires_at=expires_at,
        )


def from_env() -> JwtVerifier | None:
    """Module-level shortcut for :meth:`JwtVerifier.from_env`."""
    return JwtVerifier.from_env()
