"""Where the stack can be deployed, checked at synthesis (when the region is known) and at deploy time.

* The Lambda Web Adapter layer is AWS's (account 753240598075) in the ``aws`` partition: the China
  and GovCloud partitions are refused (a copy of the layer can be named with
  ``quotagate:webAdapterLayerArn``, but the stack is only checked for the ``aws`` partition).
* ``AWS::Lambda::Url`` does not exist in the regions of :data:`NO_FUNCTION_URL` (cfn-lint E3006):
  there the proxy's function URL must be switched off (``-c quotagate:functionUrl=false``).
* ``AWS::Pipes::Pipe`` (the usage pipeline) does not exist in the regions of :data:`NO_PIPES`
  (cfn-lint E3006): the stack is not offered there.
"""

from __future__ import annotations

# Commercial (aws partition) regions the template is linted for (tests/infra/test_infra_lint.py).
COMMERCIAL_REGIONS = (
    "us-east-1",
    "us-east-2",
    "us-west-1",
    "us-west-2",
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-south-1",
    "ap-south-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
)
# Regions of the aws partition without AWS::Lambda::Url (cn-northwest-1 and GovCloud lack it too,
# but they are refused anyway).
NO_FUNCTION_URL = (
    "me-central-1",
    "il-central-1",
    "eu-central-2",
    "ca-west-1",
    "mx-central-1",
    "ap-south-2",
    "ap-east-2",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
)
# Regions without EventBridge Pipes (the usage pipeline's stream-to-bus link), per cfn-lint's spec.
NO_PIPES = (
    "ap-east-2",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-west-1",
    "il-central-1",
    "mx-central-1",
)
# Regions where AWS's release pipeline for the Lambda Web Adapter (awslabs/aws-lambda-web-adapter,
# .github/workflows/prod.json) began publishing the arm64 layer only in November 2025 (the other
# supported regions have it since 2022/2023). Layer version numbers count per region, and nothing here
# can look one up: the version this stack names (proxy_function.WEB_ADAPTER_LAYER_ARN) is unverified there.
WEB_ADAPTER_ARM64_LATE = ("ap-south-2", "eu-central-2", "eu-south-2", "me-central-1")
FUNCTION_URL_REGIONS = tuple(r for r in COMMERCIAL_REGIONS if r not in NO_FUNCTION_URL and r not in NO_PIPES)


class RegionError(ValueError):
    pass


def supported_regions(function_url: bool) -> tuple[str, ...]:
    return FUNCTION_URL_REGIONS if function_url else tuple(r for r in COMMERCIAL_REGIONS if r not in NO_PIPES)


def check_region(region: str, *, function_url: bool) -> None:
    """Raise RegionError saying what to do if the stack cannot be deployed to ``region``."""
    if region in supported_regions(function_url):
        return
    if region in NO_FUNCTION_URL:
        raise RegionError(
            f"Lambda function URLs (AWS::Lambda::Url) do not exist in {region}: deploy with "
            "-c quotagate:functionUrl=false (the REST API still serves every client)"
        )
    if region in NO_PIPES:
        raise RegionError(
            f"EventBridge Pipes (AWS::Pipes::Pipe), which carry the usage events, do not exist in {region}: "
            "Quotagate cannot be deployed there yet"
        )
    raise RegionError(
        f"Quotagate cannot be deployed to {region!r}: it runs in the commercial AWS regions only "
        f"(the Lambda Web Adapter layer is published in the aws partition): {', '.join(COMMERCIAL_REGIONS)}"
    )


def web_adapter_warning(region: str, layer_arn: str | None) -> str | None:
    """What to check before deploying to ``region`` with AWS's Web Adapter layer (None: nothing known)."""
    if layer_arn or region not in WEB_ADAPTER_ARM64_LATE:
        return None
    return (
        f"The Lambda Web Adapter arm64 layer has been published in {region} only since November 2025 and its "
        "version numbers count per region: check that the version the stack names exists there (aws lambda "
        "get-layer-version-by-arn), or name the one that does with -c quotagate:webAdapterLayerArn=..."
    )
