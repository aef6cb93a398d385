"""The gateway's own time per request, and its store calls per request (before the first byte and after).

In one process, with nothing but the gateway to measure: the real proxy ASGI app (request id, body
read, identity from the authorizer's context, limits, routing, the circuit breaker, the reservation,
the exchange, metering, settlement, the outcome's metrics) over in-memory stores, called directly
as an ASGI server would call it, with an upstream that answers at once (a content chunk, the usage
chunk, ``[DONE]``). What it prints is therefore the gateway's own CPU time: no network, no store
latency, no model. The outcome's log line and EMF metrics are made as in the deployed proxy (INFO
level, metrics on) and written to /dev/null (a Lambda writes them to its log pipe).

1. Overhead: median and p99 per request for a key without limits and a key with 3 key windows + 1
   tenant window, non-streaming (the whole answer) and streaming (to the first content byte, and
   the whole stream). The in-memory ledger waits on nothing, so the gateway calls it on the event
   loop; the last rows put the same stores behind worker threads, as the DynamoDB ones are, to show
   what the thread hand-offs add.
2. Store calls per request, by store and operation, and how many began before the upstream was
   called: with DynamoDB these are the round trips that stand before the first byte.
3. A profile (cProfile) of the non-streaming path for the key with limits: where the time goes.

Usage: python bench/overhead.py [--requests 300] [--profile-lines 25]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "layers" / "core")]
os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "false")
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "INFO")
# The gateway's log lines and EMF metrics go to stdout: that becomes /dev/null, the tables go to REPORT.
REPORT = sys.stdout
sys.stdout = open(os.devnull, "w")  # for the whole run
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")

from functions.proxy.app import Services, create_app  # noqa: E402
from quotagate import apikeys  # noqa: E402
from quotagate.config_models import parse_config  # noqa: E402
from quotagate.dal.circuit_store import InMemoryCircuitStore  # noqa: E402
from quotagate.dal.key_cache import CachedKeyRecords  # noqa: E402
from quotagate.dal.keys_store import InMemoryKeyStore, KeyRecord  # noqa: E402
from quotagate.dal.tenants_store import CachedTenantRecords, InMemoryTenantStore, TenantRecord  # noqa: E402
from quotagate.logic.breaker import CircuitBreaker  # noqa: E402
from quotagate.logic.gateway import Gateway  # noqa: E402
from quotagate.observability import record_outcome  # noqa: E402
from quotagate.providers.base import DONE_EVENT, SSEEvent  # noqa: E402
from quotagate.quota import InMemoryQuotaLedger, QuotaService  # noqa: E402

CONFIG = parse_config(
    {
        "providers": {"up": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
        "models": {
            "m": {
                "provider": "up",
                "upstream_model": "m",
                "price": {"input_per_million": 0.15, "output_per_million": 0.6},
            }
        },
        "plans": {
            "limited": {
                "models": "*",
                "default_max_tokens": 64,
                "limits": {"requests_per_minute": 10**6, "tokens_per_minute": 10**9, "usd_per_day": 10**6},
            },
            "unlimited": {"models": "*", "default_max_tokens": 64},
        },
    }
)
BODY = {"model": "m", "messages": [{"role": "user", "content": "Benchmark me, briefly."}], "max_tokens": 16}
CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}


class Calls:
    """Every store call, and whether the upstream had been called (for the request in flight).
    ``blocking``: the stores say their calls may wait on I/O, as the DynamoDB ones do."""

    def __init__(self, blocking: bool = False) -> None:
        self.upstream_called = False
        self.counts: collections.Counter[tuple[str, bool]] = collections.Counter()
        self.requests = 0
        self.blocking = blocking

    def wrap(self, name: str, store: Any, methods: tuple[str, ...]) -> Any:
        calls = self

        class Counted:
            if calls.blocking:
                blocking = True

            def __getattr__(self, attribute: str) -> Any:
                value = getattr(store, attribute)
                if attribute not in methods:
                    return value

                def counted(*args: Any, **kwargs: Any) -> Any:
                    calls.counts[(f"{name}.{attribute}", not calls.upstream_called)] += 1
                    return value(*args, **kwargs)

                return counted

        return Counted()


class Upstream:
    """Answers at once: one content chunk, the usage chunk, [DONE]; like OpenAI asked for usage
    (the gateway always asks), the content chunk carries ``"usage": null``."""

    def __init__(self, calls: Calls) -> None:
        self.calls = calls

    def for_target(self, target: Any) -> Upstream:
        return self

    async def stream(self, body: dict[str, Any]) -> Any:
        self.calls.upstream_called = True
        yield SSEEvent.from_chunk(
            {**CHUNK, "choices": [{"index": 0, "delta": {"content": "Fine."}, "finish_reason": "stop"}], "usage": None}
        )
        yield SSEEvent.from_chunk(
            {**CHUNK, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}}
        )
        yield DONE_EVENT


def build(calls: Calls) -> tuple[Any, dict[str, dict[str, str]]]:
    """The proxy app over counted in-memory stores, and the authorizer context of each key."""
    keys, tenants = InMemoryKeyStore(), InMemoryTenantStore()
    contexts: dict[str, dict[str, str]] = {}
    for name, plan, tenant, tenant_limits in (
        ("without limits", "unlimited", "open", {}),
        ("3 key windows + tenant window", "limited", "acme", {"usd_per_month": 10**6}),
    ):
        key = apikeys.new_key()
        secret_hash = apikeys.hash_key(key.plaintext)
        keys.put_new(KeyRecord(key.key_id, tenant, "bench", plan, secret_hash, created_at=int(time.time())))
        tenants.put_new(TenantRecord(tenant, tenant_limits))
        contexts[name] = {
            "tenant": tenant,
            "consumer": "bench",
            "key_id": key.key_id,
            "plan": plan,
            "auth_type": "api_key",
            "secret_fingerprint": apikeys.secret_fingerprint(secret_hash),
        }
    ledger = calls.wrap("quota", InMemoryQuotaLedger(), ("reserve", "settle", "top_up", "read_used"))
    circuits = calls.wrap(
        "circuits", InMemoryCircuitStore(), ("get", "get_many", "record_failure", "record_success", "try_probe")
    )
    gateway = Gateway(
        config=lambda: CONFIG,
        key_records=CachedKeyRecords(calls.wrap("keys", keys, ("get",))),
        tenant_records=CachedTenantRecords(calls.wrap("tenants", tenants, ("get",))),
        quota=QuotaService(ledger),
        providers=Upstream(calls),
        breaker=CircuitBreaker(circuits, lambda: CONFIG.circuit_breaker),
        on_finished=record_outcome,
    )

    def refuse(headers: dict[str, str]) -> Any:
        raise AssertionError("every request carries the authorizer's context")

    return create_app(lambda: Services(gateway, refuse)), contexts


# The key names of the rows whose stores sit behind worker threads.
THREADED = ", stores in threads"


class AsgiClient:
    """Calls an ASGI app the way uvicorn does, in this event loop (no sockets)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.cpu = 0.0

    async def start(self) -> None:
        messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await messages.put({"type": "lifespan.startup"})
        started = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                started.set()

        self._lifespan = asyncio.ensure_future(
            self.app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": self.state}, messages.get, send)
        )
        await started.wait()

    async def post(self, body: bytes, context: dict[str, Any]) -> tuple[int, float | None, float]:
        """(status, seconds to the first content byte or None, seconds to the end); ``cpu`` is then
        the process's CPU seconds (every thread) the request took."""
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-amzn-request-context", json.dumps({"authorizer": context}).encode()),
        ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
            "state": dict(self.state),
        }
        done = asyncio.Event()
        sent_body = False
        status = 0
        first: float | None = None

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            await done.wait()
            return {"type": "http.disconnect"}

        started, cpu_started = time.perf_counter(), time.process_time()

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, first
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                if first is None and b"content" in message.get("body", b""):
                    first = time.perf_counter() - started
                if not message.get("more_body", False):
                    done.set()

        await self.app(scope, receive, send)
        self.cpu = time.process_time() - cpu_started
        return status, first, time.perf_counter() - started


def report(*values: Any) -> None:
    print(*values, file=REPORT)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def overhead_rows(
    client: AsgiClient, contexts: dict[str, dict[str, str]], bodies: dict[bool, bytes], label: str = ""
) -> tuple[dict[tuple[str, str], float], dict[tuple[str, str], float]]:
    """One request per key and path: wall ms and CPU ms, keyed by (key, path) (the first content
    byte's row has a wall time only)."""
    wall: dict[tuple[str, str], float] = {}
    cpu: dict[tuple[str, str], float] = {}
    for name, context in contexts.items():
        key = f"{name}{label}"
        status, _, total = await client.post(bodies[False], context)
        assert status == 200, status
        wall[(key, "non-streaming, whole answer")] = total * 1000
        cpu[(key, "non-streaming, whole answer")] = client.cpu * 1000
        status, first, total = await client.post(bodies[True], context)
        assert status == 200 and first is not None, status
        wall[(key, "streaming, first content byte")] = first * 1000
        wall[(key, "streaming, whole stream")] = total * 1000
        cpu[(key, "streaming, whole stream")] = client.cpu * 1000
    return wall, cpu


def report_rows(results: dict[tuple[str, str], list[float]], cpu: dict[tuple[str, str], list[float]]) -> None:
    """Median and p99 per row (the threaded rows under their own heading)."""
    threaded_header = False
    for (name, path), values in results.items():
        if name.endswith(THREADED) and not threaded_header:
            threaded_header = True
            report(
                "  The same stores behind worker threads (as the DynamoDB ones, which block): what the hand-offs add"
            )
        spent = f"{statistics.median(cpu[(name, path)]):8.2f} ms" if (name, path) in cpu else ""
        report(
            f"  {name:48s} {path:32s} {statistics.median(values):6.2f} ms {percentile(values, 99):6.2f} ms {spent:>12s}"
        )


async def measure(requests: int, profile_lines: int) -> None:
    calls = Calls()
    app, contexts = build(calls)
    client = AsgiClient(app)
    await client.start()
    # The same stores behind worker threads, as the DynamoDB ones are (their calls may block).
    threaded_app, threaded_contexts = build(Calls(blocking=True))
    threaded = AsgiClient(threaded_app)
    await threaded.start()
    bodies = {stream: json.dumps({**BODY, "stream": stream}).encode() for stream in (False, True)}
    for _ in range(30):  # warm: imports on first use, caches, code paths
        for warmed, warm_contexts in ((client, contexts), (threaded, threaded_contexts)):
            for context in warm_contexts.values():
                for body in bodies.values():
                    await warmed.post(body, context)
    report(
        f"Gateway's own time per request (in-process proxy app, in-memory stores, an upstream that answers "
        f"at once; {requests} requests per row, interleaved):"
    )
    report("  (wall time waits for a CPU on a loaded machine; the CPU time the process spent per request does not)")
    report(f"  {'key':48s} {'path':32s} {'median':>9s} {'p99':>9s} {'CPU/request':>12s}")
    results: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    cpu: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    for _ in range(requests):
        for rows in (
            await overhead_rows(client, contexts, bodies),
            await overhead_rows(threaded, threaded_contexts, bodies, THREADED),
        ):
            for row, value in rows[0].items():
                results[row].append(value)
            for row, value in rows[1].items():
                cpu[row].append(value)
    report_rows(results, cpu)

    report("\nStore calls per request (in-memory stores counted; each is a DynamoDB round trip when deployed):")
    report(f"  {'key':32s} {'path':15s} {'store call':28s} {'before upstream':>16s} {'after':>7s}")
    for name, context in contexts.items():
        for stream in (False, True):
            calls.counts.clear()
            for _ in range(50):
                calls.upstream_called = False
                await client.post(bodies[stream], context)
            path = "streaming" if stream else "non-streaming"
            operations = sorted({operation for operation, _ in calls.counts})
            before_total = sum(n for (_, before), n in calls.counts.items() if before) / 50
            after_total = sum(n for (_, before), n in calls.counts.items() if not before) / 50
            for operation in operations:
                before, after = calls.counts[(operation, True)] / 50, calls.counts[(operation, False)] / 50
                report(f"  {name:32s} {path:15s} {operation:28s} {before:16.2f} {after:7.2f}")
            report(f"  {name:32s} {path:15s} {'total':28s} {before_total:16.2f} {after_total:7.2f}")

    profiler = cProfile.Profile()
    context = contexts["3 key windows + tenant window"]
    profiler.enable()
    for _ in range(requests):
        await client.post(bodies[False], context)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(profile_lines)
    report(
        f"\nProfile: {requests} non-streaming requests, key with limits, sorted by own time "
        f"(profiling roughly doubles the times):"
    )
    text = out.getvalue()
    report(text[text.find("   ncalls") :].rstrip())
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(r"quotagate|functions", profile_lines)
    report("\nThe same, the gateway's own functions by cumulative time (waits for worker threads included):")
    text = out.getvalue()
    report(text[text.find("   ncalls") :].rstrip())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--profile-lines", type=int, default=25)
    args = parser.parse_args()
    asyncio.run(measure(args.requests, args.profile_lines))


if __name__ == "__main__":
    main()
