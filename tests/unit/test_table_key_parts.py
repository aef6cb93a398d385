"""Tenant, consumer, key and model values from any source (JWT claims, the keys API) never spell
another item's table key (issue 18, item 5): a JWT whose tenant was ``li#key#<K>`` added its requests
to key K's usage of tenant ``li``, and a tenant ``x#s1`` would have been shard 1 of tenant ``x``."""

from __future__ import annotations

import pytest

from quotagate.quota.windows import WindowScope, scope_pk
from quotagate.usage import rollup
from quotagate.usage.period_close import closed_pk
from tests.integration.test_usage_rollup import settled


def written_pks(event) -> set[str]:
    actions = rollup.UsageRollup(client=None, publisher=None, table_name="usage").actions(event)
    return {next(iter(a.values()))["Key" if "Update" in a else "Item"]["pk"]["S"] for a in actions}


def test_a_tenant_that_spells_another_tenants_key_writes_only_its_own_counters():
    honest = written_pks(settled("r1", tenant="li", key_id="K"))
    forged = written_pks(settled("r2", tenant="li#key#K", key_id="jwt:li%23key%23K:sub"))
    assert honest & forged == set()


def usage_pks(tenant: str, key: str, model: str) -> set[str]:
    return {rollup.tenant_pk(tenant), rollup.key_pk(tenant, key), rollup.model_pk(tenant, model)}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("li#key#K", "k", "m"), ("li", "K", "m")),
        (("li#model#m", "k", "m"), ("li", "K", "m")),
        (("li#model#x", "K", "m"), ("li", "K", "x#key#K")),
        (("a%23b", "k", "m"), ("a#b", "k", "m")),
    ],
)
def test_usage_keys_of_different_tenants_never_meet(first, second):
    assert usage_pks(*first) & usage_pks(*second) == set()


@pytest.mark.parametrize("tenant", ["x#s1", "x#s2"])
def test_a_tenant_never_spells_a_shard_of_another_tenants_window(tenant):
    shard = tenant[-1]
    assert scope_pk(WindowScope.TENANT, tenant) != f"{scope_pk(WindowScope.TENANT, 'x')}#s{shard}"
    assert scope_pk(WindowScope.TENANT, "x%23s1") != scope_pk(WindowScope.TENANT, "x#s1")


def test_period_close_markers_of_different_tenants_differ():
    assert closed_pk("a#b") != closed_pk("a%23b")
    assert closed_pk("acme") == "closed#acme", "ordinary tenants keep their keys"
    assert rollup.key_pk("acme", "k1") == "tenant#acme#key#k1"
