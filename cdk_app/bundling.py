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
* core layer: a copy of ``layers/core/quotagate`` without the build host's byte-code caches. The
  directory holds only what the functions run; the developer tools (local gateway, mock server, CLI)
  live in ``tools/quotagate_tools``, outside the layer.

Both layers carry byte-code for the runtime's CPython 3.13 when the build machine has one
(:func:`bytecode_python`). Lambda mounts layers read-only, so a layer without byte-code is compiled
from source at every cold start: compiling the modules one proxy cold start imports took 0.66 s of
CPU for the 265 third-party ones and 0.24 s for the gateway's 66 on the benchmark machine. The
byte-code is ``unchecked-hash`` (never compared with the source's timestamps, which zipping does not
keep) and names the files as the runtime sees them (``/opt/python/...``); without a CPython 3.13 the
layers are built without it and a warning says so.

Each layer's asset hash is computed here (custom hash) from exactly what goes into it, so an
unchanged layer keeps its hash and CDK skips re-bundling when the asset is already staged.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
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
RECIPE_VERSION = "3"
# Where Lambda mounts a layer's python/ directory (the paths the byte-code names).
LAYER_PYTHON_PATH = "/opt/python"
# A CPython of PYTHON_VERSION to compile the layers' byte-code with, when python3.13 on PATH is not one.
BYTECODE_PYTHON_VARIABLE = "QG_BYTECODE_PYTHON"
BYTECODE_TIMEOUT_SECONDS = 600
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


def _python_version(executable: str) -> str | None:
    try:
        done = subprocess.run(
            [executable, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.cache
def bytecode_python() -> str | None:
    """A CPython of the runtime's version to compile byte-code with: ``$QG_BYTECODE_PYTHON``, else
    ``python3.13`` on PATH, else a pyenv install; None when the build machine has none."""
    candidates = [os.environ.get(BYTECODE_PYTHON_VARIABLE), shutil.which(f"python{PYTHON_VERSION}")]
    pyenv_versions = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates += sorted(str(p) for p in pyenv_versions.glob(f"{PYTHON_VERSION}*/bin/python{PYTHON_VERSION}"))
    for candidate in candidates:
        if candidate and _python_version(candidate) == PYTHON_VERSION:
            return candidate
    warnings.warn(
        f"No CPython {PYTHON_VERSION} found (set {BYTECODE_PYTHON_VARIABLE}): the layers are built without "
        "byte-code, and every cold start compiles their modules from source.",
        stacklevel=2,
    )
    return None


def bytecode_recipe() -> str:
    """What the byte-code step adds to a layer (part of its hash): the interpreter version or none."""
    return f"bytecode-cp{PYTHON_VERSION}-unchecked-hash" if bytecode_python() else "no-bytecode"


def compile_bytecode(site_dir: Path) -> None:
    """Byte-code for every module under ``site_dir`` (a layer's python/ directory), for the runtime's
    interpreter, naming the files by their path in Lambda. Reproducible (fixed hash seed), so an
    unchanged layer keeps its content hash."""
    python = bytecode_python()
    if python is None:
        return
    command = [python, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash"]
    command += ["-s", str(site_dir), "-p", LAYER_PYTHON_PATH, str(site_dir)]
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": ""}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=BYTECODE_TIMEOUT_SECONDS, env=env, check=False
    )
    if done.returncode != 0:  # a file the runtime could not import either; the rest is compiled
        warnings.warn(f"compileall could not compile every file:\n{done.stdout[-2000:]}", stacklevel=2)


def deps_hash(requirements: Path = paths.DEPS_LOCK_FILE) -> str:
    """The build cache key: the lock and the recipe."""
    digest = hashlib.sha256()
    for part in (RECIPE_VERSION, requirements.read_text(), *pip_arguments(), *RUNTIME_PROVIDED, bytecode_recipe()):
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
        compile_bytecode(site_dir)
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
    digest = hashlib.sha256(f"{RECIPE_VERSION}\0{bytecode_recipe()}".encode())
    for relative in core_files(source):
        digest.update(relative.as_posix().encode() + b"\0")
        digest.update((source / relative).read_bytes() + b"\0")
    return digest.hexdigest()


def build_core(output_dir: Path, source: Path = paths.CORE_SOURCE_DIR / CORE_PACKAGE) -> None:
    shutil.copytree(source, output_dir / "python" / CORE_PACKAGE, ignore=_byte_code, dirs_exist_ok=True)
    compile_bytecode(output_dir / "python")


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
