"""Usage events: quota-table stream → EventBridge Pipe → ``quotagate`` bus → rule → SQS (with a
dead-letter queue and an alarm on its depth) → rollup function → usage table; a schedule runs the
period close. The pipe's filter and input template come from ``quotagate.usage.pipe``, the same
definition local mode applies."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import Duration
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda_event_sources as event_sources
from aws_cdk import aws_pipes as pipes
from constructs import Construct

from cdk_app import nag, paths
from cdk_app.constructs import queues
from cdk_app.constructs.function import GatewayFunction
from quotagate import settings, tables
from quotagate.usage import pipe
from quotagate.usage.period_close import DEFAULT_GRACE_SECONDS
from quotagate.usage.pipe import ROLLUP_RULE_PATTERN
from quotagate.usage.rollup import DEFAULT_THRESHOLDS

if TYPE_CHECKING:
    from cdk_app.constructs.data import DataTables
    from cdk_app.constructs.layers import SharedLayers
    from cdk_app.context import DeploymentOptions

ROLLUP_TIMEOUT = Duration.seconds(60)
MAX_RECEIVES = 5
# DynamoDB streams keep records 24 h. A record the pipe gives up on at this age still has the rest
# of the day in the stream, so its dead-letter entry can be replayed (docs/usage-events.md).
STREAM_RETENTION = Duration.hours(24)
PIPE_MAX_RECORD_AGE = Duration.hours(6)
PERIOD_CLOSE_SCHEDULE = events.Schedule.rate(Duration.hours(1))
DLQ_REASON = (
    "This queue is itself the dead-letter queue of the usage pipe (cdk-nag does not see a pipe's "
    "DeadLetterConfig); its depth has a CloudWatch alarm, so it needs no dead-letter queue of its own."
)


class UsagePipeline(Construct):
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
        self.bus = events.EventBus(self, "Bus", event_bus_name=pipe.BUS_NAME)

        # ---- the pipe: stream → bus -------------------------------------------------------------
        self.pipe_dlq = queues.encrypted_queue(self, "PipeDeadLetterQueue")
        nag.acknowledge(self.pipe_dlq, "AwsSolutions-SQS3", DLQ_REASON)
        quota = data.quota
        assert quota.table_stream_arn is not None
        self.pipe_role = iam.Role(
            self,
            "PipeRole",
            assumed_by=iam.ServicePrincipal("pipes.amazonaws.com"),
            description="Quotagate usage pipe: read the quota table's stream, put events on the quotagate bus",
        )
        self.pipe_role.add_to_policy(
            iam.PolicyStatement(
                actions=["dynamodb:DescribeStream", "dynamodb:GetRecords", "dynamodb:GetShardIterator"],
                resources=[quota.table_stream_arn],
            )
        )
        self.pipe_role.add_to_policy(iam.PolicyStatement(actions=["dynamodb:ListStreams"], resources=["*"]))
        nag.acknowledge(
            self.pipe_role,
            "AwsSolutions-IAM5[Resource::*]",
            "dynamodb:ListStreams has no resource-level permissions (the only resource it accepts is '*'); "
            "it lists stream ARNs only, and every read of a stream is limited to the quota table's stream.",
        )
        self.bus.grant_put_events_to(self.pipe_role)
        self.pipe_dlq.grant_send_messages(self.pipe_role)
        (stream_filter,) = pipe.filter_criteria()["Filters"]
        self.pipe = pipes.CfnPipe(
            self,
            "Pipe",
            description="Settled and expired reservations of the quota table as Request Settled events",
            role_arn=self.pipe_role.role_arn,
            source=quota.table_stream_arn,
            source_parameters=pipes.CfnPipe.PipeSourceParametersProperty(
                dynamo_db_stream_parameters=pipes.CfnPipe.PipeSourceDynamoDBStreamParametersProperty(
                    starting_position="TRIM_HORIZON",
                    batch_size=10,
                    maximum_batching_window_in_seconds=1,
                    # A record that cannot be delivered must not block its shard for the stream's
                    # 24 h: after the retries (or PIPE_MAX_RECORD_AGE), its position goes to the
                    # dead-letter queue while the record is still in the stream to be replayed.
                    maximum_retry_attempts=10,
                    maximum_record_age_in_seconds=int(PIPE_MAX_RECORD_AGE.to_seconds()),
                    # A failing batch is split in halves and retried, down to the one bad record: only
                    # that record's position goes to the dead-letter queue, its neighbours are delivered.
                    on_partial_batch_item_failure="AUTOMATIC_BISECT",
                    dead_letter_config=pipes.CfnPipe.DeadLetterConfigProperty(arn=self.pipe_dlq.queue_arn),
                ),
                filter_criteria=pipes.CfnPipe.FilterCriteriaProperty(
                    filters=[pipes.CfnPipe.FilterProperty(pattern=stream_filter["Pattern"])]
                ),
            ),
            target=self.bus.event_bus_arn,
            target_parameters=pipes.CfnPipe.PipeTargetParametersProperty(
                input_template=pipe.input_template(),
                event_bridge_event_bus_parameters=pipes.CfnPipe.PipeTargetEventBridgeEventBusParametersProperty(
                    source=pipe.EVENT_SOURCE, detail_type=pipe.REQUEST_SETTLED
                ),
            ),
        )
        self.pipe.node.add_dependency(self.pipe_role)

        # ---- rule → queue → rollup ----------------------------------------------------------------
        self.rollup_dlq = queues.encrypted_queue(self, "RollupDeadLetterQueue")
        self.rollup_queue = queues.work_queue(
            self,
            "RollupQueue",
            dead_letters=self.rollup_dlq,
            max_receives=MAX_RECEIVES,
            consumer_timeout=ROLLUP_TIMEOUT,
        )
        self.rule = events.Rule(
            self,
            "RequestSettledRule",
            event_bus=self.bus,
            description="Request Settled events to the usage rollup",
            event_pattern=events.EventPattern(
                source=ROLLUP_RULE_PATTERN["source"], detail_type=ROLLUP_RULE_PATTERN["detail-type"]
            ),
            targets=[targets.SqsQueue(self.rollup_queue)],
        )
        environment = {
            **data.table_name_env(tables.USAGE),
            settings.EVENT_BUS: self.bus.event_bus_name,
            settings.BUDGET_THRESHOLDS: ",".join(f"{t:g}" for t in DEFAULT_THRESHOLDS),
            settings.PERIOD_CLOSE_GRACE_SECONDS: str(DEFAULT_GRACE_SECONDS),
        }
        self.rollup = GatewayFunction(
            self,
            "Rollup",
            code_dir=paths.FUNCTIONS_DIR / "usage_rollup",
            handler="handler.lambda_handler",
            service="quotagate-usage_rollup",
            description="Quotagate usage rollup: Request Settled events to aggregates, exactly once; thresholds",
            layers=layers.all,
            environment=environment,
            log_retention_days=options.log_retention_days,
            timeout=ROLLUP_TIMEOUT,
            memory_size=256,
        )
        self.rollup.function.add_event_source(
            event_sources.SqsEventSource(
                self.rollup_queue,
                batch_size=10,
                max_batching_window=Duration.seconds(1),
                report_batch_item_failures=True,
                max_concurrency=queues.EVENT_SOURCE_MAX_CONCURRENCY,
            )
        )
        data.grant(self.rollup.function, tables.USAGE, write=True)
        self.bus.grant_put_events_to(self.rollup.function)

        # ---- period close on a schedule -----------------------------------------------------------
        self.period_close = GatewayFunction(
            self,
            "PeriodClose",
            code_dir=paths.FUNCTIONS_DIR / "usage_period_close",
            handler="handler.lambda_handler",
            service="quotagate-usage_period_close",
            description="Quotagate usage period close: one Usage Period Closed event per tenant and period",
            layers=layers.all,
            environment=environment,
            log_retention_days=options.log_retention_days,
            timeout=Duration.minutes(5),
            memory_size=256,
        )
        data.grant(self.period_close.function, tables.USAGE, write=True)
        self.bus.grant_put_events_to(self.period_close.function)
        self.period_close_failures, self.period_close_failures_alarm = queues.async_failure_queue(
            self,
            "PeriodCloseFailures",
            self.period_close.function,
            "Period-close runs that failed after Lambda's retries: Usage Period Closed events are late "
            "(the next hourly run retries the same periods)",
        )
        self.schedule = events.Rule(
            self,
            "PeriodCloseSchedule",
            schedule=PERIOD_CLOSE_SCHEDULE,
            description="Close finished usage days and months (after the grace period)",
            targets=[
                targets.LambdaFunction(
                    self.period_close.function, retry_attempts=2, dead_letter_queue=self.period_close_failures
                )
            ],
        )

        # ---- alarms ---------------------------------------------------------------------------------
        # The rollup queue's dead-letter queue is alarmed by Observability.watch_stack (every queue's
        # DLQ is); the pipe's is not a queue's DLQ, so it gets its own (which notifies the same topic).
        self.pipe_dlq_alarm = queues.dead_letter_alarm(
            self,
            "PipeDeadLetterQueueDepth",
            self.pipe_dlq,
            "Stream batches the usage pipe could not deliver to the bus (Request Settled events missing)",
        )
