"""The Anthropic Messages endpoint's translator for the one request pipeline (``POST /v1/messages``).

The pipeline (:mod:`quotagate.logic.exchange`) asks an endpoint, per target, what to send and how
to read what comes back (:class:`~quotagate.logic.exchange.UpstreamTranslator`,
:class:`~quotagate.logic.exchange.StreamDialect`). For a Messages request:

- an **Anthropic** target gets the client's own Messages body, with only ``model`` (the target's
  name) and ``max_tokens`` (the gateway's output cap) set, and its events reach the client as they
  are (:class:`NativeDialect`): thinking blocks and signatures, citations, ``cache_control`` and the
  cache usage fields, ``top_k``, images, documents, tool ids — nothing goes through the OpenAI shape;
- an **OpenAI-compatible or Bedrock** target gets the chat translation
  (:func:`~quotagate.protocols.anthropic_messages.parse_messages_request`) and its chunks become
  Messages events (:class:`TranslatedDialect`): what only Anthropic understands is not sent.

Both are metered against the same reservation (the client's ``max_tokens``, thinking included, is
reserved whole) and cut the same way: ``stop_reason: "max_tokens"``. The usage a client is told is
the usage settled.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from anyio import to_thread

from quotagate.logic.gateway import ChatStreamDialect, ChatTranslator
from quotagate.logic.metering import RunningCount, Usage
from quotagate.protocols.anthropic_messages import (
    PING,
    REQUEST_ID_HEADER,
    MessageEvents,
    anthropic_body,
    error_event,
    parse_messages_request,
    request_cost,
    to_message,
)
from quotagate.protocols.messages_native import NativeMessage, output_text_of
from quotagate.providers.anthropic import native_request
from quotagate.wire.betas import split_betas

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from quotagate.config import GatewayConfig, Target
    from quotagate.identity import Identity
    from quotagate.logic.chat_request import ChatRequest
    from quotagate.logic.estimate import OutputPlan
    from quotagate.logic.exchange import Forward
    from quotagate.logic.gateway import ChatResponse, Gateway
    from quotagate.protocols.anthropic_messages import MessagesRequest
    from quotagate.providers.base import SSEEvent


def messages_error_event(message: str, code: str, error_type: str) -> bytes:
    """Anthropic's ``event: error`` for a stream the gateway could not finish."""
    return error_event({"message": message, "code": code, "type": error_type})


class NativeDialect:
    """An Anthropic target's own events, forwarded as they are, metered and assembled."""

    keepalive = PING

    def __init__(self, model: str, prompt_estimate: int) -> None:
        self.message = NativeMessage(model)
        self.prompt_estimate = prompt_estimate
        # One running count of the output forwarded: what the budget admits is what is settled.
        self.output = RunningCount()

    def commits(self, event: SSEEvent) -> bool:
        return event.data is not None or event.done

    def is_end(self, event: SSEEvent) -> bool:
        return event.done  # message_stop (the provider marks it)

    def is_upstream_error(self, event: SSEEvent) -> bool:
        return False  # the provider turns an error event into StreamInterrupted

    def output_tokens(self, event: SSEEvent) -> int:
        return self.output.peek(output_text_of(event.data)) if event.data is not None else 0

    def accept(self, event: SSEEvent) -> list[Forward]:
        if event.data is not None:
            self.message.feed(event.data)
            self.output.add(output_text_of(event.data))
        return [event]

    def client_bytes(self, event: SSEEvent) -> bytes:
        return event.raw

    def error_event(self, message: str, code: str, error_type: str) -> bytes:
        return messages_error_event(message, code, error_type)

    def usage(self) -> Usage:
        """The target's count when it sent its final one; else the input it reported (or the
        prompt estimate) and the output counted as it was forwarded."""
        reported = self.message.usage
        if reported is not None:
            return reported
        started = self.message.reported_input
        if started is None:
            return Usage(self.prompt_estimate, self.output.total, "counted")
        return Usage(
            started.prompt_tokens,
            self.output.total,
            "counted",
            started.cache_read_tokens,
            started.cache_creation_tokens,
            started.cache_creation_1h_tokens,
        )

    def cut(self) -> list[Forward]:
        return list(self.message.cut_events(self.usage()))

    def answer(self, cut: bool) -> dict[str, Any]:
        return self.message.message(self.usage(), cut=cut)


class TranslatedDialect:
    """A chat target's chunks (read by the chat dialect) as Messages events, the gateway's own
    ``message_start`` first."""

    keepalive = PING

    def __init__(self, chat: ChatStreamDialect, model: str, stop_sequences: tuple[str, ...]) -> None:
        self.chat = chat
        self.model = model
        self.stop_sequences = stop_sequences
        self.events = MessageEvents(model, stop_sequences)
        self._started = False

    def commits(self, event: SSEEvent) -> bool:
        return self.chat.commits(event)

    def is_end(self, event: SSEEvent) -> bool:
        return self.chat.is_end(event)

    def is_upstream_error(self, event: SSEEvent) -> bool:
        return self.chat.is_upstream_error(event)

    def output_tokens(self, event: SSEEvent) -> int:
        return self.chat.output_tokens(event)

    def _start(self) -> list[Forward]:
        if self._started:
            return []
        self._started = True
        return [self.events.start()]

    def accept(self, event: SSEEvent) -> list[Forward]:
        out = self._start()
        if self.chat.is_end(event):
            return [*out, *self.events.finish(self.usage())]
        self.chat.accept(event)  # metered and assembled; the client gets the translation
        if event.data is not None:
            out += self.events.feed(event.data)
        return out

    def client_bytes(self, event: SSEEvent) -> bytes:
        return event.raw  # never reached: accept passes on bytes only

    def error_event(self, message: str, code: str, error_type: str) -> bytes:
        return messages_error_event(message, code, error_type)

    def usage(self) -> Usage:
        return self.chat.usage()

    def cut(self) -> list[Forward]:
        return [*self._start(), *self.events.finish(self.usage(), cut=True)]

    def answer(self, cut: bool) -> dict[str, Any]:
        return to_message(self.chat.answer(cut), self.usage(), self.stop_sequences, self.model)


class MessagesTranslator:
    """``POST /v1/messages``: native to Anthropic targets, translated to the others."""

    def __init__(self, request: MessagesRequest, chat: ChatRequest, plan: OutputPlan, config: GatewayConfig) -> None:
        self.request = request
        self.plan = plan
        self.config = config
        self.model = request.model  # the name the client asked for, named in translated answers
        self.chat = ChatTranslator(chat, plan, config)

    def is_native(self, target: Target) -> bool:
        return self.config.providers[target.provider].type == "anthropic"

    def open(self, target: Target, provider: Any) -> AsyncIterator[SSEEvent]:
        if self.is_native(target):
            body = native_request(anthropic_body(self.request), target.upstream_model, self.plan.caps[target.id])
            events: AsyncIterator[SSEEvent] = provider.stream_messages(body, self.request.betas)
            return events
        return self.chat.open(target, provider)

    def dialect(self, target: Target) -> NativeDialect | TranslatedDialect:
        if self.is_native(target):
            return NativeDialect(self.model, self.plan.prompts[target.id])
        return TranslatedDialect(self.chat.dialect(target), self.model, self.request.stop_sequences)


class MessagesReply:
    """One admitted Messages request: its answer as a message or as events, settled exactly once.
    The pipeline's response already speaks Messages (this module's dialects)."""

    def __init__(self, response: ChatResponse, request: MessagesRequest) -> None:
        self.response = response
        self.request = request

    @property
    def headers(self) -> dict[str, str]:
        return {
            **self.response.headers,
            **self.request.dropped_headers,
            REQUEST_ID_HEADER: self.response.outcome.request_id,
        }

    async def message(self) -> dict[str, Any]:
        """The non-streamed answer (its ``usage`` is what is settled)."""
        await self.response.finish(200)
        return self.response.json or {}

    async def finish(self, client_status: int | None = None) -> None:
        await self.response.finish(client_status)

    def body(self) -> AsyncIterator[bytes]:
        """The SSE bytes of a streamed answer: Anthropic's events."""
        return self.response.body()


async def create_message(
    gateway: Gateway, identity: Identity, raw: bytes, request_id: str, beta_header: str | None = None
) -> MessagesReply:
    """Validate a Messages request and run it through the gateway's one pipeline with the Messages
    translator (native to Anthropic targets, translated to the others). ``beta_header``: the
    client's ``anthropic-beta`` (allow-listed values reach Anthropic targets). GatewayError for
    anything the client must see as an error status; nothing is reserved for bad input."""
    betas, dropped_betas = split_betas(beta_header)
    request = replace(
        parse_messages_request(raw, gateway.max_body_bytes, gateway.refuses_unknown_fields),
        betas=betas,
        dropped_betas=dropped_betas,
    )
    cost = await to_thread.run_sync(request_cost, request)

    def translate(chat: ChatRequest, plan: OutputPlan, config: GatewayConfig) -> MessagesTranslator:
        return MessagesTranslator(request, chat, plan, config)

    chat_raw = json.dumps(request.chat_body, separators=(",", ":"), ensure_ascii=False).encode()
    response = await gateway.chat(identity, chat_raw, request_id, translate=translate, cost=cost)
    return MessagesReply(response, request)
