"""The ``quotagate keys`` CLI end to end over HTTP: boto3's Lambda Invoke call goes to a small local
emulation of the Invoke API (``POST /2015-03-31/functions/{name}/invocations``) that runs the real
keys handler, whose DynamoDB is a moto server on loopback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from functions.keys import handler
from quotagate import apikeys, aws, config, key_derivation, settings, tables
from quotagate_tools import cli
from tests.helpers import FakeLambdaContext

_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations$")


class InvokeApi(BaseHTTPRequestHandler):
    """Lambda's synchronous Invoke API, as far as boto3's ``invoke`` needs it."""

    calls: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        match = _INVOKE_PATH.match(self.path.split("?")[0])
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        if not match:
            self._send(404, {"message": "not found"}, {"x-amzn-errortype": "ResourceNotFoundException"})
            return
        name = match.group(1)
        authorization = self.headers.get("authorization", "")
        type(self).calls.append({"function": name, "authorization": authorization, "event": json.loads(body)})
        try:
            result = handler.lambda_handler(json.loads(body or b"{}"), FakeLambdaContext(name))
            self._send(200, result, {"x-amz-executed-version": "$LATEST"})
        except Exception as error:  # what Lambda reports for an unhandled function error
            self._send(
                200,
                {"errorMessage": str(error), "errorType": type(error).__name__},
                {"x-amz-function-error": "Unhandled", "x-amz-executed-version": "$LATEST"},
            )

    def _send(self, status: int, document: Any, headers: dict[str, str]) -> None:
        payload = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


@pytest.fixture(scope="module")
def moto_url():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def endpoint(moto_url, monkeypatch):
    """The local Invoke API URL; the handler's DynamoDB is the moto server (fresh tables)."""
    for name in (settings.KEYS_TABLE, settings.IDEMPOTENCY_TABLE, settings.CONFIG_PARAMETER,
                 settings.CONFIG_FILE, cli.FUNCTION_ENV, "AWS_ENDPOINT_URL"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_url)  # the key derivation secret
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    client = boto3.client("dynamodb")
    for name in client.list_tables()["TableNames"]:
        client.delete_table(TableName=name)
    tables.create_all(client)
    key_derivation.create_local_secret(boto3.client("secretsmanager"))
    config.reset_cache()
    handler.reset()
    InvokeApi.calls = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), InvokeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    handler.reset()
    aws.secrets_provider.cache_clear()  # its client is bound to this module's moto server


def run(capsys: Any, *argv: str) -> tuple[int, Any, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out else None), err


def test_create_list_get_update_rotate_revoke_through_the_invoke_api(endpoint, capsys):
    target = ["--endpoint-url", endpoint]
    code, created, err = run(
        capsys, "keys", "create", "--tenant", "acme", "--consumer", "backend", "--plan", "free",
        "--name", "from the CLI", "--limits", '{"tokens_per_day": 1000}', "--allowed-models", "gpt-4o-mini",
        *target,
    )  # fmt: skip
    assert code == 0, err
    assert "api_key" in created
    key_id = created["key_id"]
    assert apikeys.parse_key(created["api_key"]).key_id == key_id
    assert created["limits"] == {"tokens_per_day": 1000} and created["allowed_models"] == ["gpt-4o-mini"]
    # With --endpoint-url and nothing else, the CLI targets the local gateway's function name.
    assert InvokeApi.calls[-1]["function"] == cli.LOCAL_FUNCTION_NAME
    assert InvokeApi.calls[-1]["event"]["request_id"].startswith("cli-")

    code, listed, _ = run(capsys, "keys", "list", "--tenant", "acme", *target)
    assert code == 0 and [k["key_id"] for k in listed["keys"]] == [key_id]
    assert "api_key" not in json.dumps(listed) and "secret_hash" not in json.dumps(listed)

    code, got, _ = run(capsys, "keys", "get", key_id, "--tenant", "acme", *target)
    assert code == 0 and got["name"] == "from the CLI" and "api_key" not in got

    code, updated, _ = run(
        capsys, "keys", "update", key_id, "--plan", "pro", "--limits", '{"usd_per_day": 2}',
        "--status", "disabled", *target,
    )  # fmt: skip
    assert code == 0
    assert (updated["plan"], updated["status"]) == ("pro", "disabled")
    assert updated["limits"] == {"tokens_per_day": 1000, "usd_per_day": 2}

    code, rotated, _ = run(capsys, "keys", "rotate", key_id, "--grace-seconds", "60", *target)
    assert code == 0 and rotated["key_id"] == key_id and rotated["api_key"] != created["api_key"]
    assert rotated["rotation_grace_until"] is not None

    code, revoked, _ = run(capsys, "keys", "revoke", key_id, *target)
    assert code == 0 and revoked["status"] == "revoked"

    code, out, err = run(capsys, "keys", "update", key_id, "--status", "active", *target)
    assert code == 1 and out is None
    assert json.loads(err)["error"]["code"] == "conflict"


def test_a_rerun_with_the_same_request_id_returns_the_same_key(endpoint, capsys):
    argv = ["keys", "create", "--tenant", "acme", "--consumer", "c", "--plan", "free",
            "--request-id", "onboarding-42", "--endpoint-url", endpoint]  # fmt: skip
    code1, first, _ = run(capsys, *argv)
    code2, second, _ = run(capsys, *argv)
    assert code1 == code2 == 0
    assert second["api_key"] == first["api_key"] and second["key_id"] == first["key_id"]
    code, listed, _ = run(capsys, "keys", "list", "--tenant", "acme", "--endpoint-url", endpoint)
    assert code == 0 and len(listed["keys"]) == 1


def test_errors_go_to_stderr_with_a_non_zero_exit(endpoint, capsys):
    code, out, err = run(
        capsys, "keys", "create", "--tenant", "acme", "--consumer", "c", "--plan", "gold",
        "--endpoint-url", endpoint,
    )  # fmt: skip
    assert code == 1 and out is None
    assert json.loads(err)["error"]["code"] == "unknown_plan"
    code, out, err = run(capsys, "keys", "get", "abcdefghijkl", "--endpoint-url", endpoint)
    assert code == 1 and json.loads(err)["error"]["code"] == "not_found"


def test_function_name_from_the_environment(endpoint, capsys, monkeypatch):
    monkeypatch.setenv(cli.FUNCTION_ENV, "Quotagate-KeysHandler-XYZ")
    code, _, _ = run(capsys, "keys", "list", "--tenant", "acme", "--endpoint-url", endpoint)
    assert code == 0 and InvokeApi.calls[-1]["function"] == "Quotagate-KeysHandler-XYZ"


def test_works_without_configured_credentials_or_region(endpoint, capsys, monkeypatch, tmp_path):
    # The handler (same process) creates its clients now, while credentials are still configured.
    run(capsys, "keys", "list", "--tenant", "acme", "--endpoint-url", endpoint)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    code, listed, err = run(capsys, "keys", "list", "--tenant", "acme", "--endpoint-url", endpoint)
    assert code == 0, err
    assert listed == {"keys": []}
    # Signed with the dummy credentials, for the default region.
    assert "/us-east-1/lambda/aws4_request" in InvokeApi.calls[-1]["authorization"]


def test_the_console_script_in_a_subprocess(endpoint, moto_url):
    env = {**os.environ, "AWS_ENDPOINT_URL_DYNAMODB": moto_url}
    completed = subprocess.run(
        [sys.executable, "-m", "quotagate_tools.cli", "keys", "create", "--tenant", "acme", "--consumer", "c",
         "--plan", "pro", "--endpoint-url", endpoint],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert "api_key" in json.loads(completed.stdout)
    failed = subprocess.run(
        [sys.executable, "-m", "quotagate_tools.cli", "keys", "create", "--tenant", "acme", "--consumer", "c",
         "--plan", "nope", "--endpoint-url", endpoint],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert failed.returncode == 1 and failed.stdout == ""
    assert json.loads(failed.stderr)["error"]["code"] == "unknown_plan"
