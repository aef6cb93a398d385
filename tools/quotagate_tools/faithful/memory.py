"""An in-memory DynamoDB table store: the low-level client calls the quota ledger, the reaper and the
tests make (``transact_write_items``, ``update_item``, ``put_item``, ``get_item``, ``batch_get_item``,
``query`` on a table's key), with DynamoDB's condition and update expression grammar for what they
use (``SET`` with ``if_not_exists`` and ``+``/``-``, ``ADD`` on numbers, ``REMOVE``; conditions with
``AND``/``OR``/``NOT``, parentheses, comparisons, ``attribute_exists``/``attribute_not_exists``) and
DynamoDB's error shapes. Every call is atomic (one lock): what DynamoDB does per item, done per
store. Conflicts, throttling and latency are not modelled here: :mod:`.conflicts` adds them.
"""

from __future__ import annotations

import re
import threading
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

Item = dict[str, Any]
Key = tuple[str, str]


def client_error(operation: str, code: str, message: str, **extra: Any) -> ClientError:
    """A ClientError shaped as botocore builds it from a DynamoDB error response."""
    response: dict[str, Any] = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": 400},
        **extra,
    }
    return ClientError(response, operation)  # type: ignore[arg-type]


def cancelled(reasons: list[dict[str, Any]]) -> ClientError:
    """DynamoDB's ``TransactionCanceledException`` (reasons in action order, ``None`` where fine)."""
    codes = ", ".join(r["Code"] for r in reasons)
    return client_error(
        "TransactWriteItems",
        "TransactionCanceledException",
        f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]",
        CancellationReasons=reasons,
    )


# ---- expressions -------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(<>|<=|>=|[=<>(),+\-]|[#:]?[A-Za-z_][A-Za-z0-9_.\-]*)")


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match:
            raise ValueError(f"cannot parse expression at {text[pos:]!r}")
        out.append(match.group(1))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token.upper() != expected):
            raise ValueError(f"expected {expected!r}, got {token!r}")
        self.pos += 1
        return token

    # condition := or ; or := and (OR and)* ; and := not (AND not)* ; not := NOT not | atom
    def condition(self) -> tuple[Any, ...]:
        left = self.conjunction()
        while (self.peek() or "").upper() == "OR":
            self.take()
            left = ("or", left, self.conjunction())
        return left

    def conjunction(self) -> tuple[Any, ...]:
        left = self.negation()
        while (self.peek() or "").upper() == "AND":
            self.take()
            left = ("and", left, self.negation())
        return left

    def negation(self) -> tuple[Any, ...]:
        if (self.peek() or "").upper() == "NOT":
            self.take()
            return ("not", self.negation())
        if self.peek() == "(":
            self.take()
            inner = self.condition()
            self.take(")")
            return inner
        token = self.take()
        if token in ("attribute_exists", "attribute_not_exists"):
            self.take("(")
            path = self.take()
            self.take(")")
            return (token, path)
        comparator = self.take()
        if comparator not in ("=", "<>", "<", "<=", ">", ">="):
            raise ValueError(f"unsupported comparator {comparator!r}")
        return ("cmp", comparator, token, self.take())

    # value := operand ((+|-) operand)? ; operand := if_not_exists(path, value) | path | :value
    def value(self) -> tuple[Any, ...]:
        left = self.operand()
        if self.peek() in ("+", "-"):
            sign = self.take()
            return ("arith", sign, left, self.operand())
        return left

    def operand(self) -> tuple[Any, ...]:
        word = self.take()
        if word == "if_not_exists":
            self.take("(")
            path = self.take()
            self.take(",")
            default = self.operand()
            self.take(")")
            return ("if_not_exists", path, default)
        return ("ref", word)


@lru_cache(maxsize=512)
def parse_condition(text: str) -> tuple[Any, ...]:
    parser = _Parser(text)
    tree = parser.condition()
    if parser.peek() is not None:
        raise ValueError(f"trailing tokens in condition {text!r}")
    return tree


@lru_cache(maxsize=512)
def parse_update(text: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """``(("SET", (path, value)), ("ADD", (path, ref)), ("REMOVE", (path,)))`` in order."""
    parser = _Parser(text)
    actions: list[tuple[str, tuple[Any, ...]]] = []
    clause = None
    while parser.peek() is not None:
        word = parser.peek() or ""
        if word.upper() in ("SET", "ADD", "REMOVE", "DELETE"):
            clause = parser.take().upper()
            continue
        if word == ",":
            parser.take()
            continue
        path = parser.take()
        if clause == "SET":
            parser.take("=")
            actions.append(("SET", (path, parser.value())))
        elif clause == "ADD":
            actions.append(("ADD", (path, parser.operand())))
        elif clause == "REMOVE":
            actions.append(("REMOVE", (path,)))
        else:
            raise ValueError(f"unsupported update clause in {text!r}")
    return tuple(actions)


def copy_value(value: Any) -> Any:
    """A copy of an attribute value (``{"S": ...}``, ``{"M": {...}}``, ``{"L": [...]}``...): what
    copy.deepcopy does for these shapes, several times faster (the store is on the benchmark's path)."""
    if isinstance(value, dict):
        return {k: copy_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [copy_value(v) for v in value]
    return value


def _number(value: Mapping[str, Any]) -> Decimal:
    return Decimal(value["N"])


def _format_number(number: Decimal) -> str:
    return str(number.normalize()) if number != number.to_integral_value() else str(int(number))


class _Evaluation:
    def __init__(self, item: Item | None, names: Mapping[str, str], values: Mapping[str, Any]) -> None:
        self.item = item or {}
        self.names = names
        self.values = values

    def name(self, path: str) -> str:
        return self.names[path] if path.startswith("#") else path

    def resolve(self, node: tuple[Any, ...]) -> Any:
        kind = node[0]
        if kind == "ref":
            token = node[1]
            if token.startswith(":"):
                return self.values[token]
            return self.item.get(self.name(token))
        if kind == "if_not_exists":
            current = self.item.get(self.name(node[1]))
            return current if current is not None else self.resolve(node[2])
        if kind == "arith":
            left, right = self.resolve(node[2]), self.resolve(node[3])
            if left is None or right is None:
                raise _ValidationError("An operand in the update expression has an incorrect data type")
            total = _number(left) + _number(right) if node[1] == "+" else _number(left) - _number(right)
            return {"N": _format_number(total)}
        raise ValueError(f"unknown operand {node!r}")

    def holds(self, node: tuple[Any, ...]) -> bool:
        kind = node[0]
        if kind == "or":
            return self.holds(node[1]) or self.holds(node[2])
        if kind == "and":
            return self.holds(node[1]) and self.holds(node[2])
        if kind == "not":
            return not self.holds(node[1])
        if kind == "attribute_exists":
            return self.name(node[1]) in self.item
        if kind == "attribute_not_exists":
            return self.name(node[1]) not in self.item
        if kind == "cmp":
            left, right = self.resolve(("ref", node[2])), self.resolve(("ref", node[3]))
            if left is None or right is None:
                return node[1] == "<>" and (left is None) != (right is None)
            (left_type, left_value), (right_type, right_value) = next(iter(left.items())), next(iter(right.items()))
            if left_type != right_type:
                return node[1] == "<>"
            if left_type == "N":
                left_value, right_value = Decimal(left_value), Decimal(right_value)
            return {
                "=": left_value == right_value,
                "<>": left_value != right_value,
                "<": left_value < right_value,
                "<=": left_value <= right_value,
                ">": left_value > right_value,
                ">=": left_value >= right_value,
            }[node[1]]
        raise ValueError(f"unknown condition {node!r}")

    def updated(self, expression: str, key: Mapping[str, Any]) -> Item:
        # A new dict; stored values are never changed in place, so they can be shared.
        item = dict(self.item) if self.item else copy_value(dict(key))
        for kind, args in parse_update(expression):
            name = self.name(args[0])
            if kind == "SET":
                item[name] = copy_value(self.resolve(args[1]))
            elif kind == "ADD":
                amount = self.resolve(args[1])
                current = item.get(name)
                if "N" not in amount or (current is not None and "N" not in current):
                    raise _ValidationError("ADD supports numbers only here")
                base = _number(current) if current is not None else Decimal(0)
                item[name] = {"N": _format_number(base + _number(amount))}
            else:
                item.pop(name, None)
        return item


class _ValidationError(Exception):
    pass


class _ConditionFailed(Exception):
    def __init__(self, old: Item | None) -> None:
        super().__init__("The conditional request failed")
        self.old = old


class InMemoryDynamo:
    """A DynamoDB stand-in with the low-level client's call shapes. ``tables``: name -> key names
    (``pk``, ``sk`` by default; any table name is accepted)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, dict[Key, Item]] = {}
        self.on_change: Callable[[str, Item | None, Item | None], None] | None = None

    # ---- one item --------------------------------------------------------------------------------

    @staticmethod
    def _key(key: Mapping[str, Any]) -> Key:
        return key["pk"]["S"], key.get("sk", {}).get("S", "")

    def _table(self, name: str) -> dict[Key, Item]:
        return self._items.setdefault(name, {})

    def _planned(self, kind: str, request: Mapping[str, Any]) -> tuple[str, Key, Item | None]:
        """What one write would leave (None: deleted); raises _ConditionFailed / _ValidationError."""
        table = request["TableName"]
        key = self._key(request["Key"] if "Key" in request else request["Item"])
        old = self._table(table).get(key)
        evaluation = _Evaluation(
            old, request.get("ExpressionAttributeNames", {}), request.get("ExpressionAttributeValues", {})
        )
        condition = request.get("ConditionExpression")
        if condition and not evaluation.holds(parse_condition(condition)):
            returned = old if request.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" else None
            raise _ConditionFailed(copy_value(returned))
        if kind == "Put":
            return table, key, copy_value(dict(request["Item"]))
        if kind == "Delete":
            return table, key, None
        if kind == "ConditionCheck":
            return table, key, old
        return table, key, evaluation.updated(request["UpdateExpression"], request["Key"])

    def _commit(self, table: str, key: Key, new: Item | None) -> None:
        items = self._table(table)
        old = items.get(key)
        if new is None:
            items.pop(key, None)
        else:
            items[key] = new
        if self.on_change is not None and old is not new:
            self.on_change(table, old, new)

    def _single(self, kind: str, operation: str, request: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            try:
                table, key, new = self._planned(kind, request)
            except _ConditionFailed as failed:
                extra = {"Item": failed.old} if failed.old is not None else {}
                raise client_error(
                    operation, "ConditionalCheckFailedException", "The conditional request failed", **extra
                ) from None
            except _ValidationError as invalid:
                raise client_error(operation, "ValidationException", str(invalid)) from None
            self._commit(table, key, new)
            if kind == "Update" and request.get("ReturnValues") == "ALL_NEW":
                return {"Attributes": copy_value(new)}
            return {}

    def update_item(self, **request: Any) -> dict[str, Any]:
        return self._single("Update", "UpdateItem", request)

    def put_item(self, **request: Any) -> dict[str, Any]:
        return self._single("Put", "PutItem", request)

    def delete_item(self, **request: Any) -> dict[str, Any]:
        return self._single("Delete", "DeleteItem", request)

    def transact_write_items(self, TransactItems: list[dict[str, Any]], **_: Any) -> dict[str, Any]:
        with self._lock:
            planned: list[tuple[str, Key, Item | None]] = []
            reasons: list[dict[str, Any]] = []
            failed = False
            for action in TransactItems:
                ((kind, request),) = action.items()
                try:
                    planned.append(self._planned(kind, request))
                    reasons.append({"Code": "None"})
                except _ConditionFailed as condition:
                    failed = True
                    reason: dict[str, Any] = {
                        "Code": "ConditionalCheckFailed",
                        "Message": "The conditional request failed",
                    }
                    if condition.old is not None:
                        reason["Item"] = condition.old
                    reasons.append(reason)
                except _ValidationError as invalid:
                    raise client_error("TransactWriteItems", "ValidationException", str(invalid)) from None
            if failed:
                raise cancelled(reasons)
            for table, key, new in planned:
                self._commit(table, key, new)
            return {}

    # ---- reads ---------------------------------------------------------------------------------

    def get_item(self, TableName: str, Key: Mapping[str, Any], **_: Any) -> dict[str, Any]:
        with self._lock:
            item = self._table(TableName).get(self._key(Key))
            return {"Item": copy_value(item)} if item is not None else {}

    def batch_get_item(self, RequestItems: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            responses: dict[str, list[Item]] = {}
            for table, spec in RequestItems.items():
                found = [self._table(table).get(self._key(key)) for key in spec["Keys"]]
                responses[table] = [copy_value(item) for item in found if item is not None]
            return {"Responses": responses, "UnprocessedKeys": {}}

    def items(self, table: str) -> list[Item]:
        """Every item of a table (tests and benchmarks check totals with it)."""
        with self._lock:
            return [copy_value(item) for item in self._table(table).values()]
