"""docs/cost.md's tables are bench/cost.py's output: the section between its markers is regenerated
here from the measured store calls and item sizes and must be equal, so a change to the ledger, the
usage record or the Lambda sizes that moves the cost shows up as a failing test, not a stale page."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_cost_script():
    spec = importlib.util.spec_from_file_location("bench_cost", ROOT / "bench" / "cost.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_cost"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_docs_cost_section_is_the_scripts_output():
    cost = load_cost_script()
    page = (ROOT / "docs" / "cost.md").read_text()
    start, end = page.index(cost.BEGIN), page.index(cost.END) + len(cost.END)
    assert page[start:end] == cost.markdown(), "regenerate it: python bench/cost.py --markdown"


def test_a_key_with_limits_costs_its_window_writes_on_top():
    cost = load_cost_script()
    without, with_limits = cost.measure_store_work(False), cost.measure_store_work(True)
    assert sum(without.calls.values()) == 2  # the usage record's put and its settlement
    assert with_limits.wru > without.wru
