"""The strict JSON rules every client input goes through (quotagate.strict_json)."""

from __future__ import annotations

import json

import pytest

from quotagate import strict_json
from quotagate.strict_json import MAX_ABS_INT, MAX_DEPTH, StrictJSONError, check_value, loads


def nested(depth: int, inner: str = "1") -> str:
    return '{"a":' * depth + inner + "}" * depth


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "-NaN",
        "Infinity",
        "-Infinity",
        '{"t": NaN}',
        "[1, Infinity]",
        "1e400",
        "-1e400",
        "1e301",
        str(MAX_ABS_INT + 1),
        str(-MAX_ABS_INT - 1),
        "1" + "0" * 400,
        "0." + "1" * 200,
        "1" * 101,
        '"\\ud800"',
        '"\\udfff"',
        '"a\\ud83d"',
        '"\\ude00\\ud83d"',
        '{"\\ud800": 1}',
        '[["\\udbff"]]',
        "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
        nested(MAX_DEPTH + 1),
        "[" * 100_000,
        "{",
        '{"a": 1,}',
        "",
        "\ufeff{}",
    ],
)
def test_refused(text):
    with pytest.raises(StrictJSONError) as refused:
        loads(text.encode("utf-8", "surrogatepass"))
    assert "\\ud8" not in refused.value.message.replace("\\ud800-\\udfff", "")  # never echoes the input


@pytest.mark.parametrize(
    "text, value",
    [
        ("1e300", 1e300),
        ("-1e300", -1e300),
        (str(MAX_ABS_INT), MAX_ABS_INT),
        ("0.5", 0.5),
        ("1E-300", 1e-300),
        ('"\\ud83d\\ude00"', "\U0001f600"),
        ('"\\u00e9\\u4e2d"', "é中"),
        ('"😀"', "😀"),
        ('"\\\\ud800"', "\\ud800"),  # an escaped backslash, then plain text: not a surrogate
    ],
)
def test_accepted(text, value):
    assert loads(text.encode()) == value


def test_depth_bound_is_exact_and_brackets_in_strings_do_not_count():
    assert loads(nested(MAX_DEPTH).encode()) is not None
    assert loads(("[" * MAX_DEPTH + "]" * MAX_DEPTH).encode()) is not None
    brackets_in_text = json.dumps({"text": "[" * 500 + '{"' * 500 + '\\"['})
    assert loads(brackets_in_text.encode())["text"].startswith("[[[")


def test_invalid_utf8_is_refused():
    with pytest.raises(StrictJSONError):
        loads(b'{"a": "\xed\xa0\x80"}')  # a surrogate encoded as UTF-8 bytes
    with pytest.raises(StrictJSONError):
        loads(b'{"a": "\xff"}')


@pytest.mark.parametrize(
    "value",
    [
        float("nan"),
        float("inf"),
        -float("inf"),
        1e301,
        10**400,
        -(2**64),
        "\ud800",
        {"\udc00": 1},
        {1: "a"},
        {"a": b"bytes"},
        {"a": object()},
        [[[[{"k": float("nan")}]]]],
    ],
)
def test_check_value_refuses_what_loads_refuses(value):
    with pytest.raises(StrictJSONError):
        check_value(value)


def test_check_value_has_no_recursion_limit():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(StrictJSONError):
        check_value(deep)
    levels: list = []  # MAX_DEPTH arrays, one inside the other: the bound itself is fine
    for _ in range(MAX_DEPTH - 1):
        levels = [levels]
    check_value(levels)
    with pytest.raises(StrictJSONError):
        check_value([levels])


def test_check_value_accepts_plain_json():
    check_value({"action": "create_key", "limits": {"tokens_per_day": 10**15}, "name": "é 😀", "x": [True, None, 1.5]})


def test_error_is_a_value_error():
    assert issubclass(strict_json.StrictJSONError, ValueError)
