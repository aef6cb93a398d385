"""The authorizer context the proxy reads back into an Identity."""

from quotagate.identity import Identity

CONTEXT = {"tenant": "acme", "consumer": "u1", "key_id": "k1", "plan": "pro"}


def test_context_round_trips_for_both_auth_types():
    for auth_type in ("api_key", "jwt"):
        identity = Identity.from_context({**CONTEXT, "auth_type": auth_type})
        assert identity is not None
        assert identity.auth_type == auth_type
        assert Identity.from_context(identity.to_context()) == identity


def test_context_without_auth_type_is_an_api_key_caller():
    identity = Identity.from_context(CONTEXT)
    assert identity is not None and identity.auth_type == "api_key"


def test_context_with_an_unknown_auth_type_is_not_accepted():
    # Only this gateway's authorizer writes the context: an auth type it never writes means the
    # context is not its own, and must not skip the key-record checks an API key caller gets.
    assert Identity.from_context({**CONTEXT, "auth_type": "admin"}) is None
    assert Identity.from_context({**CONTEXT, "auth_type": ["jwt"]}) is None
