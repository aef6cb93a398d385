"""``quotagate`` command line: manage API keys through the keys Lambda's Invoke API.

    quotagate keys create --tenant acme --consumer backend --plan pro [--name N] [--expires-at T]
                          [--allowed-models a,b] [--metadata JSON] [--limits JSON] [--request-id ID]
    quotagate keys list --tenant acme [--consumer C]
    quotagate keys get KEY_ID [--tenant T]
    quotagate keys revoke KEY_ID [--tenant T] [--request-id ID]
    quotagate keys rotate KEY_ID [--grace-seconds N] [--tenant T] [--request-id ID]
    quotagate keys update KEY_ID [--plan P] [--allowed-models a,b|*] [--expires-at T|never]
                          [--status active|disabled] [--limits JSON|null] [--name N] [--metadata JSON]
    quotagate providers set-key NAME [--config-file F] [--secret-name S]   (the key on stdin)
    quotagate usage --tenant T [--key K | --consumer C | --model M | --by model|key]
                    [--granularity hour|day|month] [--from DATE] [--to DATE] [--json]
    quotagate tenants create TENANT [--limits JSON] [--request-id ID]
    quotagate tenants get TENANT
    quotagate tenants update TENANT --limits JSON|null [--request-id ID]

Every command takes ``--endpoint-url URL`` (any endpoint that speaks Lambda's Invoke API, such as
the local gateway at ``http://127.0.0.1:<port>``), ``--function-name`` (default: environment
variable QUOTAGATE_KEYS_FUNCTION, else the output ``KeysFunctionName`` of the CloudFormation stack
``Quotagate``; with ``--endpoint-url``: ``quotagate-keys``) and ``--region``.

The result is printed to stdout as JSON (``create`` and ``rotate`` include the plaintext
``api_key``: it is shown this once). Errors go to stderr as JSON, with exit status 1 (2 for usage
errors). Mutating commands send a ``request_id`` (generated when not given), so retries — boto3's
own or a re-run with the same ``--request-id`` — never act twice.
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from typing import Any

from quotagate import settings
from quotagate_tools import cli_providers, cli_usage
from quotagate_tools.cli_errors import CliError

FUNCTION_ENV = "QUOTAGATE_KEYS_FUNCTION"
DEFAULT_STACK = "Quotagate"
STACK_OUTPUT = "KeysFunctionName"
LOCAL_FUNCTION_NAME = "quotagate-keys"  # what the local gateway's Invoke API serves
DEFAULT_LOCAL_REGION = "us-east-1"
_DUMMY_CREDENTIALS = {"aws_access_key_id": "quotagate-local", "aws_secret_access_key": "quotagate-local"}


# ------------------------------------------------------------------------------------------ parsing


def _json_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error.msg}") from error


def _models_arg(text: str) -> list[str] | None:
    """``a,b`` → ["a", "b"]; ``*`` (or empty) → None: every model of the plan."""
    if text.strip() in ("", "*"):
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def _expires_arg(text: str) -> int | str | None:
    """Epoch seconds, an ISO-8601 date-time, or ``never`` (→ null: no expiry)."""
    text = text.strip()
    if text.lower() in ("never", "none", "null"):
        return None
    if text.isdigit():
        return int(text)
    return text


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError("must be an integer") from error
    if value < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    target = common.add_argument_group("target")
    target.add_argument("--endpoint-url", help="Lambda Invoke API endpoint (e.g. the local gateway)")
    target.add_argument(
        "--function-name",
        help=f"keys function (default: ${FUNCTION_ENV}, else the stack output {STACK_OUTPUT})",
    )
    target.add_argument("--region", help="AWS region")
    target.add_argument(
        "--stack-name",
        default=DEFAULT_STACK,
        help=f"stack to read {STACK_OUTPUT} from (default: %(default)s)",
    )

    mutating = argparse.ArgumentParser(add_help=False)
    mutating.add_argument(
        "--request-id", help="idempotency id: a retry with the same id never acts twice (default: generated)"
    )

    scoped = argparse.ArgumentParser(add_help=False)
    scoped.add_argument("--tenant", help="refuse (as not found) a key of another tenant")

    parser = argparse.ArgumentParser(prog="quotagate", description="Quotagate administration.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cli_providers.add_parser(commands)
    keys = commands.add_parser("keys", help="manage API keys", description="Manage API keys.")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    create = actions.add_parser("create", parents=[common, mutating], help="create a key (prints it once)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--consumer", required=True)
    create.add_argument("--plan", required=True)
    create.add_argument("--name")
    create.add_argument("--expires-at", type=_expires_arg, help="epoch seconds or ISO-8601 date-time")
    create.add_argument("--allowed-models", type=_models_arg, help="comma-separated model names")
    create.add_argument("--metadata", type=_json_arg, help="JSON object")
    create.add_argument("--limits", type=_json_arg, help="JSON object, e.g. '{\"tokens_per_day\": 1000}'")

    listing = actions.add_parser("list", parents=[common], help="list a tenant's keys")
    listing.add_argument("--tenant", required=True)
    listing.add_argument("--consumer")

    get = actions.add_parser("get", parents=[common, scoped], help="show one key")
    get.add_argument("key_id")

    revoke = actions.add_parser("revoke", parents=[common, mutating, scoped], help="revoke a key for good")
    revoke.add_argument("key_id")

    rotate = actions.add_parser(
        "rotate", parents=[common, mutating, scoped], help="new secret for a key (prints it once)"
    )
    rotate.add_argument("key_id")
    rotate.add_argument(
        "--grace-seconds", type=_non_negative_int, help="how long the old secret keeps working (default 3600)"
    )

    update = actions.add_parser("update", parents=[common, mutating, scoped], help="change a key")
    update.add_argument("key_id")
    # SUPPRESS: an option not given leaves no attribute, so "not given" and "given as null" differ.
    unset = argparse.SUPPRESS
    update.add_argument("--plan", default=unset)
    update.add_argument(
        "--allowed-models", type=_models_arg, default=unset, help="comma-separated model names; '*': all"
    )
    update.add_argument("--expires-at", type=_expires_arg, default=unset, help="epoch seconds, ISO-8601, or 'never'")
    update.add_argument("--status", choices=["active", "disabled"], default=unset)
    update.add_argument(
        "--limits", type=_json_arg, default=unset, help="JSON object merged into the overrides; null: none"
    )
    update.add_argument("--name", default=unset)
    update.add_argument("--metadata", type=_json_arg, default=unset, help="JSON object (replaces); null: none")

    cli_usage.add_parser(commands, common)

    tenants = commands.add_parser(
        "tenants",
        help="manage tenant records (limits shared by a tenant's keys)",
        description="Manage tenant records: limits shared by every key and JWT of a tenant.",
    )
    tenant_actions = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    tenant_create = tenant_actions.add_parser("create", parents=[common, mutating], help="create a tenant record")
    tenant_create.add_argument("tenant")
    tenant_create.add_argument("--limits", type=_json_arg, help="JSON object, e.g. '{\"usd_per_month\": 100}'")
    tenant_get = tenant_actions.add_parser("get", parents=[common], help="show a tenant record")
    tenant_get.add_argument("tenant")
    tenant_update = tenant_actions.add_parser("update", parents=[common, mutating], help="change a tenant's limits")
    tenant_update.add_argument("tenant")
    tenant_update.add_argument(
        "--limits", type=_json_arg, required=True, help="JSON object merged into the limits; null: none"
    )
    return parser


_UNSET = object()

# command -> (action, the arguments it always sends, the arguments it sends when given (not None))
_EVENTS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "create": (
        "create_key",
        ("tenant", "consumer", "plan"),
        ("name", "expires_at", "allowed_models", "metadata", "limits"),
    ),
    "list": ("list_keys", ("tenant",), ("consumer",)),
    "get": ("get_key", ("key_id",), ("tenant",)),
    "revoke": ("revoke_key", ("key_id",), ("tenant",)),
    "rotate": ("rotate_key", ("key_id",), ("grace_seconds", "tenant")),
    "update": ("update_key", ("key_id",), ("tenant",)),
}
_UPDATE_FIELDS = ("plan", "allowed_models", "expires_at", "status", "limits", "name", "metadata")


_TENANT_EVENTS: dict[str, str] = {"create": "create_tenant", "get": "get_tenant", "update": "update_tenant"}


def _tenant_event(args: argparse.Namespace) -> dict[str, Any]:
    command = args.tenants_command
    event: dict[str, Any] = {"action": _TENANT_EVENTS[command], "tenant": args.tenant}
    if command == "update" or (command == "create" and args.limits is not None):
        event["limits"] = args.limits
    if command in ("create", "update"):
        event["request_id"] = args.request_id or f"cli-{uuid.uuid4()}"
    return event


def build_event(args: argparse.Namespace) -> dict[str, Any]:
    """The keys Lambda event for parsed arguments."""
    if args.command == "tenants":
        return _tenant_event(args)
    if args.command == "usage":
        return cli_usage.event(args)
    command = args.keys_command
    if command not in _EVENTS:  # pragma: no cover - argparse only accepts the commands above
        raise CliError("usage", f"unknown command {command}")
    action, always, when_given = _EVENTS[command]
    event: dict[str, Any] = {"action": action, **{field: getattr(args, field) for field in always}}
    if command == "update":
        # Options that were given are sent (argparse sets no attribute for the others), even when
        # their value is null: "--limits null", "--expires-at never", "--allowed-models '*'".
        for field in _UPDATE_FIELDS:
            value = getattr(args, field, _UNSET)
            if value is not _UNSET:
                event[field] = value
    for field in when_given:
        value = getattr(args, field)
        if value is not None:
            event[field] = value
    if command in ("create", "revoke", "rotate", "update"):
        event["request_id"] = args.request_id or f"cli-{uuid.uuid4()}"
    return event


# ------------------------------------------------------------------------------------------ invoking


def aws_session(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """A boto3 session and the extra client arguments for the target."""
    import boto3

    session = boto3.session.Session(region_name=args.region) if args.region else boto3.session.Session()
    client_args: dict[str, Any] = {}
    if args.endpoint_url:
        client_args["endpoint_url"] = args.endpoint_url
        if session.region_name is None:
            client_args["region_name"] = DEFAULT_LOCAL_REGION
        if _credentials_or_none(session) is None:
            # A local endpoint does not check signatures, but botocore needs something to sign with.
            client_args.update(_DUMMY_CREDENTIALS)
    return session, client_args


def _credentials_or_none(session: Any) -> Any:
    try:
        return session.get_credentials()
    except Exception:  # a broken credential source counts as none configured (local endpoints only)
        return None


def resolve_function_name(args: argparse.Namespace, session: Any, client_args: dict[str, Any]) -> str:
    if args.function_name:
        return str(args.function_name)
    from_env = settings.env(FUNCTION_ENV)
    if from_env:
        return from_env
    if args.endpoint_url:
        return LOCAL_FUNCTION_NAME
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        cloudformation = session.client("cloudformation", **client_args)
        stacks = cloudformation.describe_stacks(StackName=args.stack_name)["Stacks"]
    except (BotoCoreError, ClientError) as error:
        raise CliError(
            "function_not_found",
            f"cannot read stack '{args.stack_name}' ({error}); pass --function-name or set {FUNCTION_ENV}",
        ) from error
    for stack in stacks:
        for output in stack.get("Outputs", []):
            if output.get("OutputKey") == STACK_OUTPUT:
                return str(output["OutputValue"])
    raise CliError(
        "function_not_found",
        f"stack '{args.stack_name}' has no output {STACK_OUTPUT}; pass --function-name or set {FUNCTION_ENV}",
    )


def invoke(args: argparse.Namespace, event: dict[str, Any]) -> dict[str, Any]:
    """Invoke the keys function; returns its response document (``{"ok": ..., ...}``)."""
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    session, client_args = aws_session(args)
    function_name = resolve_function_name(args, session, client_args)
    config = Config(connect_timeout=5, read_timeout=60, retries={"mode": "standard", "max_attempts": 4})
    try:
        client = session.client("lambda", config=config, **client_args)
        response = client.invoke(
            FunctionName=function_name,
            InvocationType="RequestResponse",
            Payload=json.dumps(event).encode(),
        )
        body = response["Payload"].read()
    except (BotoCoreError, ClientError) as error:
        raise CliError("invoke_failed", f"invoking {function_name} failed: {error}") from error
    try:
        document = json.loads(body or b"null")
    except json.JSONDecodeError as error:
        raise CliError("bad_response", f"{function_name} returned a response that is not JSON") from error
    if response.get("FunctionError"):
        message = document.get("errorMessage") if isinstance(document, dict) else None
        raise CliError("function_error", f"{function_name} failed: {message or response['FunctionError']}")
    if not isinstance(document, dict) or "ok" not in document:
        raise CliError("bad_response", f"{function_name} returned an unexpected response")
    return document


# ------------------------------------------------------------------------------------------- main


def _print_error(code: str, message: str) -> None:
    print(json.dumps({"error": {"code": code, "message": message}}), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "providers":
        return cli_providers.run(args)
    try:
        event = build_event(args)
        document = invoke(args, event)
    except CliError as error:
        _print_error(error.code, error.message)
        return 1
    if not document.get("ok"):
        refusal = document.get("error") or {}
        _print_error(str(refusal.get("code", "error")), str(refusal.get("message", "request failed")))
        return 1
    if args.command == "usage" and not args.json:
        print(cli_usage.table(document["result"]))
        return 0
    print(json.dumps(document.get("result"), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
