"""``docs/fields.md``: the declared wire account rendered as tables (``python -m quotagate.wire.tables``
prints it; a unit test keeps the file equal to it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from quotagate.wire import betas, chat, embeddings, messages, responses
from quotagate.wire.schema import Array, Map, Obj, OneOf, Tagged, TargetType

if TYPE_CHECKING:
    from quotagate.wire.schema import Field, Type

ENDPOINTS: tuple[tuple[str, str, Obj], ...] = (
    ("Chat completions", "POST /v1/chat/completions", chat.CHAT),
    ("Responses", "POST /v1/responses", responses.RESPONSES),
    ("Messages", "POST /v1/messages", messages.MESSAGES),
    ("Count tokens", "POST /v1/messages/count_tokens", messages.COUNT_TOKENS),
    ("Embeddings", "POST /v1/embeddings", embeddings.EMBEDDINGS),
)
HEADER = """# Wire fields

Every field of every endpoint, as the gateway declares it (`layers/core/quotagate/wire/`): its type
(a wrong type at any depth is a 400 naming its path) and what each target type gets of it:

- **forwarded**: sent as the client sent it;
- **translated**: sent as the target's own equivalent (the note says which);
- **dropped**: not sent; no effect on cost or safety (the note says why);
- **bounded**: sent; the reservation counts what it can make the provider bill;
- **priced**: sent; the price table carries its modifier (without it, a 400 `unpriced_parameter`);
- **refused**: a 400 naming the field and why, before anything is reserved.

A field the gateway does not declare is dropped, named in the `x-quotagate-dropped-params` response
header and never forwarded (a model with `unknown_fields: refuse` answers a 400 naming it instead:
see [configuration](configuration.md)). A nested field without its own dispositions follows its
parent's. This file is generated: `python -m quotagate.wire.tables > docs/fields.md`
(`tests/unit/test_wire_tables.py` keeps it equal to the declaration).
"""
TARGET_COLUMNS = (TargetType.OPENAI, TargetType.ANTHROPIC, TargetType.BEDROCK)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _row(name: str, field: Field) -> str:
    kind = field.type.describe() + (" (required)" if field.required else "")
    if field.doc:
        kind += f"; {field.doc}"
    if field.targets is None:
        targets = ["as its parent"] * len(TARGET_COLUMNS)
    else:
        targets = [str(field.targets.of(target)) for target in TARGET_COLUMNS]
    return "| " + " | ".join(_cell(text) for text in [f"`{name}`", kind, *targets]) + " |"


def _table(fields: dict[str, Field]) -> list[str]:
    lines = ["| field | type | OpenAI-compatible | Anthropic | Bedrock |", "|---|---|---|---|---|"]
    return lines + [_row(name, field) for name, field in fields.items()]


def _named_types(root: Type, found: dict[str, Obj | Tagged]) -> None:
    """Every named object and tagged union reachable from ``root``, first seen first."""
    if isinstance(root, Obj | Tagged):
        if root.name in found:
            if found[root.name] is not root and found[root.name] != root:
                raise ValueError(f"two declared types are named {root.name!r}: the tables would confuse them")
            return
        found[root.name] = root
    if isinstance(root, Obj):
        for spec in root.fields.values():
            _named_types(spec.type, found)
    elif isinstance(root, Tagged):
        for variant in root.variants.values():
            _named_types(variant, found)
    elif isinstance(root, Array):
        _named_types(root.items, found)
    elif isinstance(root, Map):
        _named_types(root.values, found)
    elif isinstance(root, OneOf):
        for option in root.options:
            _named_types(option, found)


def _tagged_lines(union: Tagged) -> list[str]:
    default = f" (`{union.default}` when it is missing)" if union.default else ""
    lines = [f"Told apart by `{union.tag}`{default}:", ""]
    lines += [f"- `{tag}`: object `{variant.name}`" for tag, variant in union.variants.items()]
    lines += [f"- `{tag}`: **refused**: {_cell(why)}" for tag, why in union.refused.items()]
    return lines


def render() -> str:
    out = [HEADER]
    shown: dict[str, str] = {}  # a type already tabled -> the endpoint under which it was
    for title, route, declaration in ENDPOINTS:
        out += [f"## {title}: `{route}`", "", *_table(declaration.fields), ""]
        named: dict[str, Obj | Tagged] = {}
        for spec in declaration.fields.values():
            _named_types(spec.type, named)
        again = [name for name in named if name in shown]
        if again:
            out += [f"Types as under {shown[again[0]]}: {', '.join(f'`{name}`' for name in again)}.", ""]
        for name, kind in named.items():
            if name in shown or (isinstance(kind, Obj) and not kind.fields):
                continue  # tabled above, or a free-form object (kept as sent)
            shown[name] = title
            out.append(f"### {title}: `{name}`")
            out.append("")
            out += _tagged_lines(kind) if isinstance(kind, Tagged) else _table(kind.fields)
            out.append("")
    out += [
        "## Anthropic betas",
        "",
        "The `anthropic-beta` values that reach Anthropic targets, each with why it cannot make a request cost",
        "more than the gateway reserves. Any other value is dropped and named in `x-quotagate-dropped-betas`;",
        "other target types get no betas (the fields they enable have their own dispositions above).",
        "",
        "| beta | cost effect |",
        "|---|---|",
        *[f"| `{name}` | {_cell(why)} |" for name, why in betas.ALLOWED_BETAS.items()],
        "",
    ]
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
