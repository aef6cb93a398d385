"""``python -m quotagate_tools.agents`` (what ``make agents`` runs): the real coding agents through a local
gateway.

1. Installs pinned Claude Code and Codex CLI from npm into a cache outside the tree
   (``~/.cache/quotagate-agents``, or ``$QG_AGENTS_CACHE``), unless that exact version is there.
2. Starts ``python -m quotagate_tools.local`` (what ``make dev`` runs) on a free loopback port and a
   recording proxy in front of it (every request counted; method, path, headers minus credentials
   and body kept).
3. Runs each agent non-interactively, bounded in time, with a throw-away home and its telemetry,
   update checks and other traffic off, so the only host it talks to is 127.0.0.1:
   ``claude -p`` (text, ``Authorization: Bearer`` from ``ANTHROPIC_AUTH_TOKEN``) and ``claude -p
   --output-format stream-json`` (``x-api-key`` from ``ANTHROPIC_API_KEY``, only the ``Read`` tool, so
   the mock's tool call is one the agent can carry out and send back) on mock-claude, mock-gpt and
   mock-bedrock; ``codex exec`` with its default configuration plus only a custom model provider
   (``wire_api = "responses"``, ``base_url``, ``env_key``) in a temporary ``CODEX_HOME``; and both
   agents with a key whose daily token budget runs out mid-session.
4. Prints a table: exit status, requests sent, statuses seen, whether a tool round trip happened,
   and for the budget runs the message the agent showed and what the upstream billed.

``--record DIR`` writes each agent's requests as fixtures (``tests/fixtures/agents/``), replayed by
``tests/integration/test_agent_fixtures.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from quotagate_tools.agents.recorder import Exchange, Recorder

CLAUDE_CODE = ("@anthropic-ai/claude-code", "2.1.332")
CODEX = ("@openai/codex", "0.171.0")
CACHE = Path(os.environ.get("QG_AGENTS_CACHE") or Path.home() / ".cache" / "quotagate-agents")
RUN_SECONDS = 180
# Daily token budgets that the first request of a session fits in and a later one does not: Claude
# Code's request reserves about 3,500 prompt + 41,600 output tokens (32,000 max_tokens plus thinking),
# Codex's about 8,800 prompt (as the gateway estimates it) + the plan's default output cap (1,024).
CLAUDE_BUDGET_TOKENS_PER_DAY = 47_000
CODEX_BUDGET_TOKENS_PER_DAY = 13_000
# Everything an agent would otherwise send elsewhere (telemetry, updates, error reports, feedback).
QUIET_ENV = {
    "DISABLE_TELEMETRY": "1",
    "DISABLE_AUTOUPDATER": "1",
    "DISABLE_ERROR_REPORTING": "1",
    "DISABLE_BUG_COMMAND": "1",
    "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
    "CLAUDE_CODE_DISABLE_FEEDBACK_SURVEY": "1",
    "NO_PROXY": "127.0.0.1,localhost",
    "CI": "1",
}


def installed_version(binary: Path) -> str:
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    found = re.search(r"\d+\.\d+\.\d+", out)
    return found.group(0) if found else ""


def install() -> dict[str, Path]:
    bins = {"claude": CACHE / "node_modules" / ".bin" / "claude", "codex": CACHE / "node_modules" / ".bin" / "codex"}
    wanted = {"claude": CLAUDE_CODE[1], "codex": CODEX[1]}
    if any(installed_version(path) != wanted[name] for name, path in bins.items()):
        CACHE.mkdir(parents=True, exist_ok=True)
        packages = [f"{name}@{version}" for name, version in (CLAUDE_CODE, CODEX)]
        print(f"installing {' '.join(packages)} into {CACHE}", flush=True)
        subprocess.run(
            ["npm", "install", "--prefix", str(CACHE), "--no-audit", "--no-fund", *packages], check=True, timeout=600
        )
    return bins


@dataclass
class Gateway:
    base: str
    mock: str
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    def keys(self, action: dict[str, Any]) -> dict[str, Any]:
        import boto3

        client = boto3.client(
            "lambda",
            endpoint_url=self.base,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",  # noqa: S106 - the local emulation's dummy credentials
        )
        answer = json.loads(client.invoke(FunctionName="quotagate-keys", Payload=json.dumps(action))["Payload"].read())
        if not answer.get("ok"):
            raise RuntimeError(f"keys API: {answer}")
        return answer["result"]

    def key(self, tenant: str, limits: dict[str, int] | None = None) -> str:
        fields: dict[str, Any] = {"action": "create_key", "tenant": tenant, "consumer": "agent", "plan": "pro"}
        if limits:
            fields["limits"] = limits
        return str(self.keys(fields)["api_key"])

    def upstream_tokens(self) -> int:
        """Tokens the mock upstream has answered with usage so far (prompt + completion)."""
        stats = httpx.get(f"{self.mock}/mock/stats", timeout=5).json()
        return int(stats.get("prompt_tokens", 0)) + int(stats.get("completion_tokens", 0))


def start_gateway(port: int) -> Gateway:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QG_")}
    env.update({"PYTHONUNBUFFERED": "1", "POWERTOOLS_METRICS_DISABLED": "true"})
    process = subprocess.Popen(
        [sys.executable, "-m", "quotagate_tools.local", "--port", str(port), "--token-delay", "0"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    found: dict[str, str] = {}
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            mock = re.search(r"mock models at (\S+?)\)", line)
            if mock:
                found["mock"] = mock.group(1).rstrip("/")
            if line.startswith("Try:"):
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    if not ready.wait(120) or "mock" not in found:
        process.kill()
        raise RuntimeError("the local gateway did not start:\n" + "".join(lines[-30:]))
    base = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return Gateway(base, found["mock"], process, lines)


@dataclass
class Run:
    agent: str
    label: str
    model: str
    exit_code: int | None
    output: str
    exchanges: list[Exchange]
    seconds: float
    upstream_tokens: int = 0

    @property
    def statuses(self) -> str:
        counts: dict[int, int] = {}
        for exchange in self.exchanges:
            counts[exchange.status] = counts.get(exchange.status, 0) + 1
        return " ".join(f"{status}x{n}" for status, n in sorted(counts.items()))

    @property
    def tool_round_trip(self) -> bool:
        """A request that sends a tool's result back (Messages tool_result, Responses function_call_output)."""
        text = json.dumps([e.body for e in self.exchanges])
        return '"tool_result"' in text or '"function_call_output"' in text or '"custom_tool_call_output"' in text

    @property
    def model_requests(self) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == "POST"]


def run_agent(
    recorder: Recorder,
    gateway: Gateway,
    agent: str,
    label: str,
    model: str,
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
) -> Run:
    first = len(recorder.exchanges)
    billed_before = gateway.upstream_tokens()
    started = time.monotonic()
    try:
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=RUN_SECONDS)
        code: int | None = done.returncode
        # The answer first (its first line is what the table shows), then anything the agent warned about.
        output = (done.stdout.strip() + "\n" + done.stderr.strip()).strip()
    except subprocess.TimeoutExpired as timeout:
        code = None
        output = f"timed out after {RUN_SECONDS} s: {timeout.stdout!r}"
    time.sleep(0.5)  # the recorder finishes the last exchange
    with recorder.lock:
        exchanges = recorder.exchanges[first:]
    return Run(
        agent,
        label,
        model,
        code,
        output,
        exchanges,
        time.monotonic() - started,
        gateway.upstream_tokens() - billed_before,
    )


def agent_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANTHROPIC_", "OPENAI_", "CODEX_", "QG_"))}
    env.update(QUIET_ENV)
    env["HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    return env


def claude_runs(bins: dict[str, Path], recorder: Recorder, gateway: Gateway, url: str, work: Path) -> list[Run]:
    runs = []
    for model in ("mock-claude", "mock-gpt", "mock-bedrock"):
        key = gateway.key(f"agents-{model}")
        for label, credential, extra in (
            ("text, Bearer", "ANTHROPIC_AUTH_TOKEN", ["--output-format", "text", "--tools", ""]),
            (
                "stream-json + Read, x-api-key",
                "ANTHROPIC_API_KEY",
                ["--output-format", "stream-json", "--verbose", "--tools", "Read"],
            ),
        ):
            home = Path(tempfile.mkdtemp(prefix="claude-home-", dir=work))
            env = agent_env(home)
            env.update(
                {
                    "ANTHROPIC_BASE_URL": url,
                    credential: key,
                    "ANTHROPIC_MODEL": model,
                    "ANTHROPIC_SMALL_FAST_MODEL": model,
                    "ANTHROPIC_DEFAULT_HAIKU_MODEL": model,
                    "ANTHROPIC_DEFAULT_SONNET_MODEL": model,
                    "ANTHROPIC_DEFAULT_OPUS_MODEL": model,
                }
            )
            argv = [str(bins["claude"]), "-p", "Say hi, then read the file notes.txt.", "--model", model, *extra]
            argv += ["--allowedTools", "Read", "--max-turns", "4"]
            runs.append(run_agent(recorder, gateway, "claude", label, model, argv, env, work))
    return runs


def codex_config(home: Path, url: str, model: str) -> None:
    """Codex's defaults plus only the provider settings."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'model = "{model}"\n'
        'model_provider = "quotagate"\n\n'
        "[model_providers.quotagate]\n"
        'name = "Quotagate"\n'
        f'base_url = "{url}/v1"\n'
        'env_key = "QUOTAGATE_API_KEY"\n'
        'wire_api = "responses"\n'
    )


def codex_run(
    bins: dict[str, Path], recorder: Recorder, gateway: Gateway, url: str, work: Path, key: str, label: str
) -> Run:
    home = Path(tempfile.mkdtemp(prefix="codex-home-", dir=work))
    codex_config(home / ".codex", url, "mock-gpt")
    env = agent_env(home)
    env.update({"CODEX_HOME": str(home / ".codex"), "QUOTAGATE_API_KEY": key})
    argv = [str(bins["codex"]), "exec", "--skip-git-repo-check", "--ephemeral", "Say hi, then list the files here."]
    return run_agent(recorder, gateway, "codex", label, "mock-gpt", argv, env, work)


def wrong_key_runs(bins: dict[str, Path], recorder: Recorder, gateway: Gateway, url: str, work: Path) -> list[Run]:
    """A key the gateway never issued: one request each, then the error (401 with x-should-retry: false)."""
    wrong = "qg_wrong"
    home = Path(tempfile.mkdtemp(prefix="claude-home-", dir=work))
    env = agent_env(home)
    env.update({"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": wrong, "ANTHROPIC_SMALL_FAST_MODEL": "mock-claude"})
    argv = [str(bins["claude"]), "-p", "say hi", "--model", "mock-claude", "--output-format", "text", "--tools", ""]
    runs = [run_agent(recorder, gateway, "claude", "wrong key", "mock-claude", argv, env, work)]
    runs.append(codex_run(bins, recorder, gateway, url, work, wrong, "wrong key"))
    return runs


def budget_runs(bins: dict[str, Path], recorder: Recorder, gateway: Gateway, url: str, work: Path) -> list[Run]:
    runs = []
    key = gateway.key("agents-budget-claude", {"tokens_per_day": CLAUDE_BUDGET_TOKENS_PER_DAY})
    home = Path(tempfile.mkdtemp(prefix="claude-home-", dir=work))
    env = agent_env(home)
    env.update({"ANTHROPIC_BASE_URL": url, "ANTHROPIC_API_KEY": key, "ANTHROPIC_SMALL_FAST_MODEL": "mock-claude"})
    env["ANTHROPIC_DEFAULT_HAIKU_MODEL"] = "mock-claude"
    argv = [str(bins["claude"]), "-p", "Read notes.txt, then summarise it.", "--model", "mock-claude"]
    argv += ["--output-format", "text", "--tools", "Read", "--allowedTools", "Read", "--max-turns", "6"]
    label = f"budget {CLAUDE_BUDGET_TOKENS_PER_DAY} tokens/day"
    runs.append(run_agent(recorder, gateway, "claude", label, "mock-claude", argv, env, work))
    codex_key = gateway.key("agents-budget-codex", {"tokens_per_day": CODEX_BUDGET_TOKENS_PER_DAY})
    label = f"budget {CODEX_BUDGET_TOKENS_PER_DAY} tokens/day"
    runs.append(codex_run(bins, recorder, gateway, url, work, codex_key, label))
    return runs


def record(runs: list[Run], directory: Path) -> None:
    """The first model request of each run (and the one that sends a tool's result back), as fixtures."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "exchanges.log").open("w") as log:  # every status and the start of every answer
        for run in runs:
            for exchange in run.exchanges:
                answer = exchange.answer[:600].decode("utf-8", "replace")
                log.write(f"{run.agent} {run.model} {run.label}: {exchange.method} {exchange.path} {exchange.status}\n")
                log.write(f"    {answer!r}\n")
    for run in runs:
        if run.label.startswith(("budget", "wrong key")):
            continue
        requests = run.model_requests
        chosen = requests[:1] + [e for e in requests[1:] if '"tool_result"' in json.dumps(e.body)][:1]
        for index, exchange in enumerate(chosen):
            slug = re.sub(r"[^a-z0-9]+", "-", f"{run.agent} {run.model} {run.label} {index}".lower()).strip("-")
            fixture = {
                "agent": run.agent,
                "label": run.label,
                "method": exchange.method,
                "path": exchange.path,
                "credential_header": exchange.credential_header,
                "headers": exchange.headers,
                "body": exchange.body,
            }
            (directory / f"{slug}.json").write_text(json.dumps(fixture, indent=1, sort_keys=True) + "\n")


def summary(run: Run) -> str:
    if run.label.startswith(("budget", "wrong key")):
        pattern = r"budget|quota|limit|429|exceed|401|key|auth"
        lines = [line for line in run.output.splitlines() if re.search(pattern, line, re.I)]
        return (lines[-1] if lines else run.output.splitlines()[-1] if run.output else "")[:90]
    return (run.output.splitlines()[0] if run.output else "")[:60]


def print_table(runs: list[Run]) -> None:
    print()
    print(f"{'agent':7} {'model':13} {'run':36} {'exit':>5} {'reqs':>5} {'statuses':18} {'tool rt':7} {'s':>5}  output")
    for run in runs:
        print(
            f"{run.agent:7} {run.model:13} {run.label:36} {run.exit_code!s:>5} {len(run.exchanges):5d} "
            f"{run.statuses:18} {'yes' if run.tool_round_trip else 'no':7} {run.seconds:5.1f}  {summary(run)}"
        )
    for run in runs:
        if run.label.startswith("budget"):
            limit = CLAUDE_BUDGET_TOKENS_PER_DAY if run.agent == "claude" else CODEX_BUDGET_TOKENS_PER_DAY
            print(
                f"{run.agent} budget run: {len(run.model_requests)} model requests, upstream billed "
                f"{run.upstream_tokens} tokens of a {limit}-token day "
                f"({'within' if run.upstream_tokens <= limit else 'OVER'} the limit)"
            )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m quotagate_tools.agents", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="the local gateway's port (default: a free one)")
    parser.add_argument("--record", type=Path, default=None, help="write the agents' requests as fixtures here")
    parser.add_argument("--only", choices=["claude", "codex", "budget", "wrong-key"], action="append")
    args = parser.parse_args(argv)
    if not shutil.which("npm"):
        print("npm is needed to install the agents", file=sys.stderr)
        return 1
    bins = install()
    gateway = start_gateway(args.port or free_port())
    recorder = Recorder(gateway.base)
    url, server = recorder.start()
    work = Path(tempfile.mkdtemp(prefix="quotagate-agents-"))
    (work / "notes.txt").write_text("Quotagate notes: budgets are reserved before a model is called.\n")
    runs: list[Run] = []
    try:
        only = set(args.only or ["claude", "codex", "budget", "wrong-key"])
        if "claude" in only:
            runs += claude_runs(bins, recorder, gateway, url, work)
        if "codex" in only:
            runs.append(codex_run(bins, recorder, gateway, url, work, gateway.key("agents-codex"), "exec, defaults"))
        if "budget" in only:
            runs += budget_runs(bins, recorder, gateway, url, work)
        if "wrong-key" in only:
            runs += wrong_key_runs(bins, recorder, gateway, url, work)
    finally:
        server.shutdown()
        gateway.process.terminate()
        try:
            gateway.process.wait(10)
        except subprocess.TimeoutExpired:
            gateway.process.kill()
        shutil.rmtree(work, ignore_errors=True)
    print_table(runs)
    if args.record:
        record(runs, args.record)
        print(f"fixtures written to {args.record}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
