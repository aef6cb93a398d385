"""The OpenAI ``chat.completion`` JSON answer assembled from streamed ``chat.completion.chunk``s.

The gateway always asks the upstream to stream, so that it can meter the output as it arrives (and
stop it when the budget is spent); a client that did not ask for a stream gets the assembled answer.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any


class CompletionAssembler:
    def __init__(self) -> None:
        self._head: dict[str, Any] = {}
        self._choices: dict[int, dict[str, Any]] = {}
        self._finish: dict[int, str | None] = {}
        self._stop_reason: dict[int, str | int] = {}  # vLLM's choices[].stop_reason: the stop that matched
        self._logprobs: dict[int, list[Any]] = {}
        self._audio: dict[int, bytearray] = {}  # an audio answer's streamed pieces, decoded
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: dict[str, Any]) -> None:
        for key in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if key in chunk and key not in self._head:
                self._head[key] = chunk[key]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            index = choice.get("index", 0) if isinstance(choice.get("index"), int) else 0
            message = self._choices.setdefault(index, {"role": "assistant", "content": None})
            delta = choice.get("delta")
            if isinstance(delta, dict):
                self._merge(message, delta)
                self._merge_audio(index, message, delta.get("audio"))
            if choice.get("finish_reason"):
                self._finish[index] = choice["finish_reason"]
            if isinstance(choice.get("stop_reason"), str | int):
                self._stop_reason[index] = choice["stop_reason"]
            logprobs = choice.get("logprobs")
            if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
                self._logprobs.setdefault(index, []).extend(logprobs["content"])

    @staticmethod
    def _merge(message: dict[str, Any], delta: dict[str, Any]) -> None:
        for key in ("content", "refusal", "reasoning_content"):
            if isinstance(delta.get(key), str):
                message[key] = (message.get(key) or "") + delta[key]
        if isinstance(delta.get("role"), str):
            message["role"] = delta["role"]
        for call in delta.get("tool_calls") or []:
            if not isinstance(call, dict):
                continue
            calls = message.setdefault("tool_calls", [])
            position = call.get("index", len(calls)) if isinstance(call.get("index"), int) else len(calls)
            while len(calls) <= position:
                calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
            target = calls[position]
            if call.get("id"):
                target["id"] = call["id"]
            if call.get("type"):
                target["type"] = call["type"]
            function = call.get("function")
            if isinstance(function, dict):
                for key in ("name", "arguments"):
                    if isinstance(function.get(key), str):
                        target["function"][key] += function[key]
        function_call = delta.get("function_call")
        if isinstance(function_call, dict):
            merged = message.setdefault("function_call", {"name": "", "arguments": ""})
            for key in ("name", "arguments"):
                if isinstance(function_call.get(key), str):
                    merged[key] += function_call[key]

    def _merge_audio(self, index: int, message: dict[str, Any], audio: Any) -> None:
        """``delta.audio`` pieces (``modalities: ["audio"]``): the id, the transcript, and the data,
        whose base64 pieces are decoded and joined (each piece is padded on its own)."""
        if not isinstance(audio, dict):
            return
        merged = message.setdefault("audio", {"id": None, "data": "", "transcript": ""})
        for key in ("id", "expires_at"):
            if audio.get(key) is not None:
                merged[key] = audio[key]
        if isinstance(audio.get("transcript"), str):
            merged["transcript"] += audio["transcript"]
        if isinstance(audio.get("data"), str):
            try:
                self._audio.setdefault(index, bytearray()).extend(base64.b64decode(audio["data"], validate=True))
            except (binascii.Error, ValueError):
                pass  # a piece that is not base64 is left out, as a player would skip it

    def unfinished_choices(self) -> list[int]:
        return [index for index in sorted(self._choices) if not self._finish.get(index)]

    def result(self, cut: bool = False, fallback_model: str | None = None) -> dict[str, Any]:
        """The answer; ``cut``: the gateway stopped the output, so unfinished choices end with ``length``."""
        choices = []
        for index in sorted(self._choices) or [0]:
            message = self._choices.get(index, {"role": "assistant", "content": None})
            finish = self._finish.get(index) or ("length" if cut else None)
            for call in message.get("tool_calls", []):
                call["function"].setdefault("arguments", "")
            if "audio" in message:
                message["audio"]["data"] = base64.b64encode(bytes(self._audio.get(index, b""))).decode()
            choices.append(
                {
                    "index": index,
                    "message": {**message, "refusal": message.get("refusal")},
                    "logprobs": {"content": self._logprobs[index]} if index in self._logprobs else None,
                    "finish_reason": finish,
                }
            )
            if index in self._stop_reason:
                choices[-1]["stop_reason"] = self._stop_reason[index]
        body: dict[str, Any] = {
            "id": self._head.get("id"),
            "object": "chat.completion",
            "created": self._head.get("created"),
            "model": self._head.get("model") or fallback_model,
            "choices": choices,
        }
        for key in ("service_tier", "system_fingerprint"):
            if key in self._head:
                body[key] = self._head[key]
        if self.usage is not None:
            body["usage"] = self.usage
        return body
