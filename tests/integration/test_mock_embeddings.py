import math

import openai
import pytest

from quotagate import tokens
from quotagate_tools.mock import MockServer, MockSettings


@pytest.fixture(scope="module")
def mock():
    with MockServer(MockSettings(token_delay=0)) as server:
        yield server


def test_embeddings_are_deterministic_unit_vectors_with_real_usage(mock):
    client = openai.OpenAI(base_url=mock.openai_base_url, api_key="x", max_retries=0)
    texts = ["the quick brown fox", "jumps over", "the quick brown fox"]
    result = client.embeddings.create(model="mock-embed", input=texts)
    vectors = [item.embedding for item in result.data]
    # The SDK asks for base64 (float32) and decodes it, hence the tolerance.
    assert len(vectors) == 3 and vectors[0] == vectors[2] != vectors[1]
    assert all(math.isclose(sum(v * v for v in vec), 1.0, rel_tol=1e-5) for vec in vectors)
    assert result.usage.prompt_tokens == sum(tokens.count_text(t) for t in texts)
    assert len(client.embeddings.create(model="mock-embed", input="x", dimensions=64).data[0].embedding) == 64


def test_embeddings_faults_and_bad_input(mock):
    client = openai.OpenAI(base_url=mock.openai_base_url, api_key="x", max_retries=0)
    with pytest.raises(openai.InternalServerError):
        client.embeddings.create(model="mock-embed@status=500", input="x")
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="mock-embed", input=[])
