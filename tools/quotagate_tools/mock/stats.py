"""What the mock model server received and how each response ended: thread-safe counters, the
recent request records, and the per-request :class:`Ticket` that counts an outcome exactly once."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Callable

# How a request's response ended (each one counts in one counter, see OUTCOME_COUNTERS).
Outcome = Literal["completed", "cut", "disconnect", "error"]


class MockStats:
    """Thread-safe counters of what the mock received and how each response ended.

    ``chat_requests``       POSTs to /v1/chat/completions received (valid or not)
    ``completed``           responses delivered in full (non-stream body; stream up to [DONE])
    ``streams_cut``         responses aborted on purpose by ``drop_after`` (stream or not)
    ``client_disconnects``  responses abandoned because the client went away
    ``error_responses``     error statuses returned (validation, auth, injected ``status=``)
    ``in_flight``           requests being handled now (a gauge: ``reset`` keeps it)
    ``prompt_tokens`` / ``completion_tokens``  summed over completed responses

    ``billed_usd`` (a float, apart from the counters) and ``billed_tokens`` are what every answer the
    mock started costs at its list prices, and its tokens (:mod:`quotagate_tools.mock.billing`): like
    a provider, it bills an answer it started generating whether or not the client read it to the end.
    """

    COUNTERS: tuple[str, ...] = (
        "chat_requests",
        "completed",
        "streams_cut",
        "client_disconnects",
        "error_responses",
        "in_flight",
        "prompt_tokens",
        "completion_tokens",
    )

    def __init__(self, recent_limit: int = 100) -> None:
        self._cond = threading.Condition()
        self._counts = dict.fromkeys(self.COUNTERS, 0)
        self._recent: deque[dict[str, Any]] = deque(maxlen=max(recent_limit, 1))
        self._billed_usd = 0.0
        self._billed_tokens = 0

    # -- reading
    def snapshot(self) -> dict[str, int]:
        with self._cond:
            return dict(self._counts)

    def __getitem__(self, name: str) -> int:
        with self._cond:
            return self._counts[name]

    @property
    def chat_requests(self) -> int:
        return self["chat_requests"]

    @property
    def completed(self) -> int:
        return self["completed"]

    @property
    def streams_cut(self) -> int:
        return self["streams_cut"]

    @property
    def client_disconnects(self) -> int:
        return self["client_disconnects"]

    @property
    def error_responses(self) -> int:
        return self["error_responses"]

    @property
    def in_flight(self) -> int:
        return self["in_flight"]

    @property
    def billed_usd(self) -> float:
        with self._cond:
            return self._billed_usd

    @property
    def recent_requests(self) -> list[dict[str, Any]]:
        """Recent request records, oldest first: ``{"time", "model", "stream", "headers", "body"}``."""
        with self._cond:
            return list(self._recent)

    @property
    def last_request(self) -> dict[str, Any] | None:
        with self._cond:
            return self._recent[-1] if self._recent else None

    def wait_for(self, predicate: Callable[[dict[str, int]], bool], timeout: float = 5.0) -> bool:
        """Block until ``predicate(snapshot)`` is true (or ``timeout``); returns its last value.

        Useful because some outcomes (a client disconnect) are only seen by the server a moment
        after the client acted."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(dict(self._counts)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    # -- writing
    def reset(self) -> None:
        with self._cond:
            in_flight = self._counts["in_flight"]
            self._counts = dict.fromkeys(self.COUNTERS, 0)
            self._counts["in_flight"] = in_flight
            self._billed_usd = 0.0
            self._billed_tokens = 0
            self._recent.clear()
            self._cond.notify_all()

    def add(self, **deltas: int) -> None:
        with self._cond:
            for name, delta in deltas.items():
                self._counts[name] += delta
            self._cond.notify_all()

    @property
    def billed_tokens(self) -> int:
        with self._cond:
            return self._billed_tokens

    def bill(self, usd: float, tokens: int) -> None:
        with self._cond:
            self._billed_usd += usd
            self._billed_tokens += tokens

    def record(self, entry: dict[str, Any]) -> None:
        with self._cond:
            self._recent.append(entry)

    def begin(self) -> Ticket:
        self.add(chat_requests=1, in_flight=1)
        return Ticket(self)


OUTCOME_COUNTERS: dict[Outcome, str] = {
    "completed": "completed",
    "cut": "streams_cut",
    "disconnect": "client_disconnects",
    "error": "error_responses",
}


class Ticket:
    """One request's accounting; ``finish`` counts exactly once."""

    def __init__(self, stats: MockStats) -> None:
        self._stats = stats
        self.done = False

    def finish(self, outcome: Outcome, prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        if self.done:
            return
        self.done = True
        deltas = {"in_flight": -1, OUTCOME_COUNTERS[outcome]: 1}
        if outcome == "completed":
            deltas["prompt_tokens"] = prompt_tokens
            deltas["completion_tokens"] = completion_tokens
        self._stats.add(**deltas)
