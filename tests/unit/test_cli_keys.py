"""The ``quotagate keys`` CLI: argument parsing, events, function-name resolution, output, exit codes.

AWS is stubbed at the boto3 boundary only (botocore's Stubber on real clients)."""

from __future__ import annotations

import io
import json
from typing import Any

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from quotagate_tools import cli


def parse(*argv: str) -> Any:
    return cli.build_parser().parse_args(list(argv))


def event_for(*argv: str) -> dict[str, Any]:
    return cli.build_event(parse(*argv))


# ------------------------------------------------------------------------------------------- events


def test_create_event_with_every_option():
    event = event_for(
        "keys", "create", "--tenant", "acme", "--consumer", "backend", "--plan", "pro",
        "--name", "CI", "--expires-at", "2027-01-01T00:00:00Z", "--allowed-models", "gpt-4o, gpt-4o-mini",
        "--metadata", '{"team": "ml"}', "--limits", '{"tokens_per_day": 1000}', "--request-id", "req-1",
    )  # fmt: skip
    assert event == {
        "action": "create_key",
        "tenant": "acme",
        "consumer": "backend",
        "plan": "pro",
        "name": "CI",
        "expires_at": "2027-01-01T00:00:00Z",
        "allowed_models": ["gpt-4o", "gpt-4o-mini"],
        "metadata": {"team": "ml"},
        "limits": {"tokens_per_day": 1000},
        "request_id": "req-1",
    }


def test_create_event_minimal_gets_a_generated_request_id():
    first = event_for("keys", "create", "--tenant", "acme", "--consumer", "c", "--plan", "free")
    second = event_for("keys", "create", "--tenant", "acme", "--consumer", "c", "--plan", "free")
    assert set(first) == {"action", "tenant", "consumer", "plan", "request_id"}
    assert first["request_id"].startswith("cli-") and first["request_id"] != second["request_id"]


def test_epoch_expiry_is_sent_as_a_number():
    event = event_for(
        "keys", "create", "--tenant", "a", "--consumer", "c", "--plan", "free", "--expires-at", "1900000000"
    )
    assert event["expires_at"] == 1900000000


def test_read_commands_send_no_request_id():
    assert event_for("keys", "list", "--tenant", "acme") == {"action": "list_keys", "tenant": "acme"}
    assert event_for("keys", "list", "--tenant", "acme", "--consumer", "c") == {
        "action": "list_keys",
        "tenant": "acme",
        "consumer": "c",
    }
    assert event_for("keys", "get", "abcdefghijkl", "--tenant", "acme") == {
        "action": "get_key",
        "key_id": "abcdefghijkl",
        "tenant": "acme",
    }


def test_revoke_and_rotate_events():
    revoke = event_for("keys", "revoke", "abcdefghijkl", "--request-id", "r-1")
    assert revoke == {"action": "revoke_key", "key_id": "abcdefghijkl", "request_id": "r-1"}
    rotate = event_for("keys", "rotate", "abcdefghijkl", "--grace-seconds", "60")
    assert rotate["action"] == "rotate_key" and rotate["grace_seconds"] == 60 and rotate["request_id"]
    assert "grace_seconds" not in event_for("keys", "rotate", "abcdefghijkl")


def test_update_sends_only_the_options_given():
    event = event_for("keys", "update", "abcdefghijkl", "--plan", "pro", "--request-id", "u-1")
    assert event == {"action": "update_key", "key_id": "abcdefghijkl", "plan": "pro", "request_id": "u-1"}


def test_update_can_clear_fields():
    event = event_for(
        "keys", "update", "abcdefghijkl", "--limits", "null", "--expires-at", "never",
        "--allowed-models", "*", "--metadata", "null", "--status", "disabled",
    )  # fmt: skip
    assert event["limits"] is None and event["expires_at"] is None and event["allowed_models"] is None
    assert event["metadata"] is None and event["status"] == "disabled"
    assert "plan" not in event and "name" not in event


def test_update_limits_and_models():
    event = event_for("keys", "update", "abcdefghijkl", "--limits", '{"tokens_per_day": 5}', "--allowed-models", "a,b")
    assert event["limits"] == {"tokens_per_day": 5} and event["allowed_models"] == ["a", "b"]


@pytest.mark.parametrize(
    "argv",
    [
        ["keys"],
        ["keys", "create", "--tenant", "acme"],
        ["keys", "create", "--tenant", "a", "--consumer", "c", "--plan", "p", "--limits", "{not json"],
        ["keys", "update", "abcdefghijkl", "--status", "revoked"],
        ["keys", "rotate", "abcdefghijkl", "--grace-seconds", "-5"],
        ["keys", "rotate", "abcdefghijkl", "--grace-seconds", "soon"],
        ["keys", "frobnicate"],
        [],
    ],
)
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as caught:
        cli.main(argv)
    assert caught.value.code == 2
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------------ function resolution


def test_function_name_precedence(monkeypatch):
    session = boto3.session.Session(region_name="us-east-1")
    monkeypatch.setenv(cli.FUNCTION_ENV, "from-env")
    given = parse("keys", "list", "--tenant", "a", "--function-name", "given")
    assert cli.resolve_function_name(given, session, {}) == "given"
    assert cli.resolve_function_name(parse("keys", "list", "--tenant", "a"), session, {}) == "from-env"
    monkeypatch.delenv(cli.FUNCTION_ENV)
    local = parse("keys", "list", "--tenant", "a", "--endpoint-url", "http://127.0.0.1:9")
    assert cli.resolve_function_name(local, session, {}) == cli.LOCAL_FUNCTION_NAME == "quotagate-keys"


class StubbedSession:
    """A real boto3 session whose clients are stubbed (the boto3 boundary)."""

    def __init__(self) -> None:
        self._session = boto3.session.Session(region_name="us-east-1")
        self.region_name = "us-east-1"
        self.clients: dict[str, Any] = {}
        self.stubbers: dict[str, Stubber] = {}
        self.client_args: dict[str, dict[str, Any]] = {}

    def stub(self, service: str) -> Stubber:
        client = self._session.client(service)
        stubber = Stubber(client)
        self.clients[service] = client
        self.stubbers[service] = stubber
        stubber.activate()
        return stubber

    def client(self, service: str, **kwargs: Any) -> Any:
        self.client_args[service] = kwargs
        return self.clients[service]

    def get_credentials(self) -> Any:
        return self._session.get_credentials()


def describe_stacks_response(outputs: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "Stacks": [
            {
                "StackName": "Quotagate",
                "CreationTime": "2026-01-01T00:00:00Z",
                "StackStatus": "CREATE_COMPLETE",
                "Outputs": outputs,
            }
        ]
    }


def test_function_name_from_the_stack_output(monkeypatch):
    monkeypatch.delenv(cli.FUNCTION_ENV, raising=False)
    session = StubbedSession()
    session.stub("cloudformation").add_response(
        "describe_stacks",
        describe_stacks_response(
            [
                {"OutputKey": "ApiUrl", "OutputValue": "https://x"},
                {"OutputKey": "KeysFunctionName", "OutputValue": "Quotagate-KeysHandler-ABC"},
            ]
        ),
        {"StackName": "Quotagate"},
    )
    name = cli.resolve_function_name(parse("keys", "list", "--tenant", "a"), session, {})
    assert name == "Quotagate-KeysHandler-ABC"
    session.stubbers["cloudformation"].assert_no_pending_responses()


def test_stack_without_the_output_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(cli.FUNCTION_ENV, raising=False)
    session = StubbedSession()
    session.stub("cloudformation").add_response("describe_stacks", describe_stacks_response([]))
    with pytest.raises(cli.CliError) as caught:
        cli.resolve_function_name(parse("keys", "list", "--tenant", "a"), session, {})
    assert caught.value.code == "function_not_found" and "--function-name" in caught.value.message


def test_missing_stack_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(cli.FUNCTION_ENV, raising=False)
    session = StubbedSession()
    session.stub("cloudformation").add_client_error(
        "describe_stacks", "ValidationError", "Stack with id Other does not exist"
    )
    with pytest.raises(cli.CliError) as caught:
        args = parse("keys", "list", "--tenant", "a", "--stack-name", "Other")
        cli.resolve_function_name(args, session, {})
    assert caught.value.code == "function_not_found" and "Other" in caught.value.message


# ------------------------------------------------------------------------------------ main + invoke


def invoke_response(document: Any, function_error: str | None = None) -> dict[str, Any]:
    body = json.dumps(document).encode()
    response: dict[str, Any] = {
        "StatusCode": 200,
        "ExecutedVersion": "$LATEST",
        "Payload": StreamingBody(io.BytesIO(body), len(body)),
    }
    if function_error:
        response["FunctionError"] = function_error
    return response


@pytest.fixture
def lambda_stub(monkeypatch):
    monkeypatch.delenv(cli.FUNCTION_ENV, raising=False)
    session = StubbedSession()
    stubber = session.stub("lambda")
    monkeypatch.setattr(cli, "aws_session", lambda args: (session, {}))
    return stubber


def sent_event(stubber: Stubber) -> dict[str, Any]:
    """Capture the payload of the next invoke."""
    captured: dict[str, Any] = {}
    client = stubber.client

    def grab(params: dict[str, Any], **_: Any) -> None:
        captured["FunctionName"] = params["FunctionName"]
        captured["event"] = json.loads(params["Payload"])

    client.meta.events.register("provide-client-params.lambda.Invoke", grab)
    return captured


def test_create_prints_the_result_with_the_key(lambda_stub, capsys):
    result = {"key_id": "abcdefghijkl", "api_key": "qg_abcdefghijkl_secret", "plan": "free"}
    lambda_stub.add_response("invoke", invoke_response({"ok": True, "result": result}))
    captured = sent_event(lambda_stub)
    argv = ["keys", "create", "--tenant", "acme", "--consumer", "c", "--plan", "free"]
    code = cli.main([*argv, "--function-name", "keys-fn"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert json.loads(out) == result and "api_key" in json.loads(out)
    assert captured["FunctionName"] == "keys-fn"
    assert captured["event"]["action"] == "create_key" and captured["event"]["request_id"].startswith("cli-")


def test_a_refusal_goes_to_stderr_with_exit_1(lambda_stub, capsys):
    refusal = {"ok": False, "error": {"code": "unknown_plan", "message": "unknown plan 'gold'"}}
    lambda_stub.add_response("invoke", invoke_response(refusal))
    code = cli.main(["keys", "create", "--tenant", "a", "--consumer", "c", "--plan", "gold", "--function-name", "f"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert json.loads(err) == {"error": refusal["error"]}


def test_a_function_error_goes_to_stderr_with_exit_1(lambda_stub, capsys):
    lambda_stub.add_response(
        "invoke", invoke_response({"errorMessage": "boom", "errorType": "RuntimeError"}, "Unhandled")
    )
    code = cli.main(["keys", "list", "--tenant", "a", "--function-name", "f"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert json.loads(err)["error"]["code"] == "function_error" and "boom" in err


def test_an_invoke_failure_goes_to_stderr_with_exit_1(lambda_stub, capsys):
    lambda_stub.add_client_error("invoke", "ResourceNotFoundException", "Function not found: f")
    code = cli.main(["keys", "get", "abcdefghijkl", "--function-name", "f"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert json.loads(err)["error"]["code"] == "invoke_failed"


def test_a_response_that_is_not_a_keys_response_is_an_error(lambda_stub, capsys):
    lambda_stub.add_response("invoke", invoke_response(["unexpected"]))
    assert cli.main(["keys", "list", "--tenant", "a", "--function-name", "f"]) == 1
    assert json.loads(capsys.readouterr().err)["error"]["code"] == "bad_response"


# ------------------------------------------------------------------------------------------ session


def test_endpoint_url_uses_dummy_credentials_and_default_region_if_none_configured(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_REGION", "AWS_REGION"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", raising=False)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", raising=False)
    args = parse("keys", "list", "--tenant", "a", "--endpoint-url", "http://127.0.0.1:9")
    _session, client_args = cli.aws_session(args)
    assert client_args["endpoint_url"] == "http://127.0.0.1:9"
    assert client_args["region_name"] == "us-east-1"
    assert client_args["aws_access_key_id"] and client_args["aws_secret_access_key"]


def test_endpoint_url_keeps_configured_credentials_and_region(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    args = parse("keys", "list", "--tenant", "a", "--endpoint-url", "http://127.0.0.1:9", "--region", "eu-west-1")
    session, client_args = cli.aws_session(args)
    assert client_args == {"endpoint_url": "http://127.0.0.1:9"}
    assert session.region_name == "eu-west-1"


def test_without_endpoint_url_nothing_is_overridden(monkeypatch):
    args = parse("keys", "list", "--tenant", "a")
    _session, client_args = cli.aws_session(args)
    assert client_args == {}


def test_tenant_events():
    created = event_for("tenants", "create", "acme", "--limits", '{"usd_per_month": 100}')
    assert created["action"] == "create_tenant" and created["tenant"] == "acme"
    assert created["limits"] == {"usd_per_month": 100} and created["request_id"].startswith("cli-")
    assert event_for("tenants", "get", "acme") == {"action": "get_tenant", "tenant": "acme"}
    updated = event_for("tenants", "update", "acme", "--limits", "null", "--request-id", "r-1")
    assert updated == {"action": "update_tenant", "tenant": "acme", "limits": None, "request_id": "r-1"}
