"""The key-management Lambda that a SaaS backend invokes with IAM (create/list/revoke/rotate keys)."""

from __future__ import annotations

from aws_cdk import Duration

from cdk_app.constructs.data import DataTables
from cdk_app.constructs.function import StackFunction
from cdk_app.context import DeploymentOptions
from quotagate import tables


class KeysFunction(StackFunction):
    DIRECTORY = "keys"
    DESCRIPTION = "Quotagate key management: create, list, revoke, rotate, change plan (IAM invoke)"
    TABLES = (tables.KEYS, tables.IDEMPOTENCY)
    TIMEOUT = Duration.seconds(30)
    MEMORY_SIZE = 512

    def reserved_concurrency(self, options: DeploymentOptions) -> int:
        return options.keys_concurrency

    def grant_tables(self, data: DataTables) -> None:
        # Keys and idempotency records only; an operator tool may list every key, hence Scan.
        data.grant(self.function, tables.KEYS, write=True, scan=True)
        data.grant(self.function, tables.IDEMPOTENCY, write=True)
