"""cdk-nag (3.x) wiring: the AwsSolutions pack runs on every synth; findings are acknowledged one by one.

cdk-nag 3 is a CDK policy-validation plugin: any finding that is not acknowledged makes
``app.synth()`` (and so ``cdk synth``/``cdk deploy`` and ``Template.from_stack``) fail. An
acknowledgment names one finding (``AwsSolutions-IAM5[Resource::*]`` rather than the whole rule)
on the narrowest construct that produces it, and carries the reason it is acceptable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import Acknowledgment, App, Validations
from cdk_nag import AwsSolutionsChecks

if TYPE_CHECKING:
    from constructs import IConstruct

MIN_REASON_LENGTH = 30


def add_checks(app: App) -> None:
    """Run the AwsSolutions pack on every synthesis of ``app``."""
    Validations.of(app).add_plugins(AwsSolutionsChecks(app))


def acknowledge(scope: IConstruct, finding: str, reason: str) -> None:
    """Acknowledge one finding on ``scope`` (and the resources under it) with a real reason."""
    if len(reason.strip()) < MIN_REASON_LENGTH:
        raise ValueError(f"acknowledging {finding} needs a real reason, got {reason!r}")
    Validations.of(scope).acknowledge(Acknowledgment(id=f"AwsSolutions::{finding}", reason=reason))


XRAY_REASON = (
    "X-Ray tracing (Tracing.ACTIVE): xray:PutTraceSegments and xray:PutTelemetryRecords do not "
    "support resource-level permissions, so the only possible resource is '*'."
)
RUNTIME_REASON = (
    "Python 3.13 is pinned on purpose: the deps layer is built from cp313 manylinux aarch64 wheels "
    "and every function must run the same interpreter as that layer; the runtime is upgraded "
    "together with the layer build (cdk_app/bundling.py PYTHON_VERSION)."
)


def acknowledge_function_baseline(scope: IConstruct) -> None:
    """Findings every Quotagate function has by design (X-Ray wildcard, pinned runtime)."""
    acknowledge(scope, "AwsSolutions-IAM5[Resource::*]", XRAY_REASON)
    acknowledge(scope, "AwsSolutions-L1", RUNTIME_REASON)
