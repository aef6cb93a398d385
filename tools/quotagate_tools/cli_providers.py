"""``quotagate providers set-key NAME``: store a provider's API key in its Secrets Manager secret.

The key is read from standard input (never from an argument: those end up in shell history and
process listings) and written to the secret the gateway configuration names for that provider
(``api_key_secret``; ``--config-file`` is the configuration that was deployed, by default the
packaged one), under the name the stack created it with (its output ``ProviderSecretNames``).
The stack created the secret with a placeholder; the proxy picks the key up within
its 5-minute secret cache. Nothing printed ever contains the key.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quotagate.config import DEFAULT_CONFIG_FILE
from quotagate.provider_secrets import STACK_OUTPUT, ProviderKeyError, clean_key
from quotagate_tools.cli_errors import CliError

if TYPE_CHECKING:
    import argparse


def add_parser(commands: Any) -> None:
    providers = commands.add_parser(
        "providers", help="manage model provider API keys", description="Manage model provider API keys."
    )
    actions = providers.add_subparsers(dest="providers_command", required=True, metavar="ACTION")
    set_key = actions.add_parser(
        "set-key", help="store a provider's API key (read from stdin) in its Secrets Manager secret"
    )
    set_key.add_argument("provider", help="provider name in the gateway configuration")
    set_key.add_argument(
        "--config-file",
        type=Path,
        default=DEFAULT_CONFIG_FILE,
        help="the gateway configuration that was deployed (default: the packaged default_config.json)",
    )
    set_key.add_argument(
        "--secret-name",
        help="the secret to write (default: the one the stack created for the provider's api_key_secret)",
    )
    set_key.add_argument(
        "--stack-name",
        default="Quotagate",
        help="the stack whose output ProviderSecretNames maps configured names to created ones",
    )
    set_key.add_argument("--endpoint-url", help="Secrets Manager endpoint (e.g. a local moto server)")
    set_key.add_argument("--region", help="AWS region")


def configured_secret_name(args: argparse.Namespace) -> str:
    from quotagate.config import ConfigError
    from quotagate.config_models import parse_config

    try:
        config = parse_config(json.loads(Path(args.config_file).read_text()))
    except (OSError, ValueError, ConfigError) as error:
        raise CliError("bad_config", f"cannot read {args.config_file}: {error}") from error
    provider = config.providers.get(args.provider)
    if provider is None:
        known = ", ".join(sorted(config.providers))
        raise CliError("unknown_provider", f"unknown provider '{args.provider}' (known: {known})")
    if not provider.api_key_secret:
        raise CliError(
            "no_secret", f"provider '{args.provider}' uses no API key (no api_key_secret in the configuration)"
        )
    return provider.api_key_secret


def created_secret_name(configured: str, args: argparse.Namespace, session: Any, client_args: dict[str, Any]) -> str:
    """The name the stack created ``configured`` under (its output ProviderSecretNames). A local
    endpoint (make dev), or an account without the stack, has the secret under its configured name
    (created by local mode, or by hand)."""
    if args.endpoint_url:
        return configured
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3})
    try:
        cloudformation = session.client("cloudformation", config=config, **client_args)
        stacks = cloudformation.describe_stacks(StackName=args.stack_name)["Stacks"]
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code == "ValidationError" and "does not exist" in str(error):
            return configured
        raise CliError(
            "stack_not_found",
            f"cannot read stack '{args.stack_name}' ({code or 'error'}): deploy it first, pass --stack-name, "
            "or name the secret with --secret-name",
        ) from None
    except BotoCoreError as error:
        raise CliError("stack_not_found", f"cannot read stack '{args.stack_name}' ({type(error).__name__})") from None
    for stack in stacks:
        for output in stack.get("Outputs", []):
            if output.get("OutputKey") == STACK_OUTPUT:
                names = json.loads(output["OutputValue"])
                if configured in names:
                    return str(names[configured])
    raise CliError(
        "secret_not_found",
        f"stack '{args.stack_name}' created no secret for '{configured}' (output {STACK_OUTPUT}): deploy the "
        "configuration that names it, or name the secret with --secret-name",
    )


def secret_name(args: argparse.Namespace, session: Any, client_args: dict[str, Any]) -> str:
    if args.secret_name:
        return str(args.secret_name)
    return created_secret_name(configured_secret_name(args), args, session, client_args)


def set_key(args: argparse.Namespace, stdin: Any) -> dict[str, str]:
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    from quotagate_tools.cli import aws_session

    # A local endpoint (make dev's moto) gets the CLI's local region and dummy credentials.
    session, endpoint = aws_session(args)
    name = secret_name(args, session, endpoint)
    try:
        key = clean_key(stdin.read())
    except ProviderKeyError as error:
        raise CliError("bad_key", str(error)) from None
    config = Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3})
    try:
        client = session.client("secretsmanager", config=config, **endpoint)
        client.put_secret_value(SecretId=name, SecretString=key)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        if code == "ResourceNotFoundException":
            raise CliError(
                "secret_not_found",
                f"secret '{name}' does not exist: deploy the stack first (it creates one secret per "
                "configured provider), or name another with --secret-name",
            ) from None
        # The error's own message may quote the request: only its code is shown.
        raise CliError("put_failed", f"writing secret '{name}' failed ({code or 'error'})") from None
    except BotoCoreError as error:
        raise CliError("put_failed", f"writing secret '{name}' failed ({type(error).__name__})") from None
    return {"provider": args.provider, "secret": name, "status": "set"}


def run(args: argparse.Namespace) -> int:
    try:
        result = set_key(args, sys.stdin)
    except CliError as error:
        print(json.dumps({"error": {"code": error.code, "message": error.message}}), file=sys.stderr)
        return 1
    print(json.dumps(result))
    return 0
