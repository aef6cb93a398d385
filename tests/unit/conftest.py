"""Fixtures of the unit tests of the mock model server in process (Starlette TestClient, no sockets)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from quotagate_tools.mock import MockSettings, create_app


@pytest.fixture
def app():
    """The mock app, replying without token delays."""
    return create_app(MockSettings(token_delay=0))


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c
