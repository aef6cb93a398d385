"""OpenAI-compatible HTTP providers (OpenAI, Azure OpenAI, vLLM, the mock server...)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from quotagate.config import Provider
from quotagate.providers.base import SSEEvent, StreamInterrupted, UpstreamError, UpstreamTimeout

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
    message = f"Upstream provider '{provider_name}' returned HTTP {response.status_code}."
    try:
        detail = json.loads(raw)["error"]["message"]
        if isinstance(detail, str):
            message += f" {detail[:500]}"
    except (ValueError, KeyError, TypeError):
        pass
    status = 502 if response.status_code >= 500 or response.status_code in (401, 403, 404) else response.status_code
    code = "upstream_rate_limited" if response.status_code == 429 else "upstream_error"
    raise UpstreamError(status, message, _retry_after(response), code=code)


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
        events.append(SSEEvent(raw if raw.endswith(b"\n\n") else raw.replace(b"\r\n", b"\n"),
                               data if isinstance(data, dict) else None))


class OpenAICompatibleProvider:
    def __init__(self, provider: Provider, http: httpx.AsyncClient,
                 api_key: Callable[[], Awaitable[str | None]]) -> None:
        self._provider = provider
        self._http = http
        self._api_key = api_key

    async def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "accept": "application/json"}
        key = await self._api_key()
        if key:
            headers["authorization"] = f"Bearer {key}"
        return headers

    async def _send(self, body: dict[str, Any], stream: bool, path: str = "/chat/completions") -> httpx.Response:
        request = self._http.build_request(
            "POST", f"{self._provider.base_url}{path}", json=body,
            headers=await self._headers(), timeout=timeouts(self._provider))
        try:
            return await self._http.send(request, stream=stream)
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"Upstream provider '{self._provider.name}' timed out.") from None
        except httpx.HTTPError:
            raise UpstreamError(502, f"Upstream provider '{self._provider.name}' is unreachable.",
                                code="upstream_unreachable") from None

    async def complete(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._post_json(body, "/chat/completions", "choices")

    async def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /embeddings``: the OpenAI embeddings response, as the provider sent it."""
        return await self._post_json(body, "/embeddings", "data")

    async def _post_json(self, body: dict[str, Any], path: str, list_field: str) -> dict[str, Any]:
        response = await self._send(body, stream=True, path=path)
        try:
            await _raise_for_status(response, self._provider.name)
            raw = await response.aread()
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"Upstream provider '{self._provider.name}' timed out.") from None
        except httpx.HTTPError:
            raise UpstreamError(502, f"Upstream provider '{self._provider.name}' closed the connection.",
                                code="upstream_unreachable") from None
        finally:
            await response.aclose()
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get(list_field), list):
            raise UpstreamError(502, f"Upstream provider '{self._provider.name}' sent an invalid response.")
        return data

    async def stream(self, body: dict[str, Any]) -> AsyncIterator[SSEEvent]:
        response = await self._send(body, stream=True)
        try:
            await _raise_for_status(response, self._provider.name)
            buffer = bytearray()
            try:
                async for chunk in response.aiter_raw():
                    buffer.extend(chunk)
                    for event in parse_sse_events(buffer):
                        yield event
            except httpx.TimeoutException:
                raise StreamInterrupted(f"Upstream provider '{self._provider.name}' went silent.") from None
            except httpx.HTTPError:
                raise StreamInterrupted(f"Upstream provider '{self._provider.name}' dropped the stream.") from None
        finally:
            await response.aclose()
