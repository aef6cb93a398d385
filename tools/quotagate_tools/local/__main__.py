"""``python -m quotagate_tools.local`` (what ``make dev`` runs): the whole gateway on loopback.

moto (served one request at a time, like DynamoDB's per-item atomicity) stands in for AWS, the
mock model server is the default upstream, and an API Gateway emulator runs the real authorizer
and proxy. No AWS account and no internet are needed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from quotagate import settings
from quotagate.identity_sources import DEFAULT_IDENTITY_SOURCES

DEV_CONFIG = Path(__file__).with_name("dev_config.json")
KEYS_FUNCTION_NAMES = ("quotagate-keys", "Quotagate-keys", "keys")


def _isolate_from_aws(endpoint_url: str) -> None:
    # Dummy credentials and moto's endpoint for every AWS SDK call made by this process.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        os.environ.pop(name, None)
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint_url,
        }
    )
    # moto answers one request at a time, far slower than DynamoDB under a burst (settings.py).
    os.environ.setdefault("QG_QUOTA_TIME_SCALE", "10")


def provider_secrets_from_env() -> None:
    """Validates the configuration file (a bad one stops the start-up, naming the field). Real providers
    are used locally when their keys are given: QG_SECRET_<NAME> becomes the
    Secrets Manager secret of that name in moto (e.g. QG_SECRET_QUOTAGATE_PROVIDERS_OPENAI).
    Several providers may share one secret: each secret is written once; one that already exists
    (a restart against the same moto) gets the new value."""
    import boto3

    from quotagate.config_models import load_validated_config

    client = boto3.client("secretsmanager")
    names = {p.api_key_secret for p in load_validated_config(force=True).providers.values() if p.api_key_secret}
    for name in sorted(names):
        env_name = "QG_SECRET_" + "".join(c if c.isalnum() else "_" for c in name).upper()
        value = settings.env(env_name)
        if not value:
            continue
        try:
            client.create_secret(Name=name, SecretString=value)
        except client.exceptions.ResourceExistsException:
            client.put_secret_value(SecretId=name, SecretString=value)


def build_app(identity_sources: tuple[str, ...], cache_seconds: float):
    from functions.authorizer.handler import lambda_handler as authorizer
    from functions.keys.handler import lambda_handler as keys_handler
    from functions.proxy.app import create_app
    from quotagate.identity_sources import (
        EDGE_AUTHORIZER,
        authorizer_cache_environment,
        identity_source_environment,
    )
    from quotagate_tools.local.apigateway import LocalApiGateway

    # As the stack does: the authorizer and the proxy learn the credential headers, the authorizer how
    # long it keeps an answer per credential; API Gateway (emulated) is set up as EDGE_AUTHORIZER says.
    os.environ.update(identity_source_environment(identity_sources))
    os.environ.update(authorizer_cache_environment(cache_seconds))
    return LocalApiGateway(
        create_app(),
        authorizer,
        keys_handler,
        list(EDGE_AUTHORIZER.identity_sources),
        EDGE_AUTHORIZER.result_cache_seconds,
        KEYS_FUNCTION_NAMES,
        credential_headers=list(identity_sources),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quotagate_tools.local", description=__doc__)
    parser.add_argument("--port", type=int, default=int(settings.env("PORT", "8080") or "8080"))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--token-delay", type=float, default=None, help="seconds per token streamed by the mock model server"
    )
    parser.add_argument(
        "--authorizer-cache-seconds",
        type=float,
        default=settings.DEFAULT_AUTHORIZER_CACHE_SECONDS,
        help="how long the authorizer keeps its answer for a credential",
    )
    parser.add_argument(
        "--identity-sources",
        default=",".join(DEFAULT_IDENTITY_SOURCES),
        help="comma-separated credential headers, the only headers a key is read from "
        "(default: 'Authorization: Bearer <key>' or 'x-api-key: <key>')",
    )
    parser.add_argument("--demo-plan", default="free")
    args = parser.parse_args(argv)
    from quotagate.identity_sources import IdentitySourceError, parse_identity_sources

    try:
        identity_sources = parse_identity_sources(args.identity_sources)
    except IdentitySourceError as error:
        parser.error(str(error))
    if not identity_sources:
        parser.error("--identity-sources needs a header: the key is read only from identity sources")

    from quotagate_tools.local.motoserver import start_moto_process

    # moto in a process of its own: its work never holds the interpreter lock the proxy needs.
    moto_url, _stop_moto, moto_stdin = start_moto_process()
    _isolate_from_aws(moto_url)
    os.environ.setdefault("QG_CONFIG_FILE", str(DEV_CONFIG))
    # The proxy's EMF metric lines (the same as CloudWatch receives) are printed for every request;
    # POWERTOOLS_METRICS_DISABLED=true silences them.
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "false")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    from quotagate_tools.local import background

    # Before this process starts a thread (the usage pipeline, settlements, reaper, TTL sweep).
    forked_background = background.fork(close_in_child=(moto_stdin,))

    from quotagate_tools.mock.server import run_in_thread
    from quotagate_tools.mock.settings import MockSettings

    mock_settings = MockSettings() if args.token_delay is None else MockSettings(token_delay=args.token_delay)
    mock_url, _stop_mock = run_in_thread(mock_settings)
    os.environ["QG_MOCK_BASE_URL"] = mock_url.rstrip("/")

    import boto3

    from quotagate import key_derivation, tables
    from quotagate_tools.local import settlements

    tables.create_all(boto3.client("dynamodb"))
    key_derivation.create_local_secret(boto3.client("secretsmanager"))
    # The settlement retry queue (its consumer Lambda and the reaper's schedule in AWS).
    queue_url = settlements.create_queue(boto3.client("sqs"))
    os.environ[settings.SETTLEMENT_QUEUE_URL] = queue_url
    provider_secrets_from_env()
    # The usage pipeline, the settlement consumer, the reaper and the TTL sweep: in a process of
    # their own, so their work never holds this process's interpreter lock (issue 21).
    forked_background.start(queue_url)

    from functions.keys.handler import lambda_handler as keys_handler
    from quotagate_tools.local.apigateway import FakeLambdaContext

    created = keys_handler(
        {
            "action": "create_key",
            "tenant": "demo",
            "consumer": "demo-user",
            "plan": args.demo_plan,
            "name": "make dev demo key",
        },
        FakeLambdaContext("keys"),
    )
    if not created.get("ok"):
        print(f"could not create the demo key: {created}", file=sys.stderr)
        return 1
    demo_key = created["result"]["api_key"]

    app = build_app(identity_sources, args.authorizer_cache_seconds)
    base = f"http://{args.host}:{args.port}"
    print(f"Quotagate local gateway on {base} (moto at {moto_url}, mock models at {mock_url})")
    print(f"OPENAI_BASE_URL={base}/v1")
    print(f"OPENAI_API_KEY={demo_key}")
    print(f"Keys API (Lambda Invoke emulation): quotagate keys list --tenant demo --endpoint-url {base}")
    print(f"Usage (a few seconds after a request): quotagate usage --tenant demo --endpoint-url {base}")
    first_source = identity_sources[0]
    key_header = (
        "Authorization: Bearer $OPENAI_API_KEY"
        if first_source.lower() == "authorization"
        else f"{first_source}: $OPENAI_API_KEY"
    )  # the only header the key is read from
    print(
        f"""Try: curl -N {base}/v1/chat/completions -H "{key_header}" \\
  -H 'content-type: application/json' \\
  -d '{{"model": "mock-gpt", "stream": true, "messages": [{{"role": "user", "content": "hi"}}]}}'""",
        flush=True,
    )

    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_keep_alive=75)
    return 0


if __name__ == "__main__":
    sys.exit(main())
