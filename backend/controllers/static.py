"""`static`: keep the mixture as it is (the baseline every run compares to)."""

from __future__ import annotations

from backend.controllers import History, Proposal, register_strategy


@register_strategy("static")
class Static:
    def __init__(self, cfg):
        self.cfg = cfg

    def propose(self, history: History, current: dict[str, float]) -> Proposal:
        return Proposal(
            weights=dict(current),
            rationale={d: f"{current[d]:.3f} unchanged (static mixture)" for d in current},
            forecast={},
        )
