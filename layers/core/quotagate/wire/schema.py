"""The vocabulary of the declared wire account: JSON types, fields, and what each target type gets.

A declaration is plain data (:class:`Obj` of :class:`Field`); :func:`validate` walks a client's body
along it. It checks every type at every depth (a wrong one is a :class:`WireError` naming its path,
``messages.0.role``), removes the keys it does not know (their paths are reported, never forwarded),
refuses a field whose disposition is :attr:`Action.REFUSED` on any target type, and removes a field
dropped on every target type. No pydantic: the proxy's cold start stays small.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final, Literal


class Action(StrEnum):
    """What a target type gets of a field."""

    FORWARDED = "forwarded"  # as the client sent it
    TRANSLATED = "translated"  # into the target's own equivalent
    DROPPED = "dropped"  # not sent; no effect on cost or safety
    BOUNDED = "bounded"  # sent; the reservation counts what it can make the provider bill
    PRICED = "priced"  # sent; the price table carries its modifier
    REFUSED = "refused"  # a 400 naming the field and why


class TargetType(StrEnum):
    OPENAI = "openai"  # OpenAI-compatible HTTP
    ANTHROPIC = "anthropic"  # Anthropic Messages, native
    BEDROCK = "bedrock"  # Amazon Bedrock Converse


UnknownKeys = Literal["drop", "keep"]


class Disposition:
    __slots__ = ("action", "note")

    def __init__(self, action: Action, note: str = "") -> None:
        self.action = action
        self.note = note

    # Why (dropped, refused), how (translated), or the price modifier / reservation bound that
    # makes the field safe to send (priced, bounded): the hook the price table fills.

    def __str__(self) -> str:
        return f"{self.action.value}: {self.note}" if self.note else self.action.value


class Targets:
    __slots__ = ("anthropic", "bedrock", "openai")

    def __init__(self, openai: Disposition, anthropic: Disposition, bedrock: Disposition) -> None:
        self.openai = openai
        self.anthropic = anthropic
        self.bedrock = bedrock

    def of(self, target: TargetType) -> Disposition:
        return {TargetType.OPENAI: self.openai, TargetType.ANTHROPIC: self.anthropic, TargetType.BEDROCK: self.bedrock}[
            target
        ]

    def all(self) -> tuple[Disposition, ...]:
        return (self.openai, self.anthropic, self.bedrock)


def everywhere(action: Action, note: str = "") -> Targets:
    disposition = Disposition(action, note)
    return Targets(disposition, disposition, disposition)


FORWARDED: Final = everywhere(Action.FORWARDED)
TRANSLATED: Final = everywhere(Action.TRANSLATED)


def dropped(why: str) -> Targets:
    return everywhere(Action.DROPPED, why)


def refused(why: str) -> Targets:
    return everywhere(Action.REFUSED, why)


def per_target(openai: Disposition, anthropic: Disposition, bedrock: Disposition) -> Targets:
    return Targets(openai, anthropic, bedrock)


def fwd(note: str = "") -> Disposition:
    return Disposition(Action.FORWARDED, note)


def tr(note: str = "") -> Disposition:
    return Disposition(Action.TRANSLATED, note)


def drop(why: str) -> Disposition:
    return Disposition(Action.DROPPED, why)


def refuse(why: str) -> Disposition:
    return Disposition(Action.REFUSED, why)


# ---------------------------------------------------------------------------------------------
# JSON types
# ---------------------------------------------------------------------------------------------


UNSUPPORTED: Final = "unsupported_parameter"


class WireError(Exception):
    """A body that does not match its declaration: ``path`` (dotted, indices as numbers) and why."""

    def __init__(self, path: str, problem: str, code: str = "invalid_value") -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem
        self.code = code  # "unsupported_parameter" for a declared refusal


class Walk:
    """What a validation found besides errors: the paths of the keys it removed."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped: list[str] = []


def _join(path: str, key: str | int) -> str:
    return f"{path}.{key}" if path else str(key)


class Type:
    """A JSON type of the declaration (plain classes, not dataclasses: they load on a request's path)."""

    __slots__ = ()

    def check(self, value: Any, path: str, walk: Walk) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


class Str(Type):
    __slots__ = ("max_length", "min_length", "refused_values", "values")

    def __init__(
        self,
        values: tuple[str, ...] = (),
        min_length: int = 0,
        max_length: int | None = None,
        refused_values: dict[str, str] | None = None,
    ) -> None:
        self.values = values  # allowed values (a Literal); empty: any string
        self.min_length = min_length
        self.max_length = max_length
        # Values declared but refused, with why (a value that changes the price, not yet priced).
        self.refused_values = refused_values or {}

    def check(self, value: Any, path: str, walk: Walk) -> None:
        if not isinstance(value, str):
            raise WireError(path, "Input should be a valid string")
        if self.values and value not in self.values:
            raise WireError(path, f"Input should be {_one_of(self.values)}")
        if value in self.refused_values:
            raise WireError(
                path, f"{value!r} is not supported by this gateway: {self.refused_values[value]}", UNSUPPORTED
            )
        if len(value) < self.min_length:
            raise WireError(path, "String should not be empty" if self.min_length == 1 else "String is too short")
        if self.max_length is not None and len(value) > self.max_length:
            raise WireError(path, f"String should have at most {self.max_length} characters")

    def describe(self) -> str:
        return " | ".join(f"`{v!r}`".replace("'", '"') for v in self.values) if self.values else "string"


def _one_of(values: tuple[str, ...]) -> str:
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


class Int(Type):
    __slots__ = ("maximum", "minimum")

    def __init__(self, minimum: int | None = None, maximum: int | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def check(self, value: Any, path: str, walk: Walk) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise WireError(path, "Input should be a valid integer")
        _check_range(value, self.minimum, self.maximum, path)

    def describe(self) -> str:
        return "integer" + _range_text(self.minimum, self.maximum)


class Num(Type):
    __slots__ = ("maximum", "minimum")

    def __init__(self, minimum: float | None = None, maximum: float | None = None) -> None:
        self.minimum = minimum
        self.maximum = maximum

    def check(self, value: Any, path: str, walk: Walk) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WireError(path, "Input should be a valid number")
        _check_range(value, self.minimum, self.maximum, path)

    def describe(self) -> str:
        return "number" + _range_text(self.minimum, self.maximum)


def _check_range(value: float, low: float | None, high: float | None, path: str) -> None:
    if (low is not None and value < low) or (high is not None and value > high):
        raise WireError(path, f"Input should be{_range_text(low, high)}")


def _range_text(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f" from {low:g} to {high:g}"
    if low is not None:
        return f" of at least {low:g}"
    if high is not None:
        return f" of at most {high:g}"
    return ""


class Bool(Type):
    def check(self, value: Any, path: str, walk: Walk) -> None:
        if not isinstance(value, bool):
            raise WireError(path, "Input should be a valid boolean")

    def describe(self) -> str:
        return "boolean"


class Json(Type):
    """Any JSON value (a JSON schema, tool input, metadata): checked by the strict parser only."""

    __slots__ = ("kind",)

    def __init__(self, kind: Literal["any", "object"] = "any") -> None:
        self.kind = kind

    def check(self, value: Any, path: str, walk: Walk) -> None:
        if self.kind == "object" and not isinstance(value, dict):
            raise WireError(path, "Input should be a valid dictionary")

    def describe(self) -> str:
        return "object (free-form)" if self.kind == "object" else "any JSON"


class Array(Type):
    __slots__ = ("items", "max_items", "min_items")

    def __init__(self, items: Type, min_items: int = 0, max_items: int | None = None) -> None:
        self.items = items
        self.min_items = min_items
        self.max_items = max_items

    def check(self, value: Any, path: str, walk: Walk) -> None:
        if not isinstance(value, list):
            raise WireError(path, "Input should be a valid list")
        if len(value) < self.min_items:
            raise WireError(path, f"List should have at least {self.min_items} item{'s' * (self.min_items > 1)}")
        if self.max_items is not None and len(value) > self.max_items:
            raise WireError(path, f"List should have at most {self.max_items} items")
        for index, item in enumerate(value):
            self.items.check(item, _join(path, index), walk)

    def describe(self) -> str:
        return f"array of {self.items.describe()}"


class Map(Type):
    """An object of free keys (``metadata``) whose values share one type."""

    __slots__ = ("max_entries", "max_key_length", "values")

    def __init__(self, values: Type, max_entries: int | None = None, max_key_length: int | None = None) -> None:
        self.values = values
        self.max_entries = max_entries
        self.max_key_length = max_key_length

    def check(self, value: Any, path: str, walk: Walk) -> None:
        if not isinstance(value, dict):
            raise WireError(path, "Input should be a valid dictionary")
        if self.max_entries is not None and len(value) > self.max_entries:
            raise WireError(path, f"Dictionary should have at most {self.max_entries} entries")
        for key, item in value.items():
            if self.max_key_length is not None and len(key) > self.max_key_length:
                raise WireError(_join(path, key), f"Keys should have at most {self.max_key_length} characters")
            self.values.check(item, _join(path, key), walk)

    def describe(self) -> str:
        return f"map of {self.values.describe()}"


class Field:
    __slots__ = ("doc", "dropped_everywhere", "refusal", "required", "targets", "type")

    def __init__(self, type: Type, targets: Targets | None = None, required: bool = False, doc: str = "") -> None:
        self.type = type
        self.targets = targets  # None: as its parent (nested fields)
        self.required = required
        self.doc = doc
        # What validation asks of the dispositions on every request, worked out once.
        dispositions = targets.all() if targets is not None else ()
        self.refusal = next((d for d in dispositions if d.action == Action.REFUSED), None)
        self.dropped_everywhere = bool(dispositions) and all(d.action == Action.DROPPED for d in dispositions)


class Obj(Type):
    __slots__ = ("fields", "name", "unknown")

    def __init__(self, name: str, fields: dict[str, Field], unknown: UnknownKeys = "drop") -> None:
        self.name = name
        self.fields = fields
        self.unknown = unknown

    def check(self, value: Any, path: str, walk: Walk) -> None:
        if not isinstance(value, dict):
            raise WireError(path, "Input should be a valid dictionary")
        for key in [key for key in value if key not in self.fields]:
            if self.unknown == "drop":
                walk.dropped.append(_join(path, key))
                del value[key]
        for key, spec in self.fields.items():
            item = value.get(key)
            if item is None:
                if spec.required:
                    raise WireError(_join(path, key), "Field required")
                continue
            here = _join(path, key)
            if spec.refusal is not None:
                raise WireError(here, f"not supported by this gateway: {spec.refusal.note}", UNSUPPORTED)
            spec.type.check(item, here, walk)  # a dropped field's value is checked too (refused values)
            if spec.dropped_everywhere:
                del value[key]
                if not path:  # a declared nested field (an item id, a status) is not worth naming
                    walk.dropped.append(here)

    def describe(self) -> str:
        return f"object `{self.name}`"


class OneOf(Type):
    """One of several types told apart by their JSON kind (a string or an array of parts)."""

    __slots__ = ("options",)

    def __init__(self, options: tuple[Type, ...]) -> None:
        self.options = options

    def check(self, value: Any, path: str, walk: Walk) -> None:
        for option in self.options:
            if _kind_matches(option, value):
                option.check(value, path, walk)
                return
        raise WireError(path, f"Input should be {' or '.join(_kind_name(o) for o in self.options)}")

    def describe(self) -> str:
        return " or ".join(option.describe() for option in self.options)


class Tagged(Type):
    """Objects told apart by a tag field (``type``); ``default`` when the tag is missing."""

    __slots__ = ("default", "name", "refused", "tag", "variants")

    def __init__(
        self,
        name: str,
        variants: dict[str, Obj],
        tag: str = "type",
        default: str | None = None,
        refused: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.variants = variants
        self.tag = tag
        self.default = default
        # Tags declared but refused (with why): e.g. server tools no target can run unpriced.
        self.refused = refused or {}

    def check(self, value: Any, path: str, walk: Walk) -> None:
        if not isinstance(value, dict):
            raise WireError(path, "Input should be a valid dictionary")
        kind = value.get(self.tag, self.default)
        here = _join(path, self.tag)
        if not isinstance(kind, str):
            raise WireError(here, "Input should be a valid string" if kind is not None else "Field required")
        if kind in self.refused:
            raise WireError(here, f"{kind!r} is not supported by this gateway: {self.refused[kind]}", UNSUPPORTED)
        variant = self.variants.get(kind)
        if variant is None:
            raise WireError(here, f"Input tag {kind!r} does not match any of {_one_of(tuple(self.variants))}")
        variant.check(value, path, walk)

    def describe(self) -> str:
        return f"one of `{self.name}`"


def _kind_matches(option: Type, value: Any) -> bool:
    if isinstance(option, Str):
        return isinstance(value, str)
    if isinstance(option, Int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(option, Num):
        return isinstance(value, int | float) and not isinstance(value, bool)
    if isinstance(option, Bool):
        return isinstance(value, bool)
    if isinstance(option, Array):
        return isinstance(value, list)
    if isinstance(option, Obj | Map | Tagged):
        return isinstance(value, dict)
    return True


def _kind_name(option: Type) -> str:
    names: dict[type, str] = {
        Str: "a valid string",
        Int: "a valid integer",
        Num: "a valid number",
        Bool: "a valid boolean",
        Array: "a valid list",
    }
    return names.get(type(option), "a valid dictionary")


def validate(declaration: Obj, body: dict[str, Any]) -> list[str]:
    """Check ``body`` against ``declaration`` in place; the paths of the keys removed (unknown
    fields, and fields dropped on every target). WireError on the first wrong value."""
    walk = Walk()
    declaration.check(body, "", walk)
    return walk.dropped


def unknown_top_level(declaration: Obj, body: dict[str, Any]) -> list[str]:
    """The body's top-level keys the declaration does not know (for the ``refuse`` policy)."""
    return [key for key in body if key not in declaration.fields]


def project(declaration: Type, value: Any, target: TargetType, inherited: Action = Action.FORWARDED) -> Any:
    """A copy of a validated ``value`` without the fields the declaration drops for ``target``
    (what a target that receives the client's own body is sent)."""
    if isinstance(declaration, Obj) and isinstance(value, dict):
        out = {}
        for key, item in value.items():
            spec = declaration.fields.get(key)
            if spec is None:
                out[key] = item  # kept free-form keys (declared ``unknown="keep"``)
                continue
            action = spec.targets.of(target).action if spec.targets is not None else inherited
            if action == Action.DROPPED:
                continue
            out[key] = project(spec.type, item, target, action)
        return out
    if isinstance(declaration, Tagged) and isinstance(value, dict):
        variant = declaration.variants.get(value.get(declaration.tag, declaration.default) or "")
        return project(variant, value, target, inherited) if variant is not None else value
    if isinstance(declaration, Array) and isinstance(value, list):
        return [project(declaration.items, item, target, inherited) for item in value]
    if isinstance(declaration, OneOf):
        option = next((o for o in declaration.options if _kind_matches(o, value)), None)
        return project(option, value, target, inherited) if option is not None else value
    return value
