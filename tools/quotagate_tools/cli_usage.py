"""``quotagate usage``: a tenant's usage from the keys function's ``get_usage``, as a table.

quotagate usage --tenant T [--key K | --consumer C | --model M | --by model|key]
                [--granularity hour|day|month] [--from DATE] [--to DATE] [--json]
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

COLUMNS = (
    ("requests", "requests"),
    ("prompt_tokens", "prompt"),
    ("completion_tokens", "completion"),
    ("total_tokens", "total"),
)


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    usage = commands.add_parser(
        "usage",
        parents=[common],
        help="show a tenant's usage (from the usage rollup)",
        description="A tenant's usage per hour, day or month: requests, tokens, cost, outcomes.",
    )
    usage.add_argument("--tenant", required=True)
    who = usage.add_mutually_exclusive_group()
    who.add_argument("--key", dest="key_id", help="one key (a key id, or jwt:<subject>)")
    who.add_argument("--consumer", help="one consumer (its keys summed)")
    who.add_argument("--model", help="one model or alias")
    who.add_argument("--by", choices=["model", "key"], help="one series per model or per key")
    usage.add_argument("--granularity", choices=["hour", "day", "month"], default="day")
    usage.add_argument("--from", dest="start", help="first period: ISO date or date-time (UTC)")
    usage.add_argument("--to", dest="end", help="last period: ISO date or date-time (UTC)")
    usage.add_argument("--json", action="store_true", help="print the JSON result instead of a table")


def event(args: argparse.Namespace) -> dict[str, Any]:
    built: dict[str, Any] = {"action": "get_usage", "tenant": args.tenant, "granularity": args.granularity}
    for field, value in (
        ("key_id", args.key_id),
        ("consumer", args.consumer),
        ("model", args.model),
        ("by", args.by),
        ("from", args.start),
        ("to", args.end),
    ):
        if value is not None:
            built[field] = value
    return built


def _dollars(micros: int) -> str:
    return f"${micros / 1_000_000:,.6f}"


def _outcomes(counts: dict[str, int]) -> str:
    return " ".join(f"{name}={count}" for name, count in sorted(counts.items())) or "-"


def table(result: dict[str, Any]) -> str:
    """A readable table: one row per period (and per model or key with ``by``), then the total."""
    group_name = result.get("by")
    headers = ([group_name] if group_name else []) + ["period"] + [title for _, title in COLUMNS] + ["cost", "outcomes"]
    rows: list[list[str]] = []

    def add(point: dict[str, Any], label: str, group: str | None) -> None:
        rows.append(
            ([group or ""] if group_name else [])
            + [label]
            + [f"{int(point[name]):,}" for name, _ in COLUMNS]
            + [_dollars(int(point["usd_micros"])), _outcomes(point.get("requests_by_outcome") or {})]
        )

    if group_name:
        for group in result.get("groups", []):
            for point in group["series"]:
                add(point, point["period"], group[group_name])
    else:
        for point in result.get("series", []):
            add(point, point["period"], None)
    add(result["totals"], "total", "" if group_name else None)
    scope = next((f"{k} {result[k]}" for k in ("key_id", "consumer", "model") if result.get(k)), "all keys and models")
    title = (
        f"Usage of tenant {result['tenant']} ({scope}), per {result['granularity']}, {result['from']} to {result['to']}"
    )
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(len(headers))]
    numeric = {i for i, h in enumerate(headers) if h in {t for _, t in COLUMNS} | {"cost"}}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(widths[i]) if i in numeric else c.ljust(widths[i]) for i, c in enumerate(cells))

    body = [line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows[:-1]]
    body += [line(["-" * w for w in widths]), line(rows[-1])]
    if len(rows) == 1:
        body.insert(2, "(no usage in this range)")
    return "\n".join([title, *(b.rstrip() for b in body)])
