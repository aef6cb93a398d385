"""The one definition of the identity sources, shared by the stack, the emulator and the handlers."""

from __future__ import annotations

import pytest

from quotagate import settings
from quotagate.identity_sources import (
    DEFAULT_IDENTITY_SOURCES,
    IdentitySourceError,
    configured_identity_sources,
    identity_source_environment,
    identity_source_expressions,
    missing_credential_message,
    parse_identity_sources,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, ("Authorization", "x-api-key")),
        ("x-api-key", ("x-api-key",)),
        ("Authorization, x-api-key", ("Authorization", "x-api-key")),
        ('["x-api-key", "Authorization"]', ("x-api-key", "Authorization")),
        (["method.request.header.X-Api-Key"], ("X-Api-Key",)),
        ([], ()),
    ],
)
def test_parse(value, expected):
    assert parse_identity_sources(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "method.request.querystring.key",
        "context.identity.sourceIp",
        "stageVariables.k",
        "x-api-key,X-API-KEY",
        "bad header",
        '["x"',
        [1],
        7,
    ],
)
def test_refused(value):
    with pytest.raises(IdentitySourceError):
        parse_identity_sources(value)


def test_environment_round_trip(monkeypatch):
    names = ("x-api-key", "Authorization")
    assert identity_source_expressions(names) == [
        "method.request.header.x-api-key",
        "method.request.header.Authorization",
    ]
    monkeypatch.setenv(settings.IDENTITY_SOURCES, identity_source_environment(names)[settings.IDENTITY_SOURCES])
    assert configured_identity_sources() == names
    monkeypatch.delenv(settings.IDENTITY_SOURCES)
    assert configured_identity_sources() == DEFAULT_IDENTITY_SOURCES


def test_missing_credential_message_names_headers_only():
    assert missing_credential_message(["Authorization"]) == (
        "Missing or malformed API key. Send it as 'Authorization: Bearer <key>'."
    )
    assert "'x-api-key' header" in missing_credential_message(["x-api-key"])
