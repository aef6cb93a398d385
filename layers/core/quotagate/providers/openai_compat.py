"""OpenAI-compatible HTTP providers (OpenAI, Azure OpenAI, vLLM, the mock server...)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx

from quotagate.providers.base import SSEEvent
from quotagate.providers.exceptions import StreamInterrupted, UpstreamError, UpstreamTimeout
from quotagate.redaction import known_code
from quotagate.upstream_log import log_upstream_error

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from quotagate.config import Provider

MAX_ERROR_BODY = 4096


def timeouts(provider: Provider) -> httpx.Timeout:
    # read = time to the response headers and, while streaming, the longest silence between chunks.
    return httpx.Timeout(connect=provider.connect_timeout, read=provider.read_timeout, write=30.0, pool=10.0)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


async def _raise_for_status(response: httpx.Response, provider_name: str) -> None:
    if response.status_code < 400:
        return
    raw = b""
    async for chunk in response.aiter_bytes():
        raw += chunk
        if len(raw) > MAX_ERROR_BODY:
            break
    # The upstream's text may quote the operator's key: only its error code (or type), when that
    # is one the gateway knows, reaches the client; the text goes to the log, redacted.
    detail: object = raw.decode("utf-8", "replace")
    identifier = None
    try:
        error = json.loads(raw)["error"]
        detail = error.get("message") or detail
        identifier = known_code(error.get("code")) or known_code(error.get("type"))
    except (ValueError, KeyError, TypeError, AttributeError):
        pass
    log_upstream_error(provider_name, response.status_code, detail)
    message = upstream_error_message(provider_name, f"HTTP {response.status_code}", identifier)
    status = 502 if response.status_code >= 500 or response.status_code in (401, 403, 404) else response.status_code
    code = "upstream_rate_limited" if response.status_code == 429 else "upstream_error"
    raise UpstreamError(status, message, _retry_after(response), code=code)


def upstream_error_message(provider_name: str, status: str, identifier: str | None) -> str:
    """What a client sees of an upstream's error: who, which status, and a short error code."""
    return f"Upstream provider '{provider_name}' returned {status}" + (f" ({identifier})." if identifier else ".")


def _has_list(field: str) -> Callable[[dict[str, Any]], bool]:
    return lambda data: isinstance(data.get(field), list)


def parse_sse_events(buffer: bytearray) -> list[SSEEvent]:
    """Take the complete events out of ``buffer`` (mutated), leaving any partial event in it."""
    events: list[SSEEvent] = []
    while True:
        # Events end with a blank line; accept \n\n and \r\n\r\n.
        end = buffer.find(b"\n\n")
        crlf = buffer.find(b"\r\n\r\n")
        if crlf != -1 and (end == -1 or crlf < end):
            end, sep = crlf, 4
        elif end != -1:
            sep = 2
        else:
            return events
        raw = bytes(buffer[: end + sep])
        del buffer[: end + sep]
        data_lines = [line[5:].strip() for line in raw.splitlines() if line.startswith(b"data:")]
        if not data_lines:
            events.append(SSEEvent(raw))  # comment or keep-alive
            continue
        payload = b"\n".join(data_lines)
        if payload == b"[DONE]":
            events.append(SSEEvent(b"data: [DONE]\n\n", None, True))
            continue
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        events.append(
            SSEEvent(
                raw if raw.endswith(b"\n\n") else raw.replace(b"\r\n", b"\n"), data if isinstance(data, dict) else None
            )
        )


def arguments_json(value: Any) -> str:
    """OpenAI ``function.arguments``: a tool input as compact JSON (``{}`` for none)."""
    return json.dumps(value if value is not None else {}, separators=(",", ":"), ensure_ascii=False)


class ChunkBuilder:
    """OpenAI ``chat.completion.chunk`` dicts of one completion, for the translators of other APIs."""

    id: str
    created: int
    model: str | None
    include_usage: bool

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        """The last chunk of a stream with ``stream_options.include_usage``."""
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        }


class HTTPProvider:
    """What the HTTP providers share: ``POST {base_url}{path}`` with the provider's headers and
    timeouts, and the mapping of transport failures and error statuses to :class:`UpstreamError`."""

    def __init__(
        self, provider: Provider, http: httpx.AsyncClient, api_key: Callable[[], Awaitable[str | None]]
    ) -> None:
        self._provider = provider
        self._http = http
        self._api_key = api_key

    @property
    def _name(self) -> str:
        return self._provider.name

    async def _headers(self, accept: str) -> dict[str, str]:
        raise NotImplementedError

    async def _raise_for_status(self, response: httpx.Response) -> None:
        await _raise_for_status(response, self._name)

    async def _send(
        self,
        body: dict[str, Any],
        path: str,
        accept: str = "application/json",
        extra_headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """The response, streamed: its body is not read yet (close it). ``extra_headers`` never
        replace the gateway's own (credentials, version)."""
        headers = await self._headers(accept)
        request = self._http.build_request(
            "POST",
            f"{self._provider.base_url}{path}",
            json=body,
            headers={**(extra_headers or {}), **headers},
            timeout=timeouts(self._provider),
        )
        try:
            return await self._http.send(request, stream=True)
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"Upstream provider '{self._name}' timed out.") from None
        except httpx.HTTPError:
            raise UpstreamError(
                502, f"Upstream provider '{self._name}' is unreachable.", code="upstream_unreachable"
            ) from None

    async def _post_json(
        self, body: dict[str, Any], path: str, valid: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        """The JSON object the provider answers; an invalid response (not ``valid``) is a 502."""
        response = await self._send(body, path)
        try:
            await self._raise_for_status(response)
            raw = await response.aread()
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"Upstream provider '{self._name}' timed out.") from None
        except httpx.HTTPError:
            raise UpstreamError(
                502, f"Upstream provider '{self._name}' closed the connection.", code="upstream_unreachable"
            ) from None
        finally:
            await response.aclose()
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict) or not valid(data):
            raise UpstreamError(502, f"Upstream provider '{self._name}' sent an invalid response.")
        return data


class OpenAICompatibleProvider(HTTPProvider):
    async def _headers(self, accept: str) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": accept}
        key = await self._api_key()
        if key and self._provider.auth_header == "api-key":
            headers["api-key"] = key  # Azure OpenAI's key header
        elif key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post_json(body, "/chat/completions", _has_list("choices"))

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /embeddings``: the OpenAI embeddings response, as the provider sent it."""
        return await self._post_json(body, "/embeddings", _has_list("data"))

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[SSEEvent]:
        response = await self._send(body, "/chat/completions")
        try:
            await self._raise_for_status(response)
            buffer = bytearray()
            try:
                async for chunk in response.aiter_raw():
                    buffer.extend(chunk)
                    for event in parse_sse_events(buffer):
                        yield event
            except httpx.TimeoutException:
                raise StreamInterrupted(f"Upstream provider '{self._name}' went silent.") from None
            except httpx.HTTPError:
                raise StreamInterrupted(f"Upstream provider '{self._name}' dropped the stream.") from None
        finally:
            await response.aclose()
