"""A recording reverse proxy on loopback: forwards every request to the gateway unchanged, streams the
answer back chunk by chunk, and keeps what the client sent (method, path, headers minus credentials,
JSON body) and the status it got, so a run can count requests and save them as fixtures."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

# Headers that carry secrets, or that belong to one connection: never recorded.
UNRECORDED_HEADERS = frozenset(
    {"authorization", "x-api-key", "cookie", "host", "content-length", "connection", "accept-encoding"}
)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"})


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    credential_header: str | None
    status: int = 0
    answer: bytes = b""


@dataclass
class Recorder:
    upstream: str
    exchanges: list[Exchange] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> tuple[str, ThreadingHTTPServer]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                return

            def _forward(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body: Any = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                names = {name.lower() for name in self.headers}
                exchange = Exchange(
                    self.command,
                    self.path,
                    {k.lower(): v for k, v in self.headers.items() if k.lower() not in UNRECORDED_HEADERS},
                    body,
                    "authorization" if "authorization" in names else "x-api-key" if "x-api-key" in names else None,
                )
                with recorder.lock:
                    recorder.exchanges.append(exchange)
                headers = [(k, v) for k, v in self.headers.items() if k.lower() not in ("host", "content-length")]
                timeout = httpx.Timeout(connect=5, read=120, write=30, pool=5)
                with (
                    httpx.Client(timeout=timeout) as client,
                    client.stream(self.command, recorder.upstream + self.path, headers=headers, content=raw) as answer,
                ):
                    exchange.status = answer.status_code
                    self.send_response(answer.status_code)
                    for name, value in answer.headers.multi_items():
                        if name.lower() not in HOP_BY_HOP:
                            self.send_header(name, value)
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    for chunk in answer.iter_raw():
                        if len(exchange.answer) < 4096:
                            exchange.answer += chunk[: 4096 - len(exchange.answer)]
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="agents-recorder", daemon=True).start()
        return f"http://127.0.0.1:{server.server_address[1]}", server
