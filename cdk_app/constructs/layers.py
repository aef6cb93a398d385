"""The two layers every function uses: pinned third-party dependencies and the Quotagate core library.

Both are bundled without Docker (see cdk_app/bundling.py).
"""

from __future__ import annotations

from aws_cdk import AssetHashType
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from cdk_app import bundling, paths
from cdk_app.constructs.function import ARCHITECTURE, RUNTIME

DEPS_DESCRIPTION = "Quotagate third-party runtime dependencies (layers/requirements.txt), arm64 cp313"
CORE_DESCRIPTION = "Quotagate core library (quotagate package, without the local and mock dev tools)"


class SharedLayers(Construct):
    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.deps = lambda_.LayerVersion(
            self,
            "Deps",
            description=DEPS_DESCRIPTION,
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
            code=lambda_.Code.from_asset(
                str(paths.LAYERS_DIR),
                asset_hash=bundling.deps_hash(),
                asset_hash_type=AssetHashType.CUSTOM,
                bundling=bundling.bundling_options(bundling.build_deps_into),
            ),
        )
        self.core = lambda_.LayerVersion(
            self,
            "Core",
            description=CORE_DESCRIPTION,
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
            code=lambda_.Code.from_asset(
                str(paths.CORE_SOURCE_DIR),
                asset_hash=bundling.core_hash(),
                asset_hash_type=AssetHashType.CUSTOM,
                bundling=bundling.bundling_options(bundling.build_core),
            ),
        )

    @property
    def all(self) -> list[lambda_.ILayerVersion]:
        return [self.deps, self.core]
