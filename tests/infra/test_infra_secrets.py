"""Provider secrets: created by the stack as placeholders (no value in the template), readable by the
proxy, under a customer-managed KMS key when one is configured."""

from __future__ import annotations

import json

import pytest

from cdk_app import paths
from quotagate.config_models import parse_config
from quotagate.provider_secrets import NONCE_FIELD, PLACEHOLDER_TEMPLATE

pytestmark = pytest.mark.infra

KMS_KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _provider_secrets(synthesized) -> dict[str, dict]:
    return {
        k: s for k, s in synthesized.of_type("AWS::SecretsManager::Secret").items() if k.startswith("ProviderSecrets")
    }


def _configured_secrets() -> set[str]:
    config = parse_config(json.loads(paths.DEFAULT_CONFIG_FILE.read_text()))
    return {p.api_key_secret for p in config.providers.values() if p.api_key_secret}


def test_each_configured_provider_secret_is_created_as_a_placeholder(synthesized):
    secrets = _provider_secrets(synthesized)
    # Each under its configured name plus a suffix unique to the stack (test_infra_deploy_day.py).
    assert {s["Properties"]["Name"]["Fn::Join"][1][0] for s in secrets.values()} == _configured_secrets()
    for secret in secrets.values():
        props = secret["Properties"]
        assert "SecretString" not in props, "a value in the template"
        assert props["GenerateSecretString"]["SecretStringTemplate"] == PLACEHOLDER_TEMPLATE
        assert props["GenerateSecretString"]["GenerateStringKey"] == NONCE_FIELD
        assert "set-key" in props["Description"]
        assert "KmsKeyId" not in props
        # A provider's key, not customer data: no live key left behind by a deleted stack.
        assert secret["DeletionPolicy"] == "Delete"


def test_the_proxy_and_the_cli_find_the_secrets_the_stack_created(synthesized):
    from quotagate import settings
    from quotagate.provider_secrets import STACK_OUTPUT

    _, proxy = synthesized.function("quotagate-proxy")
    names = proxy["Environment"]["Variables"][settings.PROVIDER_SECRET_NAMES]
    output = synthesized.json["Outputs"][STACK_OUTPUT]["Value"]
    assert names == output
    text = json.dumps(names)
    for secret in _provider_secrets(synthesized).values():
        assert json.dumps(secret["Properties"]["Name"]) in text  # the created names, resolved at deploy time
    for configured in _configured_secrets():
        assert configured in text


def test_the_proxy_reads_them_and_nothing_else_does(synthesized):
    def reads_secrets(service: str) -> bool:
        return any(
            "secretsmanager:GetSecretValue" in json.dumps(s["Action"])
            and "quotagate/providers/" in json.dumps(s["Resource"])
            for s in synthesized.statements_of(service)
        )

    assert reads_secrets("quotagate-proxy")
    assert not reads_secrets("quotagate-keys") and not reads_secrets("quotagate-authorizer")
    assert not any("kms:" in json.dumps(s["Action"]) for s in synthesized.statements_of("quotagate-proxy"))


def test_a_customer_managed_key_encrypts_them_and_the_proxy_may_decrypt(tmp_path):
    from aws_cdk.assertions import Template

    from cdk_app.app import build_app
    from tests.infra.conftest import Synthesized

    _, stack = build_app(context={"quotagate:secretsKmsKeyArn": KMS_KEY}, outdir=tmp_path, checks=False)
    template = Template.from_stack(stack).to_json()
    synthesized = Synthesized(None, stack, None, template, tmp_path, 0)
    for secret in _provider_secrets(synthesized).values():
        assert secret["Properties"]["KmsKeyId"] == KMS_KEY
    decrypt = [s for s in synthesized.statements_of("quotagate-proxy") if s["Action"] == "kms:Decrypt"]
    assert len(decrypt) == 1 and decrypt[0]["Resource"] == KMS_KEY
    via = decrypt[0]["Condition"]["StringEquals"]["kms:ViaService"]
    assert "secretsmanager." in json.dumps(via)


def test_readme_tells_how_to_set_provider_keys():
    readme = (paths.ROOT / "docs" / "deploying.md").read_text()
    assert "quotagate providers set-key" in readme and "quotagate:secretsKmsKeyArn" in readme


def test_the_keys_function_derives_keys_from_a_secret_of_the_stack(synthesized):
    from quotagate import settings

    _, keys = synthesized.function("quotagate-keys")
    reference = keys["Environment"]["Variables"][settings.KEY_DERIVATION_SECRET]
    secret = synthesized.resources[reference["Ref"]]
    assert secret["Type"] == "AWS::SecretsManager::Secret"
    assert "SecretString" not in secret["Properties"] and secret["Properties"]["GenerateSecretString"]
    reads = [s for s in synthesized.statements_of("quotagate-keys") if "secretsmanager:GetSecretValue" in s["Action"]]
    assert [s["Resource"] for s in reads] == [reference]
    # Nobody else may read it.
    for service in ("quotagate-proxy", "quotagate-authorizer"):
        assert reference not in [s["Resource"] for s in synthesized.statements_of(service)]
