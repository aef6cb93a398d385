"""Deployment options from CDK context, and that they reach the template."""

from __future__ import annotations

import json

import pytest

from cdk_app import paths
from cdk_app.context import ContextError, DeploymentOptions, jwt_environment
from quotagate import settings

pytestmark = pytest.mark.infra


def test_defaults():
    options = DeploymentOptions.from_context({})
    assert options.identity_sources == ("method.request.header.Authorization", "method.request.header.x-api-key")
    assert options.authorizer_cache_seconds == 300
    assert options.config_file == paths.DEFAULT_CONFIG_FILE
    assert options.jwt_env == {}
    assert options.reserved_concurrency_total == 0  # a fresh account can give none


@pytest.mark.parametrize(
    "value",
    [["Authorization", "x-api-key"], "Authorization,x-api-key", '["Authorization", "x-api-key"]'],
)
def test_identity_sources_accept_lists_and_cli_strings(value):
    options = DeploymentOptions.from_context({"quotagate:identitySources": value})
    assert options.identity_sources == (
        "method.request.header.Authorization",
        "method.request.header.x-api-key",
    )


def test_identity_sources_are_headers():
    """The credential is read only from the identity sources, so each must be a header."""
    options = DeploymentOptions.from_context({"quotagate:identitySources": ["method.request.header.x-api-key"]})
    assert options.identity_sources == ("method.request.header.x-api-key",)
    assert options.identity_source_env == {
        settings.IDENTITY_SOURCES: "x-api-key",
        settings.AUTHORIZER_CACHE_SECONDS: "300",
    }
    for bad in (
        ["method.request.querystring.k"],
        ["context.identity.sourceIp"],
        ["x-api-key", "X-Api-Key"],
        ["bad header"],
    ):
        with pytest.raises(ContextError):
            DeploymentOptions.from_context({"quotagate:identitySources": bad})


@pytest.mark.parametrize("value", [-1, 3601, "soon"])
def test_cache_seconds_are_validated(value):
    with pytest.raises(ContextError):
        DeploymentOptions.from_context({"quotagate:authorizerCacheSeconds": value})


def test_an_identity_source_is_required():
    with pytest.raises(ContextError):
        DeploymentOptions.from_context({"quotagate:identitySources": []})
    with pytest.raises(ContextError):  # without a cache too: the credential is read only from them
        DeploymentOptions.from_context({"quotagate:identitySources": [], "quotagate:authorizerCacheSeconds": "0"})


def test_jwt_environment_only_for_configured_settings():
    assert jwt_environment({}) == {}
    env = jwt_environment(
        {
            "quotagate:jwtIssuer": "https://idp.example.com/",
            "quotagate:jwtAudience": "quotagate",
            "quotagate:jwtJwksUrl": "",
            "quotagate:jwtPublicKeys": {"keys": []},
        }
    )
    assert env == {
        settings.JWT_ISSUER: "https://idp.example.com/",
        settings.JWT_AUDIENCE: "quotagate",
        settings.JWT_PUBLIC_KEYS: '{"keys":[]}',
    }


def test_context_reaches_the_template(tmp_path):
    """A second, nag-free synth with every option set (cheap: the layers are cached)."""
    import aws_cdk as cdk
    from aws_cdk.assertions import Template

    from cdk_app.stack import QuotagateStack

    config_file = tmp_path / "config.json"
    config = json.loads(paths.DEFAULT_CONFIG_FILE.read_text())
    config["default_plan"] = "pro"
    config_file.write_text(json.dumps(config))
    app = cdk.App(
        outdir=str(tmp_path / "out"),
        context={
            "quotagate:configFile": str(config_file),
            "quotagate:identitySources": "x-api-key,Authorization",
            "quotagate:authorizerCacheSeconds": "60",
            "quotagate:jwtIssuer": "https://idp.example.com/",
            "quotagate:jwtAudience": "quotagate",
            "quotagate:jwtJwksUrl": "https://idp.example.com/.well-known/jwks.json",
            "quotagate:jwtTenantClaim": "org_id",
        },
    )
    template = Template.from_stack(QuotagateStack(app, "Quotagate"))
    template.has_resource_properties("AWS::ApiGateway::Authorizer", {"AuthorizerResultTtlInSeconds": 0})
    expected_jwt = {
        settings.JWT_ISSUER: "https://idp.example.com/",
        settings.JWT_AUDIENCE: "quotagate",
        settings.JWT_JWKS_URL: "https://idp.example.com/.well-known/jwks.json",
        settings.JWT_TENANT_CLAIM: "org_id",
    }
    functions = template.find_resources("AWS::Lambda::Function")
    variables = [f["Properties"]["Environment"]["Variables"] for f in functions.values()]
    by_service = {v["POWERTOOLS_SERVICE_NAME"]: v for v in variables}
    for service in ("quotagate-authorizer", "quotagate-proxy"):
        assert expected_jwt.items() <= by_service[service].items(), service
        # The credential headers, the only headers a key is read from; the authorizer's own cache TTL.
        assert by_service[service][settings.IDENTITY_SOURCES] == "x-api-key,Authorization", service
        assert by_service[service][settings.AUTHORIZER_CACHE_SECONDS] == "60", service
    assert not set(expected_jwt) & set(by_service["quotagate-keys"])
    assert settings.IDENTITY_SOURCES not in by_service["quotagate-keys"]
    parameter = next(iter(template.find_resources("AWS::SSM::Parameter").values()))
    assert json.loads(parameter["Properties"]["Value"])["default_plan"] == "pro"


def test_invalid_config_fails_synth(tmp_path):
    import aws_cdk as cdk

    from cdk_app.stack import QuotagateStack
    from quotagate.config import ConfigError

    config = json.loads(paths.DEFAULT_CONFIG_FILE.read_text())
    config["default_plan"] = "platinum"
    (tmp_path / "bad.json").write_text(json.dumps(config))
    app = cdk.App(outdir=str(tmp_path / "out"), context={"quotagate:configFile": str(tmp_path / "bad.json")})
    with pytest.raises(ConfigError, match="platinum"):
        QuotagateStack(app, "Quotagate")
