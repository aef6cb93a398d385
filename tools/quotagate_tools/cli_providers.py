"""``quotagate providers set-key NAME``: store a provider's API key in its Secrets Manager secret.

The key is read from standard input (never from an argument: those end up in shell history and
process listings) and written to the secret the gateway configuration names for that provider
(``api_key_secret``; ``--config-file`` is the configuration that was deployed, by default the
packaged one). The stack created the secret with a placeholder; the proxy picks the key up within
its 5-minute secret cache. Nothing printed ever contains the key.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quotagate.config import DEFAULT_CONFIG_FILE
from quotagate.provider_secrets import ProviderKeyError, clean_key
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
    set_key.add_argument("--secret-name", help="the secret to write (default: the provider's api_key_secret)")
    set_key.add_argument("--endpoint-url", help="Secrets Manager endpoint (e.g. a local moto server)")
    set_key.add_argument("--region", help="AWS region")


def secret_name(args: argparse.Namespace) -> str:
    if args.secret_name:
        return str(args.secret_name)
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


def set_key(args: argparse.Namespace, stdin: Any) -> dict[str, str]:
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    name = secret_name(args)
    try:
        key = clean_key(stdin.read())
    except ProviderKeyError as error:
        raise CliError("bad_key", str(error)) from None
    client_args: dict[str, Any] = {"config": Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 3})}
    if args.endpoint_url:
        client_args["endpoint_url"] = args.endpoint_url
    if args.region:
        client_args["region_name"] = args.region
    try:
        client = boto3.client("secretsmanager", **client_args)
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
