"""backend/vocab.py: which metrics are scores in [0, 1], by name only."""

import math

from backend.vocab import in_range, is_loss, is_score


def test_a_score_is_decided_by_an_allow_list_of_names():
    for m in ("exact_match", None, "acc", "acc_norm", "ll_acc", "f1", "em", "mc2", "prompt_level_strict_acc",
              "inst_level_loose_acc", "rouge1_acc", "pass@1", "pass@10", "pass_at_1", "pass_at_k"):
        assert is_score(m), m
    # BLEU and chrF are 0-100, TER 0-inf, mcc [-1, 1]; a name nobody listed is not promised [0, 1] either
    for m in ("bleu", "chrf", "ter", "mcc", "rouge1", "rougeL_max", "bleu_max", "perplexity", "bits_per_byte",
              "answer_nll", "loss", "brier_score", "my_custom_metric", "pass@", "accuracy_extra"):
        assert not is_score(m), m


def test_lm_evals_registered_metrics_are_each_classified():
    import lm_eval.api.metrics  # noqa: F401 (registers them)
    from lm_eval.api.registry import METRIC_REGISTRY

    scores = {"acc", "acc_all", "acc_bytes", "acc_mutual_info", "acc_norm", "exact_match", "f1"}
    unbounded = {"bits_per_byte", "bleu", "brier_score", "bypass", "byte_perplexity", "chrf", "chrf++", "likelihood",
                 "mcc", "perplexity", "ter", "word_perplexity"}
    # a metric lm-eval adds fails here until someone decides whether it is a [0, 1] score
    assert set(METRIC_REGISTRY) == scores | unbounded
    assert {m for m in METRIC_REGISTRY if is_score(m)} == scores


def test_the_range_a_name_promises():
    assert in_range("acc", 0.0) and in_range("acc", 1.0) and in_range("f1", 1 + 1e-12)
    assert not in_range("f1", 45.2) and not in_range("acc", -0.1)
    assert in_range("perplexity", 12.0) and in_range("bits_per_byte", 0.0) and not in_range("loss", -0.5)
    assert in_range("bleu", 62.0) and in_range("ter", 0.0) and in_range("mcc", -0.4)
    assert not any(in_range(m, math.nan) for m in ("acc", "bleu", "loss"))
    assert not in_range("bleu", math.inf)


def test_a_later_lm_eval_filter_is_of_its_metric():
    # lmeval_tasks names a metric's rows under its second and later filters "metric/filter"
    assert is_score("exact_match/flexible-extract") and not is_score("bleu/none")
    assert is_loss("word_perplexity/x") and not is_loss("acc/x")
    assert not in_range("exact_match/flexible-extract", 3.0) and not in_range("perplexity/x", -1.0)
