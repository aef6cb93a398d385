"""Where a credential may be read from: the authorizer's identity sources, defined once.

API Gateway caches a REQUEST authorizer's answer keyed by the identity-source values alone and reuses
it for any later request with the same values, whatever else that request carries. So the credential
is read only from the identity sources, in their configured order: a credential read from any other
header could be served, from the cache, to someone who never presented it.

One definition, used by the CDK stack (``quotagate:identitySources`` → the authorizer's identity
sources *and* ``QG_IDENTITY_SOURCES`` of the authorizer and proxy functions), by the local API Gateway
emulator and by the handlers. Identity sources are request headers (``Authorization``,
``x-api-key``, or ``method.request.header.<name>``): query strings, stage variables and context
values cannot carry a credential and are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

from quotagate import settings

DEFAULT_IDENTITY_SOURCES: tuple[str, ...] = ("Authorization",)
HEADER_EXPRESSION_PREFIX = "method.request.header."
# RFC 9110 field-name token characters.
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


class IdentitySourceError(ValueError):
    """An identity-source setting that cannot be used."""


def parse_identity_sources(value: str | Iterable[str] | None) -> tuple[str, ...]:
    """Header names (their configured spelling, in order) from a list, a JSON list, or a
    comma-separated string; ``None`` gives the default. Bare names and
    ``method.request.header.<name>`` are headers; anything else raises :class:`IdentitySourceError`."""
    if value is None:
        return DEFAULT_IDENTITY_SOURCES
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError as error:
                raise IdentitySourceError(f"identity sources are not a JSON list: {text!r}") from error
        else:
            value = text.split(",")
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise IdentitySourceError("identity sources must be a list of header names")
    names: list[str] = []
    for item in value:
        if not isinstance(item, str):
            raise IdentitySourceError("identity sources must be a list of header names")
        name = item.strip()
        if not name:
            continue
        if name.startswith(HEADER_EXPRESSION_PREFIX):
            name = name.removeprefix(HEADER_EXPRESSION_PREFIX)
        elif "." in name:
            raise IdentitySourceError(
                f"identity source {item!r} is not a request header: the credential is read only from "
                "identity-source headers"
            )
        if not _HEADER_NAME.match(name):
            raise IdentitySourceError(f"identity source {item!r} is not a valid header name")
        if name.lower() in (n.lower() for n in names):
            raise IdentitySourceError(f"identity source {name!r} is listed twice")
        names.append(name)
    return tuple(names)


def identity_source_expressions(names: Iterable[str]) -> list[str]:
    """API Gateway's identity-source expressions for header names."""
    return [f"{HEADER_EXPRESSION_PREFIX}{name}" for name in names]


def identity_source_environment(names: Iterable[str]) -> dict[str, str]:
    """The environment variable that tells the authorizer and the proxy the identity sources."""
    return {settings.IDENTITY_SOURCES: ",".join(names)}


def configured_identity_sources() -> tuple[str, ...]:
    """The identity sources this function was deployed with (the default when unset)."""
    return parse_identity_sources(settings.env(settings.IDENTITY_SOURCES))


def missing_credential_message(names: Iterable[str]) -> str:
    """What a client without a well-formed credential is told: where to send it (names, never values)."""
    places = [
        "as 'Authorization: Bearer <key>'" if name.lower() == "authorization" else f"in the '{name}' header"
        for name in names
    ]
    if not places:
        return "Missing API key: this gateway has no identity source configured."
    return f"Missing or malformed API key. Send it {' or '.join(places)}."
