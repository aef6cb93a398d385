"""Exceptions of the usage pipeline. None maps to an HTTP status: they happen in the stream, the
pipe and the rollup function, where a failed message is retried (or dead-lettered), never answered."""

from __future__ import annotations


class InvalidEvent(ValueError):
    """A detail that is not a ``Request Settled`` of a known schema version."""


class PublishFailed(Exception):
    """EventBridge did not accept an event (the message that led to it is retried later)."""


class TemplatePathMissing(ValueError):
    """A template placeholder names a path the stream record does not have."""


class RollupBusy(Exception):
    """The usage table stayed contended through every retry (the message is retried later)."""
