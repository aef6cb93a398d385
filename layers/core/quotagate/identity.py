"""Who is calling: set by the authorizer, read by the proxy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from quotagate.auth_types import AuthType

AUTH_TYPES = frozenset(AuthType)


@dataclass(frozen=True)
class Identity:
    tenant: str
    consumer: str
    key_id: str  # gateway key id, or jwt_key_id(tenant, sub) for IdP tokens
    plan: str
    auth_type: AuthType = AuthType.API_KEY
    # Gateway keys: apikeys.secret_fingerprint of the secret the authorizer checked (current or the
    # previous one in its rotation grace), so the proxy can refuse it once it has been rotated out.
    secret_fingerprint: str | None = None
    # IdP tokens: epoch seconds from which the token is no longer accepted (exp plus leeway).
    expires_at: int | None = None

    def to_context(self) -> dict[str, str]:
        """Authorizer context: small, strings only, nothing fast-changing."""
        context = {
            "tenant": self.tenant,
            "consumer": self.consumer,
            "key_id": self.key_id,
            "plan": self.plan,
            "auth_type": self.auth_type,
        }
        if self.secret_fingerprint is not None:
            context["secret_fingerprint"] = self.secret_fingerprint
        if self.expires_at is not None:
            context["expires_at"] = str(self.expires_at)
        return context

    @classmethod
    def from_context(cls, context: dict[str, Any] | None) -> Identity | None:
        """Parse an authorizer context defensively (values may arrive as strings or be missing)."""
        if not isinstance(context, dict):
            return None
        fields = {}
        for name in ("tenant", "consumer", "key_id", "plan"):
            value = context.get(name)
            if not isinstance(value, str) or not value:
                return None
            fields[name] = value
        auth_type = context.get("auth_type") or AuthType.API_KEY
        if not isinstance(auth_type, str) or auth_type not in AUTH_TYPES:
            return None  # not a context this gateway's authorizer wrote
        fingerprint = context.get("secret_fingerprint")
        expires_at = context.get("expires_at")
        if isinstance(expires_at, int | str) and not isinstance(expires_at, bool) and str(expires_at).isdigit():
            expires_at = int(expires_at)
        elif expires_at is not None:
            return None  # present but unreadable: not a context this gateway's authorizer wrote
        return cls(
            auth_type=AuthType(auth_type),
            secret_fingerprint=fingerprint if isinstance(fingerprint, str) and fingerprint else None,
            expires_at=expires_at,
            **fields,
        )


def jwt_key_id(tenant: str, subject: str) -> str:
    """The key id of an IdP token's caller: ``jwt:<tenant>:<sub>``. Per-consumer quota windows are
    keyed on it, so the same ``sub`` in two tenants is two consumers. ``%`` and ``:`` in the tenant
    are escaped, so the first bare ``:`` after ``jwt:`` ends it and no two pairs share an id."""
    escaped = tenant.replace("%", "%25").replace(":", "%3A")
    return f"jwt:{escaped}:{subject}"
