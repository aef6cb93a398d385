"""The gateway configuration (plans, models, prices, providers) as an SSM parameter.

The JSON comes from layers/core/quotagate/default_config.json, or from the file named by the
context key ``quotagate:configFile``. It is validated here with the pydantic models
(``quotagate.config_models``: every field typed, unknown fields refused), so a broken configuration
fails the synth instead of the first request — and the proxy, which builds its configuration from
this parameter without importing pydantic (cold start), only ever reads a validated document.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from aws_cdk import Annotations
from aws_cdk import aws_iam as iam
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from cdk_app.context import SECRETS_PREFIX
from quotagate.config_models import parse_config

if TYPE_CHECKING:
    from pathlib import Path

ADVANCED_TIER_MAX_BYTES = 8192


class GatewayConfigParameter(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, config_file: Path) -> None:
        super().__init__(scope, construct_id)
        raw = json.loads(config_file.read_text())
        parsed = parse_config(raw)  # raises ConfigError naming the bad field
        self.config = parsed
        text = json.dumps(raw, separators=(",", ":"))
        size = len(text.encode())
        if size > ADVANCED_TIER_MAX_BYTES:
            raise ValueError(f"{config_file}: {size} bytes is more than an SSM parameter can hold (8 KB)")
        self.parameter = ssm.StringParameter(
            self,
            "Parameter",
            description="Quotagate gateway configuration (JSON): plans, models, prices, providers",
            string_value=text,
            # Standard while it fits in 4 KB, Advanced above; a parameter can never go back from
            # Advanced to Standard, which Intelligent-Tiering handles (a fixed tier would fail the update).
            tier=ssm.ParameterTier.INTELLIGENT_TIERING,
        )
        for provider in parsed.providers.values():
            secret = provider.api_key_secret
            if secret and not secret.startswith(SECRETS_PREFIX):
                Annotations.of(self).add_warning_v2(
                    "quotagate:secretOutsidePrefix",
                    f"provider '{provider.name}' reads secret '{secret}', but the proxy may only read "
                    f"secrets named {SECRETS_PREFIX}*",
                )

    @property
    def parameter_name(self) -> str:
        return self.parameter.parameter_name

    def grant_read(self, grantee: iam.IGrantable) -> None:
        self.parameter.grant_read(grantee)
