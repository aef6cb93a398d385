"""OpenAI ``POST /v1/embeddings`` on the mock: deterministic unit vectors and real token usage.

Each input's vector is derived from SHA-256 of its text, so equal inputs embed equally. Usage is
``prompt_tokens = total_tokens = sum(count_text(input))`` (token-id inputs count one per id). Faults
come from the same sources as chat (model suffix, ``x-mock-fault``, ``mock_fault``); ``status`` and
``delay_first_byte`` apply.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from quotagate import tokens
from quotagate_tools.mock.exchange import sleep_or_disconnect
from quotagate_tools.mock.faults import FAULT_HEADER, split_model
from quotagate_tools.mock.openai_errors import OpenAIError, check_auth, injected_error, read_json
from quotagate_tools.mock.request_options import request_fault

if TYPE_CHECKING:
    from starlette.requests import Request

    from quotagate_tools.mock.settings import MockSettings
    from quotagate_tools.mock.stats import MockStats

DEFAULT_DIMENSIONS = 16
MAX_DIMENSIONS = 4096


def vector(text: str, dimensions: int) -> list[float]:
    """A deterministic unit vector for ``text``."""
    raw = b""
    counter = 0
    while len(raw) < 4 * dimensions:
        raw += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    values = [(v / 2**31) - 1.0 for v in struct.unpack(f"<{dimensions}I", raw[: 4 * dimensions])]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _inputs(value: Any) -> list[tuple[str, int]]:
    """(text used for the vector, token count) per input; raises OpenAIError on a bad shape."""
    if isinstance(value, str):
        return [(value, tokens.count_text(value))]
    if isinstance(value, list) and value:
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [(str(value), len(value))]
        out = []
        for item in value:
            if isinstance(item, str):
                out.append((item, tokens.count_text(item)))
            elif isinstance(item, list) and item and all(isinstance(v, int) for v in item):
                out.append((str(item), len(item)))
            else:
                raise OpenAIError(400, "'input' items must be strings or arrays of token ids.", param="input")
        return out
    raise OpenAIError(400, "'input' must be a non-empty string or array.", param="input")


async def embeddings(request: Request) -> Response:
    settings: MockSettings = request.app.state.settings
    stats: MockStats = request.app.state.stats
    ticket = stats.begin()
    try:
        check_auth(request, settings)
        body = await read_json(request)
        stats.record({"model": body.get("model"), "endpoint": "embeddings", "body": body})
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise OpenAIError(400, "'model' is required.", param="model")
        base_model, model_fault = split_model(model)
        fault = request_fault(settings, model_fault, request.headers.get(FAULT_HEADER), body)
        inputs = _inputs(body.get("input"))
        dimensions = body.get("dimensions", DEFAULT_DIMENSIONS)
        if not isinstance(dimensions, int) or isinstance(dimensions, bool) or not 1 <= dimensions <= MAX_DIMENSIONS:
            raise OpenAIError(400, f"'dimensions' must be an integer from 1 to {MAX_DIMENSIONS}.", param="dimensions")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise OpenAIError(400, "'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
        if fault.delay_first_byte and await sleep_or_disconnect(request, fault.delay_first_byte):
            ticket.finish("disconnect")
            return Response(status_code=499)
        if fault.status is not None:
            raise injected_error(fault)
    except OpenAIError as rejection:
        ticket.finish("error")
        return rejection.response()
    data = []
    for index, (text, _) in enumerate(inputs):
        values = vector(text, dimensions)
        embedding: Any = values
        if encoding == "base64":
            embedding = base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    prompt_tokens = sum(count for _, count in inputs)
    usage = None if fault.omit_usage else {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
    ticket.finish("completed", prompt_tokens, 0)
    result: dict[str, Any] = {"object": "list", "data": data, "model": base_model}
    if usage is not None:
        result["usage"] = usage
    return JSONResponse(result)


def embeddings_routes() -> list[BaseRoute]:
    return [Route("/v1/embeddings", embeddings, methods=["POST"]), Route("/embeddings", embeddings, methods=["POST"])]
