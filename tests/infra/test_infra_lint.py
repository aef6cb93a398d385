"""cfn-lint on the synthesized template, for every region the README lists (one call per template).

Ignored: W3005 only — CDK adds an explicit DependsOn on each function's role next to the GetAtt
that already orders them (it is redundant, never wrong)."""

from __future__ import annotations

import json

import pytest

from cdk_app import regions

pytestmark = pytest.mark.infra

IGNORED = ["W3005"]


def _lint(template: dict, region_list: tuple[str, ...]) -> list[str]:
    from cfnlint.api import ManualArgs, lint

    matches = lint(json.dumps(template), config=ManualArgs(regions=list(region_list), ignore_checks=IGNORED))
    return [f"{m.rule.id} {m.message} ({'/'.join(str(p) for p in m.path)})" for m in matches]


def test_default_template_is_clean_where_function_urls_exist(synthesized):
    assert _lint(synthesized.json, regions.FUNCTION_URL_REGIONS) == []


def test_the_linter_would_catch_a_function_url_in_a_region_without_them(synthesized):
    findings = _lint(synthesized.json, ("me-central-1",))
    assert any(f.startswith("E3006") and "AWS::Lambda::Url" in f for f in findings), findings


def test_template_without_function_url_is_clean_in_every_listed_region(tmp_path):
    from aws_cdk.assertions import Template

    from cdk_app.app import build_app

    _, stack = build_app(context={"quotagate:functionUrl": "false"}, outdir=tmp_path, checks=False)
    assert _lint(Template.from_stack(stack).to_json(), regions.supported_regions(function_url=False)) == []
