"""The OpenAI embeddings API's fields: ``POST /v1/embeddings``.

Source: the openai SDK's ``types/embedding_create_params.py`` (3.3). Only OpenAI-compatible targets
embed (the router skips the others), so every field is forwarded as it is.
"""

from __future__ import annotations

from typing import Final

from quotagate.wire.schema import FORWARDED, TRANSLATED, Action, Array, Field, Int, Obj, OneOf, Str, everywhere

EMBEDDINGS_FIELDS: Final[dict[str, Field]] = {
    "model": Field(Str(min_length=1), TRANSLATED, required=True, doc="a model or alias; the route's model is sent"),
    "input": Field(
        OneOf((Str(), Array(OneOf((Str(), Int(minimum=0), Array(Int(minimum=0))))))),
        everywhere(Action.BOUNDED, "counted in full in the reservation"),
        required=True,
    ),
    "dimensions": Field(Int(minimum=1), FORWARDED),
    "encoding_format": Field(Str(("float", "base64")), FORWARDED),
    "user": Field(Str(), FORWARDED),
}
EMBEDDINGS: Final = Obj("embeddings_request", EMBEDDINGS_FIELDS)
