"""Which targets serve a request, and in which order. Pure logic: no I/O, randomness injected.

**Tiers.** A plan *includes* a model name when its ``models`` is ``"*"`` or lists the name (and
the key's ``allowed_models``, when set, lists it too). A target is *allowed* for a plan when it
has no ``plans`` or its ``plans`` names the plan. A request gets the whole alias when the plan
includes it and allows every target. Otherwise it is a tier mismatch, handled per alias by
``on_tier_mismatch``:

- ``"refuse"`` (the default): 404 ``model_not_found``, exactly the answer to a name that does not
  exist, so no caller learns which models the gateway serves beyond its plan;
- ``"downgrade"``: the targets of the alias that the plan allows (when the plan includes the
  alias and allows some of its targets), else the alias named by ``downgrade_to`` (resolved by
  the same rules, so downgrades can chain; a loop is refused), else that 404.

**Order.** The first target is a weighted choice among the allowed targets (``weight``; A/B
splits such as 90/10). When no target has a weight, the first allowed target is the primary;
when some do, a target without a weight is failover only. The draw is ``random()`` of an
injected :class:`random.Random` (deterministic under a seed), or, with ``sticky: true``, a
stable hash of (tenant/consumer, alias), so a consumer keeps the same target while it is
healthy. The remaining targets follow in configured order, as failover. Targets whose circuit
is open are skipped (a sticky consumer whose target is open fails over, and comes back when it
closes); half-open targets stay in the order, and the gateway asks the breaker for the probe
before calling one.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from quotagate.dal.circuit_store import CircuitState
from quotagate.errors import GatewayError, not_found

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from quotagate.config import GatewayConfig, Model, Plan, Target


@dataclass(frozen=True)
class Resolution:
    requested: str  # the name the client sent
    model: Model  # the alias that serves it (differs from requested after a downgrade_to)
    targets: tuple[Target, ...]  # the targets this plan may use, in configured order


def _included(name: str, plan: Plan, allowed_models: Sequence[str] | None) -> bool:
    return plan.includes(name) and (allowed_models is None or name in allowed_models)


def model_not_found(name: str) -> GatewayError:
    """The answer to a name this key may not call, whether or not it exists: the same bytes."""
    return not_found(f"The model '{name}' does not exist or you do not have access to it.", "model_not_found", "model")


def resolve(config: GatewayConfig, name: str, plan: Plan, allowed_models: Sequence[str] | None = None) -> Resolution:
    """The alias and targets that serve ``name`` for this plan and key. Raises 404 ``model_not_found``
    for an unknown name and for a tier mismatch that is refused or cannot be downgraded alike."""
    model = config.models.get(name)
    if model is None:
        raise model_not_found(name)
    seen: set[str] = set()
    current = model
    while True:
        seen.add(current.name)
        included = _included(current.name, plan, allowed_models)
        allowed = tuple(t for t in current.targets if t.allows_plan(plan.name)) if included else ()
        if allowed and len(allowed) == len(current.targets):
            return Resolution(name, current, allowed)
        if current.on_tier_mismatch == "downgrade":
            if allowed:
                return Resolution(name, current, allowed)
            nxt = current.downgrade_to
            if nxt is not None and nxt not in seen and nxt in config.models:
                current = config.models[nxt]
                continue
        raise model_not_found(name)


def callable_models(config: GatewayConfig, plan: Plan, allowed_models: Sequence[str] | None = None) -> list[Resolution]:
    """Every model name this plan and key may call (for /v1/models), with what serves it: fully
    included names, names downgraded to a subset of their targets, and names served by another
    alias through ``downgrade_to`` — a request for any listed name is answered."""
    result = []
    for name in config.models:
        try:
            result.append(resolve(config, name, plan, allowed_models))
        except GatewayError:
            continue
    return result


def _effective_weights(targets: Sequence[Target]) -> list[float]:
    if all(t.weight is None for t in targets):
        return [1.0] + [0.0] * (len(targets) - 1)
    return [t.weight or 0.0 for t in targets]


def sticky_point(consumer: str, alias: str) -> float:
    """A stable number in [0, 1) for (consumer, alias): the same on every container and restart."""
    digest = hashlib.sha256(f"{consumer}\x00{alias}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def weighted_pick(targets: Sequence[Target], point: float) -> Target | None:
    """The target whose cumulative weight interval contains ``point`` (in [0, 1))."""
    weights = _effective_weights(targets)
    total = sum(weights)
    if total <= 0:
        return None
    mark = point * total
    running = 0.0
    for target, weight in zip(targets, weights, strict=True):
        running += weight
        if weight > 0 and mark < running:
            return target
    return next(t for t, w in zip(reversed(targets), reversed(weights), strict=True) if w > 0)


class Router:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def order(
        self, resolution: Resolution, consumer: str, health: Mapping[str, CircuitState] | None = None
    ) -> list[Target]:
        """The targets to try, in order: the weighted (or sticky) pick first, then the others in
        configured order; targets whose circuit is open (per ``health``: target id -> state) are
        left out. Empty when every circuit is open."""
        health = health or {}
        targets = resolution.targets
        available = [t for t in targets if health.get(t.id) != CircuitState.OPEN]
        if not available:
            return []
        point = sticky_point(consumer, resolution.model.name) if resolution.model.sticky else self._rng.random()
        # The pick is made among all allowed targets, healthy or not, so that a sticky consumer's
        # choice does not move when another target's health changes.
        first = weighted_pick(targets, point)
        if first is None or first not in available:
            return available
        return [first, *(t for t in available if t is not first)]
