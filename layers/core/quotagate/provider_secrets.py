"""Provider API key secrets (Secrets Manager): the placeholder the stack creates, and setting a key.

The stack creates one secret per configured provider with a generated placeholder value, so no key
is ever in a template: ``{"quotagate": "placeholder", "nonce": "<random>"}``. Until an operator sets
the real key (``quotagate providers set-key NAME``, key on stdin), the proxy answers requests for
that provider with a 503 that names it.
"""

from __future__ import annotations

import json
from typing import Any

PLACEHOLDER_FIELD = "quotagate"
PLACEHOLDER_VALUE = "placeholder"
# CloudFormation's GenerateSecretString adds a random string under NONCE_FIELD to this template.
PLACEHOLDER_TEMPLATE = json.dumps({PLACEHOLDER_FIELD: PLACEHOLDER_VALUE}, separators=(",", ":"))
NONCE_FIELD = "nonce"
MAX_KEY_BYTES = 8192
# The stack output mapping each configured secret name to the name the stack created it under.
STACK_OUTPUT = "ProviderSecretNames"


class ProviderKeyError(ValueError):
    """A key that cannot be stored (the message never contains the key)."""


def is_placeholder(value: Any) -> bool:
    """True for the placeholder the stack created (and for an empty value)."""
    if not isinstance(value, str) or not value.strip():
        return True
    if not value.lstrip().startswith("{"):
        return False
    try:
        document = json.loads(value)
    except ValueError:
        return False
    return isinstance(document, dict) and document.get(PLACEHOLDER_FIELD) == PLACEHOLDER_VALUE


def clean_key(raw: str) -> str:
    """The key as read from stdin: surrounding whitespace (the newline of ``echo``) removed."""
    key = raw.strip()
    if not key:
        raise ProviderKeyError("no key on standard input")
    if len(key.encode()) > MAX_KEY_BYTES:
        raise ProviderKeyError(f"the key is longer than {MAX_KEY_BYTES} bytes")
    if any(ch.isspace() or not ch.isprintable() for ch in key):
        raise ProviderKeyError("the key contains whitespace or control characters (one key, on one line)")
    if is_placeholder(key):
        raise ProviderKeyError("that is the stack's placeholder, not a provider key")
    return key


def unset_key_message(provider: str) -> str:
    return (
        f"Provider '{provider}' has no API key yet: the operator sets it with `quotagate providers set-key {provider}`."
    )
