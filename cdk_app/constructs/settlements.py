"""What closes every reservation: the durable settlement retry path and the reservation reaper.

- ``Queue`` (SQS, SSE, TLS only) with ``DeadLetters`` behind it: the proxy sends a settlement it
  could not write within its budget; ``Consumer`` (Powertools batch, partial failures) applies it
  exactly once (the reservation's conditional status flip), and a message that keeps failing moves
  to the dead-letter queue after ``MAX_RECEIVES`` deliveries, where an alarm fires.
- ``Reaper`` runs every ``REAPER_RATE`` (EventBridge rule) and expires reservations still open
  after the longest possible request plus a margin, reading only the sparse ``reserved`` index.

Least privilege: the consumer may only ``UpdateItem`` the quota table (a settlement is a
transaction of updates); the reaper may only ``Query`` the ``reserved`` index and ``UpdateItem`` the
table; the proxy may only send to the queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from constructs import Construct

from cdk_app import paths
from cdk_app.constructs import queues
from cdk_app.constructs.function import GatewayFunction
from quotagate import settings, tables
from quotagate.quota.reaper import DEFAULT_MARGIN_SECONDS

if TYPE_CHECKING:
    from cdk_app.constructs.data import DataTables
    from cdk_app.constructs.layers import SharedLayers
    from cdk_app.context import DeploymentOptions

MAX_RECEIVES = 10
CONSUMER_TIMEOUT = Duration.seconds(60)  # a batch of 10, each settle bounded by 5 s
REAPER_RATE = Duration.minutes(5)
REAPER_TIMEOUT = Duration.minutes(2)


class SettlementRecovery(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        data: DataTables,
        layers: SharedLayers,
        options: DeploymentOptions,
    ) -> None:
        super().__init__(scope, construct_id)
        quota = data.quota
        self.dead_letters = queues.encrypted_queue(self, "DeadLetters")
        self.queue = queues.work_queue(
            self, "Queue", dead_letters=self.dead_letters, max_receives=MAX_RECEIVES, consumer_timeout=CONSUMER_TIMEOUT
        )

        self.consumer = GatewayFunction(
            self,
            "Consumer",
            code_dir=paths.FUNCTIONS_DIR / "settlements",
            handler="handler.lambda_handler",
            service="quotagate-settlements",
            description="Quotagate settlement retries: applies queued settlements exactly once",
            environment=data.table_name_env(tables.QUOTA),
            timeout=CONSUMER_TIMEOUT,
            memory_size=256,
            layers=layers.all,
            log_retention_days=options.log_retention_days,
        )
        self.consumer.function.add_event_source(
            sources.SqsEventSource(
                self.queue,
                batch_size=10,
                report_batch_item_failures=True,
                max_batching_window=Duration.seconds(1),
                max_concurrency=queues.EVENT_SOURCE_MAX_CONCURRENCY,
            )
        )
        self.consumer.role.add_to_policy(
            iam.PolicyStatement(actions=["dynamodb:UpdateItem"], resources=[quota.table_arn])
        )

        self.reaper = GatewayFunction(
            self,
            "Reaper",
            code_dir=paths.FUNCTIONS_DIR / "reaper",
            handler="handler.lambda_handler",
            service="quotagate-reaper",
            description="Quotagate reservation reaper: expires reservations no settlement will close",
            environment={
                **data.table_name_env(tables.QUOTA),
                settings.MAX_REQUEST_SECONDS: str(int(settings.DEFAULT_MAX_REQUEST_SECONDS)),
                settings.REAPER_MARGIN_SECONDS: str(int(DEFAULT_MARGIN_SECONDS)),
            },
            timeout=REAPER_TIMEOUT,
            memory_size=256,
            # None by default (a run takes at most REAPER_TIMEOUT, well inside REAPER_RATE, and every
            # expiry is conditional, so an overlapping run changes nothing).
            reserved_concurrency=options.reaper_concurrency,
            layers=layers.all,
            log_retention_days=options.log_retention_days,
        )
        self.reaper.role.add_to_policy(
            iam.PolicyStatement(
                actions=["dynamodb:Query"],
                resources=[f"{quota.table_arn}/index/{tables.RESERVED_INDEX.name}"],
            )
        )
        self.reaper.role.add_to_policy(
            iam.PolicyStatement(actions=["dynamodb:UpdateItem"], resources=[quota.table_arn])
        )
        self.reaper_failures, self.reaper_failures_alarm = queues.async_failure_queue(
            self,
            "ReaperFailures",
            self.reaper.function,
            "Reaper runs that failed after Lambda's retries: open reservations and concurrency slots are "
            "not being expired",
        )
        self.schedule = events.Rule(
            self,
            "ReaperSchedule",
            description="Expire abandoned quota reservations",
            schedule=events.Schedule.rate(REAPER_RATE),
            targets=[
                targets.LambdaFunction(self.reaper.function, retry_attempts=2, dead_letter_queue=self.reaper_failures)
            ],
        )

        self.dead_letter_alarm = queues.dead_letter_alarm(
            self,
            "DeadLettersAlarm",
            self.dead_letters,
            "Settlements that could not be applied after every retry (reservations "
            "stay charged until the reaper expires them)",
        )

    def connect_proxy(self, function: lambda_.Function) -> None:
        """The proxy sends what it could not settle in time to the queue (and only sends)."""
        self.queue.grant_send_messages(function)
        function.add_environment(settings.SETTLEMENT_QUEUE_URL, self.queue.queue_url)
