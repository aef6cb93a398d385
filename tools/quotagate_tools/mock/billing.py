"""How the mock bills a prompt when a request asks for ``real_billing`` (a fault key): like the real
providers, which bill tool and function definitions, ``response_format`` schemas and media as
prompt tokens, not only the text of the messages.

The formulas are the providers' documented ones, taken at their worst case where the mock cannot
know an image's size (it never downloads or decodes anything):

- OpenAI images: ``detail: "low"`` 85 tokens; ``high``/``auto`` the gpt-4o worst case, 85 + 170 per
  512-px tile of an image scaled to fit 2048 px and then 768 px on its short side: 8 tiles, 1,445.
- Anthropic (and Claude/Nova on Bedrock) images: about ``width * height / 750`` tokens after the
  service resizes anything above ~1.15 megapixels: at most ~1,600.
- Audio (``input_audio``): 10 tokens per second of audio; the duration of WAV data comes from its
  header, of MP3 data from an 8 kbit/s floor (the lowest bitrate MP3 encoders produce).
- Tool definitions: their JSON text plus a few framing tokens per tool (OpenAI); Anthropic adds a
  tool-use system prompt of a few hundred tokens (346 on current Claude models).

And what an answer costs in dollars (:class:`Charges` at :data:`LIST_PRICES`), counted into the
mock's ``billed_usd``: audio tokens at their own prices, hidden reasoning tokens
(:data:`REASONING_TOKENS` per ``reasoning_effort``, inside the output cap), rejected prediction
tokens (the whole prediction, billed as output beyond the cap), search fees per call, service tiers,
inference geography and fast mode as multipliers of every token price.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from dataclasses import dataclass
from typing import Any

from quotagate import tokens

OPENAI_IMAGE_LOW = 85
OPENAI_IMAGE_HIGH = 85 + 170 * 8
CLAUDE_IMAGE_MAX = 1_600
AUDIO_TOKENS_PER_SECOND = 10
MP3_MIN_BYTES_PER_SECOND = 1_000  # 8 kbit/s
OPENAI_TOKENS_PER_TOOL = 8
ANTHROPIC_TOOL_SYSTEM_PROMPT = 346


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def wav_seconds(data: bytes) -> float | None:
    """Duration of RIFF/WAVE bytes from the ``fmt`` byte rate and the ``data`` chunk size.

    Written again on purpose (quotagate.logic.estimate has its own): the mock is the provider the
    gateway's estimate is checked against, so it must not share the estimate's parsing."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset, byte_rate, data_size = 12, None, None
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        body = offset + 8
        if chunk_id == b"fmt " and size >= 16 and body + 16 <= len(data):
            byte_rate = struct.unpack("<I", data[body + 8 : body + 12])[0]
        elif chunk_id == b"data":
            data_size = min(size, len(data) - body)
            break
        offset = body + size + (size & 1)
    if not byte_rate or data_size is None:
        return None
    return data_size / byte_rate


def audio_tokens(part: dict[str, Any]) -> int:
    audio: dict[str, Any] = part["input_audio"] if isinstance(part.get("input_audio"), dict) else {}
    try:
        data = base64.b64decode(str(audio.get("data") or ""), validate=True)
    except (binascii.Error, ValueError):
        data = b""
    seconds = wav_seconds(data) if audio.get("format") == "wav" else None
    if seconds is None:
        seconds = len(data) / MP3_MIN_BYTES_PER_SECOND
    return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)


def _openai_part(part: Any) -> int:
    if not isinstance(part, dict):
        return tokens.count_text(_json(part))
    kind = part.get("type")
    if kind == "text":
        return tokens.count_text(str(part.get("text") or ""))
    if kind == "image_url":
        image: dict[str, Any] = part["image_url"] if isinstance(part.get("image_url"), dict) else {}
        return OPENAI_IMAGE_LOW if image.get("detail") == "low" else OPENAI_IMAGE_HIGH
    if kind == "input_audio":
        return audio_tokens(part)
    return tokens.count_text(_json(part))


def openai_prompt_tokens(body: dict[str, Any]) -> int:
    """Prompt tokens of an OpenAI chat request as a provider bills them."""
    total = tokens.REPLY_PRIMING_TOKENS
    for message in body.get("messages") or []:
        if not isinstance(message, dict):
            continue
        total += tokens.TOKENS_PER_MESSAGE + tokens.count_text(str(message.get("role", "")))
        content = message.get("content")
        if isinstance(content, list):
            total += sum(_openai_part(part) for part in content)
        elif content is not None:
            total += tokens.count_text(content if isinstance(content, str) else _json(content))
        if message.get("name"):
            total += tokens.TOKENS_PER_NAME + tokens.count_text(str(message["name"]))
        for key in ("tool_calls", "function_call", "tool_call_id"):
            if message.get(key):
                total += tokens.count_text(_json(message[key]))
    tools = body.get("tools") or []
    functions = body.get("functions") or []
    for definitions in (tools, functions):
        if isinstance(definitions, list) and definitions:
            total += tokens.count_text(_json(definitions)) + OPENAI_TOKENS_PER_TOOL * len(definitions)
    if isinstance(body.get("response_format"), dict) and body["response_format"].get("type") != "text":
        total += tokens.count_text(_json(body["response_format"]))
    return total


def _claude_block(block: Any) -> int:
    if not isinstance(block, dict):
        return tokens.count_text(_json(block))
    kind = block.get("type")
    if kind == "text":
        return tokens.count_text(str(block.get("text") or ""))
    if kind == "image":
        return CLAUDE_IMAGE_MAX
    if kind == "tool_result":
        content = block.get("content")
        if isinstance(content, list):
            return sum(_claude_block(b) for b in content)
        return tokens.count_text(content if isinstance(content, str) else _json(content))
    return tokens.count_text(_json({k: v for k, v in block.items() if k != "cache_control"}))


def _claude_content(content: Any) -> int:
    if isinstance(content, list):
        return sum(_claude_block(b) for b in content)
    if content is None:
        return 0
    return tokens.count_text(content if isinstance(content, str) else _json(content))


def anthropic_input_tokens(body: dict[str, Any]) -> int:
    """``input_tokens`` of an Anthropic Messages request as Anthropic bills them."""
    total = tokens.REPLY_PRIMING_TOKENS + _claude_content(body.get("system"))
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            total += tokens.TOKENS_PER_MESSAGE + _claude_content(message.get("content"))
    tools = body.get("tools") or []
    if tools:
        total += ANTHROPIC_TOOL_SYSTEM_PROMPT + tokens.count_text(_json(tools))
    return total


def _converse_block(block: Any) -> int:
    if not isinstance(block, dict):
        return tokens.count_text(_json(block))
    if "text" in block:
        return tokens.count_text(str(block["text"]))
    if "image" in block:
        return CLAUDE_IMAGE_MAX
    if "toolResult" in block:
        content = (block["toolResult"] or {}).get("content") or []
        return sum(_converse_block(b) for b in content) if isinstance(content, list) else 0
    if "json" in block:
        return tokens.count_text(_json(block["json"]))
    return tokens.count_text(_json(block))


def cache_control_ttls(body: dict[str, Any]) -> list[str]:
    """The ``ttl`` of every ``cache_control`` breakpoint of an Anthropic request ("5m" by default)."""
    ttls: list[str] = []

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            marker = value.get("cache_control")
            if isinstance(marker, dict):
                ttls.append(str(marker.get("ttl") or "5m"))
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    visit({k: body.get(k) for k in ("system", "messages", "tools")})
    return ttls


def bedrock_input_tokens(body: dict[str, Any]) -> int:
    """``inputTokens`` of a Bedrock Converse request as Bedrock bills them."""
    total = tokens.REPLY_PRIMING_TOKENS
    for block in body.get("system") or []:
        total += _converse_block(block)
    for message in body.get("messages") or []:
        if isinstance(message, dict):
            total += tokens.TOKENS_PER_MESSAGE + sum(_converse_block(b) for b in message.get("content") or [])
    config = body.get("toolConfig")
    if isinstance(config, dict) and config.get("tools"):
        total += ANTHROPIC_TOOL_SYSTEM_PROMPT + tokens.count_text(_json(config["tools"]))
    return total


# -- dollars: what an answer costs at the mock's list prices ---------------------------------------
# The mock's published price list, modelled on OpenAI's and Anthropic's documented pricing (per
# million tokens, dollars per call, multipliers). A gateway that wants recorded = billed copies these
# numbers into its price table, as an operator copies a provider's; the mock never asks the gateway.
@dataclass(frozen=True)
class ListPrices:
    input_per_million: float = 2.5
    output_per_million: float = 10.0
    audio_input_per_million: float = 40.0  # gpt-4o audio: 16x the text input price
    audio_output_per_million: float = 80.0  # 8x the text output price
    web_search_per_call: float = 0.025  # OpenAI chat search: $25 per 1,000 calls
    anthropic_web_search_per_call: float = 0.01  # Anthropic web search: $10 per 1,000 searches
    service_tiers: tuple[tuple[str, float], ...] = (("default", 1.0), ("priority", 1.75), ("flex", 0.5))
    inference_geos: tuple[tuple[str, float], ...] = (("global", 1.0), ("us", 1.1))
    fast_mode: float = 6.0  # Anthropic fast mode
    cache_write_5m: float = 1.25  # Anthropic prompt caching, times the input price
    cache_write_1h: float = 2.0
    cache_read: float = 0.1


LIST_PRICES = ListPrices()
# Hidden reasoning tokens a model spends per ``reasoning_effort`` (before its output cap stops it).
REASONING_TOKENS = {"minimal": 64, "low": 512, "medium": 1536, "high": 4096, "xhigh": 8192}
# Audio output tokens per token of its transcript (speech is about 6 audio tokens per word piece).
AUDIO_TOKENS_PER_TEXT_TOKEN = 6


@dataclass(frozen=True)
class Charges:
    """What one answer bills, before prices: tokens by kind, hosted tool calls and the modifiers."""

    prompt_tokens: int = 0  # every input token (audio and cached included)
    completion_tokens: int = 0  # every output token (audio, reasoning, rejected prediction included)
    audio_prompt_tokens: int = 0
    audio_completion_tokens: int = 0
    cache_write_tokens: int = 0  # Anthropic: of prompt_tokens
    cache_write_1h: bool = False
    cache_read_tokens: int = 0
    web_searches: int = 0
    anthropic_web_searches: int = 0
    service_tier: str = "default"
    inference_geo: str | None = None
    fast: bool = False

    def usd(self, prices: ListPrices = LIST_PRICES) -> float:
        cached = self.cache_write_tokens + self.cache_read_tokens
        plain_input = self.prompt_tokens - self.audio_prompt_tokens - cached
        write_factor = prices.cache_write_1h if self.cache_write_1h else prices.cache_write_5m
        input_units = plain_input + write_factor * self.cache_write_tokens + prices.cache_read * self.cache_read_tokens
        tokens_usd = (
            input_units * prices.input_per_million
            + self.audio_prompt_tokens * prices.audio_input_per_million
            + (self.completion_tokens - self.audio_completion_tokens) * prices.output_per_million
            + self.audio_completion_tokens * prices.audio_output_per_million
        ) / 1e6
        factor = dict(prices.service_tiers).get(self.service_tier, 1.0)
        factor *= dict(prices.inference_geos).get(self.inference_geo or "global", 1.0)
        factor *= prices.fast_mode if self.fast else 1.0
        fees = self.web_searches * prices.web_search_per_call
        fees += self.anthropic_web_searches * prices.anthropic_web_search_per_call
        return tokens_usd * factor + fees


def openai_audio_prompt_tokens(body: dict[str, Any]) -> int:
    """The audio part of an OpenAI chat request's prompt tokens (``input_audio`` content parts)."""
    total = 0
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "input_audio":
                total += audio_tokens(part)
    return total
