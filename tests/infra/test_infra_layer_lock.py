"""The deps layer installs a lock file: every transitive dependency pinned by version and wheel hash,
in step with pyproject.toml; the layer's asset hash follows the bytes that were built."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from cdk_app import bundling, paths

pytestmark = pytest.mark.infra

LOCK_LINE = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s]+) --hash=sha256:[0-9a-f]{64}$")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    pinned = {}
    for line in paths.DEPS_LOCK_FILE.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        match = LOCK_LINE.fullmatch(line)
        assert match, f"not pinned by version and hash: {line}"
        pinned[_normalize(match.group(1))] = match.group(2)
    return pinned


def _pins(requirements: list[str]) -> dict[str, str]:
    pins = {}
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        pins[_normalize(name.split("[", 1)[0])] = version
    return pins


def test_lock_pins_every_runtime_dependency_of_pyproject_at_its_version():
    project = tomllib.loads((paths.ROOT / "pyproject.toml").read_text())["project"]
    runtime = _pins([r for r in project["dependencies"] if not r.startswith("boto3")])  # the runtime has boto3
    lock = _lock()
    for name, version in runtime.items():
        assert version, f"{name} is not pinned with == in pyproject.toml"
        assert lock.get(name) == version, name
    # requirements.txt (what the lock is made from) says the same as pyproject.toml.
    listed = [ln.split("#", 1)[0].strip() for ln in paths.REQUIREMENTS_FILE.read_text().splitlines()]
    assert _pins([ln for ln in listed if ln]) == runtime


def test_lock_is_transitive(deps_dir_from_synth):
    """Every distribution in the built layer is in the lock (nothing came in unpinned)."""
    lock = _lock()
    installed = {}
    for dist_info in deps_dir_from_synth.glob("*.dist-info"):
        match = re.fullmatch(r"(.+)-([^-]+)\.dist-info", dist_info.name)
        assert match, dist_info.name
        installed[_normalize(match.group(1))] = match.group(2)
    assert installed
    for name, version in installed.items():
        assert lock.get(name) == version, name


def test_the_layer_is_installed_from_the_lock_with_hashes():
    command = bundling.pip_command(Path("/out"), paths.DEPS_LOCK_FILE)
    assert "--no-deps" in command and "--require-hashes" in command
    assert command[-1] == str(paths.DEPS_LOCK_FILE)


def test_the_asset_hash_follows_the_built_content(tmp_path):
    lock = tmp_path / "requirements.lock"
    lock.write_text("pkg==1.0 --hash=sha256:" + "0" * 64 + "\n")

    def installer(content: bytes):
        def install(target: Path, requirements: Path) -> None:
            (target / "pkg").mkdir(parents=True)
            (target / "pkg" / "__init__.py").write_bytes(content)

        return install

    first = bundling.deps_content_hash(lock, tmp_path / "cache-a", installer(b"built once"))
    same = bundling.deps_content_hash(lock, tmp_path / "cache-b", installer(b"built once"))
    other = bundling.deps_content_hash(lock, tmp_path / "cache-c", installer(b"other wheels"))
    assert first == same != other
    assert bundling.deps_hash(lock) == bundling.deps_hash(lock)  # the build cache key stays the lock's


@pytest.fixture(scope="module")
def deps_dir_from_synth(synthesized) -> Path:
    from cdk_app.constructs.layers import DEPS_DESCRIPTION

    return synthesized.layer_dir(DEPS_DESCRIPTION) / "python"


def test_the_layer_asset_follows_the_content_hash(tmp_path, monkeypatch):
    import aws_cdk as cdk
    from aws_cdk.assertions import Template

    from cdk_app.constructs.layers import DEPS_DESCRIPTION, SharedLayers

    def deps_key(content_hash: str) -> str:
        monkeypatch.setattr(bundling, "deps_content_hash", lambda: content_hash)
        app = cdk.App(outdir=str(tmp_path / content_hash[:4]))
        stack = cdk.Stack(app, "Layers")
        SharedLayers(stack, "Layers")
        layers = Template.from_stack(stack).find_resources("AWS::Lambda::LayerVersion")
        (deps,) = [r for r in layers.values() if r["Properties"]["Description"].startswith(DEPS_DESCRIPTION)]
        return str(deps["Properties"]["Content"]["S3Key"])

    assert deps_key("a" * 64) != deps_key("b" * 64)
