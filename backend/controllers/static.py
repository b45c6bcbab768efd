"""`static`: keep the mixture as it is (the baseline every run compares to).

Registered unconstrained: smoothing toward uniform would move it."""

from __future__ import annotations

from backend.controllers import History, Proposal, register_strategy


@register_strategy("static", constrained=False)
class Static:
    def __init__(self, settings):
        self.settings = settings

    def propose(self, history: History, current: dict[str, float]) -> Proposal:
        """The current weights, unchanged."""
        return Proposal(weights=dict(current), rationale={d: "unchanged (static mixture)" for d in current})

    def forecast(self, history: History, current: dict[str, float], weights: dict[str, float]) -> dict[str, dict]:
        """None: a static run makes no claim about its skills."""
        return {}
