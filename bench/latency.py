"""Latency the gateway adds per request, and the AWS calls it makes per request.

1. Latency: ``python -m quotagate_tools.local`` runs as its own process (mock token delay 0). The same
   request is sent N times straight to its mock model server, N times through the gateway with a
   key on plan ``pro`` (API Gateway emulator + real authorizer + proxy + quota reserve/settle of 3
   key windows and the tenant window in moto + the mock), N times with a key without limits (plan
   ``unlimited`` in a tenant whose record has no limits: no window, its usage record written while
   the mock answers) and, when LiteLLM's proxy is installed (``litellm`` on PATH, or
   ``$LITELLM_BIN``, e.g. /tmp/litellm-venv/bin/litellm), N times through LiteLLM with a master key
   in front of the same mock; interleaved, keep-alive everywhere. Prints median and p99 of each
   path and of what each adds over the direct call: the whole answer, or with ``--stream`` the time
   to the first content byte.
2. Calls: the gateway is run in-process once more, with a botocore hook counting every AWS API
   call per service and operation while M requests go through.

Usage: python bench/latency.py [--requests 200] [--stream]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "Benchmark me, briefly."}], "max_tokens": 16}


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def timed(client: httpx.Client, url: str, body: dict, headers: dict) -> float:
    """Milliseconds to the whole answer, or for a streamed request to the first content byte."""
    started = time.perf_counter()
    with client.stream("POST", url, json=body, headers=headers) as response:
        if response.status_code != 200:
            response.read()
            raise RuntimeError(f"{url}: HTTP {response.status_code} {response.text[:200]}")
        first = None
        for chunk in response.iter_bytes():
            if first is None and body.get("stream") and b'"content"' in chunk:
                first = time.perf_counter() - started
    elapsed = first if first is not None else time.perf_counter() - started
    return elapsed * 1000


def litellm_binary() -> str | None:
    import shutil

    default = Path(tempfile.gettempdir()) / "litellm-venv" / "bin" / "litellm"
    candidate = os.environ.get("LITELLM_BIN") or shutil.which("litellm") or str(default)
    return candidate if Path(candidate).exists() else None


def start_litellm(binary: str, mock: str, port: int) -> tuple[subprocess.Popen, str, str]:
    """LiteLLM's proxy with a master key (no database) in front of the same mock model server."""
    master = "sk-bench-master-key"
    config = {
        "model_list": [
            {
                "model_name": "mock-gpt",
                "litellm_params": {"model": "openai/mock-gpt", "api_base": f"{mock}/v1", "api_key": "unused"},
            }
        ],
        "general_settings": {"master_key": master},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
    process = subprocess.Popen(
        [binary, "--config", handle.name, "--port", str(port), "--host", "127.0.0.1", "--num_workers", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "LITELLM_LOG": "ERROR"},
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health/liveliness", timeout=2).status_code == 200:
                return process, base, master
        except httpx.HTTPError:
            time.sleep(0.5)
    process.terminate()
    raise RuntimeError("LiteLLM's proxy did not start")


def start_gateway(port: int) -> tuple[subprocess.Popen, str, str, str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quotagate_tools.local",
            "--port",
            str(port),
            "--token-delay",
            "0",
            "--demo-plan",
            "pro",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    mock = key = None
    assert process.stdout is not None
    for line in process.stdout:
        if "mock models at " in line:
            mock = line.rsplit("mock models at ", 1)[1].strip().rstrip(")")
        if line.startswith("OPENAI_API_KEY="):
            key = line.strip().split("=", 1)[1]
            break
    if not (mock and key):
        raise RuntimeError("the local gateway did not start")
    # The gateway logs (EMF metrics included) on stdout: keep reading, or a full pipe blocks it.
    threading.Thread(target=process.stdout.read, daemon=True).start()
    return process, f"http://127.0.0.1:{port}", mock, key


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def measure_latency(requests: int, stream: bool) -> None:
    requests = min(requests, 500)  # plan pro allows 600 requests a minute
    process, gateway, mock, metered_key = start_gateway(free_port())
    body = {**BODY, "stream": stream}
    litellm = None
    binary = litellm_binary()
    try:
        with httpx.Client(timeout=30) as client:
            # A key without limits: a tenant whose record has none, a plan with none.
            keys_api = f"{gateway}/2015-03-31/functions/quotagate-keys/invocations"
            client.post(keys_api, json={"action": "create_tenant", "tenant": "open", "limits": {}})
            invoke = client.post(
                keys_api,
                json={"action": "create_key", "tenant": "open", "consumer": "free-of-limits", "plan": "unlimited"},
            )
            unmetered_key = invoke.json()["result"]["api_key"]
            paths = {
                "direct to mock model": (f"{mock}/v1/chat/completions", {}),
                "gateway, plan 'pro'": (f"{gateway}/v1/chat/completions", {"authorization": f"Bearer {metered_key}"}),
                "gateway, no limits": (f"{gateway}/v1/chat/completions", {"authorization": f"Bearer {unmetered_key}"}),
            }
            if binary:
                litellm, litellm_base, master = start_litellm(binary, mock, free_port())
                paths["LiteLLM proxy"] = (f"{litellm_base}/v1/chat/completions", {"authorization": f"Bearer {master}"})
            for _ in range(20):  # warm every path (connections, caches, imports)
                for url, headers in paths.values():
                    timed(client, url, body, headers)
            samples: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(requests):  # interleaved, so drift affects every path alike
                for name, (url, headers) in paths.items():
                    samples[name].append(timed(client, url, body, headers))
            # CPU per request of the serving process tree: what a loaded machine does not inflate.
            trees = {name: process.pid for name in paths if name.startswith("gateway")}
            if litellm is not None:
                trees["LiteLLM proxy"] = litellm.pid
            cpu = {}
            for name, pid in trees.items():
                url, headers = paths[name]
                before = tree_cpu_seconds(pid)
                for _ in range(50):
                    timed(client, url, body, headers)
                cpu[name] = (tree_cpu_seconds(pid) - before) / 50 * 1000
    finally:
        process.terminate()
        process.wait(timeout=10)
        if litellm is not None:
            litellm.terminate()
            litellm.wait(timeout=10)
    direct = samples["direct to mock model"]
    kind = "streaming (time to first content)" if stream else "non-streaming (whole answer)"
    print(
        f"{requests} {kind} requests per path, mock token delay 0, max_tokens {BODY['max_tokens']}; plan 'pro' "
        f"reserves and settles 3 key windows + 1 tenant window per request (moto as DynamoDB)"
        + ("" if binary else "; LiteLLM not installed (skipped)")
        + ":"
    )
    for name, values in samples.items():
        spent = f"   CPU {cpu[name]:6.2f} ms/request (process tree)" if name in cpu else ""
        print(f"  {name:22s}: median {statistics.median(values):7.2f} ms   p99 {percentile(values, 99):7.2f} ms{spent}")
        if name != "direct to mock model":
            added = [t - d for t, d in zip(values, direct, strict=True)]
            print(
                f"  {'  added over direct':22s}: median {statistics.median(added):7.2f} ms   "
                f"p99 {percentile(added, 99):7.2f} ms"
            )


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its descendants (make dev's moto server is one)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        todo.extend(children.get(current, []))
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def count_aws_calls(requests: int) -> None:
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "POWERTOOLS_METRICS_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": "ERROR",
        }
    )
    import boto3

    from quotagate import tables
    from quotagate_tools.local.__main__ import DEV_CONFIG, build_app
    from quotagate_tools.local.motoserver import start_moto_server
    from quotagate_tools.mock import MockServer, MockSettings, run_in_thread

    calls: collections.Counter[str] = collections.Counter()
    spent: collections.defaultdict[str, float] = collections.defaultdict(float)
    started: dict[int, float] = {}

    def before(model, context, **_):  # type: ignore[no-untyped-def]
        calls.update([f"{model.service_model.service_name}.{model.name}"])
        started[id(context)] = time.perf_counter()

    def after(model, context, **_):  # type: ignore[no-untyped-def]
        begun = started.pop(id(context), None)
        if begun is not None:
            spent[f"{model.service_model.service_name}.{model.name}"] += (time.perf_counter() - begun) * 1000

    boto3.setup_default_session()
    boto3.DEFAULT_SESSION.events.register("before-call", before)  # type: ignore[union-attr]
    boto3.DEFAULT_SESSION.events.register("after-call", after)  # type: ignore[union-attr]
    moto_url, stop_moto = start_moto_server()
    mock = MockServer(MockSettings(token_delay=0)).start()
    config = json.loads(DEV_CONFIG.read_text())
    config["plans"]["bench"] = {
        "limits": {"requests_per_minute": 100000, "tokens_per_minute": 10**8, "usd_per_day": 10**6},
        "models": "*",
    }
    config["default_tenant_limits"] = {"usd_per_month": 10**6}  # tenants without a record
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as handle:
        json.dump(config, handle)
    os.environ.update(
        {"AWS_ENDPOINT_URL": moto_url, "QG_MOCK_BASE_URL": mock.base_url.rstrip("/"), "QG_CONFIG_FILE": handle.name}
    )
    tables.create_all(boto3.client("dynamodb"))
    from functions.keys.handler import lambda_handler
    from quotagate_tools.local.apigateway import FakeLambdaContext

    key = lambda_handler(
        {"action": "create_key", "tenant": "bench", "consumer": "b", "plan": "bench"}, FakeLambdaContext("keys")
    )["result"]["api_key"]
    base, stop = run_in_thread(app=build_app(["Authorization"], 300.0))
    try:
        with httpx.Client(timeout=30) as client:
            headers = {"authorization": f"Bearer {key}"}
            timed(client, f"{base}/v1/chat/completions", BODY, headers)  # first request fills the caches
            calls.clear()
            spent.clear()
            latencies = [timed(client, f"{base}/v1/chat/completions", BODY, headers) for _ in range(requests)]
            time.sleep(0.2)
    finally:
        stop()
        mock.stop()
        stop_moto()
    print(
        f"AWS API calls per request (after the first; key with 3 key windows + 1 tenant window, {requests} requests):"
    )
    for name, count in sorted(calls.items()):
        print(f"  {name:40s} {count / requests:.2f} calls, {spent[name] / requests:6.2f} ms in moto per request")
    print(f"  {'total':40s} {sum(calls.values()) / requests:.2f} calls, {sum(spent.values()) / requests:6.2f} ms")
    print(f"  in-process request latency: median {statistics.median(latencies):.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    measure_latency(args.requests, args.stream)
    if not args.stream:
        count_aws_calls(min(args.requests, 50))


if __name__ == "__main__":
    main()
