"""Numbers the keys API accepts are numbers DynamoDB can store. DynamoDB numbers have a magnitude
between 1e-130 and 1e126 (or are 0); a `limits` value of 1e-300 or a `metadata` value of 1e200 passed
validation and then failed the write, so the caller got `internal_error` ("retry with the same
request_id") for its own bad input, which no retry can fix. Each is a 400-style `invalid_request`
now, and nothing is written."""

from __future__ import annotations

import pytest

from tests.integration.test_hostile_input import scan_all, stack  # noqa: F401

pytestmark = pytest.mark.timeout(120)

OUT_OF_RANGE = {
    "limit 1e-300": {"limits": {"usd_per_day": 1e-300}},
    "token limit 1e-200": {"limits": {"tokens_per_day": 1e-200}},
    "metadata 1e200": {"metadata": {"a": 1e200}},
    "metadata -1e-300": {"metadata": {"a": -1e-300}},
    "metadata nested 1e-131": {"metadata": {"a": {"b": [1e-131]}}},
}


@pytest.mark.parametrize("fields", OUT_OF_RANGE.values(), ids=OUT_OF_RANGE.keys())
def test_create_key_refuses_numbers_dynamodb_cannot_store(stack, fields):  # noqa: F811
    before = scan_all()
    response = stack.invoke_keys(
        {"action": "create_key", "tenant": "range", "consumer": "c", "plan": "free", "request_id": "range-1", **fields}
    )
    assert response["ok"] is False
    assert response["error"]["code"] == "invalid_request", response
    assert scan_all() == before


@pytest.mark.parametrize("action", ["create_tenant", "update_tenant"])
def test_tenant_limits_refuse_numbers_dynamodb_cannot_store(stack, action):  # noqa: F811
    before = scan_all()
    response = stack.invoke_keys({"action": action, "tenant": "range-tenant", "limits": {"usd_per_month": 1e-300}})
    assert response["ok"] is False
    assert response["error"]["code"] == "invalid_request", response
    assert scan_all() == before


def test_update_key_refuses_numbers_dynamodb_cannot_store(stack):  # noqa: F811
    created = stack.invoke_keys({"action": "create_key", "tenant": "range", "consumer": "c", "plan": "free"})
    key_id = created["result"]["key_id"]
    before = scan_all()
    for fields in ({"limits": {"usd_per_day": 1e-300}}, {"metadata": {"a": 1e200}}):
        response = stack.invoke_keys({"action": "update_key", "key_id": key_id, **fields})
        assert response["ok"] is False
        assert response["error"]["code"] == "invalid_request", response
    assert scan_all() == before


def test_numbers_in_range_are_kept(stack):  # noqa: F811
    response = stack.invoke_keys(
        {
            "action": "create_key",
            "tenant": "range",
            "consumer": "c",
            "plan": "free",
            "limits": {"usd_per_day": 0.000001, "tokens_per_day": 0},
            "metadata": {"small": 1e-100, "big": 1e100, "zero": 0.0},
        }
    )
    assert response["ok"] is True, response
    assert response["result"]["metadata"] == {"small": 1e-100, "big": 1e100, "zero": 0.0}
