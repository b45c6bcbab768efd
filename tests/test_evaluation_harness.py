"""backend/evaluation/harness.py: real lm-eval on the live tiny model, over
the local tasks of tasks.build_tasks. The model is first trained on the
first checkpoint's copy items (template 0), so the harness has right and
wrong answers to score."""

import json
import math
import statistics

import pytest
import torch

from backend.config import TrainConfig
from backend.evaluation.harness import HarnessEvaluator
from backend.evaluation.tasks import build_tasks
from backend.trainer import Trainer
from conftest import small_tokenizer, tiny_model

CPU = torch.device("cpu")
CONTEXT, ITEMS, ROUNDS = 48, 3, 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny model gains nothing from threads, and on a shared machine
    two threads that wait on each other cost several times one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return small_tokenizer(tmp_path_factory.mktemp("tok"), ["copy"])


def train_on(model, tokenizer, items, steps):
    """Fit the model to `items` (prompt + " " + answer + eos, eos-padded)."""
    eos = tokenizer.eos_token_id
    rows = [tokenizer(f"{it['prompt']} {it['answer']}", add_special_tokens=False)["input_ids"] + [eos]
            for it in items]
    width = max(map(len, rows)) + 1
    batch = torch.tensor([r + [eos] * (width - len(r)) for r in rows])  # (B, T+1)
    trainer = Trainer(model, TrainConfig(steps=steps, checkpoint_every=steps, batch_size=len(rows), lr=1e-2,
                                         warmup_steps=1), CPU)
    for _ in range(steps):
        trainer.train_step(batch)


def read_items(cfg):
    with open(cfg["dataset_kwargs"]["data_files"]["test"]) as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def evaluated(tokenizer, tmp_path_factory):
    """(configs, model, results of rounds 0, 1 and 2) of a model trained on round 0's copy_t0 items."""
    configs = build_tasks(["copy"], ["steer", "holdout"], tmp_path_factory.mktemp("evaldata"), ITEMS, seed=0,
                          max_gen_toks=8, rounds=ROUNDS)
    model = tiny_model(tokenizer, CONTEXT)
    train_on(model, tokenizer, read_items(configs[0])[:ITEMS], steps=80)
    ev = HarnessEvaluator(model, tokenizer, configs, batch_size=16, max_length=CONTEXT, device=CPU,
                          items_per_round=ITEMS, rounds=ROUNDS)
    return configs, model, [ev.evaluate(r) for r in range(3)]


def by_task(measurements):
    return {(m["task"], m["metric"]): m for m in measurements}


def test_every_task_gives_its_metrics_with_facets(evaluated):
    configs, _, [(measurements, samples), *_] = evaluated
    got = by_task(measurements)
    expected = set()
    for cfg in configs:
        meta = cfg["metadata"]
        metrics = ["exact_match"] if meta["output"] == "gen" else ["ll_acc", "answer_nll"]
        for metric in metrics:
            expected.add((cfg["task"], metric))
            m = got[(cfg["task"], metric)]
            assert m["skill"] == meta["skill"] and m["n"] == ITEMS
            assert m["prompt_variant"] == f"template{meta['template']}"
            assert m["decoding"] == ("greedy" if metric == "exact_match" else "teacher_forced")
            assert m["scorer"] == {"exact_match": "exact_match", "ll_acc": "loglikelihood_acc",
                                   "answer_nll": "answer_nll"}[metric]
    assert set(got) == expected
    assert {m["skill"] for m in measurements} == {"copy", "copy_holdout"}
    assert len(samples) == ITEMS * len(configs)


def test_values_and_stderrs_agree_with_the_samples(evaluated):
    configs, _, [(measurements, samples), *_] = evaluated
    got = by_task(measurements)
    for cfg in configs:
        correct = [s["correct"] for s in samples if s["task"] == cfg["task"]]
        metric = "exact_match" if cfg["metadata"]["output"] == "gen" else "ll_acc"
        m = got[(cfg["task"], metric)]
        assert m["value"] == pytest.approx(statistics.mean(correct))
        assert m["stderr"] == pytest.approx(statistics.stdev(correct) / math.sqrt(len(correct)))
    for s in samples:
        if not s["response"].startswith("loglik"):  # generation: exact match after stripping whitespace
            assert s["correct"] == int(s["response"].strip() == s["target"].strip())


def test_answer_nll_is_the_per_token_loss_of_the_answer(evaluated, tokenizer):
    """Recomputed from the model directly: -log p(" answer" | prompt) / answer tokens."""
    configs, model, [(measurements, _), *_] = evaluated
    cfg = next(c for c in configs if c["task"] == "cl_copy_ll_t0")
    losses = []
    with torch.no_grad():
        for it in read_items(cfg)[:ITEMS]:
            ctx = tokenizer(it["prompt"])["input_ids"]
            whole = tokenizer(f"{it['prompt']} {it['answer']}")["input_ids"]
            answer = whole[len(ctx):]
            logp = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0].float(), -1)  # (T, V)
            ll = sum(logp[len(ctx) + i - 1, t].item() for i, t in enumerate(answer))
            losses.append(-ll / len(answer))
    m = by_task(measurements)[("cl_copy_ll_t0", "answer_nll")]
    assert m["value"] == pytest.approx(statistics.mean(losses), rel=1e-4)
    assert m["stderr"] == pytest.approx(statistics.stdev(losses) / math.sqrt(ITEMS), rel=1e-3)


def test_trained_items_are_answered_and_the_rest_are_not_memorised(evaluated):
    _, _, [(first, samples), (second, _), _] = evaluated
    trained = [s for s in samples if s["task"] == "cl_copy_t0"]
    assert [s["doc_id"] for s in trained] == [0, 1, 2]
    assert all(s["response"].strip() == s["target"] for s in trained)
    assert by_task(first)[("cl_copy_t0", "exact_match")]["value"] == 1.0
    assert by_task(first)[("cl_copy_ll_t0", "ll_acc")]["value"] == 1.0
    # the next checkpoint's items were never trained on: their answers cost more
    nll = ("cl_copy_ll_t0", "answer_nll")
    assert by_task(second)[nll]["value"] > by_task(first)[nll]["value"] + 0.5


def test_rotation_evaluates_the_next_items_then_starts_over(evaluated):
    _, _, [(first, s0), (_, s1), (third, s2)] = evaluated
    assert {s["doc_id"] for s in s1} == {3, 4, 5}
    assert {s["doc_id"] for s in s2} == {0, 1, 2}  # ROUNDS = 2: round 2 is round 0 again
    assert third == first and s2 == s0  # deterministic: the same items give the same numbers


def test_every_item_without_rotation_and_weights_updated_in_place(tokenizer, tmp_path):
    """items_per_round=None evaluates the whole pool; training the same model
    object changes what the evaluator measures, with no re-wrapping."""
    configs = build_tasks(["copy"], ["steer"], tmp_path, ITEMS, seed=0, max_gen_toks=8, rounds=ROUNDS)
    configs = [c for c in configs if c["task"] == "cl_copy_ll_t0"]
    model = tiny_model(tokenizer, CONTEXT)
    ev = HarnessEvaluator(model, tokenizer, configs, batch_size=16, max_length=CONTEXT, device=CPU)
    before, samples = ev.evaluate()
    assert before[0]["n"] == ITEMS * ROUNDS and len(samples) == ITEMS * ROUNDS
    train_on(model, tokenizer, read_items(configs[0]), steps=30)
    after, _ = ev.evaluate()
    assert after[1]["metric"] == "answer_nll"
    assert after[1]["value"] < before[1]["value"] - 1.0
