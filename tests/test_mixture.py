"""backend/mixture.py: validation of weights a person typed."""

import math

import pytest

from backend.mixture import WeightsError, validate_weights

DOMAINS = ["a", "b", "c", "d"]


def test_valid_weights_are_renormalised_in_domain_order():
    out = validate_weights({"c": 1, "a": 2, "b": 1, "d": 0}, DOMAINS)
    assert list(out) == DOMAINS
    assert out == {"a": 0.5, "b": 0.25, "c": 0.25, "d": 0.0}
    assert all(isinstance(v, float) for v in out.values())


@pytest.mark.parametrize("weights, words", [
    ({"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}, ["unknown domain", "'e'"]),
    ({"a": 1, "b": 1, "c": 1}, ["missing", "'d'"]),
    ({"a": 1, "b": math.nan, "c": 1, "d": 1}, ["not finite", "'b'"]),
    ({"a": 1, "b": 1, "c": math.inf, "d": 1}, ["not finite", "'c'"]),
    ({"a": 1, "b": 1, "c": 1, "d": -0.1}, ["negative", "'d'"]),
    ({"a": True, "b": 1, "c": 1, "d": 1}, ["not a number", "'a'"]),
    ({"a": 1, "b": "0.5", "c": 1, "d": 1}, ["not a number", "'b'"]),
    ({"a": 1, "b": None, "c": 1, "d": 1}, ["not a number", "'b'"]),
    ({"a": 0, "b": 0, "c": 0.0, "d": 0}, ["all weights are zero"]),
])
def test_invalid_weights_are_refused_with_the_domain_named(weights, words):
    with pytest.raises(WeightsError) as e:
        validate_weights(weights, DOMAINS)
    for w in words:
        assert w in str(e.value), str(e.value)


@pytest.mark.parametrize("weights", [[0.25] * 4, "a=1", None, 1.0])
def test_non_object_is_refused(weights):
    with pytest.raises(WeightsError, match="expected an object"):
        validate_weights(weights, DOMAINS)


def test_huge_integer_weight_is_a_weights_error():
    with pytest.raises(WeightsError, match="'a'"):
        validate_weights({"a": 10**400, "b": 1, "c": 1, "d": 1}, DOMAINS)
