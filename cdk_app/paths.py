"""Locations in the repository that the CDK app reads from or writes to."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FUNCTIONS_DIR = ROOT / "functions"
LAYERS_DIR = ROOT / "layers"
CORE_SOURCE_DIR = LAYERS_DIR / "core"
REQUIREMENTS_FILE = LAYERS_DIR / "requirements.txt"
# What the deps layer installs: requirements.txt resolved for the Lambda platform, with hashes.
DEPS_LOCK_FILE = LAYERS_DIR / "requirements.lock"
DEFAULT_CONFIG_FILE = CORE_SOURCE_DIR / "quotagate" / "default_config.json"
# Cache for things that are expensive to rebuild (the pip install of the deps layer).
BUILD_DIR = ROOT / ".build"
DEFAULT_OUTDIR = ROOT / "cdk.out"
CDK_JSON = ROOT / "cdk.json"
