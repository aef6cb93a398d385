"""Routing: config forms, tier filtering (refuse / downgrade), weighted and sticky picks, failover
order and open circuits. Pure logic, seeded randomness."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from quotagate.config import ConfigError
from quotagate.config_models import parse_config
from quotagate.errors import GatewayError
from quotagate.logic import router as routing
from quotagate.logic.router import Router, callable_models, resolve, sticky_point

PROVIDERS = {
    "openai": {
        "type": "openai",
        "base_url": "https://api.openai.com/v1",
        "api_key_secret": "quotagate/providers/openai",
        "read_timeout": 90,
    },
    "anthropic": {"type": "anthropic", "base_url": "https://api.anthropic.com/v1"},
    "bedrock": {"type": "bedrock", "region": "eu-west-1"},
}
MODELS = {
    "gpt-4o-mini": {
        "provider": "openai",
        "upstream_model": "gpt-4o-mini",
        "price": {"input_per_million": 0.15, "output_per_million": 0.6},
    },
    "chat-default": {
        "targets": [
            {
                "provider": "openai",
                "upstream_model": "gpt-4o-mini",
                "weight": 90,
                "price": {"input_per_million": 0.15, "output_per_million": 0.6},
                "timeouts": {"connect": 2, "first_byte": 10, "idle": 30},
            },
            {
                "provider": "anthropic",
                "upstream_model": "claude-haiku",
                "weight": 10,
                "price": {"input_per_million": 1.0, "output_per_million": 5.0},
            },
            {"provider": "bedrock", "upstream_model": "amazon.nova-lite-v1:0"},
        ],
        "deadline": 60,
    },
    "chat-sticky": {
        "targets": [
            {"provider": "openai", "upstream_model": "gpt-4o-mini", "weight": 50},
            {"provider": "anthropic", "upstream_model": "claude-haiku", "weight": 50},
        ],
        "sticky": True,
    },
    "chat-pro": {
        "targets": [
            {"provider": "openai", "upstream_model": "gpt-4o", "plans": ["pro"]},
            {"provider": "anthropic", "upstream_model": "claude-sonnet", "plans": ["pro"]},
        ],
        "on_tier_mismatch": "refuse",
    },
    "chat-pro-or-default": {
        "targets": [{"provider": "openai", "upstream_model": "gpt-4o", "plans": ["pro"]}],
        "on_tier_mismatch": "downgrade",
        "downgrade_to": "chat-default",
    },
    "chat-mixed": {
        "targets": [
            {"provider": "openai", "upstream_model": "gpt-4o", "plans": ["pro"]},
            {"provider": "openai", "upstream_model": "gpt-4o-mini"},
        ],
        "on_tier_mismatch": "downgrade",
    },
    "chat-mixed-refuse": {
        "targets": [
            {"provider": "openai", "upstream_model": "gpt-4o", "plans": ["pro"]},
            {"provider": "openai", "upstream_model": "gpt-4o-mini"},
        ],
    },
}
PLANS = {
    "free": {
        "models": [
            "gpt-4o-mini",
            "chat-default",
            "chat-sticky",
            "chat-pro",
            "chat-pro-or-default",
            "chat-mixed",
            "chat-mixed-refuse",
        ]
    },
    "starter": {"models": ["chat-default"]},
    "pro": {"models": "*"},
}
CONFIG = parse_config({"default_plan": "free", "providers": PROVIDERS, "models": MODELS, "plans": PLANS})


def plan(name):
    return CONFIG.plans[name]


def ids(targets):
    return [t.id for t in targets]


# -- configuration ------------------------------------------------------------------------------
def test_simple_form_is_a_single_target_alias():
    model = CONFIG.models["gpt-4o-mini"]
    assert len(model.targets) == 1
    assert model.targets[0].id == "openai/gpt-4o-mini"
    assert model.provider == "openai" and model.upstream_model == "gpt-4o-mini"
    assert model.price.output_per_million == 0.6
    assert model.on_tier_mismatch == "refuse" and not model.sticky and model.deadline is None


def test_alias_form_with_weights_timeouts_and_provider_types():
    model = CONFIG.models["chat-default"]
    assert ids(model.targets) == ["openai/gpt-4o-mini", "anthropic/claude-haiku", "bedrock/amazon.nova-lite-v1:0"]
    assert [t.weight for t in model.targets] == [90, 10, None]
    assert model.deadline == 60
    first, second, _ = model.targets
    assert CONFIG.timeouts_for(first).first_byte == 10 and CONFIG.timeouts_for(first).idle == 30
    assert CONFIG.timeouts_for(first).connect == 2
    # Unset per-target timeouts fall back to the provider's.
    assert CONFIG.timeouts_for(second).first_byte == 120 and CONFIG.timeouts_for(second).connect == 5
    bedrock = CONFIG.providers["bedrock"]
    assert bedrock.base_url == "" and bedrock.region == "eu-west-1"
    assert CONFIG.models["chat-pro-or-default"].on_tier_mismatch == "downgrade"


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ({"x": {"targets": []}}, "non-empty list"),
        ({"x": {"targets": [{"provider": "nope"}]}}, "unknown provider"),
        ({"x": {"targets": [{"provider": "openai", "weight": -1}]}}, "weight"),
        ({"x": {"targets": [{"provider": "openai", "plans": ["gold"]}]}}, "unknown plan"),
        ({"x": {"targets": [{"provider": "openai", "timeouts": {"first_byte": 0}}]}}, "first_byte"),
        ({"x": {"targets": [{"provider": "openai", "timeouts": {"read": 3}}]}}, "unknown field"),
        ({"x": {"targets": [{"provider": "openai", "wieght": 3}]}}, "unknown field"),
        ({"x": {"provider": "openai", "on_tier_mismatch": "shrug"}}, "on_tier_mismatch"),
        ({"x": {"provider": "openai", "downgrade_to": "nope"}}, "downgrade_to"),
        ({"x": {"provider": "openai", "on_tier_mismatch": "refuse", "downgrade_to": "x"}}, "downgrade"),
        ({"x": {"provider": "openai", "sticky": "yes"}}, "sticky"),
        ({"x": {"provider": "openai", "deadline": 0}}, "deadline"),
        (
            {
                "x": {
                    "targets": [
                        {"provider": "openai", "upstream_model": "a"},
                        {"provider": "openai", "upstream_model": "a"},
                    ]
                }
            },
            "twice",
        ),
    ],
)
def test_bad_routing_config_is_refused_with_the_field_named(models, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"providers": PROVIDERS, "models": models, "plans": {"free": {"models": "*"}}})


def test_provider_types_and_base_url_rules():
    with pytest.raises(ConfigError, match="type"):
        parse_config({"providers": {"p": {"type": "cohere", "base_url": "x"}}, "plans": {"f": {}}})
    with pytest.raises(ConfigError, match="base_url is required"):
        parse_config({"providers": {"p": {"type": "anthropic"}}, "plans": {"f": {}}})
    parse_config({"providers": {"p": {"type": "bedrock"}}, "plans": {"f": {}}})


def test_breaker_policy_config():
    config = parse_config(
        {"providers": PROVIDERS, "plans": {"f": {}}, "circuit_breaker": {"failure_threshold": 3, "cooldown_seconds": 5}}
    )
    assert config.circuit_breaker.failure_threshold == 3 and config.circuit_breaker.cooldown_seconds == 5
    assert CONFIG.circuit_breaker.failure_threshold == 5 and CONFIG.circuit_breaker.cache_seconds == 2
    with pytest.raises(ConfigError, match="failure_threshold"):
        parse_config({"plans": {"f": {}}, "circuit_breaker": {"failure_threshold": 0}})


# -- tiers ----------------------------------------------------------------------------------------
def test_plan_that_includes_the_alias_gets_every_target():
    resolution = resolve(CONFIG, "chat-pro", plan("pro"))
    assert resolution.model.name == "chat-pro" and resolution.targets == resolution.model.targets
    assert ids(resolution.targets) == ["openai/gpt-4o", "anthropic/claude-sonnet"]


def test_refuse_is_the_answer_to_a_name_that_does_not_exist():
    with pytest.raises(GatewayError) as refused:
        resolve(CONFIG, "chat-pro", plan("free"))
    with pytest.raises(GatewayError) as missing:
        resolve(CONFIG, "chat-nothing", plan("free"))
    assert refused.value.status == 404 and refused.value.code == "model_not_found"
    assert refused.value.message.replace("chat-pro", "<m>") == missing.value.message.replace("chat-nothing", "<m>")
    # Refuse also when only some of the alias's targets are beyond the plan.
    with pytest.raises(GatewayError) as partial:
        resolve(CONFIG, "chat-mixed-refuse", plan("free"))
    assert partial.value.code == "model_not_found"


def test_downgrade_to_the_targets_the_plan_allows():
    resolution = resolve(CONFIG, "chat-mixed", plan("free"))
    assert resolution.model.name == "chat-mixed" and len(resolution.targets) < len(resolution.model.targets)
    assert ids(resolution.targets) == ["openai/gpt-4o-mini"]
    assert ids(resolve(CONFIG, "chat-mixed", plan("pro")).targets) == ["openai/gpt-4o", "openai/gpt-4o-mini"]


def test_downgrade_to_another_alias():
    resolution = resolve(CONFIG, "chat-pro-or-default", plan("free"))
    assert resolution.requested == "chat-pro-or-default"
    assert resolution.model.name == "chat-default" != resolution.requested
    assert ids(resolution.targets)[0] == "openai/gpt-4o-mini"
    # The plan does not even list the alias: downgrade still applies.
    assert resolve(CONFIG, "chat-pro-or-default", plan("starter")).model.name == "chat-default"
    assert resolve(CONFIG, "chat-pro-or-default", plan("pro")).model.name == "chat-pro-or-default"


def test_downgrade_target_must_itself_be_allowed():
    config = parse_config(
        {
            "providers": PROVIDERS,
            "models": {
                "a": {"provider": "openai", "downgrade_to": "b"},
                "b": {"provider": "anthropic", "downgrade_to": "a"},
            },
            "plans": {"none": {"models": []}},
        }
    )
    with pytest.raises(GatewayError) as refused:  # a loop of downgrades ends in a refusal
        resolve(config, "a", config.plans["none"])
    assert refused.value.code == "model_not_found"


def test_key_allowed_models_restrict_further():
    with pytest.raises(GatewayError) as refused:
        resolve(CONFIG, "chat-default", plan("pro"), allowed_models=["gpt-4o-mini"])
    assert refused.value.code == "model_not_found" and refused.value.status == 404
    assert resolve(CONFIG, "gpt-4o-mini", plan("pro"), allowed_models=["gpt-4o-mini"]).model.name == "gpt-4o-mini"


def test_unknown_model_is_404():
    with pytest.raises(GatewayError) as missing:
        resolve(CONFIG, "gpt-7", plan("pro"))
    assert missing.value.status == 404 and missing.value.code == "model_not_found"


def test_models_listing_per_plan_and_key():
    def names(*args):
        return [r.requested for r in callable_models(CONFIG, *args)]

    assert names(plan("pro")) == list(MODELS)
    assert names(plan("pro"), ["chat-pro"]) == ["chat-pro"]
    # Every listed name resolves: the listing and the request path agree.
    for name in ("free", "starter", "pro"):
        listed = names(plan(name))
        callable_names = []
        for model in MODELS:
            try:
                resolve(CONFIG, model, plan(name))
                callable_names.append(model)
            except GatewayError:
                pass
        assert listed == callable_names


# -- order ----------------------------------------------------------------------------------------
def test_weighted_split_90_10_within_3_percent_over_1000_seeded_picks():
    router = Router(random.Random(1234))
    resolution = resolve(CONFIG, "chat-default", plan("pro"))
    firsts = Counter(router.order(resolution, f"consumer-{i}")[0].id for i in range(1000))
    assert abs(firsts["openai/gpt-4o-mini"] / 1000 - 0.90) <= 0.03, firsts
    assert abs(firsts["anthropic/claude-haiku"] / 1000 - 0.10) <= 0.03, firsts
    assert firsts["bedrock/amazon.nova-lite-v1:0"] == 0  # no weight: failover only


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_splits_hold_for_other_seeds_and_are_deterministic(seed):
    resolution = resolve(CONFIG, "chat-default", plan("pro"))
    picks = [ids(Router(random.Random(seed)).order(resolution, "c")) for _ in range(3)]
    assert picks[0] == picks[1] == picks[2]
    router = Router(random.Random(seed))
    sequence = [router.order(resolution, "c")[0].id for _ in range(1000)]
    replay = Router(random.Random(seed))
    assert sequence == [replay.order(resolution, "c")[0].id for _ in range(1000)]
    share = sequence.count("openai/gpt-4o-mini") / 1000
    assert 0.87 <= share <= 0.93


def test_failover_order_follows_the_pick():
    resolution = resolve(CONFIG, "chat-default", plan("pro"))
    router = Router(random.Random(7))
    orders = {tuple(ids(router.order(resolution, "c"))) for _ in range(200)}
    assert orders == {
        ("openai/gpt-4o-mini", "anthropic/claude-haiku", "bedrock/amazon.nova-lite-v1:0"),
        ("anthropic/claude-haiku", "openai/gpt-4o-mini", "bedrock/amazon.nova-lite-v1:0"),
    }


def test_without_weights_the_first_target_is_primary():
    resolution = resolve(CONFIG, "chat-pro", plan("pro"))
    router = Router(random.Random(0))
    assert {tuple(ids(router.order(resolution, "c"))) for _ in range(50)} == {
        ("openai/gpt-4o", "anthropic/claude-sonnet")
    }


def test_open_circuits_are_skipped_and_half_open_kept():
    resolution = resolve(CONFIG, "chat-default", plan("pro"))
    router = Router(random.Random(5))
    for _ in range(100):
        order = ids(router.order(resolution, "c", {"openai/gpt-4o-mini": "open"}))
        assert order == ["anthropic/claude-haiku", "bedrock/amazon.nova-lite-v1:0"]
    half = ids(Router(random.Random(5)).order(resolution, "c", {"openai/gpt-4o-mini": "half_open"}))
    assert "openai/gpt-4o-mini" in half
    everything_open = {t.id: "open" for t in resolution.targets}
    assert router.order(resolution, "c", everything_open) == []


def test_sticky_consumers_keep_their_target_while_it_is_healthy():
    resolution = resolve(CONFIG, "chat-sticky", plan("pro"))
    consumers = [f"acme/user-{i}" for i in range(200)]
    # Different routers (containers), different seeds: the same pick for the same consumer.
    first = {c: Router(random.Random(1)).order(resolution, c)[0].id for c in consumers}
    again = {c: Router(random.Random(99)).order(resolution, c)[0].id for c in consumers}
    assert first == again
    split = Counter(first.values())
    assert 70 <= split["openai/gpt-4o-mini"] <= 130, split  # the hash still honours 50/50
    # Its target open: the consumer fails over; the others do not move. Closed again: back.
    router = Router(random.Random(3))
    health = {"openai/gpt-4o-mini": "open"}
    for consumer in consumers:
        during = router.order(resolution, consumer, health)[0].id
        assert during == "anthropic/claude-haiku"
        assert router.order(resolution, consumer)[0].id == first[consumer]
    assert sticky_point("a/b", "x") == sticky_point("a/b", "x") != sticky_point("a/b", "y")


def test_weighted_pick_edges():
    targets = resolve(CONFIG, "chat-default", plan("pro")).targets
    assert routing.weighted_pick(targets, 0.0).id == "openai/gpt-4o-mini"
    assert routing.weighted_pick(targets, 0.8999).id == "openai/gpt-4o-mini"
    assert routing.weighted_pick(targets, 0.9).id == "anthropic/claude-haiku"
    assert routing.weighted_pick(targets, 0.999999).id == "anthropic/claude-haiku"
