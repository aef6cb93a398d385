"""DynamoDB tables built from quotagate.tables, and the configuration parameter."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from cdk_app import paths
from quotagate import tables

if TYPE_CHECKING:
    from quotagate.tables import TableSpec

pytestmark = pytest.mark.infra


def _table(synthesized, spec: TableSpec) -> dict:
    prefix = f"Data{spec.logical_id}"
    matches = {k: r for k, r in synthesized.of_type("AWS::DynamoDB::Table").items() if k.startswith(prefix)}
    assert len(matches) == 1, spec.logical_id
    return next(iter(matches.values()))


def test_one_table_per_spec(template):
    template.resource_count_is("AWS::DynamoDB::Table", len(tables.ALL_TABLES))


@pytest.mark.parametrize("spec", tables.ALL_TABLES, ids=lambda s: s.logical_id)
def test_table_matches_its_spec(synthesized, spec):
    table = _table(synthesized, spec)
    props = table["Properties"]
    # The CDK definition must be the one local mode and the tests create (tables.create_table_request).
    request = tables.create_table_request(spec)
    assert props["KeySchema"] == request["KeySchema"]
    assert sorted(props["AttributeDefinitions"], key=lambda a: a["AttributeName"]) == request["AttributeDefinitions"]
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props.get("GlobalSecondaryIndexes", []) == request.get("GlobalSecondaryIndexes", [])
    if spec.ttl_attribute:
        assert props["TimeToLiveSpecification"] == {"AttributeName": spec.ttl_attribute, "Enabled": True}
    else:
        assert "TimeToLiveSpecification" not in props


def test_keys_table_survives_stack_deletion(synthesized):
    table = _table(synthesized, tables.KEYS)
    assert table["DeletionPolicy"] == "Retain"
    assert table["UpdateReplacePolicy"] == "Retain"


def test_config_parameter_holds_the_default_config(synthesized):
    parameters = synthesized.of_type("AWS::SSM::Parameter")
    assert len(parameters) == 1
    props = next(iter(parameters.values()))["Properties"]
    assert props["Type"] == "String"
    assert json.loads(props["Value"]) == json.loads(paths.DEFAULT_CONFIG_FILE.read_text())


def test_the_quota_table_has_the_sparse_reserved_index_for_the_reaper(template):
    template.has_resource_properties(
        "AWS::DynamoDB::Table",
        {
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            "GlobalSecondaryIndexes": [
                {
                    "IndexName": "reserved",
                    "KeySchema": [
                        {"AttributeName": "reserved_shard", "KeyType": "HASH"},
                        {"AttributeName": "reserved_at", "KeyType": "RANGE"},
                    ],
                    "Projection": {"ProjectionType": "INCLUDE", "NonKeyAttributes": ["charges"]},
                }
            ],
        },
    )
