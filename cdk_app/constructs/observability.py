"""Dashboard and alarms: the proxy's own metrics (EMF, named in quotagate.metric_names), API Gateway,
the functions, DynamoDB and the dead-letter queues. Every alarm notifies an SNS topic; an e-mail
address given as ``quotagate:alarmEmail`` is subscribed to it.

Tables and dead-letter queues are found in the whole stack when :meth:`Observability.watch_stack` runs
(last in the stack), so those other constructs add get alarms without wiring.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aws_cdk import Duration, RemovalPolicy, Stack
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from quotagate.metric_names import (
    NAMESPACE,
    SERVICE,
    SERVICE_DIMENSION,
    UNKNOWN_DIMENSION_VALUE,
    Dimension,
    Metric,
    RequestOutcome,
)

if TYPE_CHECKING:
    from quotagate.config import GatewayConfig

PERIOD = Duration.minutes(5)
# An alarm when a function's concurrency reaches this share of its reserved concurrency (its cap).
CONCURRENCY_ALARM_SHARE = 0.8
THROTTLE_LIMITS = ("requests", "tokens", "usd", "upstream")
DYNAMODB_OPERATIONS = (
    dynamodb.Operation.GET_ITEM,
    dynamodb.Operation.PUT_ITEM,
    dynamodb.Operation.UPDATE_ITEM,
    dynamodb.Operation.DELETE_ITEM,
    dynamodb.Operation.QUERY,
    dynamodb.Operation.TRANSACT_WRITE_ITEMS,
    dynamodb.Operation.BATCH_WRITE_ITEM,
)


def proxy_metric(
    metric: Metric, statistic: str = "Sum", label: str | None = None, **dimensions: str
) -> cloudwatch.Metric:
    """One of the proxy's EMF metrics (the names the code emits)."""
    return cloudwatch.Metric(
        namespace=NAMESPACE,
        metric_name=metric.value,
        dimensions_map={SERVICE_DIMENSION: SERVICE, **dimensions},
        statistic=statistic,
        period=PERIOD,
        label=label,
    )


class Observability(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        api: apigw.RestApi,
        functions: dict[str, lambda_.Function],
        config: GatewayConfig | None = None,
        reserved_concurrency: dict[str, int] | None = None,
        alarm_email: str | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.alarms: list[cloudwatch.Alarm] = []
        self._watched: set[str] = set()
        # Functions with an errors alarm; watch_stack gives every other function of the stack one.
        self._functions_with_alarms = {function.node.path for function in functions.values()}
        # A customer-managed key: CloudWatch cannot use the AWS-managed alias/aws/sns (its key policy
        # cannot grant it), so with that key every alarm action fails with KMS AccessDenied.
        self.topic_key = kms.Key(
            self,
            "AlarmTopicKey",
            description="Quotagate alarm topic: SNS encryption at rest, usable by CloudWatch alarms",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,
            pending_window=Duration.days(7),
        )
        self.topic_key.add_to_resource_policy(
            iam.PolicyStatement(
                sid="CloudWatchAlarmsPublishToTheEncryptedTopic",
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                resources=["*"],
                conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}},
            )
        )
        self.topic = sns.Topic(
            self,
            "AlarmTopic",
            display_name="Quotagate alarms",
            master_key=self.topic_key,
            enforce_ssl=True,
        )
        self.topic.add_to_resource_policy(
            iam.PolicyStatement(
                actions=["sns:Publish"],
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                resources=[self.topic.topic_arn],
                conditions={"StringEquals": {"aws:SourceAccount": Stack.of(self).account}},
            )
        )
        if alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(alarm_email))
        self._action = cw_actions.SnsAction(self.topic)

        # -- API Gateway and the functions --------------------------------------------------------
        api_5xx = api.metric_server_error(period=PERIOD, statistic="Sum")
        api_4xx = api.metric_client_error(period=PERIOD, statistic="Sum")
        api_count = api.metric_count(period=PERIOD, statistic="Sum")
        self._alarm("Api5xx", api_5xx, 5, "API Gateway answered 5xx errors (integration or authorizer failures)")
        for name, function in functions.items():
            self._alarm(
                f"{name}Errors",
                function.metric_errors(period=PERIOD, statistic="Sum"),
                1,
                f"The {name} function raised errors",
            )
            self._alarm(
                f"{name}Throttles",
                function.metric_throttles(period=PERIOD, statistic="Sum"),
                1,
                f"The {name} function was throttled (reserved concurrency or the account's limit)",
            )
            cap = (reserved_concurrency or {}).get(name, 0)
            if cap:
                self._alarm(
                    f"{name}ConcurrencyNearCap",
                    function.metric("ConcurrentExecutions", period=Duration.minutes(1), statistic="Maximum"),
                    max(1, int(cap * CONCURRENCY_ALARM_SHARE)),
                    f"The {name} function uses {CONCURRENCY_ALARM_SHARE:.0%} or more of its reserved "
                    f"concurrency ({cap}); beyond it requests are throttled",
                )

        # -- the proxy's own metrics --------------------------------------------------------------
        self._alarm(
            "ProxyServerErrors",
            proxy_metric(Metric.SERVER_ERRORS),
            5,
            "The proxy answered 5xx (upstream failures after failover, or gateway errors)",
        )
        self._alarm(
            "SettlementFailures",
            proxy_metric(Metric.SETTLEMENT_FAILURES),
            1,
            "Settlements failed: reservations stay charged until the retry queue settles them",
        )
        self._alarm(
            "BreakerOpens",
            proxy_metric(Metric.BREAKER_OPENS),
            1,
            "A target's circuit breaker opened: its provider is failing",
        )
        self._alarm(
            "Overruns",
            proxy_metric(Metric.OVERRUNS),
            1,
            "A request used more than its reservation (the reservation must be an upper bound)",
        )

        self.dashboard = cloudwatch.Dashboard(self, "Dashboard")  # named by CloudFormation: names are global
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(title="API requests", left=[api_count], right=[api_4xx, api_5xx], width=12),
            cloudwatch.GraphWidget(
                title="Requests by outcome",
                left=[
                    proxy_metric(Metric.REQUESTS, label=o.value, **{Dimension.OUTCOME: o.value}) for o in RequestOutcome
                ],
                stacked=True,
                width=12,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Requests by status class",
                left=[
                    proxy_metric(Metric.REQUESTS, label=c, **{Dimension.STATUS_CLASS: c}) for c in ("2xx", "4xx", "5xx")
                ],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="429s by limit",
                left=[
                    proxy_metric(Metric.THROTTLED, label=limit, **{Dimension.LIMIT: limit}) for limit in THROTTLE_LIMITS
                ],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Tokens and cost",
                left=[
                    proxy_metric(Metric.TOKENS_IN, label="tokens in"),
                    proxy_metric(Metric.TOKENS_OUT, label="tokens out"),
                ],
                right=[proxy_metric(Metric.COST_MICRO_USD, label="micro-dollars")],
                width=8,
            ),
        )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Latency (ms): first byte, duration, gateway overhead",
                left=[
                    proxy_metric(m, statistic=s, label=f"{m.value} {s}")
                    for m in (Metric.TIME_TO_FIRST_BYTE, Metric.DURATION, Metric.GATEWAY_OVERHEAD)
                    for s in ("p50", "p99")
                ],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Failovers, breaker opens (shared, one tenant's), settlement failures, overruns, 5xx",
                left=[
                    proxy_metric(m)
                    for m in (
                        Metric.FAILOVERS,
                        Metric.BREAKER_OPENS,
                        Metric.TENANT_BREAKER_OPENS,
                        Metric.SETTLEMENT_FAILURES,
                        Metric.OVERRUNS,
                        Metric.SERVER_ERRORS,
                    )
                ],
                width=12,
            ),
        )
        if config is not None:
            models = sorted(config.models)
            targets = sorted({t.id for m in config.models.values() for t in m.targets})
            tiers = sorted(config.plans)
            self.dashboard.add_widgets(
                *[
                    cloudwatch.GraphWidget(
                        title=f"Requests by {dimension.value}",
                        left=[proxy_metric(Metric.REQUESTS, label=v, **{dimension: v}) for v in values],
                        width=8,
                    )
                    for dimension, values in (
                        # Requests refused before a model (or a key's tier) is known carry "none".
                        (Dimension.MODEL, [*models, UNKNOWN_DIMENSION_VALUE]),
                        (Dimension.TARGET, targets),
                        (Dimension.TIER, [*tiers, UNKNOWN_DIMENSION_VALUE]),
                    )
                ]
            )
        self.dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Function errors",
                left=[f.metric_errors(period=PERIOD, label=n) for n, f in functions.items()],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Function duration p99",
                left=[f.metric_duration(period=PERIOD, statistic="p99", label=n) for n, f in functions.items()],
                width=8,
            ),
            cloudwatch.GraphWidget(
                title="Concurrent executions",
                left=[
                    f.metric("ConcurrentExecutions", period=PERIOD, statistic="Maximum", label=n)
                    for n, f in functions.items()
                ],
                width=8,
            ),
        )

    def watch_stack(self, stack: Stack) -> None:
        """Alarms on every function (errors), every DynamoDB table (throttling, system errors) and every
        dead-letter queue (depth) in ``stack``. Call it last, after every construct is made."""
        # Alarms other constructs made notify the topic too; a dead-letter queue one of them already
        # watches gets no second alarm.
        watched_queues: set[str] = set()
        for node in stack.node.find_all():
            if isinstance(node, cloudwatch.Alarm) and node not in self.alarms and node.node.path not in self._watched:
                self._watched.add(node.node.path)
                node.add_alarm_action(self._action)
                if isinstance(node.metric, cloudwatch.Metric) and node.metric.namespace == "AWS/SQS":
                    watched_queues.add(str((node.metric.dimensions or {}).get("QueueName")))
        for node in stack.node.find_all():
            if node.node.path in self._watched:
                continue
            self._watched.add(node.node.path)
            if isinstance(node, sqs.Queue) and node.dead_letter_queue is not None:
                if str(node.dead_letter_queue.queue.queue_name) in watched_queues:
                    continue
            if isinstance(node, lambda_.Function) and node.node.path not in self._functions_with_alarms:
                self._functions_with_alarms.add(node.node.path)
                # Its construct path without the stack and the generic "Function": SettlementsReaper.
                name = "".join(p for p in node.node.path.split("/")[1:] if p != "Function")
                self._alarm(
                    f"{name}Errors",
                    node.metric_errors(period=PERIOD, statistic="Sum"),
                    1,
                    f"The function {name} raised errors",
                )
            if isinstance(node, dynamodb.Table):
                name = node.node.id
                throttles = cloudwatch.MathExpression(
                    expression="reads + writes",
                    using_metrics={
                        "reads": node.metric("ReadThrottleEvents", period=PERIOD, statistic="Sum"),
                        "writes": node.metric("WriteThrottleEvents", period=PERIOD, statistic="Sum"),
                    },
                    period=PERIOD,
                    label=f"{name} throttle events",
                )
                self._alarm(f"{name}Throttles", throttles, 1, f"DynamoDB throttled requests on {name}")
                self._alarm(
                    f"{name}SystemErrors",
                    node.metric_system_errors_for_operations(operations=list(DYNAMODB_OPERATIONS), period=PERIOD),
                    1,
                    f"DynamoDB system errors on {name}",
                )
            if isinstance(node, sqs.Queue) and node.dead_letter_queue is not None:
                dlq = node.dead_letter_queue.queue
                self._alarm(
                    f"{node.node.id}DeadLetters",
                    dlq.metric_approximate_number_of_messages_visible(period=PERIOD, statistic="Maximum"),
                    1,
                    f"Messages in the dead-letter queue of {node.node.id}: they need an operator",
                )

    def _alarm(self, construct_id: str, metric: cloudwatch.IMetric, threshold: float, description: str) -> None:
        alarm = cloudwatch.Alarm(
            self,
            construct_id,
            metric=metric,
            threshold=threshold,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
        alarm.add_alarm_action(self._action)
        self.alarms.append(alarm)
