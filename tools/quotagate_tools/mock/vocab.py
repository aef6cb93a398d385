"""The mock model's vocabulary and its deterministic replies.

A reply is a sequence of words drawn from a fixed vocabulary, chosen by a hash of the request's
messages. Every entry is exactly ONE cl100k token *as it appears in the reply* (the opener without
a leading space, the other words with one), and cl100k's pre-tokenizer splits a run of
``" word"`` pieces at each space, so the reply text encodes to exactly as many tokens as it has
words. Hence ``completion_tokens == len(words)`` and one word per streamed chunk is one token per
chunk; :func:`verify_vocabulary` checks both claims with the real encoder.

Do not edit the lists: every reply the mock has ever given (and any test that pins one) depends on
them and on the hashing scheme below.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Any

# 16 capitalised openers, each one token without a leading space.
OPENERS: tuple[str, ...] = (
    "The", "We", "It", "This", "In", "A", "Our", "Your",
    "Every", "Some", "Most", "One", "When", "If", "Here", "Today",
)  # fmt: skip

# 256 common English words, each one token with its leading space (one hash byte picks one word).
WORDS: tuple[str, ...] = tuple(
    """
    the of and to in is that for it as was with be by on not this are or from at which but have an
    they you were there been one all we their has would when if so no will can more other what time
    up out about into than them only some could new two may first then do any like my now over such
    our me even most made after also did many before must through back years where much your way
    well down should because each just those people how too little state good very make world still
    own see work long here get both between life being under never day same another know while last
    might great old year off come since against go came right used take three few house use during
    without again place around however home small found thought went say part once general high upon
    school every does got left number course until always away something fact though water less
    public put think almost hand enough far took head yet system better set told nothing night end
    why called eyes find going look asked later knew point next program city business give group
    toward young days let room side social given present several order possible rather second face
    among form important often things looked early white case become large big need four within felt
    along children saw best ever least power development light family interest want members others
    mind country area done open service certain kind problem
    """.split()
)

DIGEST_DOMAIN = b"quotagate-mock-reply-v1"


def messages_digest(messages: Any) -> bytes:
    """A stable digest of the request messages (key order and whitespace do not matter)."""
    canonical = json.dumps(messages, sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
    return hashlib.sha256(DIGEST_DOMAIN + canonical.encode("utf-8")).digest()


def _stream_bytes(seed: bytes, count: int) -> bytes:
    out = bytearray()
    block = 0
    while len(out) < count:
        out += hashlib.sha256(seed + block.to_bytes(4, "big")).digest()
        block += 1
    return bytes(out[:count])


def reply_pieces(messages: Any, n_tokens: int) -> list[str]:
    """The first ``n_tokens`` pieces of the reply to ``messages``; each piece is one token.

    Deterministic, and prefix-stable: the reply of length k is a prefix of the reply of length
    k + 1 for the same messages (so truncation by ``max_tokens`` cuts the same text).
    """
    if n_tokens <= 0:
        return []
    data = _stream_bytes(messages_digest(messages), n_tokens)
    pieces = [OPENERS[data[0] % len(OPENERS)]]
    pieces.extend(" " + WORDS[b] for b in data[1:])
    return pieces


def reply_text(messages: Any, n_tokens: int) -> str:
    return "".join(reply_pieces(messages, n_tokens))


def pieces_before(pieces: list[str], index: int) -> list[str]:
    """The pieces of a reply whose text ends before character ``index`` of the joined text; the
    piece ``index`` falls inside is kept cut short (it still counts one token)."""
    kept: list[str] = []
    position = 0
    for piece in pieces:
        if position + len(piece) <= index:
            kept.append(piece)
            position += len(piece)
            continue
        if index > position:
            kept.append(piece[: index - position])
        break
    return kept


@functools.lru_cache(maxsize=1)
def verify_vocabulary() -> bool:
    """Check, with the offline cl100k encoder, that every piece is one token and that a run of
    pieces encodes to one token per piece. Raises ``AssertionError`` otherwise; cached."""
    from quotagate import tokens

    enc = tokens.encoding()
    if len(set(OPENERS)) != len(OPENERS) or len(set(WORDS)) != len(WORDS) or len(WORDS) != 256:
        raise AssertionError("mock vocabulary must hold 256 distinct words and distinct openers")
    for piece in [*OPENERS, *(" " + w for w in WORDS)]:
        ids = enc.encode(piece, disallowed_special=())
        if len(ids) != 1:
            raise AssertionError(f"mock vocabulary piece {piece!r} is {len(ids)} tokens, not 1")
    # A run of pieces: each opener followed by every word (cl100k splits runs at the spaces).
    words_run = "".join(" " + w for w in WORDS)
    for opener in OPENERS:
        if tokens.count_text(opener + words_run) != 1 + len(WORDS):
            raise AssertionError(f"a run of mock pieces after {opener!r} is not one token per piece")
    return True
