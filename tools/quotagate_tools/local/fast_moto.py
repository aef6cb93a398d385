"""A faster moto for the local server, with moto's results: ``UpdateItem`` and stream reads.

moto parses every update expression into a deep syntax tree and walks it with ten validators
before it changes an item: about 10 ms of CPU for ``ADD #u :n SET #l = :limit, #e = :exp`` and
100 ms for a usage rollup's ten-action transaction. On the one-request-at-a-time moto that local
mode and the integration tests use, that work stood in front of every request (issue 21: ``make
dev`` added ~130-210 ms per request against LiteLLM's ~20).

The expressions this gateway writes use a small part of the grammar: ``SET``, ``ADD`` and
``REMOVE`` on top-level attributes, with ``:value`` operands and ``if_not_exists(path, :value)``.
Those are compiled once per expression string and applied to moto's own item with moto's own types
(``DynamoType`` arithmetic and set union, ``Table.put_item`` for a new item, the stream record).
Anything else, and anything DynamoDB would refuse (a key attribute, overlapping paths, a missing
placeholder, a reserved word, an operand of the wrong type, an item near 400 KB), goes to moto's
unchanged implementation, which raises DynamoDB's error. ``tests/unit/test_fast_moto.py``
compares both on the same inputs.

``TransactWriteItems`` keeps, for rollback, the items the transaction names and the stream's length,
where moto deep-copied the whole table once per action (a reservation copied the quota table five
times, and local latency grew with the table).

``GetRecords`` trims what a stream keeps to what was not read yet or is younger than
``STREAM_RETENTION_SECONDS`` (DynamoDB keeps 24 hours; moto kept every record, with both images,
for ever: ~150 KB of memory per request), and
the shard iterators to the last ``MAX_SHARD_ITERATORS`` (DynamoDB's expire after 15 minutes), and
answers the same records as JSON at once: moto's generic response serializer took
~40 ms for a page of a few stream records. ``PutEvents`` reuses each JSONPath it parses (moto built
a new parser, tables and all, for every path of every event: ~10 ms an event), and SQS reads a
queue's retention period without computing all its attributes for every message it receives.
"""

from __future__ import annotations

import base64
import calendar
import copy
import datetime
import functools
import json
import re
import types
from dataclasses import dataclass
from typing import Any, Literal

_TOKEN = re.compile(r"\s*(#[A-Za-z0-9_]+|:[A-Za-z0-9_]+|[A-Za-z_][A-Za-z0-9_]*|\S)")
_ADDABLE_TYPES = frozenset({"N", "SS", "NS", "BS"})
# moto refuses an attribute write that takes an item past this many bytes; writes that come within
# a key's size of it (DynamoDB keys are at most 2,048 + 1,024 bytes) are left to moto.
_MOTO_ITEM_LIMIT = 405_000
_KEY_MARGIN = 4_096
# Local mode's stream consumer (the pipe's emulation) reads every two seconds.
STREAM_RETENTION_SECONDS = 20
MAX_SHARD_ITERATORS = 1_000

Operation = Literal["SET", "ADD", "REMOVE"]
_CLAUSE_KEYWORDS: dict[str, Operation] = {"SET": "SET", "ADD": "ADD", "REMOVE": "REMOVE"}


@dataclass(frozen=True)
class Action:
    operation: Operation
    path: str  # '#placeholder' or a bare attribute name
    value: str | None = None  # ':placeholder' (SET, ADD)
    if_not_exists: str | None = None  # SET path = if_not_exists(<this path>, :value)


@functools.lru_cache(maxsize=4096)
def compile_update(expression: str) -> tuple[Action, ...] | None:
    """The actions of ``expression`` if it is in the fast subset, else None."""
    tokens = _TOKEN.findall(expression)
    if "".join(tokens) != re.sub(r"\s+", "", expression):
        return None
    clauses = _clauses(tokens)
    if not clauses:
        return None
    actions: list[Action] = []
    for clause, body in clauses:
        for action_tokens in _split_at_commas(body):
            action = _action(clause, action_tokens)
            if action is None:
                return None
            actions.append(action)
    return tuple(actions)


def _clauses(tokens: list[str]) -> list[tuple[Operation, list[str]]] | None:
    """``SET a = :v ADD b :w`` -> [("SET", [a, =, :v]), ("ADD", [b, :w])]; None if a clause
    repeats or the expression does not start with one."""
    clauses: list[tuple[Operation, list[str]]] = []
    for token in tokens:
        keyword = _CLAUSE_KEYWORDS.get(token.upper())
        if keyword is not None:
            if any(clause == keyword for clause, _ in clauses):
                return None
            clauses.append((keyword, []))
        elif not clauses:
            return None
        else:
            clauses[-1][1].append(token)
    return clauses


def _split_at_commas(body: list[str]) -> list[list[str]]:
    actions: list[list[str]] = [[]]
    depth = 0
    for part in body:
        depth += (part == "(") - (part == ")")
        if part == "," and depth == 0:
            actions.append([])
        else:
            actions[-1].append(part)
    return actions


def _is_path(token: str) -> bool:
    return token.startswith("#") or token[0].isalpha() or token[0] == "_"


def _is_value(token: str) -> bool:
    return token.startswith(":")


def _action(clause: Operation, tokens: list[str]) -> Action | None:
    if not tokens or not _is_path(tokens[0]):
        return None
    target, rest = tokens[0], tokens[1:]
    if clause == "REMOVE" and not rest:
        return Action("REMOVE", target)
    if clause == "ADD" and len(rest) == 1 and _is_value(rest[0]):
        return Action("ADD", target, rest[0])
    if clause != "SET" or not rest or rest[0] != "=":
        return None
    if len(rest) == 2 and _is_value(rest[1]):
        return Action("SET", target, rest[1])
    # SET target = if_not_exists(source, :value)
    if (
        len(rest) == 7
        and rest[1].lower() == "if_not_exists"
        and rest[2] == "("
        and _is_path(rest[3])
        and rest[4] == ","
        and _is_value(rest[5])
        and rest[6] == ")"
    ):
        return Action("SET", target, rest[5], if_not_exists=rest[3])
    return None


class _NotFast(Exception):
    """The update leaves the fast subset: moto's own implementation handles it."""


def _attribute_name(path: str, names: dict[str, str], reserved: frozenset[str]) -> str:
    if path.startswith("#"):
        name = names.get(path)
        if not isinstance(name, str) or not name:
            raise _NotFast
        return name
    if path.upper() in reserved:
        raise _NotFast
    return path


def _value(placeholder: str, values: dict[str, Any]) -> dict[str, Any]:
    value = values.get(placeholder)
    if not isinstance(value, dict) or len(value) != 1:
        raise _NotFast
    return value


@dataclass(frozen=True)
class _Moto:
    """The parts of moto the fast path works with (imported when it is installed)."""

    dynamo_type: Any
    bytesize: Any
    condition_parser: Any
    conditional_check_failed: Any
    reserved: frozenset[str]


def install() -> None:
    """Replace ``DynamoDBBackend.update_item`` in this process (idempotent), and let moto's request
    layer reuse the syntax tree it parses only to find the placeholders an expression uses."""
    from moto.dynamodb import responses
    from moto.dynamodb.comparisons import create_condition_expression_parser
    from moto.dynamodb.exceptions import ConditionalCheckFailed
    from moto.dynamodb.models import DynamoDBBackend
    from moto.dynamodb.models.dynamo_type import DynamoType
    from moto.dynamodb.models.utilities import bytesize
    from moto.dynamodb.parsing.reserved_keywords import ReservedKeywords

    if getattr(DynamoDBBackend.update_item, "quotagate_fast", False):
        return
    _install_transaction_journal()
    _install_stream_reads()
    _install_event_paths()
    _install_queue_retention()
    original = DynamoDBBackend.update_item
    moto = _Moto(
        DynamoType,
        bytesize,
        create_condition_expression_parser,
        ConditionalCheckFailed,
        frozenset(word.upper() for word in ReservedKeywords.get_reserved_keywords()),
    )

    def update_item(
        self: Any,
        table_name: str,
        key: dict[str, dict[str, Any]],
        update_expression: str,
        expression_attribute_names: dict[str, Any],
        expression_attribute_values: dict[str, Any],
        attribute_updates: dict[str, Any] | None = None,
        expected: dict[str, Any] | None = None,
        condition_expression: str | None = None,
        return_values_on_condition_check_failure: str | None = None,
    ) -> Any:
        actions = compile_update(update_expression) if update_expression and not attribute_updates else None
        if actions is not None and not expected:
            request = _Update(
                actions,
                key,
                expression_attribute_names or {},
                expression_attribute_values or {},
                condition_expression,
                return_values_on_condition_check_failure == "ALL_OLD",
            )
            item = _update_fast(self.get_table(table_name), request, moto)
            if item is not None:
                update_item.applied += 1  # type: ignore[attr-defined]
                return item
        return original(
            self,
            table_name,
            key,
            update_expression,
            expression_attribute_names,
            expression_attribute_values,
            attribute_updates,
            expected,
            condition_expression,
            return_values_on_condition_check_failure,
        )

    update_item.quotagate_fast = True  # type: ignore[attr-defined]
    update_item.applied = 0  # type: ignore[attr-defined]  # updates the fast path made (tests)
    update_item.moto_update_item = original  # type: ignore[attr-defined]
    DynamoDBBackend.update_item = update_item  # type: ignore[method-assign]
    responses.UpdateExpressionParser = _ReusedTrees(responses.UpdateExpressionParser)


@dataclass(frozen=True)
class _Update:
    actions: tuple[Action, ...]
    key: dict[str, dict[str, Any]]
    names: dict[str, Any]
    values: dict[str, Any]
    condition: str | None
    return_old_on_failure: bool


def _update_fast(table: Any, update: _Update, moto: _Moto) -> Any:
    """The updated item, or None when moto's own update must decide (nothing changed then)."""
    keys = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr is not None else [])
    if any(name not in update.key for name in keys):
        return None
    try:
        changes = _resolve(update.actions, update.names, update.values, set(keys), moto.reserved)
    except _NotFast:
        return None
    hash_value = moto.dynamo_type(update.key[table.hash_key_attr])
    range_value = moto.dynamo_type(update.key[table.range_key_attr]) if table.range_key_attr is not None else None
    item = table.get_item(hash_value, range_value)

    condition = moto.condition_parser(update.condition, update.names, update.values).parse()
    if not condition.expr(item):
        if update.return_old_on_failure and item is not None:
            raise moto.conditional_check_failed(item=item.to_json()["Attributes"])
        raise moto.conditional_check_failed

    try:
        updated = _new_values(changes, item, moto.dynamo_type)
    except (ValueError, TypeError, ArithmeticError):
        return None  # e.g. an invalid number, or ADD across types: DynamoDB refuses, moto says how
    if not _fits(updated, item, moto.dynamo_type, moto.bytesize):
        return None
    original_item = copy.deepcopy(item) if table.stream_shard is not None else None
    if item is None:
        # As moto does: the key alone first (a stream record of its own), then the update.
        data = {table.hash_key_attr: {hash_value.type: hash_value.value}}
        if range_value is not None:
            data[table.range_key_attr] = {range_value.type: range_value.value}
        table.put_item(data)
        item = table.get_item(hash_value, range_value)
    for name, value in updated:
        if value is None:
            item.attrs.pop(name, None)
        else:
            dict.__setitem__(item.attrs, name, value)  # size checked above, once
    if table.stream_shard is not None:
        table.stream_shard.add(original_item, item)
    return item


@dataclass(frozen=True)
class _Change:
    operation: Operation
    name: str
    value: dict[str, Any] | None
    if_not_exists: str | None


def _resolve(
    actions: tuple[Action, ...],
    names: dict[str, Any],
    values: dict[str, Any],
    key_attributes: set[str],
    reserved: frozenset[str],
) -> list[_Change]:
    changes: list[_Change] = []
    targets: set[str] = set()
    for action in actions:
        name = _attribute_name(action.path, names, reserved)
        if name in key_attributes or name in targets:
            raise _NotFast
        targets.add(name)
        value = _value(action.value, values) if action.value is not None else None
        source = _attribute_name(action.if_not_exists, names, reserved) if action.if_not_exists else None
        if source in key_attributes:
            raise _NotFast
        if action.operation == "ADD":
            assert value is not None
            kind, content = next(iter(value.items()))
            if kind not in _ADDABLE_TYPES or (kind != "N" and not content):
                raise _NotFast
        changes.append(_Change(action.operation, name, value, source))
    return changes


def _new_values(changes: list[_Change], item: Any, dynamo_type: Any) -> list[tuple[str, Any]]:
    """What each attribute becomes (None: removed), read from the item as it was before this update,
    as DynamoDB does; through moto's own arithmetic and set union, so the bytes match moto's."""
    attributes = item.attrs if item is not None else {}
    updated: list[tuple[str, Any]] = []
    for change in changes:
        if change.operation == "REMOVE":
            updated.append((change.name, None))
        elif change.operation == "SET":
            source = change.if_not_exists
            if source is not None and source in attributes:
                updated.append((change.name, attributes[source]))
            else:
                updated.append((change.name, dynamo_type(change.value)))
        else:
            value = dynamo_type(change.value)
            if value.type == "N":
                updated.append((change.name, attributes.get(change.name, dynamo_type({"N": "0"})) + value))
            else:
                current = attributes.get(change.name)
                if current is not None and current.type != value.type:
                    raise TypeError("ADD of a set to another type")  # DynamoDB refuses: moto says how
                union = list(current.value) if current is not None else []
                union += [element for element in value.value if element not in union]
                updated.append((change.name, dynamo_type({value.type: union})))
    return updated


def _fits(updated: list[tuple[str, Any]], item: Any, dynamo_type: Any, bytesize: Any) -> bool:
    """If the item as it is plus everything written stays under moto's limit, none of moto's
    per-attribute size checks would refuse; otherwise moto's own update decides."""

    def size(value: Any) -> int:
        return int(value.size()) if type(value) is dynamo_type else int(bytesize(str(value)))

    total = 0
    if item is not None:
        total = sum(size(name) + size(value) for name, value in item.attrs.items())
    total += sum(size(name) + size(value) for name, value in updated if value is not None)
    return total <= _MOTO_ITEM_LIMIT - _KEY_MARGIN


class _ReusedTrees:
    """moto's request layer parses an update expression only to list its placeholders (it never
    changes that tree): parse each distinct expression once."""

    def __init__(self, parser: Any) -> None:
        self._parser = parser
        self._trees: dict[str, Any] = {}

    def make(self, expression: str) -> Any:
        tree = self._trees.get(expression)
        if tree is None:
            tree = _FoundClauses(self._parser.make(expression))
            if len(self._trees) < 4096:
                self._trees[expression] = tree
        return tree

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)


def _install_stream_reads() -> None:
    from moto.dynamodb.models.table import StreamShard
    from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

    def get_records(self: Any) -> str:
        _trim_streams(self.backend)
        limit = self._get_param("Limit")
        iterator = self.backend.shard_iterators.get(self._get_param("ShardIterator"))
        result = self.backend.get_records(self._get_param("ShardIterator"), 1000 if limit is None else limit)
        if iterator is not None and result["Records"]:
            shard = iterator.stream_shard
            last = int(result["Records"][-1]["dynamodb"]["SequenceNumber"])
            shard.quotagate_read_up_to = max(getattr(shard, "quotagate_read_up_to", 0), last)
        return json.dumps(result, default=_json_value)

    def get(self: Any, start: int, quantity: int) -> list[dict[str, Any]]:
        # An iterator from before a trim reads on from the oldest record kept.
        first = max(0, start - self.starting_sequence_number)
        return [record.to_json() for record in self.items[first : first + quantity]]

    StreamShard.get = get  # type: ignore[method-assign]
    get_records.moto_get_records = DynamoDBStreamsHandler.get_records  # type: ignore[attr-defined]
    DynamoDBStreamsHandler.get_records = get_records  # type: ignore[assignment]


def _json_value(value: Any) -> float | str:
    """Timestamps and binary values as the JSON protocol sends them (moto's records hold naive UTC
    datetimes and raw bytes)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, datetime.datetime):
        # Whole milliseconds, as moto's serializer sends them.
        utc = value.utctimetuple() if value.tzinfo is not None else value.timetuple()
        seconds = calendar.timegm(utc)
        return seconds + (value.microsecond // 1000) / 1000
    raise TypeError(f"not JSON: {type(value).__name__}")


class _FoundClauses:
    """A parsed expression whose ``find_clauses`` answers are kept (moto walks the whole tree)."""

    def __init__(self, tree: Any) -> None:
        self._tree = tree
        self._found: dict[tuple[type, ...], Any] = {}

    def find_clauses(self, node_types: list[type]) -> Any:
        key = tuple(node_types)
        if key not in self._found:
            self._found[key] = self._tree.find_clauses(node_types)
        return list(self._found[key])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tree, name)


def _install_event_paths() -> None:
    import jsonpath_ng.ext

    parse = jsonpath_ng.ext.parse
    if getattr(parse, "cache_info", None) is None:
        jsonpath_ng.ext.parse = functools.lru_cache(maxsize=256)(parse)


def _install_queue_retention() -> None:
    from moto.core.utils import unix_time
    from moto.sqs.models import SQSBackend

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        retention_period = int(self.get_queue(queue_name).message_retention_period)
        return bool(retention_period + message.sent_timestamp / 1000 > unix_time())

    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period  # type: ignore[method-assign]


def _install_transaction_journal() -> None:
    from moto.dynamodb import models
    from moto.dynamodb.models import DynamoDBBackend, Table
    from moto.dynamodb.models.dynamo_type import DynamoType

    original = DynamoDBBackend.transact_write_items
    in_transaction = False

    def deepcopy(value: Any, memo: Any = None) -> Any:
        # moto's rollback copy of a whole table: the journal below restores instead.
        if in_transaction and isinstance(value, Table):
            return value
        return copy.deepcopy(value, memo)

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> Any:
        nonlocal in_transaction
        journal = _journal(self.tables, transact_items, DynamoType)
        streams = {id(t): (t, len(t.stream_shard.items)) for t, *_ in journal if t.stream_shard is not None}
        in_transaction = True
        try:
            return original(self, transact_items)
        except BaseException:
            for table, hash_value, range_value, item in reversed(journal):
                _restore(table, hash_value, range_value, item)
            for table, length in streams.values():
                del table.stream_shard.items[length:]
            raise
        finally:
            in_transaction = False

    transact_write_items.moto_transact_write_items = original  # type: ignore[attr-defined]
    models.copy = types.SimpleNamespace(deepcopy=deepcopy, copy=copy.copy)  # type: ignore[assignment]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def _journal(tables: dict[str, Any], transact_items: list[dict[str, Any]], dynamo_type: Any) -> list[tuple[Any, ...]]:
    """(table, hash, range, a copy of the item or None) for every item the transaction names."""
    journal: list[tuple[Any, ...]] = []
    for action in transact_items:
        operation = next(iter(action.values()), None)
        if not isinstance(operation, dict):
            continue
        table = tables.get(str(operation.get("TableName")))
        if table is None:
            continue
        key = operation.get("Key") or operation.get("Item") or {}
        names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr is not None else [])
        if not all(isinstance(key.get(name), dict) for name in names):
            continue  # moto refuses it before changing anything
        hash_value = dynamo_type(key[table.hash_key_attr])
        range_value = dynamo_type(key[table.range_key_attr]) if table.range_key_attr is not None else None
        journal.append((table, hash_value, range_value, copy.deepcopy(table.get_item(hash_value, range_value))))
    return journal


def _restore(table: Any, hash_value: Any, range_value: Any, item: Any) -> None:
    if range_value is None:
        if item is None:
            table.items.pop(hash_value, None)
        else:
            table.items[hash_value] = item
        return
    if item is None:
        table.items.get(hash_value, {}).pop(range_value, None)
    else:
        table.items[hash_value][range_value] = item


def _trim_streams(streams_backend: Any) -> None:
    """Drop stream records that were read and are older than the retention (renumbering nothing:
    the shard's starting sequence number moves with them), and the oldest shard iterators past
    the cap."""
    from moto.core.utils import utcnow

    cutoff = utcnow() - datetime.timedelta(seconds=STREAM_RETENTION_SECONDS)
    for table in streams_backend.dynamodb.tables.values():
        shard = table.stream_shard
        if shard is None or not shard.items:
            continue
        read_up_to = getattr(shard, "quotagate_read_up_to", 0)
        old = 0
        for record in shard.items:
            created = record.record["dynamodb"]["ApproximateCreationDateTime"]
            sequence_number = int(record.record["dynamodb"]["SequenceNumber"])
            if created.replace(tzinfo=None) >= cutoff.replace(tzinfo=None) or sequence_number > read_up_to:
                break
            old += 1
        if old:
            del shard.items[:old]
            shard.starting_sequence_number += old
    iterators = streams_backend.shard_iterators
    for arn in list(iterators)[: max(0, len(iterators) - MAX_SHARD_ITERATORS)]:
        del iterators[arn]
