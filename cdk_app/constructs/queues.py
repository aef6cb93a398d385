"""The one way the stack makes an SQS queue: SSE-SQS, TLS only; a work queue has a dead-letter
queue behind it; a dead-letter queue's depth is an alarm; a function invoked asynchronously (by a
schedule) sends what fails to a failure queue. Used by the settlement retry path and the usage
pipeline, so their queues cannot drift apart."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_sqs as sqs

from cdk_app import nag

if TYPE_CHECKING:
    from constructs import Construct

DEAD_LETTER_RETENTION = Duration.days(14)
WORK_RETENTION = Duration.days(4)
# SQS's advice for a Lambda event source: visibility at least six times the function's timeout.
VISIBILITY_PER_CONSUMER_TIMEOUT = 6
# Lambda's own retries of a failed asynchronous invocation (its default), before the failure queue.
ASYNC_RETRY_ATTEMPTS = 2
# Concurrent batches one SQS event source may run (ScalingConfig.MaximumConcurrency, 2 at least):
# a backlog must not take the account's unreserved pool from the request path.
EVENT_SOURCE_MAX_CONCURRENCY = 5


def encrypted_queue(
    scope: Construct,
    construct_id: str,
    *,
    retention_period: Duration = DEAD_LETTER_RETENTION,
    visibility_timeout: Duration | None = None,
    dead_letter_queue: sqs.DeadLetterQueue | None = None,
) -> sqs.Queue:
    return sqs.Queue(
        scope,
        construct_id,
        encryption=sqs.QueueEncryption.SQS_MANAGED,
        enforce_ssl=True,
        retention_period=retention_period,
        visibility_timeout=visibility_timeout,
        dead_letter_queue=dead_letter_queue,
    )


def work_queue(
    scope: Construct,
    construct_id: str,
    *,
    dead_letters: sqs.IQueue,
    max_receives: int,
    consumer_timeout: Duration,
) -> sqs.Queue:
    """A queue a Lambda consumes; a message that fails ``max_receives`` times goes to ``dead_letters``."""
    return encrypted_queue(
        scope,
        construct_id,
        retention_period=WORK_RETENTION,
        visibility_timeout=Duration.seconds(consumer_timeout.to_seconds() * VISIBILITY_PER_CONSUMER_TIMEOUT),
        dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=max_receives, queue=dead_letters),
    )


def dead_letter_alarm(scope: Construct, construct_id: str, queue: sqs.IQueue, description: str) -> cloudwatch.Alarm:
    """Fires as soon as one message waits in ``queue`` (Observability.watch_stack adds the topic)."""
    return cloudwatch.Alarm(
        scope,
        construct_id,
        alarm_description=description,
        metric=queue.metric_approximate_number_of_messages_visible(period=Duration.minutes(5), statistic="Maximum"),
        threshold=1,
        evaluation_periods=1,
        comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
    )


def async_failure_queue(
    scope: Construct, construct_id: str, function: lambda_.IFunction, description: str
) -> tuple[sqs.Queue, cloudwatch.Alarm]:
    """Where ``function``'s failed asynchronous invocations go (Lambda's on-failure destination, after
    its retries; the schedule's dead-letter queue too), with an alarm on its depth."""
    queue = encrypted_queue(scope, construct_id)
    nag.acknowledge(
        queue,
        "AwsSolutions-SQS3",
        "This queue is itself a dead-letter destination (a scheduled function's on-failure destination "
        "and its schedule's dead-letter queue; cdk-nag does not see either); its depth has an alarm.",
    )
    function.configure_async_invoke(on_failure=destinations.SqsDestination(queue), retry_attempts=ASYNC_RETRY_ATTEMPTS)
    alarm = dead_letter_alarm(scope, f"{construct_id}Depth", queue, description)
    return queue, alarm
