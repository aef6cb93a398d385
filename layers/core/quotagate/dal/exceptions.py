"""Exceptions of the data-access layer (key and tenant records), each with the HTTP status the keys
API answers it with (``logic.keys_service`` maps them to a ``KeysError``)."""

from __future__ import annotations

from http import HTTPStatus


class KeyAlreadyExists(Exception):
    """``put_new`` found a record with this key id (the keys service draws another id)."""

    status = HTTPStatus.CONFLICT


class KeyNotFound(Exception):
    status = HTTPStatus.NOT_FOUND


class KeyVersionConflict(Exception):
    """The record changed since it was read (``replace_if_version``): read it again and retry."""

    status = HTTPStatus.CONFLICT


class TenantAlreadyExists(Exception):
    status = HTTPStatus.CONFLICT


class TenantNotFound(Exception):
    status = HTTPStatus.NOT_FOUND


class TenantVersionConflict(Exception):
    """The tenant record changed since it was read: read it again and retry."""

    status = HTTPStatus.CONFLICT
