"""A moto server that handles ONE request at a time, for local mode and concurrency tests.

moto's in-process ``mock_aws`` is not atomic under concurrency (conditional ``ADD`` from many
threads admits too many and loses updates), and ``ThreadedMotoServer`` serves each request on its
own thread. Serving moto's WSGI app from a single-threaded werkzeug server makes every API call
atomic, which matches DynamoDB's per-item atomicity — so a race that shows up here is a real race
in the gateway, never something to hide with a lock in gateway code.

The server speaks HTTP/1.0 (werkzeug's default when not threaded): every response closes its
connection, so one slow client cannot hold the single worker. Pending connections wait in the
listen backlog (128).
"""

from __future__ import annotations

import threading
import urllib.request
from typing import TYPE_CHECKING

from quotagate_tools.local import fast_moto

if TYPE_CHECKING:
    from collections.abc import Callable

_DEFAULT_HOST = "127.0.0.1"


def start_moto_server(
    port: int = 0, host: str = _DEFAULT_HOST, *, log_requests: bool = False
) -> tuple[str, Callable[[], None]]:
    """Start moto on ``host:port`` (0: any free port) in a daemon thread.

    Returns ``(endpoint_url, stop)``. Point boto3 at it with ``endpoint_url=`` or
    ``AWS_ENDPOINT_URL`` (any dummy credentials and region). ``stop()`` is idempotent.
    Per-request access log lines are off unless ``log_requests``; errors are still logged.
    """
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    class Handler(MotoRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            if log_requests:
                super().log_request(code, size)

    fast_moto.install()
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(host, port, app, threaded=False, processes=1, request_handler=Handler)
    bound_port = server.socket.getsockname()[1]
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.1},
        name=f"moto-server-{bound_port}",
        daemon=True,
    )
    thread.start()
    stopped = threading.Event()
    lock = threading.Lock()

    def stop() -> None:
        with lock:
            if stopped.is_set():
                return
            stopped.set()
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    url_host = f"[{host}]" if ":" in host else host
    return f"http://{url_host}:{bound_port}", stop


def reset_moto_server(endpoint_url: str) -> None:
    """Drop every resource moto holds (all services), through moto's own reset API."""
    url = f"{endpoint_url.rstrip('/')}/moto-api/reset"
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"not an http(s) endpoint: {endpoint_url!r}")
    request = urllib.request.Request(url, data=b"", method="POST")  # noqa: S310 - scheme checked above
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - our own loopback server
        response.read()


def start_moto_process(port: int = 0, host: str = _DEFAULT_HOST) -> tuple[str, Callable[[], None], int]:
    """The same one-request-at-a-time moto server, in a process of its own (local mode): its work
    never competes with the proxy's for the interpreter lock, and it ends with its parent (it
    exits when its stdin closes). Returns ``(endpoint_url, stop, stdin descriptor)``: a forked
    child must close that descriptor, or moto outlives the parent."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "quotagate_tools.local.motoserver", "--port", str(port), "--host", host],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("http"):
        process.kill()
        raise RuntimeError(f"the moto server process did not start: {line!r}")

    def stop() -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()

    assert process.stdin is not None
    return line, stop, process.stdin.fileno()


def main() -> None:
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m quotagate_tools.local.motoserver", description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default=_DEFAULT_HOST)
    args = parser.parse_args()
    url, stop = start_moto_server(args.port, args.host)
    print(url, flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or exits)
    stop()


if __name__ == "__main__":
    main()
