"""The part of boto3's DynamoDB ``Table`` the key and tenant stores use, over a low-level client.

A boto3 resource costs a cold start about 60 ms of CPU on top of the client under it (its model is
loaded and its classes built on first use), paid by every function that checks a key. This table
takes and returns the same plain Python values (numbers as ``Decimal``), converted with the same
``TypeSerializer``/``TypeDeserializer`` the resource uses, so the stores work on either. Condition
and key expressions are strings here (the resource's ``Key(...)`` objects are not built).
"""

from __future__ import annotations

from typing import Any

# The request fields holding plain values to type, and the response fields holding typed ones.
_TYPED_REQUEST_FIELDS = ("Key", "Item", "ExpressionAttributeValues", "ExclusiveStartKey")
_TYPED_RESPONSE_FIELDS = ("Item", "Attributes", "LastEvaluatedKey")


class ItemTable:
    """``get_item``, ``put_item`` and ``query`` of one table, with plain values in and out."""

    def __init__(self, client: Any, name: str) -> None:
        from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

        self._client = client
        self.name = name
        self._serialize = TypeSerializer().serialize
        self._deserialize = TypeDeserializer().deserialize

    def get_item(self, **request: Any) -> dict[str, Any]:
        return self._plain(self._client.get_item(**self._typed(request)))

    def put_item(self, **request: Any) -> dict[str, Any]:
        return self._plain(self._client.put_item(**self._typed(request)))

    def query(self, **request: Any) -> dict[str, Any]:
        response = self._plain(self._client.query(**self._typed(request)))
        response["Items"] = [self._plain_map(item) for item in response.get("Items", [])]
        return response

    def _typed(self, request: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(request.get("KeyConditionExpression", ""), str):
            raise TypeError("ItemTable takes key condition expressions as strings")
        typed = {**request, "TableName": self.name}
        for name in _TYPED_REQUEST_FIELDS:
            if name in typed:
                typed[name] = {k: self._serialize(v) for k, v in typed[name].items()}
        return typed

    def _plain(self, response: dict[str, Any]) -> dict[str, Any]:
        plain = dict(response)
        for name in _TYPED_RESPONSE_FIELDS:
            if name in plain:
                plain[name] = self._plain_map(plain[name])
        return plain

    def _plain_map(self, item: dict[str, Any]) -> dict[str, Any]:
        return {k: self._deserialize(v) for k, v in item.items()}
