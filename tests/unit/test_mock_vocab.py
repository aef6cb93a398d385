"""The mock's vocabulary: one cl100k token per piece, deterministic, prefix-stable replies."""

from __future__ import annotations

import random

import pytest

from quotagate import tokens
from quotagate_tools.mock import vocab


def test_vocabulary_verifies():
    assert vocab.verify_vocabulary() is True


def test_every_piece_is_one_token_as_it_appears_in_a_reply():
    enc = tokens.encoding()
    assert len(vocab.WORDS) == len(set(vocab.WORDS)) == 256
    assert len(vocab.OPENERS) == len(set(vocab.OPENERS))
    for opener in vocab.OPENERS:
        assert len(enc.encode(opener)) == 1, opener
    for word in vocab.WORDS:
        assert word.isalpha() and word.islower(), word
        assert len(enc.encode(" " + word)) == 1, word


def _random_messages(rng: random.Random) -> list[dict]:
    return [
        {"role": rng.choice(["system", "user", "assistant"]), "content": f"msg {rng.random()} ünïcode ✓"}
        for _ in range(rng.randint(1, 4))
    ]


@pytest.mark.parametrize("seed", range(20))
def test_reply_text_encodes_to_exactly_one_token_per_piece(seed):
    rng = random.Random(seed)
    messages = _random_messages(rng)
    n = rng.randint(1, 300)
    pieces = vocab.reply_pieces(messages, n)
    assert len(pieces) == n
    text = "".join(pieces)
    assert tokens.count_text(text) == n
    # The joined text tokenizes into exactly the streamed pieces, in order.
    enc = tokens.encoding()
    assert [enc.decode([t]) for t in enc.encode(text)] == pieces


def test_reply_is_deterministic_and_ignores_key_order_and_object_identity():
    a = [{"role": "user", "content": "Hello there"}]
    b = [{"content": "Hello there", "role": "user"}]
    assert vocab.reply_pieces(a, 24) == vocab.reply_pieces(b, 24) == vocab.reply_pieces(list(a), 24)


def test_reply_depends_on_messages():
    replies = {vocab.reply_text([{"role": "user", "content": f"question {i}"}], 12) for i in range(50)}
    assert len(replies) == 50


def test_reply_is_prefix_stable():
    messages = [{"role": "user", "content": "tell me a story"}]
    full = vocab.reply_pieces(messages, 100)
    for n in (0, 1, 2, 31, 32, 33, 64, 99):
        assert vocab.reply_pieces(messages, n) == full[:n]


def test_reply_shape():
    pieces = vocab.reply_pieces([{"role": "user", "content": "x"}], 10)
    assert pieces[0] in vocab.OPENERS
    assert all(p.startswith(" ") and p[1:] in vocab.WORDS for p in pieces[1:])
    assert vocab.reply_pieces([{"role": "user", "content": "x"}], 0) == []
    assert vocab.reply_text([{"role": "user", "content": "x"}], -3) == ""


def test_reply_is_pinned():
    # Pinned so that an accidental change of vocabulary or hashing is noticed.
    assert vocab.reply_text([{"role": "user", "content": "Hello there"}], 5) == "The is room later about"
