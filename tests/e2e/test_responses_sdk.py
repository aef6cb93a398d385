"""End to end: the openai SDK's Responses API (``client.responses.create``, streamed and not, with a
function tool round trip) against ``python -m quotagate_tools.local`` started as a process, with the quota
read back from the local DynamoDB (moto) to show it was settled exactly."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import boto3
import openai
import pytest

from tests.e2e.local_gateway import running_local_gateway
from tests.quota_table import QuotaTable

pytestmark = pytest.mark.e2e
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def gateway():
    with running_local_gateway() as running:
        yield running


def new_key(gateway) -> dict:
    command = [
        str(Path(sys.executable).with_name("quotagate")),
        "keys",
        "create",
        "--tenant",
        "e2e-responses",
        "--consumer",
        "sdk",
        "--plan",
        "pro",
        "--limits",
        '{"tokens_per_day": 1000000}',
        "--endpoint-url",
        gateway["base"],
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def client_for(gateway, key) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway['base']}/v1", api_key=key["api_key"], max_retries=0)


def tokens_charged(gateway, key) -> int:
    dynamodb = boto3.client(
        "dynamodb",
        endpoint_url=gateway["moto"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    return QuotaTable(dynamodb).usage_of(f"key#{key['key_id']}", "tokens_per_day")


def assert_charged(gateway, key, total_tokens: int) -> None:
    deadline = time.monotonic() + 5  # a stream is settled as its last event goes out
    while tokens_charged(gateway, key) != total_tokens and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tokens_charged(gateway, key) == total_tokens


@pytest.mark.parametrize("model", ["mock-gpt", "mock-claude", "mock-bedrock"])
def test_responses_create_and_stream_settle_exactly(gateway, model):
    key = new_key(gateway)
    client = client_for(gateway, key)
    response = client.responses.create(
        model=model, instructions="Be brief.", input="Name three rivers.", max_output_tokens=8
    )
    assert response.object == "response" and response.store is False and response.output_text
    assert response.usage.output_tokens == 8
    assert_charged(gateway, key, response.usage.total_tokens)

    events = list(client.responses.create(model=model, input="Name three rivers.", max_output_tokens=8, stream=True))
    assert events[0].type == "response.created" and events[-1].type == "response.incomplete"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert streamed and streamed == events[-1].response.output_text
    assert_charged(gateway, key, response.usage.total_tokens + events[-1].response.usage.total_tokens)


@pytest.mark.parametrize("model", ["mock-gpt", "mock-claude", "mock-bedrock"])
def test_a_function_tool_round_trip_streamed_and_not(gateway, model):
    key = new_key(gateway)
    client = client_for(gateway, key)
    question = {"role": "user", "content": "What is the weather in Oslo?"}
    first = client.responses.create(model=model, input=[question], tools=[WEATHER], tool_choice="required")
    call = next(item for item in first.output if item.type == "function_call")
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)

    follow_up = [
        question,
        *[item.model_dump(exclude_none=True) for item in first.output],
        {"type": "function_call_output", "call_id": call.call_id, "output": "Rain, 7 degrees."},
    ]
    with client.responses.stream(model=model, input=follow_up, tools=[WEATHER]) as stream:
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text
    assert [item.type for item in final.output] == ["message"]
    assert_charged(gateway, key, first.usage.total_tokens + final.usage.total_tokens)

    streamed_call = [
        e
        for e in client.responses.create(
            model=model,
            input=[question],
            tools=[WEATHER],
            tool_choice={"type": "function", "name": "get_weather"},
            stream=True,
        )
    ]
    done = next(e for e in streamed_call if e.type == "response.function_call_arguments.done")
    deltas = "".join(e.delta for e in streamed_call if e.type == "response.function_call_arguments.delta")
    assert done.arguments == deltas and "city" in json.loads(done.arguments)


def test_server_side_state_is_refused_before_anything_is_charged(gateway):
    key = new_key(gateway)
    client = client_for(gateway, key)
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="mock-gpt", input="and then?", previous_response_id="resp_abc")
    assert caught.value.param == "previous_response_id" and caught.value.code == "unsupported_parameter"
    assert tokens_charged(gateway, key) == 0
