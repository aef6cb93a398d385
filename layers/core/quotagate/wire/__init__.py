"""The declared account of every wire field, per endpoint: its type, and what each target type
(OpenAI-compatible, Anthropic, Bedrock) gets of it. One module per endpoint; the vocabulary is
:mod:`quotagate.wire.schema`; ``docs/fields.md`` is generated from it (:mod:`quotagate.wire.tables`).

Validation comes from the declaration: a wrong type at any depth is a 400 naming its path; unknown
fields are dropped and named in ``x-quotagate-dropped-params`` (or refused, per model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from quotagate.wire.schema import Obj

DROPPED_PARAMS_HEADER: Final = "x-quotagate-dropped-params"
# The mock model server's controls: the harness may forward them (see chat_request); never declared.
MOCK_CONTROL_PREFIX: Final = "mock_"
MAX_NAMED: Final = 20  # header size stays bounded, however many fields a client adds


def check_body(declaration: Obj, body: dict[str, Any], refuse_unknown: bool = False) -> list[str]:
    """Validate ``body`` in place against ``declaration`` (see :func:`quotagate.wire.schema.validate`);
    the paths removed. ``refuse_unknown``: an unknown top-level field is an error instead.
    The declarations load on the first request, not at the proxy's start (its cold start)."""
    from quotagate.wire.schema import WireError, unknown_top_level, validate

    controls = {name: body.pop(name) for name in [n for n in body if n.startswith(MOCK_CONTROL_PREFIX)]}
    if refuse_unknown:
        unknown = unknown_top_level(declaration, body)
        if unknown:
            raise WireError(unknown[0], "Extra inputs are not permitted (this model refuses unknown fields)")
    dropped = validate(declaration, body)
    body.update(controls)
    return dropped


def openai_path(path: str) -> str:
    """A dotted path (``input.0.role``) as OpenAI names parameters (``input[0].role``)."""
    out = ""
    for part in path.split("."):
        out += f"[{part}]" if part.isdigit() and out else (f".{part}" if out else part)
    return out


def dropped_header(dropped: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``x-quotagate-dropped-params`` naming what was removed (none: no header)."""
    if not dropped:
        return {}
    named = list(dropped[:MAX_NAMED]) + ([f"...{len(dropped) - MAX_NAMED} more"] if len(dropped) > MAX_NAMED else [])
    return {DROPPED_PARAMS_HEADER: ", ".join(header_safe(name) for name in named)}


def header_safe(name: str) -> str:
    """A field path as header text: printable ASCII only, bounded (keys are the client's)."""
    text = name.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if c.isprintable() and c != "," else "?" for c in text)[:80]
