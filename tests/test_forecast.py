"""backend/controllers/forecast.py: the slope forecast every proposal of a
strategy without a model of skills carries (forecast errors:
tests/test_forecast_errors.py)."""


import pytest

from backend.controllers.forecast import SLOPE_BASIS, slope_forecast, slope_forecasts



# -- the shared slope forecast --------------------------------------------------------

THREE = {"strings": 1 / 3, "arithmetic": 1 / 3, "noise": 1 / 3}
SKILL_DOMAINS = {"copy": ["strings"], "add2": ["arithmetic"]}


def links(*fed: str) -> dict[str, dict]:
    """A skill's affinity to the three domains: 0.2 [0.1, 0.3] to each of `fed`, 0 to the rest."""
    return {d: {"mean": 0.2, "lo": 0.1, "hi": 0.3, "source": "prior"} if d in fed else
            {"mean": 0.0, "lo": 0.0, "hi": 0.0, "source": "prior"} for d in THREE}


AFFINITY = {s: links(*ds) for s, ds in SKILL_DOMAINS.items()}


def test_slope_forecast_scales_the_slope_by_the_change_in_data_share():
    f = slope_forecast(0.4, 0.1, links("strings"), THREE, {"strings": 0.5, "arithmetic": 0.3, "noise": 0.2})
    assert f["score"] == 0.4 and f["expected"] == pytest.approx(0.4 + 0.1 * 1.5)
    assert f["basis"] == SLOPE_BASIS + " (top: strings 0.20 [0.10, 0.30] prior)"  # the affinity it leaned on
    assert slope_forecast(0.4, None, links("strings"), THREE, THREE)["expected"] == 0.4  # no slope yet
    assert slope_forecast(0.95, 0.2, links("strings"), THREE, THREE)["expected"] == 1.0  # a score stays a score
    # two domains feed it, one twice as much: moving weight to the stronger one raises the share
    both = {**links("strings"), "noise": {"mean": 0.4, "lo": 0.2, "hi": 0.6, "source": "learned"}}
    up = slope_forecast(0.4, 0.1, both, THREE, {"strings": 0.2, "arithmetic": 1 / 3, "noise": 0.8 - 1 / 3})
    assert up["expected"] == pytest.approx(0.4 + 0.1 * (0.2 * 0.2 + 0.4 * (0.8 - 1 / 3)) / (0.6 / 3))
    est = {"copy": [{"score": 0.3, "slope": 0.0}, {"score": 0.4, "slope": 0.1}], "add2": [{"score": 0.2, "slope": 0.3}],
           "gone": []}
    out = slope_forecasts(est, AFFINITY, THREE, THREE)
    assert set(out) == {"copy", "add2"}
    assert out["copy"]["expected"] == pytest.approx(0.5)
    assert out["add2"]["expected"] == 0.2  # one estimate: no slope


def test_slope_forecast_of_a_skill_whose_domains_had_no_weight():
    # a share of 0 now: the ratio has no meaning, so the forecast stays within [0, 1]
    f = slope_forecast(0.3, 0.1, links("strings"), {"strings": 0.0, "noise": 1.0}, {"strings": 0.5, "noise": 0.5})
    assert 0.0 <= f["expected"] <= 1.0 and f["expected"] >= f["score"]
