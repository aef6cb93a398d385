"""The ONE definition of the EventBridge Pipe quota-table stream → ``quotagate`` bus.

The CDK construct (``cdk_app/constructs/usage_pipeline.py``) builds ``AWS::Pipes::Pipe`` from
:data:`FILTER_PATTERN` and :func:`input_template`; local mode (moto runs no Pipes) applies the very
same pattern and template with :func:`matches` and :func:`transform`, which implement the part of
the Pipes semantics these two use.

Pipes insert every value a template path reads as a JSON string (a DynamoDB stream carries numbers
as strings: ``{"N": "123"}``), so the numbers of a ``Request Settled`` event are decimal strings:
exact integers, never rounded through a float. The schema (``schemas/request_settled.v1.json``)
says so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from quotagate.quota.ledger import RESERVATION_SK, ReservationStatus
from quotagate.usage.exceptions import TemplatePathMissing
from quotagate.usage.record import FIELDS, RECORD_ATTRIBUTE

BUS_NAME = "quotagate"
EVENT_SOURCE = "quotagate"
REQUEST_SETTLED = "Request Settled"
SCHEMA_VERSION = "1"
# The rule that feeds the rollup queue (the stack's rule and local mode's).
ROLLUP_RULE_PATTERN: dict[str, list[str]] = {"source": [EVENT_SOURCE], "detail-type": [REQUEST_SETTLED]}
# Reservation states the pipe publishes: settled by the proxy, or closed by the reaper.
PUBLISHED_STATUSES = (ReservationStatus.SETTLED, ReservationStatus.EXPIRED)

# A reservation item that was modified and is now settled or expired. The stream is NEW_IMAGE and
# a reservation leaves ``reserved`` exactly once (both writes are conditional on ``reserved``), so
# the MODIFY that shows one of these statuses is the transition; TTL deletions are REMOVEs.
FILTER_PATTERN: dict[str, Any] = {
    "eventName": ["MODIFY"],
    "dynamodb": {
        "Keys": {"pk": {"S": [{"prefix": "req#"}]}, "sk": {"S": [RESERVATION_SK]}},
        "NewImage": {"status": {"S": list(PUBLISHED_STATUSES)}},
    },
}


def input_template() -> str:
    """The detail of a ``Request Settled`` event, as a Pipes input template (placeholders in
    quotes: every value is a string)."""
    lines = [f'  "schema_version": "{SCHEMA_VERSION}"', '  "status": "<$.dynamodb.NewImage.status.S>"']
    path = f"$.dynamodb.NewImage.{RECORD_ATTRIBUTE}.M"
    lines += [f'  "{name}": "<{path}.{name}.{kind}>"' for name, kind in FIELDS.items()]
    return "{\n" + ",\n".join(lines) + "\n}"


def filter_criteria() -> dict[str, Any]:
    """``FilterCriteria`` of the pipe's source parameters."""
    return {"Filters": [{"Pattern": json.dumps(FILTER_PATTERN, separators=(",", ":"))}]}


def target_parameters() -> dict[str, Any]:
    """``TargetParameters`` of the pipe (the target is the ``quotagate`` bus)."""
    return {
        "InputTemplate": input_template(),
        "EventBridgeEventBusParameters": {"Source": EVENT_SOURCE, "DetailType": REQUEST_SETTLED},
    }


# ---- the same semantics, locally --------------------------------------------------------------


def matches(pattern: Mapping[str, Any], record: Any) -> bool:
    """EventBridge pattern matching for what :data:`FILTER_PATTERN` uses: nested fields, lists of
    exact values, and ``{"prefix": ...}``."""
    if not isinstance(record, Mapping):
        return False
    for name, expected in pattern.items():
        if name not in record:
            return False
        value = record[name]
        if isinstance(expected, Mapping):
            if not matches(expected, value):
                return False
            continue
        if not isinstance(expected, list):
            raise ValueError(f"unsupported pattern element for {name!r}: {expected!r}")
        if not any(_matches_value(option, value) for option in expected):
            return False
    return True


def _matches_value(option: Any, value: Any) -> bool:
    if isinstance(option, Mapping):
        if set(option) != {"prefix"}:
            raise ValueError(f"unsupported pattern operator {option!r}")
        return isinstance(value, str) and value.startswith(option["prefix"])
    return bool(option == value)


_PLACEHOLDER = re.compile(r"<\$\.([A-Za-z0-9_.\-]+)>")


def transform(template: str, record: Mapping[str, Any]) -> dict[str, Any]:
    """Fill ``template`` from ``record`` as Pipes does for placeholders inside quotes (each must
    read a string), and parse the result."""

    def value_of(match: re.Match[str]) -> str:
        node: Any = record
        for part in match.group(1).split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise TemplatePathMissing(match.group(0))
            node = node[part]
        if not isinstance(node, str):
            raise ValueError(f"{match.group(0)} is not a string in the record")
        return json.dumps(node)[1:-1]  # escaped for its place inside the template's quotes

    return dict(json.loads(_PLACEHOLDER.sub(value_of, template)))


def event_entry(record: Mapping[str, Any], bus_name: str = BUS_NAME) -> dict[str, Any] | None:
    """The ``PutEvents`` entry the pipe makes of one stream record (None: filtered out)."""
    if not matches(FILTER_PATTERN, record):
        return None
    detail = transform(input_template(), record)
    return {
        "Source": EVENT_SOURCE,
        "DetailType": REQUEST_SETTLED,
        "Detail": json.dumps(detail),
        "EventBusName": bus_name,
    }
