"""End to end: structured output from real client libraries on every provider type of the dev
configuration (``mock-gpt``: OpenAI-compatible, native ``response_format``; ``mock-claude`` and
``mock-bedrock``: a forced tool call), through ``python -m quotagate_tools.local`` started as a process.

langchain-openai's ``with_structured_output`` (its default method, ``json_schema``) over chat
completions and over the Responses API; the openai SDK's ``chat.completions.parse``; JSON mode
(``response_format: json_object`` with the schema described in the prompt); instructor in its JSON,
TOOLS and JSON_SCHEMA modes over the openai SDK (instructor pins ``jiter<0.15``: openai 3.3.0 is the
newest 3.x that installs beside it), and in TOOLS mode over the anthropic SDK (``/v1/messages``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import anthropic
import instructor
import openai
import pydantic
import pytest
from langchain_openai import ChatOpenAI

from tests.e2e.local_gateway import running_local_gateway

pytestmark = pytest.mark.e2e
MODELS = ["mock-gpt", "mock-claude", "mock-bedrock"]


class Person(pydantic.BaseModel):
    """A person and the languages they wrote."""

    name: str
    born: int
    languages: list[str]


@pytest.fixture(scope="module")
def gateway():
    with running_local_gateway() as running:
        command = [
            str(Path(sys.executable).with_name("quotagate")),
            "keys",
            "create",
            "--tenant",
            "e2e-structured",
            "--consumer",
            "clients",
            "--plan",
            "pro",
            "--endpoint-url",
            running["base"],
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        yield {**running, "api_key": json.loads(done.stdout)["api_key"]}


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("use_responses_api", [False, True])
def test_langchain_with_structured_output_returns_the_object(gateway, model, use_responses_api):
    llm = ChatOpenAI(
        model=model,
        base_url=f"{gateway['base']}/v1",
        api_key=gateway["api_key"],
        max_retries=0,
        use_responses_api=use_responses_api,
    )
    person = llm.with_structured_output(Person).invoke("Who wrote the first program?")
    assert isinstance(person, Person) and person.name and person.languages


@pytest.mark.parametrize("model", MODELS)
def test_openai_sdk_parse_and_json_mode(gateway, model):
    client = openai.OpenAI(base_url=f"{gateway['base']}/v1", api_key=gateway["api_key"], max_retries=0)
    messages = [
        {"role": "system", "content": f"Answer as JSON of this schema: {Person.model_json_schema()}"},
        {"role": "user", "content": "Who wrote the first program?"},
    ]
    parsed = client.chat.completions.parse(model=model, messages=messages, response_format=Person)
    assert isinstance(parsed.choices[0].message.parsed, Person)
    json_mode = client.chat.completions.create(model=model, messages=messages, response_format={"type": "json_object"})
    # JSON mode follows the schema the prompt describes, as a model does (not an empty object).
    person = Person.model_validate_json(json_mode.choices[0].message.content)
    assert person.name and person.languages


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("mode", [instructor.Mode.JSON, instructor.Mode.TOOLS, instructor.Mode.JSON_SCHEMA])
def test_instructor_returns_the_object(gateway, model, mode):
    client = openai.OpenAI(base_url=f"{gateway['base']}/v1", api_key=gateway["api_key"], max_retries=0)
    person = instructor.from_openai(client, mode=mode).chat.completions.create(
        model=model,
        response_model=Person,
        messages=[{"role": "user", "content": "Who wrote the first program?"}],
        max_retries=0,  # one attempt: no re-ask hides a reply that does not fit
    )
    assert isinstance(person, Person) and person.name and person.languages


@pytest.mark.parametrize("model", MODELS)
def test_instructor_over_the_anthropic_sdk_returns_the_object(gateway, model):
    # instructor's TOOLS mode on the anthropic SDK: a forced tool_use on /v1/messages, whatever the target.
    client = anthropic.Anthropic(base_url=gateway["base"], api_key=gateway["api_key"], max_retries=0)
    person = instructor.from_anthropic(client, mode=instructor.Mode.TOOLS).messages.create(
        model=model,
        max_tokens=200,
        response_model=Person,
        messages=[{"role": "user", "content": "Who wrote the first program?"}],
        max_retries=0,
    )
    assert isinstance(person, Person) and person.name and person.languages
