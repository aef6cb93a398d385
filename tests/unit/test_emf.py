"""The proxy's EMF documents (quotagate.emf) are the ones Powertools' EMF provider writes for the
same metrics and dimensions: CloudWatch, the dashboard and the alarms read them the same way."""

from __future__ import annotations

import json
import time

import pytest
from aws_lambda_powertools.metrics.provider.cloudwatch_emf.cloudwatch import AmazonCloudWatchEMFProvider

from quotagate.emf import MetricSet
from quotagate.metric_names import NAMESPACE, SERVICE, SERVICE_DIMENSION

CALLS = [
    ("metric", ("Requests", "Count", 1)),
    ("dimensions", {"outcome": "success"}),
    ("dimensions", {"model": "gpt-4o", "target": "openai/gpt-4o"}),
    ("metric", ("Duration", "Milliseconds", 12.5)),
    ("metric", ("CostMicroUsd", "Count", 0)),
    ("metric", ("Requests", "Count", 2)),
    ("dimensions", {"tier": " "}),  # a blank value is left out, as Powertools does
]


def flushed(metric_set, capsys) -> dict:
    for kind, arguments in CALLS:
        if kind == "metric":
            name, unit, value = arguments
            metric_set.add_metric(name=name, unit=unit, value=value)
        else:
            metric_set.add_dimensions(**arguments)
    capsys.readouterr()
    metric_set.flush_metrics()
    (line,) = capsys.readouterr().out.splitlines()
    document = json.loads(line)
    assert abs(document["_aws"].pop("Timestamp") / 1000 - time.time()) < 60
    return document


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_the_documents_are_powertools_own(monkeypatch, capsys):
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    default = {SERVICE_DIMENSION: SERVICE}
    ours = flushed(MetricSet(NAMESPACE, default), capsys)
    theirs = flushed(
        AmazonCloudWatchEMFProvider(namespace=NAMESPACE, service=SERVICE, default_dimensions=default), capsys
    )
    assert ours == theirs
    assert list(ours) == list(theirs)  # the same key order, too
    assert ours["Requests"] == [1.0, 2.0]


def test_nothing_is_written_when_metrics_are_off_and_the_set_starts_empty(monkeypatch, capsys):
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    metric_set = MetricSet(NAMESPACE, {SERVICE_DIMENSION: SERVICE})
    metric_set.add_metric("Requests", "Count", 1)
    metric_set.flush_metrics()
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    metric_set.add_metric("Failovers", "Count", 0)
    metric_set.flush_metrics()
    (line,) = capsys.readouterr().out.splitlines()
    assert "Requests" not in json.loads(line) and json.loads(line)["Failovers"] == [0.0]
