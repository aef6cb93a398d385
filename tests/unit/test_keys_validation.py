"""The keys API checks every field by type: whole numbers where a count is meant, the error names the
field, and every refusal is a KeysError in the API's own shape (never a bare exception)."""

from __future__ import annotations

from typing import Any

import pytest

from quotagate.config_models import parse_config
from quotagate.dal.keys_store import InMemoryKeyStore
from quotagate.logic.keys_service import KeysError, KeysService

NOW = 1_800_000_000

CONFIG = parse_config(
    {
        "default_plan": "free",
        "providers": {"mock": {"type": "openai", "base_url": "http://127.0.0.1:1/v1"}},
        "models": {"small": {"provider": "mock"}},
        "plans": {"free": {"models": "*"}, "pro": {"models": "*"}},
    }
)
CREATE = {"action": "create_key", "tenant": "acme", "consumer": "a", "plan": "free"}


@pytest.fixture
def service() -> KeysService:
    return KeysService(InMemoryKeyStore(), config_loader=lambda: CONFIG, clock=lambda: NOW)


COUNT_LIMITS = ["requests_per_minute", "tokens_per_minute", "tokens_per_day", "max_tokens_per_request"]


@pytest.mark.parametrize("limit", [*COUNT_LIMITS, "max_concurrent_requests"])
@pytest.mark.parametrize("action", ["create_key", "update_key", "create_tenant", "update_tenant"])
def test_a_fractional_count_limit_is_refused_with_its_name(service: KeysService, action: str, limit: str) -> None:
    key = service.dispatch(CREATE)
    service.dispatch({"action": "create_tenant", "tenant": "acme"})
    request: dict[str, Any] = {
        "create_key": CREATE,
        "update_key": {"action": "update_key", "key_id": key["key_id"]},
        "create_tenant": {"action": "create_tenant", "tenant": "globex"},
        "update_tenant": {"action": "update_tenant", "tenant": "acme"},
    }[action]
    with pytest.raises(KeysError) as refused:
        service.dispatch({**request, "limits": {limit: 2.5}})
    assert (refused.value.code, refused.value.status) == ("invalid_request", 400)
    assert f"limits.{limit}" in refused.value.message


@pytest.mark.parametrize("limit", ["usd_per_day", "usd_per_month"])
def test_dollar_limits_may_be_fractional(service: KeysService, limit: str) -> None:
    assert service.dispatch({**CREATE, "limits": {limit: 2.5}})["limits"] == {limit: 2.5}


def test_whole_number_limits_are_kept(service: KeysService) -> None:
    limits = {"requests_per_minute": 60, "max_concurrent_requests": 0, "tokens_per_day": 10**12}
    assert service.dispatch({**CREATE, "limits": limits})["limits"] == limits


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        ({**CREATE, "colour": "red"}, "colour"),
        ({**CREATE, "tenant": 5}, "tenant"),
        ({**CREATE, "limits": {"tokens_per_year": 1}}, "limits.tokens_per_year"),
        ({**CREATE, "limits": {"tokens_per_day": -1}}, "limits.tokens_per_day"),
        ({**CREATE, "allowed_models": ["small", 3]}, "allowed_models"),
        ({**CREATE, "metadata": []}, "metadata"),
        ({"action": "rotate_key", "key_id": "abcdefghijkl", "grace_seconds": 1.5}, "grace_seconds"),
        ({"action": "update_key", "key_id": "abcdefghijkl", "status": "paused"}, "status"),
        ({"action": "get_usage", "tenant": "acme", "granularity": "week"}, "granularity"),
        ({"action": "get_usage", "tenant": "acme", "by": "tenant"}, "by"),
    ],
)
def test_a_refusal_names_the_field(service: KeysService, request_: dict[str, Any], field: str) -> None:
    with pytest.raises(KeysError) as refused:
        service.dispatch(request_)
    assert refused.value.code == "invalid_request"
    assert field in refused.value.message
    assert len(refused.value.message) < 300
