"""``python -m quotagate_tools.mock --port N [--token-delay SECONDS] ...``: run the mock model server alone."""

from __future__ import annotations

import argparse
import logging
import sys

from quotagate_tools.mock.faults import FaultSpecError, parse_fault_spec
from quotagate_tools.mock.server import bind_socket, create_app
from quotagate_tools.mock.settings import DEFAULT_MODELS, DEFAULT_REPLY_TOKENS, DEFAULT_TOKEN_DELAY, MockSettings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m quotagate_tools.mock", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8090, help="port (0 = a free port; default 8090)")
    parser.add_argument(
        "--token-delay",
        type=float,
        default=DEFAULT_TOKEN_DELAY,
        help=f"seconds between streamed tokens (default {DEFAULT_TOKEN_DELAY})",
    )
    parser.add_argument(
        "--reply-tokens",
        type=int,
        default=DEFAULT_REPLY_TOKENS,
        help=f"default reply length in tokens (default {DEFAULT_REPLY_TOKENS})",
    )
    parser.add_argument("--fault", default="", help="fault spec applied to every request, e.g. 'status=503'")
    parser.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1/*")
    parser.add_argument(
        "--models", default=",".join(DEFAULT_MODELS), help="comma-separated model ids listed by /v1/models"
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    return parser


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    args = build_parser().parse_args(argv)
    mock_logger = logging.getLogger("quotagate_tools.mock")
    if not mock_logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        mock_logger.addHandler(handler)
        mock_logger.setLevel(args.log_level.upper())
    try:
        parse_fault_spec(args.fault)
    except FaultSpecError as exc:
        print(f"invalid --fault: {exc}", file=sys.stderr)
        return 2
    settings = MockSettings(
        token_delay=args.token_delay,
        reply_tokens=args.reply_tokens,
        models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
        default_fault=args.fault,
        api_key=args.api_key,
    )
    try:
        app = create_app(settings)
    except ValueError as exc:
        print(f"invalid settings: {exc}", file=sys.stderr)
        return 2
    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"quotagate mock model server on http://{host}:{port}/v1", flush=True)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=port,
        log_level=args.log_level,
        lifespan="off",
        ws="none",
        timeout_graceful_shutdown=1,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
