"""Local mode's background work: what runs beside DynamoDB, on schedules and queues in AWS.

- the usage pipeline: the quota table's stream → the pipe's filter and template → the bus → the
  rollup queue → the real rollup handler, every two seconds, and the period close every minute;
- the settlement retry queue's consumer and the reaper, every ten seconds;
- the TTL sweep DynamoDB does by itself, every minute.

In the gateway's process this work held the interpreter lock the proxy needs (a usage rollup is a
ten-action transaction built and parsed by botocore): it added ~25 ms to the median request, and
in moto's process as much (issue 21). It runs in a process of its own, forked from the gateway's
before its first thread with everything it needs already imported and frozen, so the two share
those pages instead of holding ~50 MiB each.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess


def start(settlement_queue_url: str) -> threading.Event:
    """Start every background loop in daemon threads of this process; set the event to stop them."""
    import boto3

    from functions.usage_period_close.handler import lambda_handler as period_close
    from functions.usage_rollup.handler import lambda_handler as rollup
    from quotagate_tools.local import settlements
    from quotagate_tools.local.apigateway import FakeLambdaContext
    from quotagate_tools.local.ttl import start_sweeper
    from quotagate_tools.local.usage_pipeline import LocalUsagePipeline

    pipeline = LocalUsagePipeline.from_boto(rollup)
    pipeline.setup()
    # In batches every 2 s: between them the pipeline's calls never queue in front of the proxy's
    # on the one-request-at-a-time moto.
    stop = pipeline.start(interval_seconds=2.0)

    def close_periods() -> None:
        while not stop.wait(60):
            try:
                period_close({}, FakeLambdaContext("quotagate-usage-period-close"))
            except Exception:  # noqa: S112 - retried on the next tick, like a schedule
                continue

    threading.Thread(target=close_periods, name="usage-period-close", daemon=True).start()
    settlements.start_worker(boto3.client("dynamodb"), boto3.client("sqs"), settlement_queue_url)
    start_sweeper(boto3.client("dynamodb"))
    return stop


@dataclass
class ForkedBackground:
    """The background process, forked and waiting for :meth:`start`."""

    process: BaseProcess
    commands: Connection

    def start(self, settlement_queue_url: str) -> None:
        """Start the loops in the child with this process's environment as it is now."""
        self.commands.send({"settlement_queue_url": settlement_queue_url, "environment": dict(os.environ)})
        if self.commands.recv() != "ready":
            raise RuntimeError("local mode's background process did not start")


def fork(close_in_child: tuple[int, ...] = ()) -> ForkedBackground:
    """Fork the background process now (call it before this process starts a thread). It imports
    nothing new: what it runs is imported here first, and frozen, so the pages stay shared. It ends
    when this process does (its end of the pipe closes). ``close_in_child``: file descriptors the
    child must not hold (e.g. the moto server's stdin, which keeps moto alive while open)."""
    import boto3

    # Imported for the child to share (it imports nothing new after the fork).
    import functions.usage_period_close.handler
    import functions.usage_rollup.handler  # noqa: F401
    import quotagate_tools.local.apigateway
    import quotagate_tools.local.settlements
    import quotagate_tools.local.ttl
    import quotagate_tools.local.usage_pipeline  # noqa: F401

    for service in ("dynamodb", "dynamodbstreams", "events", "sqs"):
        boto3.client(service)  # botocore keeps each service's model: loaded once, for both processes
    gc.collect()
    gc.freeze()  # the collector never writes to what was created so far: the pages stay shared
    # Elsewhere than Linux a fork after botocore's start (macOS' proxy lookup initialises
    # CoreFoundation) is unsafe: a fresh interpreter costs more memory but is safe.
    forking = sys.platform.startswith("linux")
    context: Any = multiprocessing.get_context("fork" if forking else "spawn")
    ours, theirs = context.Pipe()
    inherited = close_in_child if forking else ()  # a spawned child inherits no descriptor
    process = context.Process(
        target=_serve, args=(theirs, ours, inherited), name="quotagate-local-background", daemon=True
    )
    process.start()
    theirs.close()
    return ForkedBackground(process, ours)


def _serve(commands: Connection, parents_end: Connection, close_in_child: tuple[int, ...]) -> None:
    # Only the parent may hold its end (and moto's stdin): their closing is how this child ends.
    parents_end.close()
    for descriptor in close_in_child:
        os.close(descriptor)
    command = commands.recv()
    os.environ.update(command["environment"])
    stop = start(command["settlement_queue_url"])
    commands.send("ready")
    try:
        commands.recv()  # nothing more is sent: this returns when the gateway's process ends
    except (EOFError, KeyboardInterrupt):  # Ctrl-C reaches the whole process group
        pass
    stop.set()
