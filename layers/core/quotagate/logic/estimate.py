"""What a chat request can cost before it runs: an upper bound of the prompt tokens a provider
bills, and the one output cap that reaches the provider.

Providers bill more than the text of the messages: tool and function definitions, ``tool_choice``
and ``response_format`` schemas, tool calls and tool results, names, images and audio. Text is
counted with cl100k (then scaled by the provider's ``prompt_token_factor``); media parts are counted
at their worst case for the provider that may serve them, in that provider's own tokens:

- OpenAI images: ``detail: "low"`` 85 tokens, ``high``/``auto``/none 1,445 (gpt-4o: 85 + 170 per
  512-px tile; an image is scaled to fit 2048 px, then to 768 px on its short side: 8 tiles).
- Claude images (any provider type, by the model's name): 1,600 on standard models (the service
  resizes images above ~1.15 megapixels; tokens are about width x height / 750), 4,787 on
  high-resolution ones (Opus 4.7, Sonnet 5, Haiku 5.5 and later; unknown Claude names too).
  Other Bedrock models: 1,600.
- A target's ``image_tokens`` overrides all of these (models that bill images differently, such as
  gpt-4o-mini, need it).
- Audio (``input_audio``): WAV duration from its header, MP3 duration from an 8 kbit/s floor, at
  ``AUDIO_TOKENS_PER_SECOND``. Audio that cannot be decoded, other formats and ``file`` parts
  cannot be bounded without guessing: they are refused with a 400 before anything is reserved.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from quotagate import tokens
from quotagate.errors import GatewayError, invalid_request
from quotagate.logic import pricing

if TYPE_CHECKING:
    from quotagate.config import Provider, Target

OPENAI_IMAGE_TOKENS_LOW = 85
OPENAI_IMAGE_TOKENS_HIGH = 85 + 170 * 8
# Anthropic's published image tiers (tokens of one image block, the block's own 3 included):
# standard models resize an image to about 1.15 megapixels (~1,600 tokens); high-resolution models
# (Opus 4.7, Sonnet 5, Haiku 5.5 and later) take up to 2,576 px and 4,784 tokens of 28-px patches.
CLAUDE_IMAGE_TOKENS = 1_600
CLAUDE_HIGH_RESOLUTION_IMAGE_TOKENS = 4_784 + 3
# The first version of each Claude family in the high-resolution tier.
CLAUDE_HIGH_RESOLUTION_FROM = {"opus": (4, 7), "sonnet": (5, 0), "haiku": (5, 5)}
# claude-<family>-<major>[-<minor>] (current names) or claude-<major>[-<minor>]-<family> (Claude 3).
CLAUDE_NAME = re.compile(
    r"claude-(?:(?P<family>opus|sonnet|haiku)-(?P<major>\d+)(?:[-.](?P<minor>\d)(?!\d))?"
    r"|(?P<major3>\d+)(?:[-.](?P<minor3>\d)(?!\d))?-(?P<family3>opus|sonnet|haiku))"
)
DEFAULT_IMAGE_TOKENS = {"openai": OPENAI_IMAGE_TOKENS_HIGH, "bedrock": CLAUDE_IMAGE_TOKENS}


def claude_image_tokens(upstream_model: str) -> int | None:
    """The worst case of one image on a Claude model, from Anthropic's tiers (None: not a name
    this table knows; an unknown Claude version gets the high-resolution bound)."""
    match = CLAUDE_NAME.search(upstream_model.lower())
    if match is None:
        return CLAUDE_HIGH_RESOLUTION_IMAGE_TOKENS if "claude" in upstream_model.lower() else None
    family = match["family"] or match["family3"]
    version = (int(match["major"] or match["major3"]), int(match["minor"] or match["minor3"] or 0))
    return (
        CLAUDE_HIGH_RESOLUTION_IMAGE_TOKENS if version >= CLAUDE_HIGH_RESOLUTION_FROM[family] else CLAUDE_IMAGE_TOKENS
    )


# gpt-4o audio input bills about 10 tokens per second; a bound with room to spare.
AUDIO_TOKENS_PER_SECOND = 25
MP3_MIN_BYTES_PER_SECOND = 1_000  # 8 kbit/s, the lowest MP3 bitrate
AUDIO_FORMATS = ("wav", "mp3")
# Framing the provider adds around tool definitions (OpenAI renders them as a typed namespace;
# Anthropic adds a tool-use system prompt of a few hundred tokens, 346 on current Claude models).
TOOLS_FRAMING_TOKENS = 32
TOKENS_PER_TOOL = 16
TOOL_SYSTEM_PROMPT_TOKENS = {"openai": 0, "anthropic": 500, "bedrock": 500}
SCHEMA_FRAMING_TOKENS = 32
TEXT_PART_TYPES = frozenset({"text", "refusal"})
UNBOUNDED_CODE = "unbounded_input_cost"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _unbounded(message: str, param: str) -> GatewayError:
    return invalid_request(
        f"{message} Its cost cannot be bounded before the request runs, so it is refused.",
        param=param,
        code=UNBOUNDED_CODE,
    )


# OpenAI's image ``detail``; anything else (or none) is billed as ``auto``.
ImageDetail = Literal["low", "high", "auto"]


@dataclass(frozen=True)
class Image:
    detail: ImageDetail


@dataclass(frozen=True)
class RequestCost:
    """The billable parts of one chat request, measured once; priced per target."""

    text_tokens: int  # cl100k tokens of every text the provider reads (an upper bound)
    images: tuple[Image, ...] = ()
    audio_tokens: int = 0
    has_tools: bool = False
    has_cache_control: bool = False
    # What changes the provider's price beyond the tokens (service tier, audio output, search...).
    modifiers: pricing.PriceModifiers = pricing.NO_MODIFIERS

    def prompt_tokens(self, provider: Provider, target: Target) -> int:
        """An upper bound of the prompt tokens ``target`` bills, in its own tokens."""
        text = math.ceil(self.text_tokens * provider.prompt_token_factor)
        if self.has_tools:
            text += TOOL_SYSTEM_PROMPT_TOKENS[provider.type]
        return text + sum(self.image_tokens(provider, target, image) for image in self.images) + self.audio_tokens

    def upper_bound(self, other: RequestCost) -> RequestCost:
        """A cost at least as high as both, for every target: an endpoint that sends one request
        as it is to some targets and translated to others reserves the larger of the two."""
        return RequestCost(
            text_tokens=max(self.text_tokens, other.text_tokens),
            images=max(self.images, other.images, key=len),
            audio_tokens=max(self.audio_tokens, other.audio_tokens),
            has_tools=self.has_tools or other.has_tools,
            has_cache_control=self.has_cache_control or other.has_cache_control,
            modifiers=self.modifiers.merge(other.modifiers),
        )

    @staticmethod
    def image_tokens(provider: Provider, target: Target, image: Image) -> int:
        """The most one image can cost on ``target``: its ``image_tokens`` if set, else the
        model's published table (Claude's tiers by name, whatever the wire; OpenAI's tiles)."""
        if target.image_tokens is not None:
            return target.image_tokens
        claude = claude_image_tokens(target.upstream_model)
        if claude is not None:
            return claude
        if provider.type == "anthropic":
            return CLAUDE_HIGH_RESOLUTION_IMAGE_TOKENS  # an Anthropic model this table does not know
        if provider.type == "openai" and image.detail == "low":
            return OPENAI_IMAGE_TOKENS_LOW
        return DEFAULT_IMAGE_TOKENS[provider.type]


def check_image_data(url: Any, where: str) -> None:
    """400 for inline image data that is not base64: every provider refuses it, after the call."""
    if not isinstance(url, str) or not url.startswith("data:"):
        return
    header, _, data = url.partition(",")
    if header.endswith(";base64"):
        try:
            base64.b64decode(data, validate=True)
        except ValueError:
            raise invalid_request(
                f"'{where}' is not valid base64 image data.", param=where, code="invalid_value"
            ) from None


def wav_seconds(data: bytes) -> float | None:
    """Duration of RIFF/WAVE bytes: the ``data`` chunk's size over the ``fmt`` chunk's byte rate."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset, byte_rate, data_size = 12, 0, None
    while offset + 8 <= len(data):
        chunk_id, size = data[offset : offset + 4], struct.unpack("<I", data[offset + 4 : offset + 8])[0]
        body = offset + 8
        if chunk_id == b"fmt " and size >= 16 and body + 16 <= len(data):
            byte_rate = struct.unpack("<I", data[body + 8 : body + 12])[0]
        elif chunk_id == b"data":
            # A header may claim more data than was sent; the provider can only bill what it got.
            data_size = min(size, len(data) - body)
            break
        offset = body + size + (size & 1)
    if not byte_rate or data_size is None:
        return None
    return data_size / byte_rate


def _audio_tokens(part: dict[str, Any], where: str) -> int:
    audio = part.get("input_audio")
    if not isinstance(audio, dict) or audio.get("format") not in AUDIO_FORMATS:
        raise _unbounded(f"'{where}' is audio in a format other than {' or '.join(AUDIO_FORMATS)}.", where)
    try:
        data = base64.b64decode(str(audio.get("data") or ""), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_request(
            f"'{where}.input_audio.data' is not valid base64.", param=where, code="invalid_value"
        ) from None
    if audio["format"] == "wav":
        seconds = wav_seconds(data)
        if seconds is None:
            raise _unbounded(f"'{where}' is not a readable WAV file.", where)
    else:
        seconds = len(data) / MP3_MIN_BYTES_PER_SECOND
    return math.ceil(seconds * AUDIO_TOKENS_PER_SECOND)


class _Counter:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.framing = 0
        self.images: list[Image] = []
        self.audio_tokens = 0
        self.cache_control = False

    def part(self, part: dict[str, Any], where: str) -> None:
        if "cache_control" in part:
            self.cache_control = True
        kind = part.get("type")
        if kind in TEXT_PART_TYPES:
            value = part.get(kind)
            self.texts.append(value if isinstance(value, str) else _json(value))
        elif kind == "image_url":
            image = part.get("image_url")
            check_image_data(image.get("url") if isinstance(image, dict) else None, f"{where}.image_url.url")
            detail = image.get("detail") if isinstance(image, dict) else None
            self.images.append(Image(detail if detail in ("low", "high") else "auto"))
        elif kind == "input_audio":
            self.audio_tokens += _audio_tokens(part, where)
        else:
            raise _unbounded(f"'{where}' is a content part of type {kind!r}.", where)

    def content(self, content: Any, where: str) -> None:
        if content is None:
            return
        if isinstance(content, str):
            self.texts.append(content)
        elif isinstance(content, list):
            for i, part in enumerate(content):
                if not isinstance(part, dict):
                    raise invalid_request(
                        f"'{where}[{i}]' must be an object.", param=f"{where}[{i}]", code="invalid_value"
                    )
                self.part(part, f"{where}[{i}]")
        else:
            self.texts.append(_json(content))


def measure(body: dict[str, Any]) -> RequestCost:
    """The billable parts of a validated chat request body. Raises GatewayError (400) for a part
    whose cost cannot be bounded."""
    counter = _Counter()
    counter.framing = tokens.REPLY_PRIMING_TOKENS
    for index, message in enumerate(body.get("messages") or []):
        where = f"messages[{index}]"
        counter.framing += tokens.TOKENS_PER_MESSAGE
        counter.texts.append(str(message.get("role", "")))
        counter.content(message.get("content"), f"{where}.content")
        if message.get("name"):
            counter.framing += tokens.TOKENS_PER_NAME
            counter.texts.append(str(message["name"]))
        for key in ("tool_calls", "function_call", "tool_call_id", "audio"):
            if message.get(key):
                counter.texts.append(_json(message[key]))
        if "cache_control" in message:
            counter.cache_control = True
    definitions = 0
    for key in ("tools", "functions"):
        value = body.get(key)
        if value:
            counter.texts.append(_json(value))
            definitions += len(value) if isinstance(value, list) else 1
            if isinstance(value, list) and any(isinstance(t, dict) and "cache_control" in t for t in value):
                counter.cache_control = True
    if definitions:
        counter.framing += TOOLS_FRAMING_TOKENS + TOKENS_PER_TOOL * definitions
    for key in ("tool_choice", "function_call"):
        if isinstance(body.get(key), dict):
            counter.texts.append(_json(body[key]))
    response_format = body.get("response_format")
    structured = isinstance(response_format, dict) and response_format.get("type") != "text"
    if structured:
        counter.texts.append(_json(response_format))
        counter.framing += SCHEMA_FRAMING_TOKENS
    text_tokens = counter.framing + sum(tokens.upper_bound_text(text) for text in counter.texts)
    return RequestCost(
        text_tokens=text_tokens,
        images=tuple(counter.images),
        audio_tokens=counter.audio_tokens,
        # Anthropic and Bedrock get response_format as a forced tool (with its system prompt).
        has_tools=definitions > 0 or structured,
        has_cache_control=counter.cache_control,
        modifiers=pricing.chat_modifiers(body),
    )


class _MessagesCounter(_Counter):
    """The billable parts of an Anthropic Messages request, block by block."""

    def block(self, block: dict[str, Any], where: str) -> None:
        if "cache_control" in block:
            self.cache_control = True
        kind = block.get("type")
        if kind == "text":
            self.texts.append(str(block.get("text") or ""))
        elif kind == "image":
            self.images.append(Image("auto"))  # Claude bills an image by its (bounded) size
        elif kind == "document":
            self.document(block, where)
        elif kind == "tool_result":
            content = block.get("content")
            self.texts.append(str(block.get("tool_use_id") or ""))
            for i, part in enumerate(content if isinstance(content, list) else []):
                self.block(part, f"{where}.content.{i}")
            if isinstance(content, str):
                self.texts.append(content)
        elif kind == "thinking":
            # Earlier thinking is billed as input while a tool-use turn is under way.
            self.texts.append(str(block.get("thinking") or ""))
        else:  # tool_use and redacted_thinking: their JSON is more tokens than the model reads
            self.texts.append(_json({k: v for k, v in block.items() if k != "cache_control"}))

    def document(self, block: dict[str, Any], where: str) -> None:
        source: dict[str, Any] = block["source"] if isinstance(block.get("source"), dict) else {}
        if source.get("type") != "text":
            # A PDF is billed per page, as text and as an image of every page: not boundable here.
            raise _unbounded(f"'{where}' is a PDF document.", where)
        self.texts.extend(str(block.get(name) or "") for name in ("title", "context"))
        self.texts.append(str(source.get("data") or ""))

    def content(self, content: Any, where: str) -> None:
        if isinstance(content, str):
            self.texts.append(content)
            return
        for i, block in enumerate(content if isinstance(content, list) else []):
            self.block(block, f"{where}.{i}")


def measure_messages(body: dict[str, Any]) -> RequestCost:
    """The billable parts of a validated Anthropic Messages request, as an Anthropic target bills
    them: system, messages (text, images, text documents, tool calls and results, earlier thinking),
    tools (with the tool-use system prompt) and ``output_config.format``; ``cache_control`` anywhere
    prices the prompt as a possible 1-hour cache write. Thinking is output: it is bounded by
    ``max_tokens``, which is reserved whole. Raises GatewayError (400) for a PDF document."""
    counter = _MessagesCounter()
    counter.framing = tokens.REPLY_PRIMING_TOKENS
    counter.cache_control = "cache_control" in body
    if body.get("system") is not None:
        counter.framing += tokens.TOKENS_PER_MESSAGE
        counter.content(body["system"], "system")
    for index, message in enumerate(body.get("messages") or []):
        counter.framing += tokens.TOKENS_PER_MESSAGE
        counter.texts.append(str(message.get("role", "")))
        counter.content(message.get("content"), f"messages.{index}.content")
    tools = body.get("tools") or []
    if tools:
        counter.texts.append(_json(tools))
        counter.framing += TOOLS_FRAMING_TOKENS + TOKENS_PER_TOOL * len(tools)
        counter.cache_control = counter.cache_control or any("cache_control" in tool for tool in tools)
    if isinstance(body.get("tool_choice"), dict):
        counter.texts.append(_json(body["tool_choice"]))
    output_format = (body.get("output_config") or {}).get("format")
    if output_format is not None:
        counter.texts.append(_json(output_format))
        counter.framing += SCHEMA_FRAMING_TOKENS
    return RequestCost(
        text_tokens=counter.framing + sum(tokens.upper_bound_text(text) for text in counter.texts),
        images=tuple(counter.images),
        has_tools=bool(tools) or output_format is not None,
        has_cache_control=counter.cache_control,
        modifiers=pricing.messages_modifiers(body),
    )


PER_REQUEST_LIMIT = "max_tokens_per_request"
TOO_LARGE_CODE = "request_too_large_for_limit"


@dataclass(frozen=True)
class OutputPlan:
    """What one admitted request may cost, per target that may serve it, and what is reserved."""

    caps: dict[str, int]  # target id -> the output cap sent to it (per choice)
    prompts: dict[str, int]  # target id -> an upper bound of its prompt tokens
    # target id -> the most output the gateway may count for it (all choices): the caps in cl100k
    # tokens times the provider's safety factor, so that an answer within its cap is never cut.
    ceilings: dict[str, int]
    # prompt_reserve + output_reserve is what is reserved: for every target, its prompt bound plus
    # its whole ceiling, so the provider cannot generate past the reservation whatever its speed.
    # output_reserve is the part the cap accounts for, checked against max_tokens_per_request.
    prompt_reserve: int
    output_reserve: int
    prompt_bound: int  # the largest prompt bound over the targets (prompt_reserve may carry output slack)
    reserve_usd: float  # the worst case in dollars of the reservation, over the targets
    slice: int  # per choice: the smallest cap the gateway chooses for a request without one
    # target id -> its prices with the request's modifiers (tier, audio...)
    target_prices: dict[str, pricing.TargetPricing] = field(default_factory=dict)
    modifiers: pricing.PriceModifiers = pricing.NO_MODIFIERS  # settlement prices with them
    # target id -> the output settled when a target with hidden output (reasoning, rejected
    # prediction tokens, audio) reports no usage: all that was reserved for it
    unreported_output: dict[str, int] = field(default_factory=dict)
    # The client sent no cap: the gateway chose it, and may choose a smaller one (down to
    # ``slice``) when the budget has less room than the target's max_output_tokens.
    gateway_capped: bool = False

    def output_usd(self, target: Target, output_tokens: int) -> float:
        """Dollars of ``output_tokens`` of output from ``target`` at the request's prices."""
        priced = self.target_prices.get(target.id)
        if priced is None:
            return target.price.cost_usd(0, output_tokens)
        return priced.output_usd(output_tokens)


@dataclass(frozen=True)
class Room:
    """What the tightest token and dollar windows have left (None: no such window)."""

    tokens: int | None
    usd: float | None


def cache_write_surcharge(provider: Provider, target: Target, cost: RequestCost, prompt_tokens: int) -> float:
    """With ``cache_control`` in an Anthropic request, every prompt token may be a 1-hour cache
    write at 2x the input price: the worst case adds one more input price to the prompt."""
    if provider.type != "anthropic" or not cost.has_cache_control:
        return 0.0
    return target.price.cost_usd(prompt_tokens, 0)


def per_request_limit(*limit_maps: dict[str, float]) -> int | None:
    """The tightest ``max_tokens_per_request`` of the key's and the tenant's limits, if any."""
    values = [int(limits[PER_REQUEST_LIMIT]) for limits in limit_maps if limits.get(PER_REQUEST_LIMIT) is not None]
    return min(values) if values else None


def plan_output(
    config: Any,
    request: Any,
    targets: Any,
    cost: RequestCost,
    key_limits: dict[str, float],
    tenant_limits: dict[str, float],
    output_slice: int,
    room: Room | None = None,
    smallest: bool = False,
) -> OutputPlan | None:
    """The one output cap per target and the reservation that bounds the request's bill.

    The client's cap (the smaller of ``max_tokens`` and ``max_completion_tokens``) is used as sent;
    above ``max_tokens_per_request`` it is a 400 naming the field. Without one, the target's
    ``max_output_tokens`` is sent (bounded by the per-request limit). Either way the whole cap is
    reserved: a provider keeps generating until it sees the connection close, so the cap it was
    sent is the only hard bound of its bill.

    ``room``: fit a cap the gateway chose into what the windows have left (each target's cap
    lowered so that its prompt and output fit); None when the request has a client cap or cannot
    get at least ``output_slice`` tokens per choice. ``smallest``: the smallest cap the gateway
    chooses (``output_slice`` per choice), whose refusal is the answer when nothing larger fits."""
    per_request = per_request_limit(key_limits, tenant_limits)
    client_cap = request.max_output_tokens
    if client_cap is not None and per_request is not None and client_cap > per_request:
        param = request.cap_param
        raise GatewayError(
            400,
            f"'{param}' is {client_cap}, more than the {PER_REQUEST_LIMIT} limit of "
            f"{per_request} of this API key. Lower '{param}'.",
            code=TOO_LARGE_CODE,
            param=param,
        )
    choices = request.choices
    output_slice = max(1, output_slice)
    modifiers = cost.modifiers
    priced = {
        t.id: pricing.target_pricing(modifiers, t.price, config.providers[t.provider].type, t.id) for t in targets
    }
    # Output no stream shows (rejected prediction tokens...) can pass the cap: what the provider
    # bills beyond the cap is reserved on top of it. Each target type gets its own body's fields.
    sent = {t.id: modifiers.for_type(config.providers[t.provider].type) for t in targets}
    hidden = {t.id: bool(sent[t.id].hidden_output) for t in targets}
    beyond_cap = {t.id: sent[t.id].extra_output_tokens * choices for t in targets}
    caps: dict[str, int] = {}
    prompts: dict[str, int] = {}
    for target in targets:
        provider = config.providers[target.provider]
        prompts[target.id] = cost.prompt_tokens(provider, target)
        if client_cap is not None:
            caps[target.id] = client_cap
            continue
        cap = target.max_output_tokens
        if per_request is not None:
            cap = max(1, min(cap, per_request // choices))
        if smallest:
            cap = min(cap, output_slice)
        elif room is not None:
            fitted = _fitted_cap(
                target, provider, cost, priced[target.id], prompts[target.id], beyond_cap[target.id], choices, room
            )
            if fitted < min(cap, output_slice):
                return None
            cap = min(cap, fitted)
        caps[target.id] = cap
    if client_cap is not None and room is not None:
        return None
    ceilings = {
        t.id: math.ceil(caps[t.id] * config.providers[t.provider].prompt_token_factor - 1e-9) * choices for t in targets
    }
    needs = {t.id: ceilings[t.id] + beyond_cap[t.id] for t in targets}
    output_reserve = max(caps.values()) * choices
    total = max(prompts[t.id] + needs[t.id] for t in targets)
    reserve_usd = max(
        priced[t.id].reserve_usd(t.price, prompts[t.id], cost.audio_tokens, needs[t.id])
        + cache_write_surcharge(config.providers[t.provider], t, cost, prompts[t.id]) * priced[t.id].factor
        for t in targets
    )
    return OutputPlan(
        caps=caps,
        prompts=prompts,
        ceilings=ceilings,
        prompt_reserve=total - output_reserve,
        output_reserve=output_reserve,
        prompt_bound=max(prompts.values()),
        reserve_usd=reserve_usd,
        slice=output_slice,
        target_prices=priced,
        modifiers=modifiers,
        unreported_output={t.id: needs[t.id] for t in targets if hidden[t.id]},
        gateway_capped=client_cap is None,
    )


# Dollars are reserved in whole micro-dollars, rounded up: a fitted cap leaves this much spare.
USD_ROUNDING_MARGIN = 2e-6


def _fitted_cap(
    target: Target,
    provider: Provider,
    cost: RequestCost,
    priced: pricing.TargetPricing,
    prompt: int,
    beyond_cap: int,
    choices: int,
    room: Room,
) -> int:
    """The largest cap per choice whose reservation (the prompt, output billed beyond the cap and
    the cap's ceiling, in tokens and in dollars at the request's prices) fits ``room``."""
    factor = provider.prompt_token_factor
    output_room: float = math.inf  # counted output tokens the room can pay for, all choices
    if room.tokens is not None:
        output_room = room.tokens - prompt - beyond_cap
    if room.usd is not None:
        per_token = priced.output_usd(1_000_000) / 1_000_000
        fixed_usd = priced.reserve_usd(target.price, prompt, cost.audio_tokens, beyond_cap)
        fixed_usd += cache_write_surcharge(provider, target, cost, prompt) * priced.factor
        spare = room.usd - fixed_usd - USD_ROUNDING_MARGIN
        if per_token > 0:
            output_room = min(output_room, math.floor(spare / per_token))
        elif spare < 0:
            output_room = -1
    if output_room == math.inf:
        return 2**31
    # ceil(cap * factor) * choices must fit: cap <= floor(room / choices) / factor does.
    fitted = math.floor(math.floor(output_room / choices) / factor + 1e-9)
    return max(-1, fitted)
