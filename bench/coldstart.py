"""Cold start and memory of the local gateway, and of the proxy app alone.

1. ``python -m quotagate_tools.local`` (what ``make dev`` runs) as a process: time from process start to
   the first answered chat completion, and the resident memory of its process tree (the gateway, its
   moto server and its background process) after N requests: with shared pages counted once (PSS)
   and summed per process (RSS).
2. The proxy app alone, started by ``functions/proxy/run.sh`` as the Lambda Web Adapter starts it:
   time from process start to a ready ``/health`` (the adapter's readiness check: the end of init)
   and to its first answered request, in wall time and in the process's CPU time (which a loaded
   machine does not inflate), and its peak memory. Printed in three parts: the interpreter's own
   start (``python3 -c pass``), the proxy's imports and init (the rest of the time to /health), and
   the first request (services built on first use, key check, reservation, the model's answer).
   The proxy runs with byte-code for every module, as the layers ship it (cdk_app/bundling.py): a
   byte-code cache of its own (PYTHONPYCACHEPREFIX) filled by one unmeasured start. ``--source-only``
   compiles the gateway's own modules at every start instead (PYTHONDONTWRITEBYTECODE, no cache), as
   a layer built without a CPython 3.13 would (there, the third-party modules would be compiled too).

Usage: python bench/coldstart.py [--runs 3] [--requests 100] [--proxy-only] [--source-only]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def peak_rss_mib(pid: int, field: str = "VmHWM") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (make dev's moto server is a child process)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of the whole process tree (``VmHWM``: the sum of each process's peak)."""
    return sum(peak_rss_mib(p, field) for p in process_tree(pid))


def tree_pss_mib(pid: int) -> float:
    """Proportional resident memory of the tree: a page shared by n processes counts 1/n in each
    (make dev's background process is forked from the gateway and shares its modules' pages), so
    the sum counts every resident page once, where the sum of RSS counts shared pages per process."""
    total = 0.0
    for member in process_tree(pid):
        try:
            rollup = Path(f"/proc/{member}/smaps_rollup").read_text()
        except OSError:
            continue
        total += sum(int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")) / 1024
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (load-independent, unlike wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chat(base: str, key: str, header: str = "authorization") -> int:
    body = json.dumps(
        {"model": "mock-gpt", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8}
    ).encode()
    request = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=body,
        method="POST",
        headers={header: f"Bearer {key}" if header == "authorization" else key, "content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        return response.status


def local_gateway(requests: int) -> tuple[float, float, float, float]:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    process = subprocess.Popen(
        # make dev's plan: the default demo plan (free, 60 requests a minute) refuses the 61st request.
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
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        key = None
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("OPENAI_API_KEY="):
                key = line.strip().split("=", 1)[1]
                break
        if key is None:
            raise RuntimeError("the local gateway did not print a key")
        # The gateway logs (EMF metrics included) on stdout: keep reading, or a full pipe blocks it.
        threading.Thread(target=process.stdout.read, daemon=True).start()
        base = f"http://127.0.0.1:{port}"
        while True:
            try:
                if chat(base, key) == 200:
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.005)
        first_answer = time.perf_counter() - started
        for _ in range(requests):
            chat(base, key)
        return (
            first_answer,
            tree_rss_mib(process.pid, "VmHWM"),
            tree_rss_mib(process.pid, "VmRSS"),
            tree_pss_mib(process.pid),
        )
    finally:
        process.terminate()
        process.wait(timeout=10)


def aws_and_model_for_proxy() -> tuple[dict[str, str], str]:
    """A single-threaded moto server with the tables and a key, and the mock model server, in this
    process: what the proxy process will call. Returns its environment and the key."""
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "POWERTOOLS_LOG_LEVEL": "ERROR",
            "POWERTOOLS_METRICS_DISABLED": "true",
        }
    )
    sys.path.insert(0, str(ROOT))
    import boto3

    from functions.keys.handler import lambda_handler
    from quotagate import tables
    from quotagate_tools.local.apigateway import FakeLambdaContext
    from quotagate_tools.local.motoserver import start_moto_server
    from quotagate_tools.mock import MockServer, MockSettings

    moto_url, _ = start_moto_server()
    mock = MockServer(MockSettings(token_delay=0)).start()
    env = {
        "AWS_ENDPOINT_URL": moto_url,
        "QG_MOCK_BASE_URL": mock.base_url.rstrip("/"),
        "QG_CONFIG_FILE": str(ROOT / "tools/quotagate_tools/local/dev_config.json"),
    }
    os.environ.update(env)
    tables.create_all(boto3.client("dynamodb"))
    created = lambda_handler(
        {"action": "create_key", "tenant": "bench", "consumer": "cold", "plan": "pro"}, FakeLambdaContext("keys")
    )
    return env, created["result"]["api_key"]


PROXY_DIR = ROOT / "functions/proxy"


def proxy_environment(proxy_env: dict[str, str]) -> dict[str, str]:
    """What run.sh sees: this interpreter's ``bin`` first on PATH (run.sh starts ``python3``)."""
    return {**os.environ, **proxy_env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def with_bytecode_cache(proxy_env: dict[str, str], cache_dir: str) -> dict[str, str]:
    """``proxy_env`` with a byte-code cache of its own (written on the first start, read afterwards)."""
    return {**proxy_env, "PYTHONPYCACHEPREFIX": cache_dir, "PYTHONDONTWRITEBYTECODE": ""}


def interpreter_start(env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds of ``python3 -c pass`` in the proxy's environment: the part of the
    proxy's start that is the interpreter's own (the runtime's, not the gateway's)."""
    before = os.times()
    started = time.perf_counter()
    subprocess.run(["python3", "-c", "pass"], cwd=PROXY_DIR, env=env, check=True)
    wall = time.perf_counter() - started
    after = os.times()
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def proxy_alone(proxy_env: dict[str, str], key: str) -> tuple[float, float, float, float, float]:
    """The proxy app started by its ``run.sh``, as the Lambda Web Adapter starts it, called the
    function-URL way (no authorizer: it validates the key itself): time to /health ready (the
    adapter's readiness check, i.e. the end of Lambda's init) and to the first answered chat
    completion."""
    port = free_port()
    env = {**proxy_environment(proxy_env), "PORT": str(port)}
    started = time.perf_counter()
    process = subprocess.Popen(
        ["bash", str(PROXY_DIR / "run.sh")],
        cwd=PROXY_DIR,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.002)
        ready, ready_cpu = time.perf_counter() - started, cpu_seconds(process.pid)
        base = f"http://127.0.0.1:{port}"
        if chat(base, key) != 200:  # the default identity source, Authorization
            raise RuntimeError("the proxy did not answer")
        answered = time.perf_counter() - started
        return ready, answered, peak_rss_mib(process.pid), ready_cpu, cpu_seconds(process.pid)
    finally:
        process.terminate()
        process.wait(timeout=10)


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--proxy-only", action="store_true", help="skip the local gateway (make dev) part")
    parser.add_argument(
        "--source-only", action="store_true", help="compile the gateway's modules at every proxy start (no byte-code)"
    )
    args = parser.parse_args()
    gateway = [] if args.proxy_only else [local_gateway(args.requests) for _ in range(args.runs)]
    proxy_env, key = aws_and_model_for_proxy()
    with tempfile.TemporaryDirectory(prefix="coldstart-pyc-") as cache_dir:
        if not args.source_only:
            proxy_env = with_bytecode_cache(proxy_env, cache_dir)
            proxy_alone(proxy_env, key)  # writes the byte-code; not measured
        proxy = [proxy_alone(proxy_env, key) for _ in range(args.runs)]
        interpreter = [interpreter_start(proxy_environment(proxy_env)) for _ in range(args.runs)]
    if gateway:
        print_local_gateway(gateway, args.runs, args.requests)
    print(
        "proxy modules: compiled at every start (--source-only)"
        if args.source_only
        else "proxy modules: from byte-code, as the layers ship them"
    )
    print_proxy_alone(proxy, interpreter, args.runs)


def print_local_gateway(gateway: list[tuple[float, float, float, float]], runs: int, requests: int) -> None:
    print(
        f"local gateway (make dev): process start -> first answered chat completion: "
        f"median {statistics.median(g[0] for g in gateway) * 1000:.0f} ms over {runs} runs "
        f"(min {min(g[0] for g in gateway) * 1000:.0f}, max {max(g[0] for g in gateway) * 1000:.0f})"
    )
    print(
        f"local gateway process tree (the gateway, its moto server and its background process) after "
        f"{requests + 1} requests: resident {max(g[3] for g in gateway):.1f} MiB counting shared pages once "
        f"(PSS); {max(g[2] for g in gateway):.1f} MiB summing each process's RSS; sum of peaks "
        f"{max(g[1] for g in gateway):.1f} MiB"
    )


def print_proxy_alone(
    proxy: list[tuple[float, float, float, float, float]], interpreter: list[tuple[float, float]], runs: int
) -> None:
    start_wall, start_cpu = [i[0] for i in interpreter], [i[1] for i in interpreter]
    ready_wall, ready_cpu = [p[0] for p in proxy], [p[3] for p in proxy]
    answer_wall, answer_cpu = [p[1] for p in proxy], [p[4] for p in proxy]
    print(f"proxy app alone (functions/proxy/run.sh, as the Lambda Web Adapter starts it), medians of {runs} runs:")
    print(
        f"  interpreter start (python3 -c pass, the runtime's part): {ms(start_wall)} ms wall, {ms(start_cpu)} ms CPU"
    )
    print(
        "  imports and init (the proxy's part: process start -> /health ready, less interpreter start): "
        f"{ms([r - s for r, s in zip(ready_wall, start_wall, strict=True)])} ms wall, "
        f"{ms([r - s for r, s in zip(ready_cpu, start_cpu, strict=True)])} ms CPU   [issue 21 goal: <= 150 ms]"
    )
    print(
        "  first request (/health ready -> first answered chat completion: services built, key check, "
        "quota reserve/settle in moto, mock model): "
        f"{ms([a - r for a, r in zip(answer_wall, ready_wall, strict=True)])} ms wall, "
        f"{ms([a - r for a, r in zip(answer_cpu, ready_cpu, strict=True)])} ms CPU"
    )
    print(
        f"  process start -> /health ready: {ms(ready_wall)} ms wall, {ms(ready_cpu)} ms CPU; "
        f"-> first answered chat completion: {ms(answer_wall)} ms wall, {ms(answer_cpu)} ms CPU   "
        f"[issue 21 goal: <= 400 ms]; peak RSS {max(p[2] for p in proxy):.1f} MiB"
    )


if __name__ == "__main__":
    main()
