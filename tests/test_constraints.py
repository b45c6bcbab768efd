"""backend/controllers/constraints.py: the projection every proposal passes
through."""

import math

import pytest

from backend.config import ControllerConfig
from backend.controllers.constraints import apply_constraints
from backend.mixture import WeightsError

EPS = 1e-9
DOMAINS = ["a", "b", "c", "d"]


def within_bounds(w: dict, current: dict, cfg: ControllerConfig, *, step_limit: bool = True) -> None:
    assert set(w) == set(current)
    assert abs(sum(w.values()) - 1) < 1e-12
    for d, v in w.items():
        assert cfg.floor - EPS <= v <= cfg.cap + EPS, (d, v)
        if step_limit:
            assert abs(v - current[d]) <= cfg.max_change + EPS, (d, v, current[d])


def test_output_sums_to_one_and_respects_floor_cap_and_max_change():
    cfg = ControllerConfig(floor=0.05, cap=0.5, max_change=0.1, smoothing=0.0)
    current = dict.fromkeys(DOMAINS, 0.25)
    # the raw proposal wants everything on `a`
    w = apply_constraints({"a": 100.0, "b": 0.0, "c": 0.0, "d": 0.0}, current, cfg)
    within_bounds(w, current, cfg)
    assert w["a"] == pytest.approx(0.35)  # held back by max_change, not by cap
    assert w["b"] == w["c"] == w["d"] == pytest.approx(0.65 / 3)


def test_cap_binds_when_the_step_limit_does_not():
    cfg = ControllerConfig(floor=0.02, cap=0.4, max_change=1.0, smoothing=0.0)
    current = dict.fromkeys(DOMAINS, 0.25)
    w = apply_constraints({"a": 1.0, "b": 0.0, "c": 0.0, "d": 0.0}, current, cfg)
    within_bounds(w, current, cfg)
    assert w["a"] == pytest.approx(0.4)
    assert w["b"] == pytest.approx(0.2)  # the rest shared equally (0.6 / 3)


def test_floor_binds_for_a_domain_proposed_at_zero():
    cfg = ControllerConfig(floor=0.1, cap=0.7, max_change=1.0, smoothing=0.0)
    current = dict.fromkeys(DOMAINS, 0.25)
    w = apply_constraints({"a": 0.0, "b": 1.0, "c": 1.0, "d": 1.0}, current, cfg)
    within_bounds(w, current, cfg)
    assert w["a"] == pytest.approx(0.1)
    assert w["b"] == pytest.approx(0.3)


def test_smoothing_blends_in_uniform():
    cfg = ControllerConfig(floor=0.0, cap=1.0, max_change=1.0, smoothing=0.2)
    current = {"a": 0.5, "b": 0.5}
    w = apply_constraints({"a": 1.0, "b": 0.0}, current, cfg)
    assert w == pytest.approx({"a": 0.8 + 0.1, "b": 0.1})


def test_inside_the_bounds_the_proposal_passes_unchanged():
    cfg = ControllerConfig(floor=0.0, cap=1.0, max_change=1.0, smoothing=0.0)
    current = dict.fromkeys(DOMAINS, 0.25)
    proposed = {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}
    assert apply_constraints(proposed, current, cfg) == pytest.approx(proposed)
    # unnormalised input is normalised first
    assert apply_constraints({k: v * 7 for k, v in proposed.items()}, current, cfg) == pytest.approx(proposed)


def test_current_mixture_that_violates_the_floor_is_repaired():
    # `a` sits below the floor and max_change alone could not lift it there
    cfg = ControllerConfig(floor=0.1, cap=0.7, max_change=0.05, smoothing=0.0)
    current = {"a": 0.0, "b": 0.5, "c": 0.5}
    w = apply_constraints({"a": 0.0, "b": 0.5, "c": 0.5}, current, cfg)
    within_bounds(w, current, cfg, step_limit=False)
    assert w["a"] == pytest.approx(0.1)


def test_current_mixture_above_the_cap_moves_toward_it():
    cfg = ControllerConfig(floor=0.02, cap=0.5, max_change=0.25, smoothing=0.0)
    current = {"a": 0.9, "b": 0.05, "c": 0.05}
    w = apply_constraints(current, current, cfg)
    within_bounds(w, current, cfg, step_limit=False)
    assert w["a"] == pytest.approx(0.5)


def test_impossible_floor_is_refused():
    cfg = ControllerConfig(floor=0.3, cap=0.7, max_change=0.25, smoothing=0.0)
    with pytest.raises(WeightsError, match="floor 0.3"):
        apply_constraints(dict.fromkeys(DOMAINS, 1.0), dict.fromkeys(DOMAINS, 0.25), cfg)


def test_negative_and_nan_proposals_count_as_zero():
    cfg = ControllerConfig(floor=0.0, cap=1.0, max_change=1.0, smoothing=0.0)
    current = {"a": 0.5, "b": 0.5}
    assert apply_constraints({"a": 1.0, "b": -3.0}, current, cfg) == pytest.approx({"a": 1.0, "b": 0.0})
    assert apply_constraints({"a": 1.0, "b": math.nan}, current, cfg) == pytest.approx({"a": 1.0, "b": 0.0})


try:
    import hypothesis
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover
    hypothesis = None


if hypothesis is not None:

    @settings(max_examples=150, deadline=None, derandomize=True, database=None)
    @given(
        k=st.integers(2, 7),
        data=st.data(),
        floor=st.floats(0.0, 0.1),
        cap=st.floats(0.5, 1.0),
        max_change=st.floats(0.01, 1.0),
        smoothing=st.floats(0.0, 0.5),
    )
    def test_property_projection_always_lands_inside_the_bounds(k, data, floor, cap, max_change, smoothing):
        cfg = ControllerConfig(floor=floor, cap=cap, max_change=max_change, smoothing=smoothing)
        names = [f"d{i}" for i in range(k)]
        raw_current = data.draw(st.lists(st.floats(0.0, 1.0), min_size=k, max_size=k))
        total = sum(raw_current)
        current = {n: (v / total if total > 0 else 1 / k) for n, v in zip(names, raw_current)}
        proposed = dict(zip(names, data.draw(st.lists(st.floats(0.0, 1e6), min_size=k, max_size=k))))
        w = apply_constraints(proposed, current, cfg)
        assert abs(sum(w.values()) - 1) < 1e-9
        assert all(floor - 1e-9 <= v <= cap + 1e-9 for v in w.values())
        # the step limit holds whenever the current mixture itself is feasible
        lo = [max(floor, current[n] - max_change) for n in names]
        hi = [min(cap, current[n] + max_change) for n in names]
        if sum(lo) <= 1 <= sum(hi) and all(a <= b for a, b in zip(lo, hi)):
            assert all(abs(w[n] - current[n]) <= max_change + 1e-9 for n in names)


# -- the objective's shares of the mixture -------------------------------------------


def test_a_domains_least_and_largest_share_bind_like_floor_and_cap():
    cfg = ControllerConfig(floor=0.02, cap=0.7, max_change=1.0, smoothing=0.0)
    current = dict.fromkeys(DOMAINS, 0.25)
    w = apply_constraints({"a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0}, current, cfg,
                          shares={"c": (0.2, 1.0), "a": (0.0, 0.3)})
    within_bounds(w, current, cfg)
    assert w["c"] == pytest.approx(0.2) and w["a"] == pytest.approx(0.3)
    assert w["b"] == pytest.approx(0.48) and w["d"] == pytest.approx(0.02)


def test_a_share_the_current_mixture_breaks_is_reached_past_the_step_limit():
    cfg = ControllerConfig(floor=0.0, cap=1.0, max_change=0.05, smoothing=0.0)
    current = {"a": 0.9, "b": 0.1}
    w = apply_constraints({"a": 1.0, "b": 0.0}, current, cfg, shares={"b": (0.3, 1.0)})
    assert w["b"] == pytest.approx(0.3)  # a share is a bound, not a direction to drift in


def test_shares_that_admit_no_mixture_are_refused_naming_them():
    cfg = ControllerConfig(floor=0.0, cap=1.0, max_change=1.0, smoothing=0.0)
    with pytest.raises(WeightsError, match=r"and the objective's shares \(a, b\) admit no mixture"):
        apply_constraints({"a": 1.0, "b": 1.0}, {"a": 0.5, "b": 0.5}, cfg, shares={"a": (0.6, 1.0), "b": (0.6, 1.0)})
