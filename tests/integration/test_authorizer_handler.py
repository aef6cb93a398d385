"""The authorizer handler with API Gateway REST REQUEST-authorizer events, against moto DynamoDB."""

from __future__ import annotations

import copy
import io
import json
import time
import uuid

import boto3
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from moto import mock_aws

from functions.authorizer import handler
from quotagate import apikeys, settings, tables
from quotagate.dal.keys_store import DynamoKeyStore, KeyRecord
from quotagate.logic.exceptions import AuthUnavailable
from tests.helpers import FakeLambdaContext

REGION = "eu-west-1"
ACCOUNT = "123456789012"
API_ID = "a1b2c3d4e5"
STAGE = "prod"
WILDCARD = f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/{STAGE}/*/*"
ISSUER = "https://idp.example.com/"
AUDIENCE = "quotagate-api"


def context() -> FakeLambdaContext:
    return FakeLambdaContext("quotagate-authorizer")


def request_event(
    headers: dict[str, str] | None = None,
    method: str = "POST",
    path: str = "/v1/chat/completions",
    resource: str = "/v1/{proxy+}",
    multi: dict[str, list[str]] | None = None,
) -> dict:
    """An event shaped the way API Gateway sends it to a REST REQUEST authorizer."""
    headers = dict(headers or {})
    base = {
        "Host": f"{API_ID}.execute-api.{REGION}.amazonaws.com",
        "User-Agent": "OpenAI/Python 1.0",
        "Content-Type": "application/json",
        "X-Forwarded-For": "203.0.113.7",
        "X-Forwarded-Port": "443",
        "X-Forwarded-Proto": "https",
        "X-Amzn-Trace-Id": "Root=1-67890abc-0123456789abcdef01234567",
    }
    all_headers = {**base, **headers}
    multi_headers = {name: [value] for name, value in all_headers.items()}
    if multi:
        multi_headers.update(multi)
    request_id = str(uuid.uuid4())
    return {
        "type": "REQUEST",
        "methodArn": f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/{STAGE}/{method}{path}",
        "resource": resource,
        "path": path,
        "httpMethod": method,
        "headers": all_headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": {"api-version": "1"},
        "multiValueQueryStringParameters": {"api-version": ["1"]},
        "pathParameters": {"proxy": path.removeprefix("/v1/")},
        "stageVariables": None,
        "requestContext": {
            "resourceId": "abc123",
            "resourcePath": resource,
            "httpMethod": method,
            "extendedRequestId": "Xyz123AbCdEFg=",
            "requestTime": "21/Nov/2026:10:00:00 +0000",
            "path": f"/{STAGE}{path}",
            "accountId": ACCOUNT,
            "protocol": "HTTP/1.1",
            "stage": STAGE,
            "domainPrefix": API_ID,
            "requestTimeEpoch": int(time.time() * 1000),
            "requestId": request_id,
            "identity": {
                "cognitoIdentityPoolId": None,
                "accountId": None,
                "cognitoIdentityId": None,
                "caller": None,
                "sourceIp": "203.0.113.7",
                "principalOrgId": None,
                "accessKey": None,
                "cognitoAuthenticationType": None,
                "cognitoAuthenticationProvider": None,
                "userArn": None,
                "userAgent": "OpenAI/Python 1.0",
                "user": None,
            },
            "domainName": f"{API_ID}.execute-api.{REGION}.amazonaws.com",
            "apiId": API_ID,
        },
    }


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def aws(monkeypatch, rsa_key):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    for name in (settings.JWT_JWKS_URL, settings.JWT_TENANT_CLAIM, settings.JWT_CONSUMER_CLAIM):
        monkeypatch.delenv(name, raising=False)
    jwk = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    jwk.update(kid="idp-1", use="sig", alg="RS256")
    monkeypatch.setenv(settings.JWT_ISSUER, ISSUER)
    monkeypatch.setenv(settings.JWT_AUDIENCE, AUDIENCE)
    monkeypatch.setenv(settings.JWT_PUBLIC_KEYS, json.dumps({"keys": [jwk]}))
    monkeypatch.delenv(settings.IDENTITY_SOURCES, raising=False)  # the default: Authorization
    with mock_aws():
        tables.create_all(boto3.client("dynamodb", region_name=REGION))
        handler.reset()
        yield DynamoKeyStore()
    handler.reset()


@pytest.fixture
def x_api_key(monkeypatch):
    """The authorizer deployed with identity sources ["x-api-key"]."""
    monkeypatch.setenv(settings.IDENTITY_SOURCES, "x-api-key")


def issue(store: DynamoKeyStore, **overrides) -> apikeys.ParsedKey:
    key = apikeys.new_key()
    fields = {
        "key_id": key.key_id,
        "tenant": "acme",
        "consumer": "svc-billing",
        "plan": "pro",
        "secret_hash": apikeys.hash_key(key.plaintext),
        "created_at": int(time.time()),
    }
    fields.update(overrides)
    store.put_new(KeyRecord(**fields))
    return key


def statement(response: dict) -> dict:
    document = response["policyDocument"]
    assert document["Version"] == "2012-10-17"
    assert len(document["Statement"]) == 1
    return document["Statement"][0]


# --- 401 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer "}, {"Authorization": "Basic dXNlcjpwdw=="}, {"x-api-key": ""}],
)
def test_missing_credential_raises_unauthorized(aws, headers):
    with pytest.raises(Exception, match=r"^Unauthorized$") as info:
        handler.lambda_handler(request_event(headers), context())
    assert type(info.value) is Exception
    assert str(info.value) == "Unauthorized"


def test_null_headers_raise_unauthorized(aws):
    event = request_event()
    event["headers"] = None
    event["multiValueHeaders"] = None
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        handler.lambda_handler(event, context())


@pytest.mark.parametrize(
    ("sources", "headers"),
    [
        # Identity confusion (issue 7): a key outside the identity sources is never read, and a
        # malformed identity source never falls through to another header.
        ("Authorization", {"Authorization": "Bearer", "x-api-key": "{key}"}),
        ("Authorization", {"Authorization": "Basic Zm9vOmJhcg==", "x-api-key": "{key}"}),
        ("Authorization", {"x-api-key": "{key}"}),
        ("Authorization", {"Authorization": "{key}"}),
        ("x-api-key", {"Authorization": "Bearer {key}"}),
        ("x-api-key", {"x-api-key": "Bearer {key}", "Authorization": "Bearer {key}"}),
        ("x-api-key", {"x-api-key": "", "Authorization": "Bearer {key}"}),
        # Two credential headers holding different credentials: neither is chosen.
        ("x-api-key,Authorization", {"x-api-key": "{key}", "Authorization": "Bearer garbage"}),
        ("Authorization,x-api-key", {"x-api-key": "garbage", "Authorization": "Bearer {key}"}),
    ],
)
def test_only_identity_sources_carry_the_credential(aws, monkeypatch, sources, headers):
    monkeypatch.setenv(settings.IDENTITY_SOURCES, sources)
    key = issue(aws)
    event = request_event({name: value.format(key=key.plaintext) for name, value in headers.items()})
    with pytest.raises(Exception, match=r"^Unauthorized$"):
        handler.lambda_handler(event, context())


@pytest.mark.parametrize(
    ("sources", "headers"),
    [
        ("Authorization", {"Authorization": "Bearer {key}", "x-api-key": "garbage"}),
        ("x-api-key", {"x-api-key": "{key}", "Authorization": "Basic Zm9vOmJhcg=="}),
        ("x-api-key,Authorization", {"x-api-key": "{key}", "Authorization": "Bearer {key}"}),
    ],
)
def test_the_identity_source_decides(aws, monkeypatch, sources, headers):
    monkeypatch.setenv(settings.IDENTITY_SOURCES, sources)
    key = issue(aws)
    event = request_event({name: value.format(key=key.plaintext) for name, value in headers.items()})
    response = handler.lambda_handler(event, context())
    assert statement(response)["Effect"] == "Allow"
    assert response["context"]["key_id"] == key.key_id


# --- Deny (API Gateway answers 401 invalid_api_key) ------------------------------------------------


@pytest.mark.parametrize("status", ["revoked", "disabled"])
def test_inactive_key_gets_deny_for_whole_api(aws, status):
    key = issue(aws, status=status)
    response = handler.lambda_handler(request_event({"Authorization": f"Bearer {key.plaintext}"}), context())
    assert statement(response) == {"Action": "execute-api:Invoke", "Effect": "Deny", "Resource": WILDCARD}
    assert "context" not in response


@pytest.mark.parametrize(
    "credential",
    [
        "sk-not-ours",
        "qg_aaaaaaaaaaaa_" + "A" * 46,  # bad checksum
        apikeys.new_key().plaintext,  # unknown key id
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",  # alg none
    ],
)
def test_bad_credentials_get_deny(aws, x_api_key, credential):
    response = handler.lambda_handler(request_event({"x-api-key": credential}), context())
    assert statement(response)["Effect"] == "Deny"
    assert statement(response)["Resource"] == WILDCARD


def test_expired_key_and_wrong_secret_get_deny(aws):
    expired = issue(aws, expires_at=int(time.time()) - 1)
    valid = issue(aws)
    wrong = apikeys.new_key(valid.key_id)
    for credential in (expired.plaintext, wrong.plaintext):
        response = handler.lambda_handler(request_event({"Authorization": f"Bearer {credential}"}), context())
        assert statement(response)["Effect"] == "Deny"


def test_two_different_credentials_are_not_silently_resolved(aws, x_api_key):
    first, second = issue(aws), issue(aws)
    event = request_event(
        {"x-api-key": second.plaintext},
        multi={"x-api-key": [first.plaintext, second.plaintext]},
    )
    with pytest.raises(Exception, match=r"^Unauthorized$"):  # two values are not one credential
        handler.lambda_handler(event, context())


# --- allow --------------------------------------------------------------------------------------


def test_valid_key_allows_whole_api_with_string_context(aws):
    key = issue(aws)
    response = handler.lambda_handler(request_event({"Authorization": f"Bearer {key.plaintext}"}), context())
    assert response["principalId"] == key.key_id
    assert statement(response) == {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": WILDCARD}
    assert response["context"] == {
        "tenant": "acme",
        "consumer": "svc-billing",
        "key_id": key.key_id,
        "plan": "pro",
        "auth_type": "api_key",
        # Names the secret checked (so a rotation can revoke it): neither the stored hash nor the key.
        "secret_fingerprint": apikeys.secret_fingerprint(apikeys.hash_key(key.plaintext)),
    }
    assert apikeys.hash_key(key.plaintext) not in json.dumps(response)
    assert all(isinstance(value, str) for value in response["context"].values())


@pytest.mark.parametrize(
    ("name", "template"),
    [
        ("authorization", "Bearer {}"),
        ("AUTHORIZATION", "bearer {}"),
        ("x-api-key", "{}"),
        ("X-Api-Key", "{}"),
    ],
)
def test_header_names_are_case_insensitive(aws, monkeypatch, name, template):
    monkeypatch.setenv(settings.IDENTITY_SOURCES, "Authorization" if "{}" != template else "x-api-key")
    key = issue(aws)
    response = handler.lambda_handler(request_event({name: template.format(key.plaintext)}), context())
    assert statement(response)["Effect"] == "Allow"


def test_multi_value_headers_only(aws, x_api_key):
    key = issue(aws)
    event = request_event()
    event["headers"] = None
    event["multiValueHeaders"]["x-api-key"] = [key.plaintext]
    assert statement(handler.lambda_handler(event, context()))["Effect"] == "Allow"


def test_same_policy_for_every_route(aws):
    """The cached policy is reused for every method: it must not name the first method ARN."""
    key = issue(aws)
    headers = {"Authorization": f"Bearer {key.plaintext}"}
    resources = {
        statement(handler.lambda_handler(request_event(headers, method, path), context()))["Resource"]
        for method, path in (
            ("POST", "/v1/chat/completions"),
            ("GET", "/v1/models"),
            ("POST", "/v1/embeddings"),
        )
    }
    assert resources == {WILDCARD}


def test_rotated_key_within_grace_is_allowed(aws, x_api_key):
    old = apikeys.new_key()
    new = apikeys.new_key(old.key_id)
    now = int(time.time())
    aws.put_new(
        KeyRecord(
            key_id=old.key_id,
            tenant="acme",
            consumer="svc",
            plan="free",
            secret_hash=apikeys.hash_key(new.plaintext),
            created_at=now,
            previous_secret_hash=apikeys.hash_key(old.plaintext),
            previous_valid_until=now + 3600,
        )
    )
    for credential in (old.plaintext, new.plaintext):
        response = handler.lambda_handler(request_event({"x-api-key": credential}), context())
        assert statement(response)["Effect"] == "Allow"


def test_jwt_from_the_idp_is_allowed(aws, rsa_key):
    now = int(time.time())
    token = jwt.encode(
        {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "user-9",
            "tenant_id": "globex",
            "exp": now + 300,
            "iat": now,
        },
        rsa_key,
        algorithm="RS256",
        headers={"kid": "idp-1"},
    )
    response = handler.lambda_handler(request_event({"Authorization": f"Bearer {token}"}), context())
    assert statement(response) == {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": WILDCARD}
    assert response["context"] == {
        "tenant": "globex",
        "consumer": "user-9",
        "key_id": "jwt:globex:user-9",
        "plan": "free",
        "auth_type": "jwt",
        "expires_at": str(now + 300 + 30),  # exp plus the verifier's leeway
    }


def test_jwt_without_tenant_gets_deny(aws, rsa_key):
    now = int(time.time())
    token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-9", "exp": now + 300},
        rsa_key,
        algorithm="RS256",
        headers={"kid": "idp-1"},
    )
    response = handler.lambda_handler(request_event({"Authorization": f"Bearer {token}"}), context())
    assert statement(response)["Effect"] == "Deny"


# --- failures, logging, ARNs --------------------------------------------------------------------


def test_store_failure_is_an_error_not_a_cached_deny(aws, x_api_key):
    key = issue(aws)
    boto3.client("dynamodb", region_name=REGION).delete_table(TableName=tables.KEYS.name())
    with pytest.raises(AuthUnavailable):
        handler.lambda_handler(request_event({"x-api-key": key.plaintext}), context())


def test_credentials_never_logged(aws, monkeypatch, rsa_key):
    stream = io.StringIO()
    monkeypatch.setattr(handler.logger.registered_handler, "stream", stream)
    level = handler.logger.log_level
    handler.logger.setLevel("DEBUG")
    try:
        _exercise_every_path(aws, rsa_key, stream)
    finally:
        handler.logger.setLevel(level)


def _exercise_every_path(aws, rsa_key, stream: io.StringIO) -> None:
    valid, revoked = issue(aws), issue(aws, status="revoked")
    wrong = apikeys.new_key(valid.key_id)
    now = int(time.time())
    token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "tenant_id": "t", "exp": now + 300},
        rsa_key,
        algorithm="RS256",
        headers={"kid": "idp-1"},
    )
    credentials = [valid.plaintext, revoked.plaintext, wrong.plaintext, token]
    for credential in credentials:
        handler.lambda_handler(request_event({"Authorization": f"Bearer {credential}"}), context())
    logged = stream.getvalue()
    assert "access allowed" in logged
    assert valid.key_id in logged  # key ids are logged ...
    assert "key_revoked" in logged  # ... and reasons
    for credential in credentials:
        assert credential not in logged
        assert credential[-20:] not in logged
    assert apikeys.hash_key(valid.plaintext) not in logged


def test_api_wide_resource():
    assert handler.api_wide_resource(f"arn:aws:execute-api:{REGION}:{ACCOUNT}:{API_ID}/{STAGE}/GET/") == WILDCARD
    assert (
        handler.api_wide_resource("arn:aws-cn:execute-api:cn-north-1:123456789012:abc/dev/POST/v1/a/b/c")
        == "arn:aws-cn:execute-api:cn-north-1:123456789012:abc/dev/*/*"
    )
    for bad in ("", "arn:aws:lambda:eu-west-1:1:function:x", "arn:aws:execute-api:r:a:apionly"):
        with pytest.raises(ValueError):
            handler.api_wide_resource(bad)


def test_store_and_verifier_are_created_lazily(aws, x_api_key):
    handler.reset()
    assert handler._authenticator is None
    handler.lambda_handler(copy.deepcopy(request_event({"x-api-key": "garbage"})), context())
    assert handler._authenticator is not None
