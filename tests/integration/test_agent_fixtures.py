"""Replays what the real coding agents sent (recorded by ``make agents``: ``python -m quotagate_tools.agents
--record tests/fixtures/agents``) through the API Gateway emulator, the real authorizer and the real
proxy, with the make-dev configuration (mock-claude, mock-gpt, mock-bedrock on the mock upstream):
every request is answered 200 with a well-formed body or event stream, in the credential header the
agent used, and the tokens settled stay within what was reserved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.integration.gateway_stack import gateway_stack

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.integration.gateway_stack import GatewayStack

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = sorted((ROOT / "tests" / "fixtures" / "agents").glob("*.json"))
DEV_CONFIG = json.loads((ROOT / "tools" / "quotagate_tools" / "local" / "dev_config.json").read_text())


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[tuple[GatewayStack, str]]:
    overrides = {
        name: DEV_CONFIG[name] for name in ("providers", "models", "plans", "default_plan") if name in DEV_CONFIG
    }
    with gateway_stack(tmp_path_factory.mktemp("agents"), overrides, token_delay=0.0) as running:
        key = running.create_key("agents", "replay", plan="pro", limits={"tokens_per_month": 10**9})["api_key"]
        yield running, key


def events(text: str) -> list[tuple[str | None, dict[str, Any]]]:
    """Server-sent events as (event name, JSON data); every data line must be JSON (or [DONE])."""
    parsed = []
    for block in text.split("\n\n"):
        name, data = None, []
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                data.append(line.removeprefix("data:").strip())
        if data and data != ["[DONE]"]:
            parsed.append((name, json.loads("\n".join(data))))
    return parsed


def check_answer(path: str, body: dict[str, Any], response: httpx.Response) -> None:
    if not body.get("stream"):
        answer = response.json()
        assert answer.get("type") == "message" or answer.get("object") in ("response", "chat.completion"), answer
        return
    stream = events(response.text)
    names = [name or data.get("type") for name, data in stream]
    if path.startswith("/v1/messages"):
        assert names[0] == "message_start" and names[-1] == "message_stop", names
        assert "error" not in names, stream
    else:
        assert names[-1] == "response.completed", names


def fixture_params() -> list[Any]:
    params = []
    for path in FIXTURES:
        params.append(pytest.param(path, id=path.stem))
    return params


@pytest.mark.parametrize("fixture", fixture_params())
def test_a_recorded_agent_request_is_served(stack, fixture):
    running, key = stack
    recorded = json.loads(fixture.read_text())
    headers = dict(recorded["headers"])
    if recorded["credential_header"] == "x-api-key":
        headers["x-api-key"] = key
    else:
        headers["authorization"] = f"Bearer {key}"
    response = httpx.request(
        recorded["method"],
        f"{running.base_url}{recorded['path']}",
        headers=headers,
        content=json.dumps(recorded["body"]),
        timeout=60,
    )
    assert response.status_code == 200, f"{fixture.name}: {response.status_code} {response.text[:500]}"
    check_answer(recorded["path"], recorded["body"], response)
    settled = running.wait_settled(response.headers["x-request-id"])
    usage = settled["usage"]
    reserved = {charge["sk"].split("#")[0]: charge["amount"] for charge in settled["charges"]}
    assert usage["prompt_tokens"] + usage["completion_tokens"] <= reserved["tokens_per_minute"], settled
    assert usage["usd_micros"] <= reserved["usd_per_day"], settled


def test_fixtures_hold_no_credential():
    assert FIXTURES, "no recorded agent requests (python -m quotagate_tools.agents --record tests/fixtures/agents)"
    for path in FIXTURES:
        recorded = json.loads(path.read_text())
        assert not {"authorization", "x-api-key", "cookie"} & set(recorded["headers"]), path.name
        assert "qg_" not in path.read_text(), path.name
