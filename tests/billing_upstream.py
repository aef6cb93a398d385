"""An OpenAI-compatible upstream that bills as the providers do, written for the test suite (not
the gateway's mock, not the gateway's estimate).

It streams ``/v1/chat/completions`` at a fixed token rate and keeps generating until its answer is
done, the output cap it was sent is reached, or it sees the connection close — every token it made
by then is billed, whether or not anyone read it. It knows nothing of the gateway: it counts one
token per delta (deltas are ``" w"``, which cl100k also counts as one token each, or ``"w "`` with
``delta_text``) and bills a fixed prompt of ``PROMPT_TOKENS`` (below any gateway estimate of a
non-empty request), plus ``IMAGE_TOKENS`` per ``image_url`` part (every image is a large one).

Request fields it reads: ``max_tokens`` / ``max_completion_tokens`` (the cap), ``stream_options``
(``include_usage``), ``messages`` (a text may carry ``reply=<n>``: the answer's natural length, else
``reply_tokens``; ``rate=<n>``: tokens per second, else ``tokens_per_second``; ``run=<id>``: the
bill's label). Plain HTTP/1.1 on asyncio streams, one connection per request
(``Connection: close``), served from a background thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from dataclasses import dataclass, field

PROMPT_TOKENS = 5
# What a high-resolution Claude model bills for a large image (Anthropic's table: 4,784 + the block).
IMAGE_TOKENS = 4_787
REPLY_PATTERN = re.compile(r"reply=(\d+)")
RATE_PATTERN = re.compile(r"rate=(\d+)")
RUN_PATTERN = re.compile(r"run=(\S+)")


@dataclass
class Bill:
    """One request as the upstream billed it."""

    cap: int | None
    run: str = ""
    prompt_tokens: int = PROMPT_TOKENS
    completion_tokens: int = 0
    saw_close: bool = False  # it stopped because the connection closed, not on its own
    done: bool = False

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class BillingUpstream:
    tokens_per_second: float
    reply_tokens: int = 10_000  # an "uncapped" answer: only the cap (or a close) ends it
    delta_text: str = " w"
    bills: list[Bill] = field(default_factory=list)
    base_url: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.AbstractServer | None = None

    # -- what was billed -------------------------------------------------------------------
    def billed(self, run: str) -> int:
        return sum(bill.total for bill in self.bills if bill.run == run)

    def runs(self, run: str) -> list[Bill]:
        return [bill for bill in self.bills if bill.run == run]

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until every generation has ended (the upstream has seen each connection close)."""
        deadline = time.monotonic() + timeout
        while not all(bill.done for bill in list(self.bills)):
            if time.monotonic() > deadline:
                raise AssertionError("the billing upstream is still generating")
            time.sleep(0.01)

    # -- serving ---------------------------------------------------------------------------
    def start(self) -> BillingUpstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            port = self._server.sockets[0].getsockname()[1]
            self.base_url = f"http://127.0.0.1:{port}"
            ready.set()
            loop.run_forever()
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=run, name="billing-upstream", daemon=True)
        self._thread.start()
        ready.wait(5)
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    def __enter__(self) -> BillingUpstream:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            body = json.loads(await reader.readexactly(length)) if length else {}
        except (asyncio.IncompleteReadError, ValueError, ConnectionError):
            writer.close()
            return
        await self._stream(body, reader, writer)

    @staticmethod
    def _asked(body: dict, pattern: re.Pattern[str]) -> str | None:
        """What the request's messages say for ``pattern`` (e.g. ``reply=40`` in a user text)."""
        for message in body.get("messages") or []:
            content = message.get("content")
            texts = (
                [content] if isinstance(content, str) else [p.get("text") for p in content or [] if isinstance(p, dict)]
            )
            for text in texts:
                if isinstance(text, str) and (match := pattern.search(text)):
                    return match.group(1)
        return None

    async def _stream(self, body: dict, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        caps = [body[k] for k in ("max_tokens", "max_completion_tokens") if isinstance(body.get(k), int)]
        cap = min(caps) if caps else None
        images = sum(
            1
            for message in body.get("messages") or []
            if isinstance(message.get("content"), list)
            for part in message["content"]
            if isinstance(part, dict) and part.get("type") == "image_url"
        )
        bill = Bill(cap, self._asked(body, RUN_PATTERN) or "", PROMPT_TOKENS + IMAGE_TOKENS * images)
        self.bills.append(bill)
        reply, rate = self._asked(body, REPLY_PATTERN), self._asked(body, RATE_PATTERN)
        length = int(reply) if reply else self.reply_tokens
        tokens_per_second = float(rate) if rate else self.tokens_per_second
        limit = length if cap is None else min(length, cap)
        closed = asyncio.ensure_future(reader.read())  # b"" when the gateway closes the connection
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        head = {"id": "chatcmpl-billing", "object": "chat.completion.chunk", "created": 1, "model": "billing"}
        started = time.monotonic()
        try:
            while bill.completion_tokens < limit:
                if closed.done() or writer.is_closing():
                    bill.saw_close = True
                    return
                due = min(limit, int((time.monotonic() - started) * tokens_per_second) + 1)
                while bill.completion_tokens < due:
                    bill.completion_tokens += 1  # generated: billed whether or not it is read
                    delta = {"content": self.delta_text}
                    chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                    writer.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                next_at = started + (bill.completion_tokens) / tokens_per_second
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            finish = "length" if cap is not None and bill.completion_tokens >= cap else "stop"
            end = {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
            writer.write(b"data: " + json.dumps(end).encode() + b"\n\n")
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {
                    "prompt_tokens": bill.prompt_tokens,
                    "completion_tokens": bill.completion_tokens,
                    "total_tokens": bill.total,
                }
                writer.write(b"data: " + json.dumps({**head, "choices": [], "usage": usage}).encode() + b"\n\n")
            writer.write(b"data: [DONE]\n\n")
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        finally:
            bill.done = True
            closed.cancel()
            writer.close()
