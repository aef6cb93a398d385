"""Where a credential may be read from (the credential headers) and who caches the answer, defined once.

Clients send a key as ``Authorization: Bearer <key>`` (openai SDK, Codex, ``ANTHROPIC_AUTH_TOKEN``) or
as ``x-api-key: <key>`` (Claude Code with ``ANTHROPIC_API_KEY``, the AI SDK's ``apiKey``, litellm), so
both are accepted by default. API Gateway cannot cache an authorizer that reads either header: its
cache is keyed by the identity-source values alone, and when any identity source is missing it
answers 401 without calling the authorizer — so two alternative headers cannot both be identity
sources, and a header that is not one must never decide who is served from its cache. How a repeated
identity-source header enters that key is not documented either.

So API Gateway caches nothing (:data:`EDGE_AUTHORIZER`: no identity source, TTL 0) and calls the
authorizer on every request; the authorizer reads every credential header itself, refuses any request
whose headers hold two different credentials (or one that is malformed, or a header repeated), and
keeps its own cache keyed by the credential it read (:mod:`quotagate.logic.auth_cache`). Nothing but
the credential can select a cached answer.

One definition, used by the CDK stack (``quotagate:identitySources`` → ``QG_IDENTITY_SOURCES`` of the
authorizer and proxy functions; :data:`EDGE_AUTHORIZER` → the API Gateway authorizer), by the local
API Gateway emulator and by the handlers. Credential headers are request headers (``Authorization``,
``x-api-key``, or ``method.request.header.<name>``): query strings, stage variables and context
values cannot carry a credential and are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from quotagate import settings

DEFAULT_IDENTITY_SOURCES: tuple[str, ...] = ("Authorization", "x-api-key")
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


@dataclass(frozen=True)
class EdgeAuthorizer:
    """How API Gateway's REQUEST authorizer is configured (the stack) and emulated (local mode)."""

    # Headers API Gateway requires before it calls the authorizer, and keys its cache by.
    identity_sources: tuple[str, ...]
    # API Gateway's result cache TTL (0: it calls the authorizer on every request).
    result_cache_seconds: int


# API Gateway caches nothing and requires nothing: the authorizer reads the credential headers and
# caches by credential (see the module docstring for why).
EDGE_AUTHORIZER = EdgeAuthorizer(identity_sources=(), result_cache_seconds=0)


def identity_source_expressions(names: Iterable[str]) -> list[str]:
    """API Gateway's identity-source expressions for header names."""
    return [f"{HEADER_EXPRESSION_PREFIX}{name}" for name in names]


def identity_source_environment(names: Iterable[str]) -> dict[str, str]:
    """The environment variable that tells the authorizer and the proxy the credential headers."""
    return {settings.IDENTITY_SOURCES: ",".join(names)}


def authorizer_cache_environment(seconds: float) -> dict[str, str]:
    """The environment variable that sets how long the authorizer keeps an answer per credential."""
    return {settings.AUTHORIZER_CACHE_SECONDS: str(seconds)}


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
    if len(places) == 1:
        return f"Missing or malformed API key. Send it {places[0]}."
    return f"Missing or malformed API key. Send one key, once, {' or '.join(places)}."
