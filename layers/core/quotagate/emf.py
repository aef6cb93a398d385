"""CloudWatch Embedded Metric Format documents, one JSON line on stdout per metric set.

The documents are those Powertools' EMF provider (``AmazonCloudWatchEMFProvider``) writes: the
same ``_aws`` directive, dimension sets, value lists, and the same ``POWERTOOLS_METRICS_DISABLED``
/ ``POWERTOOLS_DEV`` switches. Written here because the provider is slow on a request path: each
instance resolves its unit tables, and every call formats its debug message even when debug logging
is off; the proxy's three metric sets per request cost about 0.4 ms through it (bench/overhead.py),
a few hundredths of that here.
"""

from __future__ import annotations

import json
import time

from aws_lambda_powertools.metrics.functions import is_metrics_disabled


class MetricSet:
    """The metrics and dimension sets of one EMF document, with ``service`` on every set."""

    def __init__(self, namespace: str, default_dimensions: dict[str, str]) -> None:
        self.namespace = namespace
        self.default_dimensions = default_dimensions
        self._units: dict[str, str] = {}
        self._values: dict[str, list[float]] = {}
        self._dimension_sets: list[dict[str, str]] = []

    def add_metric(self, name: str, unit: str, value: float) -> None:
        self._units[name] = unit
        self._values.setdefault(name, []).append(float(value))

    def add_dimensions(self, **dimensions: str) -> None:
        """One more dimension set (the default dimensions and these); blank values are left out."""
        given = {name: str(value) for name, value in dimensions.items() if str(value).strip()}
        if given:
            self._dimension_sets.append({**self.default_dimensions, **given})

    def document(self, timestamp_ms: int) -> dict[str, object]:
        values: dict[str, object] = dict(self.default_dimensions)
        for dimension_set in self._dimension_sets:
            values.update(dimension_set)
        directive = {
            "Namespace": self.namespace,
            "Dimensions": [list(self.default_dimensions), *(list(d) for d in self._dimension_sets)],
            "Metrics": [{"Name": name, "Unit": unit} for name, unit in self._units.items()],
        }
        return {"_aws": {"Timestamp": timestamp_ms, "CloudWatchMetrics": [directive]}, **values, **self._values}

    def flush_metrics(self) -> None:
        """Write the document (unless metrics are switched off) and start empty."""
        if self._values and not is_metrics_disabled():
            print(json.dumps(self.document(int(time.time() * 1000)), separators=(",", ":")))
        self._units, self._values, self._dimension_sets = {}, {}, []
