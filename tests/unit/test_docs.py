"""The README and docs/ stay true: every link resolves, and every command they show names something that exists.

Checked: relative links (file and `#anchor`), `make <target>` (a Makefile target), `python -m <module>` (importable),
repository paths in backticks (`functions/...`, `tests/...`, `bench/...`, ...: the file or folder exists), and
`quotagate <command> <subcommand>` (the CLI's parser knows it).
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TOP_LEVEL = ("functions/", "tests/", "bench/", "layers/", "tools/", "cdk_app/", "docs/", ".ci/")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
MAKE = re.compile(r"(?:`|^\s*)make ([a-z][a-z0-9-]*)", re.MULTILINE)
PYTHON_M = re.compile(r"python3? -m ([A-Za-z_][\w.]*)")
REPO_PATH = re.compile(r"`((?:{})[\w./-]*)`".format("|".join(re.escape(p) for p in TOP_LEVEL)))
CLI = re.compile(r"\bquotagate ((?:[a-z][a-z-]*)(?: [a-z][a-z-]*)?)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    anchors, fence = set(), False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence and line.startswith("#"):
            anchors.add(_slug(line.lstrip("#")))
    return anchors


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([a-z][a-z0-9-]*):", text, re.MULTILINE)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc: Path):
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        assert resolved.exists(), f"{doc.name}: link to missing {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{doc.name}: no heading for #{anchor} in {resolved.name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_make_target_exists(doc: Path):
    targets = _make_targets()
    for name in MAKE.findall(doc.read_text()):
        assert name in targets, f"{doc.name}: `make {name}` is not a Makefile target"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_python_module_imports(doc: Path):
    for module in set(PYTHON_M.findall(doc.read_text())):
        if module in {"venv", "pip", "pytest", "json.tool", "http.server"}:
            continue
        assert importlib.util.find_spec(module) is not None, f"{doc.name}: python -m {module} does not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_repository_path_exists(doc: Path):
    for path in set(REPO_PATH.findall(doc.read_text())):
        clean = path.rstrip(".,:;")
        if any(ch in clean for ch in "*<>{}"):
            continue
        assert (ROOT / clean).exists(), f"{doc.name}: {clean} does not exist"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_cli_command_parses(doc: Path):
    from quotagate_tools import cli

    parser = cli.build_parser()
    known = {name: sub for name, sub in _subcommands(parser).items()}
    for words in set(CLI.findall(doc.read_text())):
        command, _, sub = words.partition(" ")
        if command not in known:
            continue  # prose such as "quotagate bus": only commands are checked
        children = known[command]
        if sub and children:
            assert sub in children, f"{doc.name}: `quotagate {words}`: no subcommand {sub!r}"


def _subcommands(parser) -> dict[str, set[str]]:
    import argparse

    found: dict[str, set[str]] = {}
    for action in parser._actions:  # argparse exposes its tree only here
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found[name] = set()
                for grandchild in child._actions:
                    if isinstance(grandchild, argparse._SubParsersAction):
                        found[name] |= set(grandchild.choices)
    return found


def test_the_readme_is_a_front_door():
    readme = (ROOT / "README.md").read_text()
    first_screen = "\n".join(readme.splitlines()[:40])
    assert "make dev" in first_screen and "make test" in first_screen
    assert len(readme.splitlines()) < 200
    for doc in DOCS[1:]:
        assert f"(docs/{doc.name})" in readme, f"README does not link docs/{doc.name}"
