"""The local moto server's fast ``UpdateItem`` and ``GetRecords`` give moto's own results.

Each update case runs twice on identical fresh tables: once through the fast path, once through
moto's unchanged ``update_item``. The item afterwards, the stream records it left and the error
raised (type and message) must be the same. Cases are generated from a fixed seed over the
grammar the fast path takes and what sits just outside it (nested paths, ``+``, key attributes,
reserved words, repeated clauses and paths, missing placeholders, wrong operand types, invalid
numbers, conditions that fail).
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodbstreams.responses import DynamoDBStreamsHandler

from quotagate_tools.local import fast_moto
from quotagate_tools.local.motoserver import start_moto_server

if TYPE_CHECKING:
    from collections.abc import Iterator

fast_moto.install()
FAST_UPDATE = DynamoDBBackend.update_item
MOTO_UPDATE = FAST_UPDATE.moto_update_item  # type: ignore[attr-defined]

TABLE = "t"
NAMES = ["used", "limit", "expires_at", "tags", "doc", "count_1"]
REFUSED_NAMES = ["status", "pk", "sk", "keys"]  # reserved words and the key attributes
VALUES: list[dict[str, Any]] = [
    {"N": "1"},
    {"N": "-2.5"},
    {"N": "0"},
    {"N": "123456789012345678901234567890"},
    {"N": "1e3"},
    {"N": "abc"},
    {"S": "x"},
    {"S": ""},
    {"SS": ["a", "b"]},
    {"SS": ["b", "c"]},
    {"SS": []},
    {"NS": ["1", "2"]},
    {"BS": [b"\x00"]},
    {"L": [{"S": "x"}, {"N": "2"}]},
    {"M": {"a": {"N": "1"}, "b": {"SS": ["z"]}}},
    {"BOOL": True},
    {"NULL": True},
]


def new_backend() -> Any:
    backend = DynamoDBBackend("us-east-1", "123456789012")
    backend.create_table(
        TABLE,
        schema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
        throughput=None,
        attr=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
        global_indexes=None,
        indexes=None,
        streams={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
        billing_mode="PAY_PER_REQUEST",
        sse_specification=None,
        tags=[],
        deletion_protection_enabled=False,
        warm_throughput=None,
    )
    return backend


class CaseBuilder:
    """One generated update: its expression, placeholders, condition and the item before it."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.names: dict[str, str] = {}
        self.values: dict[str, Any] = {}

    def path(self) -> str:
        rng = self.rng
        name = rng.choice(REFUSED_NAMES if rng.random() < 0.08 else NAMES)
        path = name
        if rng.random() < 0.7:
            path = f"#n{len(self.names)}"
            self.names[path] = name
        if rng.random() < 0.05:
            path += ".inner"  # nested: outside the fast subset
        return "#missing" if rng.random() < 0.03 else path

    def value(self) -> str:
        placeholder = f":v{len(self.values)}"
        common = VALUES[:3] + VALUES[6:10]
        self.values[placeholder] = self.rng.choice(VALUES if self.rng.random() < 0.3 else common)
        return ":missing" if self.rng.random() < 0.03 else placeholder

    def action(self, keyword: str) -> str:
        if keyword == "ADD":
            return f"{self.path()} {self.value()}"
        if keyword == "REMOVE":
            return self.path()
        form = self.rng.random()
        if form < 0.6:
            return f"{self.path()} = {self.value()}"
        if form < 0.9:
            return f"{self.path()} = if_not_exists({self.path()}, {self.value()})"
        return f"{self.path()} = {self.path()} + {self.value()}"  # outside the fast subset

    def expression(self) -> str:
        clauses: dict[str, list[str]] = {}
        for _ in range(self.rng.randint(1, 4)):
            keyword = self.rng.choice(["SET", "ADD", "REMOVE"])
            clauses.setdefault(keyword, []).append(self.action(keyword))
        parts = [
            f"{keyword.lower() if self.rng.random() < 0.2 else keyword} " + ", ".join(actions)
            for keyword, actions in clauses.items()
        ]
        if self.rng.random() < 0.05:
            parts.append(parts[0])  # a clause twice
        self.rng.shuffle(parts)
        return " ".join(parts)

    def condition(self) -> str | None:
        roll = self.rng.random()
        if roll < 0.3:
            self.names["#c"] = self.rng.choice(NAMES[:4] + REFUSED_NAMES[:1])
            return "attribute_not_exists(#c)"
        if roll < 0.5:
            self.names["#c"] = "used"
            self.values[":max"] = {"N": str(self.rng.randint(-1, 5))}
            return "attribute_not_exists(#c) OR #c <= :max"
        return None

    def existing(self) -> dict[str, Any] | None:
        if self.rng.random() >= 0.7:
            return None
        item: dict[str, Any] = {"pk": {"S": "p"}, "sk": {"S": "s"}}
        storable = [v for v in VALUES if v not in ({"N": "abc"}, {"N": "1e3"}, {"SS": []})]
        for name in self.rng.sample([*NAMES, "status"], self.rng.randint(0, 5)):
            item[name] = self.rng.choice(storable)
        return item


def random_case(rng: random.Random) -> dict[str, Any]:
    builder = CaseBuilder(rng)
    expression = builder.expression()
    condition = builder.condition()
    return {
        "expression": expression,
        "names": builder.names,
        "values": builder.values,
        "condition": condition,
        "existing": builder.existing(),
        "return_old": rng.random() < 0.5,
    }


def run(update: Any, case: dict[str, Any]) -> dict[str, Any]:
    case = copy.deepcopy(case)  # moto keeps (and may change) the lists it is given
    backend = new_backend()
    table = backend.get_table(TABLE)
    if case["existing"] is not None:
        backend.put_item(TABLE, case["existing"])
    outcome: dict[str, Any] = {}
    try:
        update(
            backend,
            TABLE,
            {"pk": {"S": "p"}, "sk": {"S": "s"}},
            case["expression"],
            case["names"],
            case["values"],
            None,
            None,
            case["condition"],
            "ALL_OLD" if case["return_old"] else None,
        )
    except Exception as error:  # the error itself is what is compared
        outcome["error"] = (type(error).__name__, str(error), getattr(error, "item", None))
    item = backend.get_item(TABLE, {"pk": {"S": "p"}, "sk": {"S": "s"}})
    outcome["item"] = item.to_json() if item is not None else None
    outcome["stream"] = [
        (
            record.record["eventName"],
            record.record["dynamodb"].get("Keys"),
            record.record["dynamodb"].get("OldImage"),
            record.record["dynamodb"].get("NewImage"),
        )
        for record in table.stream_shard.items
    ]
    return outcome


def test_generated_updates_leave_what_moto_leaves() -> None:
    rng = random.Random(21)
    applied_before = FAST_UPDATE.applied  # type: ignore[attr-defined]
    refused = 0
    for number in range(1500):
        case = random_case(rng)
        expected = run(MOTO_UPDATE, case)
        got = run(FAST_UPDATE, case)
        assert got == expected, f"case {number}: {case}"
        refused += "error" in expected
    # The cases exercise both: updates the fast path made, and refusals (moto's or a condition's).
    assert FAST_UPDATE.applied - applied_before > 300  # type: ignore[attr-defined]
    assert refused > 300


@pytest.mark.parametrize(
    "expression",
    [
        "ADD #u :n SET #l = :limit, #e = :exp",
        "SET #h = :rid, #until = :until, #e = :exp",
        "REMOVE #h, #until",
        "ADD #u :d SET #e = if_not_exists(#e, :exp)",
        "SET #state = :open, open_until = :until, expires_at = :expires ADD failures :one REMOVE probe_until",
        "ADD requests :one, prompt_tokens :p, #keys :keys SET #tenant = :tenant",
    ],
)
def test_the_gateways_own_expressions_take_the_fast_path(expression: str) -> None:
    assert fast_moto.compile_update(expression) is not None


@pytest.mark.parametrize(
    "expression",
    ["SET a.b = :v", "SET a = a + :v", "SET a[0] = :v", "DELETE s :v", "SET a = :v SET b = :w", "ADD a", "SET = :v"],
)
def test_other_grammar_is_left_to_moto(expression: str) -> None:
    assert fast_moto.compile_update(expression) is None


@dataclass
class Served:
    """DynamoDB and DynamoDB Streams clients of a local moto server (one request at a time)."""

    client: Any
    streams: Any

    def create_table(self, name: str, *, streamed: bool = False) -> tuple[str, str]:
        """A table keyed by ``pk``; with ``streamed``, its stream's ARN and shard id."""
        self.client.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
            **(
                {"StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}}
                if streamed
                else {}
            ),
        )
        if not streamed:
            return "", ""
        arn = self.client.describe_table(TableName=name)["Table"]["LatestStreamArn"]
        shard = self.streams.describe_stream(StreamArn=arn)["StreamDescription"]["Shards"][0]["ShardId"]
        return arn, shard


@pytest.fixture
def served() -> Iterator[Served]:
    url, stop = start_moto_server()
    options = {"region_name": "us-east-1", "endpoint_url": url, "aws_access_key_id": "k", "aws_secret_access_key": "s"}
    try:
        yield Served(boto3.client("dynamodb", **options), boto3.client("dynamodbstreams", **options))
    finally:
        stop()


def test_a_key_update_through_the_server_gets_dynamodbs_refusals(served: Served) -> None:
    client = served.client
    served.create_table("refusals")
    key = {"pk": {"S": "a"}}
    with pytest.raises(client.exceptions.ClientError, match="unused in expressions"):
        client.update_item(
            TableName="refusals",
            Key=key,
            UpdateExpression="ADD #u :n",
            ExpressionAttributeNames={"#u": "used", "#x": "unused"},
            ExpressionAttributeValues={":n": {"N": "1"}},
        )
    with pytest.raises(client.exceptions.ClientError, match="part of the key"):
        client.update_item(
            TableName="refusals",
            Key=key,
            UpdateExpression="SET #k = :v",
            ExpressionAttributeNames={"#k": "pk"},
            ExpressionAttributeValues={":v": {"S": "b"}},
        )
    for _ in range(3):
        client.update_item(
            TableName="refusals",
            Key=key,
            UpdateExpression="ADD #u :n, #s :s",
            ExpressionAttributeNames={"#u": "used", "#s": "set"},
            ExpressionAttributeValues={":n": {"N": "1.5"}, ":s": {"SS": ["x"]}},
        )
    item = client.get_item(TableName="refusals", Key=key)["Item"]
    assert item == {"pk": {"S": "a"}, "used": {"N": "4.5"}, "set": {"SS": ["x"]}}


def test_stream_records_read_as_moto_serializes_them(served: Served) -> None:
    client, streams = served.client, served.streams
    arn, shard = served.create_table("streamed", streamed=True)
    for number in range(5):
        item = {"pk": {"S": str(number)}, "b": {"B": b"\x00\xff"}, "m": {"M": {"n": {"N": "1.5"}}}}
        client.put_item(TableName="streamed", Item=item)
        time.sleep(0.002)
    client.delete_item(TableName="streamed", Key={"pk": {"S": "0"}})

    def read() -> list[dict[str, Any]]:
        iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
        return list(streams.get_records(ShardIterator=iterator["ShardIterator"])["Records"])

    fast = read()
    fast_get_records = DynamoDBStreamsHandler.get_records
    DynamoDBStreamsHandler.get_records = fast_get_records.moto_get_records  # type: ignore[attr-defined]
    try:
        slow = read()
    finally:
        DynamoDBStreamsHandler.get_records = fast_get_records  # type: ignore[method-assign]
    assert len(fast) == 6
    assert fast == slow


def random_transaction(rng: random.Random) -> list[dict[str, Any]]:
    """Two to five actions on a few keys: conditional updates, puts and deletes, some of which fail."""
    actions: list[dict[str, Any]] = []
    keys = rng.sample(["a", "b", "c", "d", "e"], rng.randint(2, 5))
    if rng.random() < 0.05:
        keys.append(keys[0])  # the same item twice: DynamoDB refuses the transaction
    for name in keys:
        key = {"pk": {"S": name}, "sk": {"S": "s"}}
        roll = rng.random()
        if roll < 0.6:
            actions.append(
                {
                    "Update": {
                        "TableName": TABLE,
                        "Key": key,
                        "UpdateExpression": "ADD #u :n SET #e = :e",
                        "ConditionExpression": "attribute_not_exists(#u) OR #u <= :max",
                        "ExpressionAttributeNames": {"#u": "used", "#e": "expires_at"},
                        "ExpressionAttributeValues": {
                            ":n": {"N": str(rng.randint(1, 4))},
                            ":e": {"N": "99"},
                            ":max": {"N": str(rng.randint(0, 6))},
                        },
                    }
                }
            )
        elif roll < 0.85:
            put: dict[str, Any] = {"TableName": TABLE, "Item": {**key, "status": {"S": "reserved"}}}
            if rng.random() < 0.5:
                put["ConditionExpression"] = "attribute_not_exists(pk)"
            actions.append({"Put": put})
        else:
            actions.append({"Delete": {"TableName": TABLE, "Key": key}})
    return actions


def items_and_stream(backend: Any) -> tuple[Any, Any]:
    table = backend.get_table(TABLE)
    items = sorted((item.to_json() for item in table.all_items()), key=repr)
    stream = [(r.record["eventName"], r.record["dynamodb"].get("NewImage")) for r in table.stream_shard.items]
    return items, stream


def test_transactions_roll_back_as_moto_does() -> None:
    """Items and stream records after a run of transactions, some cancelled, equal moto's own
    (which copies whole tables to roll back)."""
    rng = random.Random(7)
    transactions = [random_transaction(rng) for _ in range(250)]
    outcomes: dict[str, Any] = {}
    fast_transact = DynamoDBBackend.transact_write_items
    for side in ("moto", "fast"):
        backend = new_backend()
        errors = []
        if side == "moto":
            DynamoDBBackend.update_item = MOTO_UPDATE  # type: ignore[method-assign]
            DynamoDBBackend.transact_write_items = fast_transact.moto_transact_write_items  # type: ignore[attr-defined]
        try:
            for transaction in transactions:
                try:
                    backend.transact_write_items(copy.deepcopy(transaction))
                    errors.append(None)
                except Exception as error:
                    errors.append((type(error).__name__, str(error)))
        finally:
            DynamoDBBackend.update_item = FAST_UPDATE  # type: ignore[method-assign]
            DynamoDBBackend.transact_write_items = fast_transact  # type: ignore[method-assign]
        outcomes[side] = (errors, items_and_stream(backend))
    assert outcomes["fast"] == outcomes["moto"]
    errors = outcomes["moto"][0]
    assert 30 < sum(error is not None for error in errors) < 220  # both kinds of outcome, many times


def test_a_stream_keeps_its_recent_records_and_numbers_on(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    client, streams = served.client, served.streams
    arn, shard = served.create_table("trimmed", streamed=True)
    iterator = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    for number in range(3):
        client.put_item(TableName="trimmed", Item={"pk": {"S": f"old{number}"}})
    page = streams.get_records(ShardIterator=iterator["ShardIterator"])
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in page["Records"]] == ["old0", "old1", "old2"]
    last_old = int(page["Records"][-1]["dynamodb"]["SequenceNumber"])

    monkeypatch.setattr(fast_moto, "STREAM_RETENTION_SECONDS", -1)  # everything so far is past it
    client.put_item(TableName="trimmed", Item={"pk": {"S": "new"}})
    page = streams.get_records(ShardIterator=page["NextShardIterator"])
    # What was read is gone; what was not is still delivered; numbers never go back.
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in page["Records"]] == ["new"]
    monkeypatch.setattr(fast_moto, "STREAM_RETENTION_SECONDS", 120)
    horizon = streams.get_shard_iterator(StreamArn=arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON")
    client.put_item(TableName="trimmed", Item={"pk": {"S": "newer"}})
    records = streams.get_records(ShardIterator=horizon["ShardIterator"])["Records"]
    assert [r["dynamodb"]["Keys"]["pk"]["S"] for r in records] == ["new", "newer"]
    assert int(records[0]["dynamodb"]["SequenceNumber"]) > last_old
