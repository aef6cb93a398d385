"""The bundled layers (as staged by the shared synth) and the Docker-free bundling helpers."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from cdk_app import bundling, paths
from cdk_app.constructs.layers import CORE_DESCRIPTION, DEPS_DESCRIPTION

pytestmark = pytest.mark.infra

ELF_MACHINE_AARCH64 = 183


def _elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    assert header[4] == 2, f"{path} is not 64-bit"
    return struct.unpack("<H", header[18:20])[0]


@pytest.fixture(scope="module")
def deps_dir(synthesized) -> Path:
    directory = synthesized.layer_dir(DEPS_DESCRIPTION) / "python"
    assert directory.is_dir()
    return directory


@pytest.fixture(scope="module")
def core_dir(synthesized) -> Path:
    directory = synthesized.layer_dir(CORE_DESCRIPTION) / "python"
    assert directory.is_dir()
    return directory


def test_deps_layer_has_offline_tiktoken_encoding(deps_dir):
    encoding = deps_dir / "tiktoken_ext" / "data" / "cl100k_base.tiktoken"
    assert encoding.is_file() and encoding.stat().st_size > 1_000_000


def test_deps_layer_binaries_are_aarch64_cp313(deps_dir):
    extensions = list((deps_dir / "tiktoken").glob("_tiktoken*.so"))
    assert len(extensions) == 1
    assert "cpython-313-aarch64" in extensions[0].name
    assert _elf_machine(extensions[0]) == ELF_MACHINE_AARCH64
    shared_objects = list(deps_dir.rglob("*.so"))
    assert shared_objects
    for shared_object in shared_objects:
        assert _elf_machine(shared_object) == ELF_MACHINE_AARCH64, shared_object
        assert "x86_64" not in shared_object.name


def test_deps_layer_has_pinned_versions(deps_dir):
    for line in paths.REQUIREMENTS_FILE.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, version = line.split("==")
        name = name.split("[", 1)[0].lower().replace("-", "_")
        dist_infos = [d.name.lower() for d in deps_dir.glob("*.dist-info")]
        assert f"{name}-{version}.dist-info" in dist_infos, line


def test_deps_layer_leaves_the_sdk_to_the_runtime(deps_dir):
    for name in ("boto3", "botocore", "s3transfer"):
        assert not (deps_dir / name).exists()
        assert not list(deps_dir.glob(f"{name}-*.dist-info"))
    assert not (deps_dir / "bin").exists()


@pytest.mark.skipif(bundling.bytecode_python() is None, reason="no CPython 3.13 to build byte-code with")
def test_layers_carry_only_the_runtime_s_byte_code(deps_dir, core_dir):
    for site_dir in (deps_dir, core_dir):
        stray = [str(p) for p in site_dir.rglob("*.pyc") if not p.name.endswith(".cpython-313.pyc")]
        assert stray == []
        modules = list(site_dir.rglob("*.py"))
        compiled = [m for m in modules if (m.parent / "__pycache__" / f"{m.stem}.cpython-313.pyc").is_file()]
        assert len(compiled) == len(modules), sorted(set(map(str, modules)) - set(map(str, compiled)))[:20]


def test_core_byte_code_is_unchecked_hash_naming_the_lambda_path(tmp_path):
    """Checked with the 3.13 interpreter that builds it (marshal's format is the interpreter's own)."""
    python = bundling.bytecode_python()
    if python is None:
        pytest.skip("no CPython 3.13 to build byte-code with")
    first, second = tmp_path / "first", tmp_path / "second"
    bundling.build_core(first)
    bundling.build_core(second)
    assert bundling.tree_hash(first / "python") == bundling.tree_hash(second / "python")  # reproducible
    check = (
        "import marshal, pathlib, sys\n"
        "site = pathlib.Path(sys.argv[1])\n"
        "for module in site.rglob('*.py'):\n"
        "    data = (module.parent / '__pycache__' / (module.stem + '.cpython-313.pyc')).read_bytes()\n"
        "    assert int.from_bytes(data[4:8], 'little') == 1, module\n"
        "    assert marshal.loads(data[16:]).co_filename == '/opt/python/' + str(module.relative_to(site)), module\n"
        "print('ok')\n"
    )
    done = subprocess.run([python, "-c", check, str(first / "python")], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr[-2000:]


def test_core_layer_is_the_quotagate_package_without_dev_tools(core_dir):
    package = core_dir / "quotagate"
    assert (package / "__init__.py").is_file()
    assert (package / "tables.py").is_file()
    assert (package / "default_config.json").is_file()
    # The developer tools live in tools/quotagate_tools, not in the layer's source directory.
    assert not (package / "local").exists()
    assert not (package / "mock").exists()
    assert not list(package.glob("cli*.py"))
    assert sorted(p.name for p in core_dir.iterdir()) == ["quotagate"]


def _imported_top_levels(path: Path) -> set[str]:
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_core_layer_imports_nothing_outside_itself(core_dir, deps_dir):
    """Every import in the layer, even a lazy one inside a function, is the standard library, the
    deps layer, the SDK the runtime ships, or the layer itself: anything else (the dev tools in
    quotagate_tools, functions/, cdk_app/) would be an ImportError in Lambda."""
    import sys

    # Packages, namespace packages included (tiktoken_ext holds the offline encoding, no __init__.py).
    shipped = {p.name for p in deps_dir.iterdir() if p.is_dir() and any(p.glob("*.py"))}
    shipped |= {p.name.split(".")[0] for p in deps_dir.glob("*.py")}
    shipped |= {p.name.split(".")[0] for p in deps_dir.glob("*.so")}
    allowed = set(sys.stdlib_module_names) | shipped | set(bundling.RUNTIME_PROVIDED) | {"quotagate", "__future__"}
    offending = sorted(
        f"{path.relative_to(core_dir)}: {name}"
        for path in (core_dir / "quotagate").rglob("*.py")
        for name in _imported_top_levels(path) - allowed
    )
    assert offending == []


def test_core_layer_holds_exactly_the_hashed_files(core_dir):
    staged = sorted(
        p.relative_to(core_dir / "quotagate")
        for p in (core_dir / "quotagate").rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    assert staged == list(bundling.core_files())


def test_pip_command_pins_platform_and_interpreter():
    command = bundling.pip_command(Path("/out"), paths.REQUIREMENTS_FILE)
    assert "--only-binary=:all:" in command
    assert command[command.index("--python-version") + 1] == "3.13"
    assert command[command.index("--implementation") + 1] == "cp"
    platforms = [command[i + 1] for i, arg in enumerate(command) if arg == "--platform"]
    # With manylinux2014 alone pip silently picks tiktoken 0.11.
    assert platforms == ["manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"]
    assert command[command.index("--target") + 1] == "/out"


def _fake_install(calls: list[Path]):
    def install(target: Path, requirements: Path) -> None:
        calls.append(target)
        (target / "pkg").mkdir(parents=True)
        (target / "pkg" / "__init__.py").write_text("")
        (target / "pkg-1.0.dist-info").mkdir()
        (target / "pkg-1.0.dist-info" / "RECORD").write_text("pkg/__init__.py,,\n")
        (target / "botocore" / "data").mkdir(parents=True)
        (target / "botocore" / "__init__.py").write_text("")
        (target / "botocore" / "data" / "x.json").write_text("{}")
        (target / "botocore" / "__pycache__").mkdir()
        (target / "botocore-1.0.dist-info").mkdir()
        (target / "botocore-1.0.dist-info" / "RECORD").write_text(
            "botocore/__init__.py,,\nbotocore/data/x.json,,\nbotocore-1.0.dist-info/RECORD,,\n"
        )
        (target / "bin").mkdir()
        (target / "bin" / "script").write_text("#!/usr/bin/python3.11\n")

    return install


def test_deps_build_is_cached_by_requirements_hash(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pkg==1.0\n")
    cache = tmp_path / "cache"
    calls: list[Path] = []
    first = bundling.build_deps(requirements, cache, installer=_fake_install(calls))
    second = bundling.build_deps(requirements, cache, installer=_fake_install(calls))
    assert first == second and len(calls) == 1
    site = first / "python"
    assert (site / "pkg" / "__init__.py").is_file()
    assert not (site / "botocore").exists() and not list(site.glob("botocore-*"))
    assert not (site / "bin").exists()
    assert [p.name for p in cache.iterdir()] == [first.name]  # no temporary directories left

    requirements.write_text("pkg==1.1\n")
    third = bundling.build_deps(requirements, cache, installer=_fake_install(calls))
    assert third != first and len(calls) == 2


def test_failed_deps_build_leaves_no_cache_entry(tmp_path):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("pkg==1.0\n")
    cache = tmp_path / "cache"

    def broken(target: Path, requirements: Path) -> None:
        raise RuntimeError("pip could not build the deps layer")

    with pytest.raises(RuntimeError):
        bundling.build_deps(requirements, cache, installer=broken)
    assert list(cache.iterdir()) == []


def test_core_hash_follows_content_and_ignores_byte_code(tmp_path):
    source = tmp_path / "quotagate"
    (source / "sub").mkdir(parents=True)
    (source / "__init__.py").write_text("x = 1\n")
    baseline = bundling.core_hash(source)
    (source / "__pycache__").mkdir()
    (source / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    (source / "sub" / "stale.pyc").write_bytes(b"\0")
    assert bundling.core_hash(source) == baseline
    (source / "__init__.py").write_text("x = 2\n")
    changed = bundling.core_hash(source)
    assert changed != baseline
    (source / "sub" / "module.py").write_text("y = 1\n")  # a new subpackage file is part of the layer
    assert bundling.core_hash(source) != changed
    out = tmp_path / "out"
    bundling.build_core(out, source)
    built = sorted(p.relative_to(out / "python" / "quotagate").as_posix() for p in out.rglob("*") if p.is_file())
    assert [p for p in built if "__pycache__" not in p] == ["__init__.py", "sub/module.py"]
    # The build host's byte-code never ships; the runtime's (when a CPython 3.13 is here) does.
    assert [p for p in built if "__pycache__" in p] == (
        ["__pycache__/__init__.cpython-313.pyc", "sub/__pycache__/module.cpython-313.pyc"]
        if bundling.bytecode_python()
        else []
    )
