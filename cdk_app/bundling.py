"""Docker-free bundling of the two Lambda layers.

Both layers are built with CDK *local* bundling (``ILocalBundling``): CDK calls ``try_bundle`` and,
because it always succeeds, never starts the (dummy) Docker image.

* deps layer: ``pip install --target --no-deps --require-hashes`` of ``layers/requirements.lock``
  (every transitive dependency pinned by version and wheel hash; ``make lock`` regenerates it) with
  explicit platform tags for CPython 3.13 on arm64 (manylinux wheels only, never a source build).
  The result is cached under ``.build/`` keyed by a hash of the lock and of the install recipe, so
  repeated synths (the infrastructure tests) copy a finished directory instead of reinstalling; the
  layer's asset hash is the hash of that built directory's content (:func:`deps_content_hash`), so
  a rebuild that produced other bytes uploads a new layer version. The AWS SDK that
  aws-xray-sdk drags in (botocore) is removed again: the Lambda runtime provides it.
* core layer: a copy of ``layers/core/quotagate`` without byte-code caches. The directory holds only
  what the functions run; the developer tools (local gateway, mock server, CLI) live in
  ``tools/quotagate_tools``, outside the layer.

Each layer's asset hash is computed here (custom hash) from exactly what goes into it, so an
unchanged layer keeps its hash and CDK skips re-bundling when the asset is already staged.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aws_cdk as cdk
import jsii

from cdk_app import paths

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

PYTHON_VERSION = "3.13"
IMPLEMENTATION = "cp"
# Several tags on purpose: with manylinux2014 alone pip silently picks older wheels (tiktoken 0.11).
PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
# Distributions the Lambda Python runtime already ships (boto3 and the SDK under it). aws-xray-sdk
# depends on botocore, so pip installs it; shipping a second, larger copy would only cost cold start.
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")
CORE_PACKAGE = "quotagate"
# Bump when the recipe below changes in a way the hashed inputs do not capture.
RECIPE_VERSION = "2"
_COMPLETE_MARKER = ".complete"
_CONTENT_HASH = ".content-sha256"
# Never used: local bundling always succeeds, but CDK's BundlingOptions requires an image.
UNUSED_IMAGE = cdk.DockerImage.from_registry("quotagate/local-bundling-only")


def pip_arguments() -> list[str]:
    """The platform-selecting part of the pip command (also part of the cache key)."""
    args = [
        "--only-binary=:all:",
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        IMPLEMENTATION,
    ]
    for platform in PLATFORMS:
        args += ["--platform", platform]
    # Byte-code compiled by the build machine's Python would be ignored by the 3.13 runtime.
    args.append("--no-compile")
    return args


def pip_command(target: Path, requirements: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--target",
        str(target),
        *pip_arguments(),
        # The lock lists every distribution with its wheel's hash: install exactly those.
        "--no-deps",
        "--require-hashes",
        "-r",
        str(requirements),
    ]


def deps_hash(requirements: Path = paths.DEPS_LOCK_FILE) -> str:
    """The build cache key: the lock and the recipe."""
    digest = hashlib.sha256()
    for part in (RECIPE_VERSION, requirements.read_text(), *pip_arguments(), *RUNTIME_PROVIDED):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def _normalize(name: str) -> str:
    return name.lower().replace("-", "_").replace(".", "_")


def remove_distribution(site_dir: Path, name: str) -> bool:
    """Delete an installed distribution (every file its RECORD lists). Returns False if absent."""
    wanted = _normalize(name)
    removed = False
    for dist_info in site_dir.glob("*.dist-info"):
        if _normalize(dist_info.name[: -len(".dist-info")].rsplit("-", 1)[0]) != wanted:
            continue
        record = dist_info / "RECORD"
        touched_dirs: set[Path] = set()
        if record.exists():
            with record.open(newline="") as handle:
                for row in csv.reader(handle):
                    if not row:
                        continue
                    path = (site_dir / row[0]).resolve()
                    if site_dir.resolve() not in path.parents or not path.is_file():
                        continue
                    path.unlink()
                    touched_dirs.add(path.parent)
        for directory in sorted(touched_dirs, key=lambda p: len(p.parts), reverse=True):
            _remove_empty_dirs(directory, stop=site_dir.resolve())
        shutil.rmtree(dist_info, ignore_errors=True)
        removed = True
    return removed


def _remove_empty_dirs(directory: Path, stop: Path) -> None:
    while directory != stop and stop in directory.parents:
        pycache = directory / "__pycache__"
        if pycache.is_dir():
            shutil.rmtree(pycache)
        try:
            directory.rmdir()
        except OSError:
            return
        directory = directory.parent


def _run_pip(target: Path, requirements: Path) -> None:
    result = subprocess.run(pip_command(target, requirements), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"pip could not build the deps layer (exit {result.returncode}):\n{result.stderr[-4000:]}")


def build_deps(
    requirements: Path = paths.DEPS_LOCK_FILE,
    cache_root: Path = paths.BUILD_DIR / "deps-layer",
    installer: Callable[[Path, Path], None] = _run_pip,
) -> Path:
    """A directory holding ``python/`` with the installed dependencies, built once per hash.

    Safe against concurrent builds: each build happens in a private temporary directory that is
    renamed into place atomically; the loser of a race discards its copy.
    """
    final = cache_root / deps_hash(requirements)
    if (final / _COMPLETE_MARKER).exists():
        return final
    cache_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{final.name[:12]}-", suffix=".tmp", dir=cache_root))
    try:
        site_dir = work / "python"
        installer(site_dir, requirements)
        for name in RUNTIME_PROVIDED:
            remove_distribution(site_dir, name)
        shutil.rmtree(site_dir / "bin", ignore_errors=True)  # console scripts with a build-host shebang
        for pycache in list(site_dir.rglob("__pycache__")):
            shutil.rmtree(pycache, ignore_errors=True)
        (work / _COMPLETE_MARKER).write_text(requirements.read_text())
        try:
            os.rename(work, final)
        except OSError:
            if not (final / _COMPLETE_MARKER).exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final


def tree_hash(root: Path) -> str:
    """sha256 over every file under ``root`` (relative path and bytes), in sorted order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update((os.readlink(path).encode() if path.is_symlink() else path.read_bytes()) + b"\0")
    return digest.hexdigest()


def deps_content_hash(
    requirements: Path = paths.DEPS_LOCK_FILE,
    cache_root: Path = paths.BUILD_DIR / "deps-layer",
    installer: Callable[[Path, Path], None] = _run_pip,
) -> str:
    """The deps layer's asset hash: the content of the built layer (built first if needed; the
    hash is computed once per build and kept next to it)."""
    built = build_deps(requirements, cache_root, installer)
    stored = built / _CONTENT_HASH
    if stored.exists():
        return stored.read_text().strip()
    value = tree_hash(built / "python")
    stored.write_text(value)
    return value


def _byte_code(directory: str, names: list[str]) -> set[str]:
    """``shutil.copytree`` ignore function: byte-code caches, which the build host's Python wrote."""
    return {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))}


def core_files(source: Path = paths.CORE_SOURCE_DIR / CORE_PACKAGE) -> Iterator[Path]:
    """Files of the core package that go into the layer (relative to ``source``), sorted."""
    found: list[Path] = []
    for directory, dirnames, filenames in os.walk(source):
        ignored = _byte_code(directory, [*dirnames, *filenames])
        dirnames[:] = sorted(d for d in dirnames if d not in ignored)
        found += [Path(directory, f).relative_to(source) for f in filenames if f not in ignored]
    return iter(sorted(found))


def core_hash(source: Path = paths.CORE_SOURCE_DIR / CORE_PACKAGE) -> str:
    digest = hashlib.sha256(RECIPE_VERSION.encode())
    for relative in core_files(source):
        digest.update(relative.as_posix().encode() + b"\0")
        digest.update((source / relative).read_bytes() + b"\0")
    return digest.hexdigest()


def build_core(output_dir: Path, source: Path = paths.CORE_SOURCE_DIR / CORE_PACKAGE) -> None:
    shutil.copytree(source, output_dir / "python" / CORE_PACKAGE, ignore=_byte_code, dirs_exist_ok=True)


def build_deps_into(output_dir: Path) -> None:
    shutil.copytree(build_deps() / "python", output_dir / "python", symlinks=True, dirs_exist_ok=True)


@jsii.implements(cdk.ILocalBundling)
class LocalBundler:
    """Runs a Python build function in place of Docker bundling."""

    def __init__(self, build: Callable[[Path], None]) -> None:
        self._build = build

    def try_bundle(self, output_dir: str, *, image: cdk.DockerImage, **options: Any) -> bool:
        self._build(Path(output_dir))
        return True


def bundling_options(build: Callable[[Path], None]) -> cdk.BundlingOptions:
    return cdk.BundlingOptions(image=UNUSED_IMAGE, local=LocalBundler(build))
