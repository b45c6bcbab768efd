"""backend/evaluation/heldout.py: per-domain held-out loss of a tiny real
Llama, checked against transformers' own loss."""

import math
import statistics

import numpy as np
import pytest
import torch

from backend.config import ModelConfig
from backend.evaluation.heldout import domain_losses
from backend.model import build_model

VOCAB, CONTEXT = 200, 12
CPU = torch.device("cpu")


def tiny_model():
    cfg = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    return build_model(cfg, VOCAB, CONTEXT, eos_id=0, pad_id=1, seed=0)


def sequences(n, seed, low=0, high=VOCAB):
    return np.random.default_rng(seed).integers(low, high, size=(n, CONTEXT + 1), dtype=np.int64)


def test_loss_is_the_mean_over_sequences_of_the_per_token_cross_entropy():
    model = tiny_model()
    heldout = {"prose": sequences(5, 0), "code": sequences(3, 1)}
    out = domain_losses(model, heldout, CPU)
    assert set(out) == {"prose", "code"}
    for name, ids in heldout.items():
        with torch.no_grad():  # transformers shifts labels itself: mean loss over the T predictions
            per_seq = [model(input_ids=torch.from_numpy(row[None]), labels=torch.from_numpy(row[None])).loss.item()
                       for row in ids]
        assert out[name]["n"] == len(ids)
        assert out[name]["value"] == pytest.approx(statistics.mean(per_seq), rel=1e-5)
        assert out[name]["stderr"] == pytest.approx(statistics.stdev(per_seq) / math.sqrt(len(ids)), rel=1e-4)


def test_an_untrained_model_is_near_uniform():
    model = tiny_model()
    out = domain_losses(model, {"random": sequences(8, 2)}, CPU)
    assert out["random"]["value"] == pytest.approx(math.log(VOCAB), rel=0.1)  # nats/token


def test_a_single_sequence_has_no_stderr():
    out = domain_losses(tiny_model(), {"one": sequences(1, 3)}, CPU)
    assert out["one"]["n"] == 1 and out["one"]["stderr"] is None and out["one"]["value"] > 0


@pytest.mark.parametrize("training", [True, False])
def test_the_model_mode_is_restored_and_no_gradient_is_kept(training):
    model = tiny_model()
    model.train(training)
    domain_losses(model, {"a": sequences(2, 4)}, CPU)
    assert model.training is training
    assert all(p.grad is None for p in model.parameters())


def test_dropout_is_off_while_measuring():
    """eval() during measurement: the same input gives the same loss twice."""
    model = tiny_model()
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    model.train()
    ids = {"a": sequences(4, 5)}
    assert domain_losses(model, ids, CPU) == domain_losses(model, ids, CPU)
