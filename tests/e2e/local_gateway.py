"""``python -m quotagate_tools.local`` (what ``make dev`` runs) as a separate process, for end-to-end tests
that need its base URL and the URL of its local DynamoDB (moto), to read the quota back."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def running_local_gateway(
    token_delay: float = 0.002, extra_env: dict[str, str] | None = None
) -> Iterator[dict[str, Any]]:
    """``{"base": "http://127.0.0.1:<port>", "moto": <moto endpoint URL>, "process": <Popen>,
    "OPENAI_BASE_URL": ..., "OPENAI_API_KEY": ...}`` (what it printed) while the process runs."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("QG_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra_env or {})
    process = subprocess.Popen(
        [sys.executable, "-m", "quotagate_tools.local", "--port", str(port), "--token-delay", str(token_delay)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    found: dict[str, str] = {}
    ready = threading.Event()

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            moto = re.search(r"\(moto at (\S+?),", line)
            if moto:
                found["moto"] = moto.group(1)
            for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
                if line.startswith(f"{name}="):
                    found[name] = line.strip().split("=", 1)[1]
            if "OPENAI_API_KEY" in found:
                ready.set()

    threading.Thread(target=read_output, daemon=True).start()
    try:
        if not ready.wait(60) or "moto" not in found:
            raise AssertionError("the local gateway did not start:\n" + "".join(lines))
        yield {"base": f"http://127.0.0.1:{port}", "process": process, **found}
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
