"""Alarms and a dashboard for the request path (API, authorizer, proxy) and key management."""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

PERIOD = Duration.minutes(5)


class Observability(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        api: apigw.RestApi,
        functions: dict[str, lambda_.Function],
    ) -> None:
        super().__init__(scope, construct_id)
        self.alarms: list[cloudwatch.Alarm] = []
        api_5xx = api.metric_server_error(period=PERIOD, statistic="Sum")
        api_4xx = api.metric_client_error(period=PERIOD, statistic="Sum")
        api_count = api.metric_count(period=PERIOD, statistic="Sum")
        self._alarm(
            "Api5xx", api_5xx, 5, "API Gateway answered 5xx errors (integration or authorizer failures)"
        )
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
                f"The {name} function was throttled (account or reserved concurrency)",
            )

        dashboard = cloudwatch.Dashboard(self, "Dashboard")  # named by CloudFormation: names are global
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="API requests", left=[api_count], right=[api_4xx, api_5xx], width=12
            ),
            cloudwatch.GraphWidget(
                title="Function errors",
                left=[f.metric_errors(period=PERIOD, label=n) for n, f in functions.items()],
                width=12,
            ),
        )
        dashboard.add_widgets(
            cloudwatch.GraphWidget(
                title="Function duration p99",
                left=[
                    f.metric_duration(period=PERIOD, statistic="p99", label=n) for n, f in functions.items()
                ],
                width=12,
            ),
            cloudwatch.GraphWidget(
                title="Concurrent executions",
                left=[
                    f.metric("ConcurrentExecutions", period=PERIOD, statistic="Maximum", label=n)
                    for n, f in functions.items()
                ],
                width=12,
            ),
        )
        self.dashboard = dashboard

    def _alarm(
        self, construct_id: str, metric: cloudwatch.IMetric, threshold: float, description: str
    ) -> None:
        self.alarms.append(
            cloudwatch.Alarm(
                self,
                construct_id,
                metric=metric,
                threshold=threshold,
                evaluation_periods=1,
                comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
                alarm_description=description,
            )
        )
