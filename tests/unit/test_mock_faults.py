"""Fault spec parsing for the mock model server."""

from __future__ import annotations

import pytest

from quotagate_tools.mock.faults import FAULT_KEYS, FaultSpec, FaultSpecError, parse_fault_spec, split_model


def test_empty_specs():
    assert parse_fault_spec(None) == FaultSpec()
    assert parse_fault_spec("") == FaultSpec()
    assert parse_fault_spec(" & ;, ") == FaultSpec()
    assert parse_fault_spec({}) == FaultSpec()
    assert FaultSpec().is_empty()


def test_all_keys():
    spec = parse_fault_spec(
        "status=429&code=insufficient_quota&retry_after=2.5&delay_first_byte=1.5"
        "&drop_after=5&omit_usage=1&token_delay=0.05&tokens=7"
    )
    assert spec == FaultSpec(
        status=429,
        code="insufficient_quota",
        retry_after=2.5,
        delay_first_byte=1.5,
        drop_after=5,
        omit_usage=True,
        token_delay=0.05,
        tokens=7,
    )
    assert set(FAULT_KEYS) == set(
        "status code retry_after delay_first_byte drop_after omit_usage token_delay tokens real_billing "
        "cap_field".split()
    )


@pytest.mark.parametrize(
    "text", ["status=503,drop_after=2", "status=503;drop_after=2", " status = 503 & drop_after=2 "]
)
def test_separators_and_whitespace(text):
    assert parse_fault_spec(text) == FaultSpec(status=503, drop_after=2)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("omit_usage", True), ("omit_usage=1", True), ("omit_usage=true", True), ("omit_usage=0", False),
     ("omit_usage=no", False)],
)  # fmt: skip
def test_booleans(text, expected):
    assert parse_fault_spec(text).omit_usage is expected


def test_dict_form():
    assert parse_fault_spec({"status": 503, "omit_usage": True, "token_delay": 0}) == FaultSpec(
        status=503, omit_usage=True, token_delay=0.0
    )
    assert parse_fault_spec({"omit_usage": False}).omit_usage is False


@pytest.mark.parametrize(
    "text",
    [
        "bogus=1",
        "status",
        "status=abc",
        "status=200",
        "status=600",
        "drop_after=-1",
        "drop_after=1.5",
        "delay_first_byte=-0.1",
        "delay_first_byte=nan",
        "delay_first_byte=inf",
        "token_delay=x",
        "tokens=-1",
        "omit_usage=maybe",
        "code=has space",
        "code=",
    ],
)
def test_invalid_specs(text):
    with pytest.raises(FaultSpecError):
        parse_fault_spec(text)


def test_invalid_types():
    with pytest.raises(FaultSpecError):
        parse_fault_spec(42)  # type: ignore[arg-type]
    with pytest.raises(FaultSpecError):
        parse_fault_spec({"nope": 1})


def test_merge_later_wins_and_unset_keeps():
    base = parse_fault_spec("status=500&token_delay=0.1")
    merged = base.merge(parse_fault_spec("status=503&drop_after=1"))
    assert merged == FaultSpec(status=503, token_delay=0.1, drop_after=1)
    assert base.merge(FaultSpec()) == base
    assert merged.merge(parse_fault_spec("omit_usage=0")).omit_usage is False


def test_round_trip():
    spec = parse_fault_spec("status=429&retry_after=3&omit_usage=1&drop_after=4&token_delay=0.25")
    assert parse_fault_spec(spec.to_spec()) == spec
    assert FaultSpec().to_spec() == ""


def test_split_model():
    assert split_model("mock-gpt") == ("mock-gpt", "")
    assert split_model("mock-gpt@status=503") == ("mock-gpt", "status=503")
    assert split_model("mock-gpt@drop_after=2&token_delay=0") == ("mock-gpt", "drop_after=2&token_delay=0")
    assert split_model("@status=500") == ("", "status=500")
