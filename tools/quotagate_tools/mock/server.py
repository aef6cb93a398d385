"""The mock model server: the default upstream locally and the tests' upstream.

``create_app(settings)`` builds a Starlette app serving every dialect -- OpenAI chat completions and
models (:mod:`~quotagate_tools.mock.openai_chat`), Anthropic Messages
(:mod:`~quotagate_tools.mock.anthropic`), Bedrock Converse (:mod:`~quotagate_tools.mock.bedrock`),
OpenAI embeddings (:mod:`~quotagate_tools.mock.embeddings`) -- plus ``GET /mock/stats``,
``POST /mock/stats/reset``, ``GET /mock/requests`` (recent request bodies, credentials redacted) and
``GET /health``.

The same counters are in-process on ``app.state.stats`` (a :class:`~quotagate_tools.mock.stats.MockStats`).
``run_in_thread`` / :class:`MockServer` serve an app with uvicorn on loopback in a background
thread. Faults are described in :mod:`quotagate_tools.mock.faults`; replies in :mod:`quotagate_tools.mock.vocab`.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from quotagate_tools.mock import vocab
from quotagate_tools.mock.anthropic import anthropic_routes
from quotagate_tools.mock.bedrock import bedrock_routes
from quotagate_tools.mock.embeddings import embeddings_routes
from quotagate_tools.mock.exchange import StreamCut
from quotagate_tools.mock.openai_chat import openai_routes
from quotagate_tools.mock.openai_errors import OpenAIError
from quotagate_tools.mock.settings import MockSettings
from quotagate_tools.mock.stats import MockStats

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.requests import Request


async def get_stats(request: Request) -> Response:
    return JSONResponse(request.app.state.stats.snapshot())


async def reset_stats(request: Request) -> Response:
    request.app.state.stats.reset()
    return JSONResponse(request.app.state.stats.snapshot())


async def get_requests(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": request.app.state.stats.recent_requests})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else None
    message = f"{request.method} {request.url.path}: {exc.detail}"
    return OpenAIError(exc.status_code, message, code=code).response()


class _QuietCutFilter(logging.Filter):
    """Drop uvicorn's "Exception in ASGI application" traceback for cuts made on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _is_cut(record.exc_info[1]))


def _is_cut(exc: BaseException | None) -> bool:
    if isinstance(exc, StreamCut):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(_is_cut(e) for e in exc.exceptions)
    return False


_CUT_FILTER = _QuietCutFilter()


def create_app(settings: MockSettings | None = None) -> Starlette:
    """The mock model server as an ASGI app. ``app.state.stats`` is its :class:`MockStats`."""
    settings = settings or MockSettings()
    settings.check()  # fail at start-up, not on the first request
    vocab.verify_vocabulary()
    logging.getLogger("uvicorn.error").addFilter(_CUT_FILTER)  # idempotent

    app = Starlette(
        routes=[
            *openai_routes(),  # POST /v1/chat/completions, GET /v1/models[/{id}]
            *anthropic_routes(),  # POST /v1/messages (Anthropic Messages API)
            *bedrock_routes(),  # POST /model/{id}/converse[-stream] (Bedrock Runtime)
            *embeddings_routes(),  # POST /v1/embeddings (OpenAI)
            Route("/mock/stats", get_stats, methods=["GET"]),
            Route("/mock/stats/reset", reset_stats, methods=["POST"]),
            Route("/mock/requests", get_requests, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.settings = settings
    app.state.stats = MockStats(settings.recent_requests)
    return app


def bind_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound TCP socket (port 0 = a free port, read it with ``getsockname()``)."""
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on connections of a socket whose proto
    # says TCP; without it, Nagle + delayed ACK add ~40 ms to every keep-alive response.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class MockServer:
    """The mock served by uvicorn on loopback in a daemon thread.

    ::

        with MockServer(MockSettings(token_delay=0.001)) as mock:
            OpenAI(base_url=mock.openai_base_url, api_key="x")...
            assert mock.stats.completed == 1

    ``start()`` returns once the server accepts connections; ``stop()`` is idempotent and bounded.
    Pass ``app=`` to serve an app you already built (for example one whose stats you hold).
    """

    def __init__(
        self,
        settings: MockSettings | None = None,
        *,
        app: Starlette | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        startup_timeout: float = 10.0,
    ) -> None:
        self.app = app if app is not None else create_app(settings)
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._error: BaseException | None = None

    @property
    def stats(self) -> MockStats:
        return self.app.state.stats

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash, no ``/v1``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """``base_url + "/v1"``: what the ``openai`` SDK wants as ``base_url``."""
        return self.base_url + "/v1"

    def start(self) -> MockServer:
        import uvicorn

        if self._thread is not None:
            raise RuntimeError("MockServer already started")
        self._sock = bind_socket(self.host, self.port)
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            host=self.host,
            port=self.port,
            log_config=None,  # leave the host process's logging alone
            access_log=False,
            # "auto": an app with a lifespan (the proxy app keeps its services in lifespan state) gets it.
            lifespan="auto",
            ws="none",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)

        def run() -> None:
            try:
                self._server.run(sockets=[self._sock])
            except BaseException as exc:  # reported by start()
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"quotagate-mock-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mock server did not start on {self.base_url}: {self._error!r}")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        server, thread = self._server, self._thread
        if server is not None and thread is not None and thread.is_alive():
            server.should_exit = True
            thread.join(timeout)
            if thread.is_alive():
                server.force_exit = True
                thread.join(timeout)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()

    def __enter__(self) -> MockServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_in_thread(
    settings: MockSettings | None = None,
    port: int = 0,
    *,
    app: Starlette | None = None,
    host: str = "127.0.0.1",
) -> tuple[str, Callable[[], None]]:
    """Serve the mock on ``host:port`` (0 = a free port) in a background thread.

    Returns ``(base_url, stop)`` once it accepts connections; ``base_url`` is
    ``http://127.0.0.1:<port>`` (append ``/v1`` for OpenAI clients). ``stop()`` is idempotent.
    Pass ``app=create_app(...)`` to keep a handle on ``app.state.stats``.
    """
    server = MockServer(settings, app=app, host=host, port=port).start()
    return server.base_url, server.stop
