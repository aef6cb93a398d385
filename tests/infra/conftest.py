"""One synthesized Quotagate stack, shared by every infrastructure test of the session.

The synth runs the real app (``cdk_app.app.build_app``) with cdk-nag's AwsSolutions pack on, so
the fixture existing at all proves the stack passes the pack. Layer bundling reuses the pip cache
under .build/, so only the first synth on a machine installs anything.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pathlib import Path

os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")


@dataclass(frozen=True)
class Synthesized:
    app: Any
    stack: Any
    template: Any  # aws_cdk.assertions.Template
    json: dict[str, Any]
    outdir: Path
    seconds: float

    @property
    def resources(self) -> dict[str, dict[str, Any]]:
        return self.json["Resources"]

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {k: r for k, r in self.resources.items() if r["Type"] == resource_type}

    def function(self, service: str) -> tuple[str, dict[str, Any]]:
        """(logical id, properties) of the function whose POWERTOOLS_SERVICE_NAME is ``service``."""
        for logical_id, resource in self.of_type("AWS::Lambda::Function").items():
            variables = resource["Properties"].get("Environment", {}).get("Variables", {})
            if variables.get("POWERTOOLS_SERVICE_NAME") == service:
                return logical_id, resource["Properties"]
        raise AssertionError(f"no function for service {service}")

    def statements_of(self, service: str) -> list[dict[str, Any]]:
        """Every IAM statement attached to the role of a function (inline and managed-by-ref)."""
        _, props = self.function(service)
        role_id = props["Role"]["Fn::GetAtt"][0]
        role = self.resources[role_id]["Properties"]
        assert not role.get("ManagedPolicyArns"), f"{service} role has managed policies"
        statements = [s for p in role.get("Policies", []) for s in p["PolicyDocument"]["Statement"]]
        for policy in self.of_type("AWS::IAM::Policy").values():
            if {"Ref": role_id} in policy["Properties"].get("Roles", []):
                statements += policy["Properties"]["PolicyDocument"]["Statement"]
        return statements

    def asset_dir(self, s3_key: str) -> Path:
        return self.outdir / f"asset.{s3_key.removesuffix('.zip')}"

    def layer_dir(self, description_prefix: str) -> Path:
        for layer in self.of_type("AWS::Lambda::LayerVersion").values():
            if layer["Properties"].get("Description", "").startswith(description_prefix):
                return self.asset_dir(layer["Properties"]["Content"]["S3Key"])
        raise AssertionError(f"no layer described as {description_prefix!r}")


@pytest.fixture(scope="session")
def synthesized(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    from aws_cdk.assertions import Template

    from cdk_app.app import build_app

    outdir = tmp_path_factory.mktemp("cdk.out")
    start = time.perf_counter()
    app, stack = build_app(outdir=outdir)
    template = Template.from_stack(stack)  # synthesizes the app: cdk-nag validation runs here
    seconds = time.perf_counter() - start
    return Synthesized(app, stack, template, template.to_json(), outdir, seconds)


@pytest.fixture(scope="session")
def template(synthesized: Synthesized) -> Any:
    return synthesized.template
