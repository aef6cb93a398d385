"""The pipe's single definition: filter and input template, applied as Pipes apply them, and the
published schema of the event it makes."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from quotagate.usage import pipe
from quotagate.usage.events import REQUEST_SETTLED, SCHEMA_FILES, load_schema
from quotagate.usage.record import FIELDS, RECORD_ATTRIBUTE, reservation_record, settled_record, to_attribute


def reservation_item(status: str, **record_fields) -> dict:
    record = reservation_record(
        request_id="req-1",
        tenant="acme",
        consumer="alice",
        key_id="k1",
        auth_type="api_key",
        plan="free",
        requested_model="chat-default",
        model="chat-default",
        prompt_tokens=12,
        completion_tokens=64,
        cost_usd_micros=140,
        started_at=1_790_000_000.5,
        budgets={"budget_key_tokens_per_day": 1000},
    )
    if status == "settled":
        record = settled_record(
            record,
            target="mock/mock-gpt",
            prompt_tokens=10,
            completion_tokens=20,
            cost_usd_micros=50,
            usage_source="provider",
            outcome="ok",
            http_status=200,
            time_to_first_byte_ms=12.7,
            duration_ms=80.2,
            failovers=1,
        )
    record.update(record_fields)
    return {
        "pk": {"S": "req#req-1"},
        "sk": {"S": "reservation"},
        "status": {"S": status},
        RECORD_ATTRIBUTE: to_attribute(record),
    }


def stream_record(event_name: str, image: dict) -> dict:
    return {
        "eventID": "1",
        "eventName": event_name,
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "Keys": {"pk": image["pk"], "sk": image["sk"]},
            "NewImage": image,
            "StreamViewType": "NEW_IMAGE",
            "SequenceNumber": "1",
            "SizeBytes": 100,
        },
    }


def test_filter_keeps_only_reservations_that_left_reserved():
    assert pipe.matches(pipe.FILTER_PATTERN, stream_record("MODIFY", reservation_item("settled")))
    assert pipe.matches(pipe.FILTER_PATTERN, stream_record("MODIFY", reservation_item("expired")))
    # The reservation itself, a window counter, and TTL deletions are not usage.
    assert not pipe.matches(pipe.FILTER_PATTERN, stream_record("INSERT", reservation_item("reserved")))
    assert not pipe.matches(pipe.FILTER_PATTERN, stream_record("MODIFY", reservation_item("reserved")))
    assert not pipe.matches(pipe.FILTER_PATTERN, stream_record("REMOVE", reservation_item("settled")))
    window = {
        "pk": {"S": "key#k1"},
        "sk": {"S": "tokens_per_day#2026-11-30T00:00:00Z"},
        "used": {"N": "5"},
        "status": {"S": "settled"},
    }
    assert not pipe.matches(pipe.FILTER_PATTERN, stream_record("MODIFY", window))


def test_the_cdk_filter_is_the_same_pattern():
    (only,) = pipe.filter_criteria()["Filters"]
    assert json.loads(only["Pattern"]) == pipe.FILTER_PATTERN
    params = pipe.target_parameters()
    assert params["InputTemplate"] == pipe.input_template()
    assert params["EventBridgeEventBusParameters"] == {"Source": "quotagate", "DetailType": "Request Settled"}


def test_transform_makes_a_detail_that_validates_against_the_published_schema():
    entry = pipe.event_entry(stream_record("MODIFY", reservation_item("settled")))
    assert entry is not None
    assert (entry["Source"], entry["DetailType"], entry["EventBusName"]) == (
        "quotagate",
        "Request Settled",
        "quotagate",
    )
    detail = json.loads(entry["Detail"])
    jsonschema.validate(detail, load_schema(REQUEST_SETTLED))
    assert detail["schema_version"] == "1"
    assert detail["status"] == "settled"
    assert (detail["prompt_tokens"], detail["completion_tokens"], detail["total_tokens"]) == ("10", "20", "30")
    assert detail["cost_usd_micros"] == "50"
    assert (detail["outcome"], detail["usage_source"], detail["failovers"]) == ("ok", "provider", "1")
    assert detail["target"] == "mock/mock-gpt" and detail["provider"] == "mock"
    assert detail["started_at_ms"] == "1790000000500"
    assert detail["time_to_first_byte_ms"] == "12"
    assert detail["budget_key_tokens_per_day"] == "1000"


def test_an_expired_reservation_is_billed_at_its_reserved_amounts():
    detail = json.loads(pipe.event_entry(stream_record("MODIFY", reservation_item("expired")))["Detail"])
    jsonschema.validate(detail, load_schema(REQUEST_SETTLED))
    assert (detail["status"], detail["usage_source"], detail["outcome"]) == ("expired", "reservation", "expired")
    assert (detail["prompt_tokens"], detail["completion_tokens"], detail["cost_usd_micros"]) == ("12", "64", "140")
    assert detail["time_to_first_byte_ms"] == "-1"


def test_strings_are_escaped_like_pipes_do():
    item = reservation_item("settled", consumer='a "quoted" \\ name', requested_model="m\u00e9")
    detail = json.loads(pipe.event_entry(stream_record("MODIFY", item))["Detail"])
    assert detail["consumer"] == 'a "quoted" \\ name'
    assert detail["requested_model"] == "m\u00e9"


def test_a_record_without_the_usage_record_is_not_silently_published():
    item = reservation_item("settled")
    del item[RECORD_ATTRIBUTE]
    with pytest.raises(pipe.TemplatePathMissing):
        pipe.event_entry(stream_record("MODIFY", item))


def test_schema_files_agree_with_the_record_definition():
    schema = load_schema(REQUEST_SETTLED)
    assert set(schema["properties"]) == {"schema_version", "status", *FIELDS}
    assert set(schema["required"]) == set(schema["properties"])
    assert schema["additionalProperties"] is False
    for path in SCHEMA_FILES.values():
        jsonschema.Draft202012Validator.check_schema(json.loads(path.read_text()))


def test_every_placeholder_is_a_whole_quoted_string():
    """Pipes substitute a JSON-path value placed alone inside quotes as a JSON string, escaping it
    ("EventBridge replaces input transformers at runtime to ensure valid JSON output. Put quotes
    around variables that refer to JSON path parameters"); a placeholder embedded in a longer string
    or left unquoted would not be made safe that way."""
    template = pipe.input_template()
    placeholders = re.findall(r"<\$\.([^>]+)>", template)
    assert placeholders
    for path in placeholders:
        assert f'": "<$.{path}>"' in template, path
    assert template.count("<$.") == len(placeholders)


@pytest.mark.parametrize(
    "hostile",
    ['"', "\\", "end with a backslash \\", 'a "quoted" \\" name', "line\nbreak\ttab\r", "\x00\x1f", "\ud800", "}{,:"],
)
def test_any_string_value_survives_the_template(hostile):
    """Tenant, consumer and JWT subjects come from clients and IdPs: any string stays that string."""
    item = reservation_item("settled", tenant=hostile, consumer=hostile, subject=hostile)
    entry = pipe.event_entry(stream_record("MODIFY", item))
    detail = json.loads(entry["Detail"])
    assert (detail["tenant"], detail["consumer"], detail["subject"]) == (hostile, hostile, hostile)
    jsonschema.validate(detail, load_schema(REQUEST_SETTLED))
