"""The proxy's cold start does not pay for pydantic: it builds its configuration from the document the
synth validated (or local mode's start-up), and none of its modules imports the validation models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROXY_START = """
import json, sys
import functions.proxy.app
import quotagate.logic.gateway, quotagate.providers.factory, quotagate.logic.auth
from quotagate.config import load_config
config = load_config()
print(json.dumps({"pydantic": sorted(m for m in sys.modules if m.split(".")[0] in ("pydantic", "pydantic_core")),
                  "plans": sorted(config.plans)}))
"""


def test_the_proxy_loads_its_config_without_importing_pydantic():
    env = {
        **os.environ,
        "QG_CONFIG_FILE": str(ROOT / "layers/core/quotagate/default_config.json"),
        "AWS_DEFAULT_REGION": "us-east-1",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROXY_START], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["plans"] == ["enterprise", "free", "pro"]
    assert seen["pydantic"] == []
