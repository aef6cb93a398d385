"""The upstream's own error words, for the operator's log only (redacted; never in a response).

Apart from :mod:`quotagate.redaction`, which :mod:`quotagate.observability` (the logger) builds on:
this module sits above both."""

from __future__ import annotations

import logging
from typing import Any

from quotagate.redaction import redact


def log_upstream_error(provider: str, status: int | str | None, detail: Any) -> None:
    """The upstream's own words, for the operator: in the log, redacted; never in a response."""
    fields = {"provider": provider, "upstream_status": status, "detail": redact(detail) if detail else None}
    try:
        from quotagate.observability import logger
    except ImportError:  # pragma: no cover - Powertools is a runtime dependency
        logging.getLogger("quotagate.providers").warning("upstream error %s", fields)
        return
    logger.warning("upstream error response", extra=fields)
