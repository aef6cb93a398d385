import boto3
import pytest

from quotagate import tables
from quotagate_tools.local.motoserver import reset_moto_server, start_moto_server
from quotagate_tools.local.ttl import sweep_expired


@pytest.fixture
def dynamodb(monkeypatch):
    url, stop = start_moto_server()
    reset_moto_server(url)  # moto's state is per process: another test's tables may be there
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    client = boto3.client("dynamodb")
    tables.create_all(client)
    yield client
    stop()


def test_expired_items_are_swept_and_live_ones_kept(dynamodb):
    table = tables.QUOTA.name()
    for pk, expires in (("old", 100), ("live", 10_000), ("no-ttl", None)):
        item = {"pk": {"S": pk}, "sk": {"S": "x"}}
        if expires is not None:
            item["expires_at"] = {"N": str(expires)}
        dynamodb.put_item(TableName=table, Item=item)
    assert sweep_expired(dynamodb, now=1_000) == 1
    left = sorted(i["pk"]["S"] for i in dynamodb.scan(TableName=table)["Items"])
    assert left == ["live", "no-ttl"]
