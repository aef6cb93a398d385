"""The two layers every function uses: pinned third-party dependencies and the Quotagate core library.

Both are bundled without Docker (see cdk_app/bundling.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import AssetHashType
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from cdk_app import bundling, paths
from cdk_app.constructs.function import ARCHITECTURE, RUNTIME

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

DEPS_DESCRIPTION = "Quotagate third-party runtime dependencies (layers/requirements.lock), arm64 cp313"
CORE_DESCRIPTION = "Quotagate core library (the quotagate package)"


class SharedLayers(Construct):
    def __init__(self, scope: Construct, construct_id: str) -> None:
        super().__init__(scope, construct_id)
        self.deps = self._layer(
            "Deps", DEPS_DESCRIPTION, paths.LAYERS_DIR, bundling.deps_content_hash(), bundling.build_deps_into
        )
        self.core = self._layer(
            "Core", CORE_DESCRIPTION, paths.CORE_SOURCE_DIR, bundling.core_hash(), bundling.build_core
        )

    def _layer(
        self, layer_id: str, description: str, source: Path, asset_hash: str, build: Callable[[Path], None]
    ) -> lambda_.LayerVersion:
        """A layer for the functions' runtime and architecture: ``build`` bundles ``source`` (the asset
        is rebuilt when ``asset_hash`` changes)."""
        return lambda_.LayerVersion(
            self,
            layer_id,
            description=description,
            compatible_runtimes=[RUNTIME],
            compatible_architectures=[ARCHITECTURE],
            code=lambda_.Code.from_asset(
                str(source),
                asset_hash=asset_hash,
                asset_hash_type=AssetHashType.CUSTOM,
                bundling=bundling.bundling_options(build),
            ),
        )

    @property
    def all(self) -> list[lambda_.ILayerVersion]:
        return [self.deps, self.core]
