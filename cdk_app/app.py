"""CDK entry point: ``python -m cdk_app.app`` (or ``cdk synth``) writes cdk.out/Quotagate.template.json.

cdk-nag's AwsSolutions pack runs on every synthesis; an unacknowledged finding fails it.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from aws_cdk import App

from cdk_app import nag, paths
from cdk_app.stack import STACK_NAME, QuotagateStack

if TYPE_CHECKING:
    from pathlib import Path


def app_context(context: dict[str, Any] | None = None) -> dict[str, Any]:
    """cdk.json's context (the feature flags ``cdk init`` writes, and any quotagate: settings) under
    ``context``: run directly, the app builds what ``cdk synth`` builds (the CLI passes the same
    context itself; App merges both)."""
    defaults: dict[str, Any] = json.loads(paths.CDK_JSON.read_text()).get("context", {})
    return {**defaults, **(context or {})}


def build_app(
    *, context: dict[str, Any] | None = None, outdir: str | Path | None = None, checks: bool = True
) -> tuple[App, QuotagateStack]:
    """The app with the Quotagate stack and (``checks``) the nag checks, not yet synthesized."""
    app = App(context=app_context(context), outdir=str(outdir) if outdir is not None else None)
    stack = QuotagateStack(
        app,
        STACK_NAME,
        description="Quotagate: serverless, token-aware AI API gateway",
    )
    if checks:
        nag.add_checks(app)
    return app, stack


def main() -> None:
    # The CDK CLI passes its output directory in CDK_OUTDIR; run directly, the app writes ./cdk.out.
    outdir = os.environ.get("CDK_OUTDIR") or str(paths.DEFAULT_OUTDIR)
    app, _ = build_app(outdir=outdir)
    app.synth()


if __name__ == "__main__":
    main()
