"""backend/controllers/forecast.py: the slope forecast every proposal of a
strategy without a model of skills carries (forecast errors:
tests/test_forecast_errors.py)."""


import pytest

from backend.controllers.forecast import SLOPE_BASIS, slope_forecast, slope_forecasts



# -- the shared slope forecast --------------------------------------------------------

THREE = {"strings": 1 / 3, "arithmetic": 1 / 3, "noise": 1 / 3}
SKILL_DOMAINS = {"copy": ["strings"], "add2": ["arithmetic"]}


def test_slope_forecast_scales_the_slope_by_the_change_in_data_share():
    f = slope_forecast(0.4, 0.1, ["strings"], THREE, {"strings": 0.5, "arithmetic": 0.3, "noise": 0.2})
    assert f == {"score": 0.4, "expected": pytest.approx(0.4 + 0.1 * 1.5), "basis": SLOPE_BASIS}
    assert slope_forecast(0.4, None, ["strings"], THREE, THREE)["expected"] == 0.4  # no slope yet
    assert slope_forecast(0.95, 0.2, ["strings"], THREE, THREE)["expected"] == 1.0  # a score stays a score
    est = {"copy": [{"score": 0.3, "slope": 0.0}, {"score": 0.4, "slope": 0.1}], "add2": [{"score": 0.2, "slope": 0.3}],
           "gone": []}
    out = slope_forecasts(est, SKILL_DOMAINS, THREE, THREE)
    assert set(out) == {"copy", "add2"}
    assert out["copy"]["expected"] == pytest.approx(0.5)
    assert out["add2"]["expected"] == 0.2  # one estimate: no slope


def test_slope_forecast_of_a_skill_whose_domains_had_no_weight():
    # a share of 0 now: the ratio has no meaning, so the forecast stays within [0, 1]
    f = slope_forecast(0.3, 0.1, ["strings"], {"strings": 0.0, "noise": 1.0}, {"strings": 0.5, "noise": 0.5})
    assert 0.0 <= f["expected"] <= 1.0 and f["expected"] >= f["score"]
