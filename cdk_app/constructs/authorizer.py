"""The Lambda REQUEST authorizer: gateway API keys and customer IdP JWTs -> identity context."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import Duration

from cdk_app.constructs.function import StackFunction
from quotagate import tables

if TYPE_CHECKING:
    from cdk_app.constructs.data import DataTables
    from cdk_app.context import DeploymentOptions


class AuthorizerFunction(StackFunction):
    DIRECTORY = "authorizer"
    DESCRIPTION = "Quotagate REQUEST authorizer: API keys and IdP JWTs to an identity context"
    TABLES = (tables.KEYS,)
    JWT = True
    TIMEOUT = Duration.seconds(10)
    # More memory is more CPU: signature checks and cold starts sit on every uncached request.
    MEMORY_SIZE = 512

    def reserved_concurrency(self, options: DeploymentOptions) -> int:
        # Its own share: a burst of long streams in the proxy cannot starve authentication.
        return options.authorizer_concurrency

    def grant_tables(self, data: DataTables) -> None:
        data.grant(self.function, tables.KEYS)  # read only
