"""backend/evaluation/alignment.py: gradient alignment of domains with a
skill's answers, on a tiny real Llama and a real trained BPE tokenizer."""

import numpy as np
import pytest
import torch

from backend.data.skills import eval_items
from backend.evaluation import alignment
from backend.evaluation.alignment import gradient_alignment, probes
from conftest import small_tokenizer, tiny_model

CONTEXT = 48
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return small_tokenizer(tmp_path_factory.mktemp("tok"), ["copy", "add2"])


def as_sequences(tokenizer, items, n):
    """(n, CONTEXT + 1) token ids: the items' prompt + answer, eos-separated, end to end."""
    ids = []
    for it in items:
        ids += tokenizer(f"{it['prompt']} {it['answer']}", add_special_tokens=False)["input_ids"]
        ids.append(tokenizer.eos_token_id)
    ids = (ids * (n * (CONTEXT + 1) // len(ids) + 1))[:n * (CONTEXT + 1)]
    return np.array(ids, dtype=np.int64).reshape(n, CONTEXT + 1)


def test_the_domain_that_streams_the_skill_aligns_best_and_nothing_is_trained(tokenizer):
    model = tiny_model(tokenizer, CONTEXT)
    copy = eval_items("copy", "steer", 40, seed=1)
    add2 = eval_items("add2", "steer", 40, seed=1)
    heldout = {"strings": as_sequences(tokenizer, copy, 8), "sums": as_sequences(tokenizer, add2, 8),
               "noise": np.random.default_rng(0).integers(3, len(tokenizer), (8, CONTEXT + 1))}
    items = {"copy": [(it["prompt"], it["answer"]) for it in eval_items("copy", "steer", 24, seed=2)],
             "add2": [(it["prompt"], it["answer"]) for it in eval_items("add2", "steer", 24, seed=2)]}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    rows = gradient_alignment(model, tokenizer, heldout, items, CPU, max_length=CONTEXT)
    assert model.training  # the mode is put back
    assert all(p.grad is None for p in model.parameters())  # no gradient left behind
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing trained
    got = {(r["skill"], r["domain"]): r for r in rows}
    assert len(got) == 6 and all(r["n"] == 24 and r["stderr"] >= 0 for r in rows)
    for skill, own in (("copy", "strings"), ("add2", "sums")):
        ranked = sorted(heldout, key=lambda d: -got[skill, d]["value"])
        assert ranked[0] == own, (skill, {d: round(got[skill, d]["value"], 3) for d in heldout})
        assert got[skill, own]["value"] > got[skill, "noise"]["value"] + 2 * got[skill, own]["stderr"]


def test_the_sketch_keeps_the_cosine():
    params = [torch.zeros(3000), torch.zeros(50, 40)]
    rng = torch.Generator().manual_seed(0)
    a = [torch.randn(p.shape, generator=rng) for p in params]
    b = [0.6 * x + 0.8 * torch.randn(x.shape, generator=rng) for x in a]  # cosine about 0.6
    exact = float(sum((x * y).sum() for x, y in zip(a, b)) /
                  (sum((x ** 2).sum() for x in a).sqrt() * sum((y ** 2).sum() for y in b).sqrt()))
    sa, sb = alignment._sketch(a, params), alignment._sketch(b, params)
    assert sa.shape == (alignment.SKETCH,)
    assert float(sa @ sb / (sa.norm() * sb.norm())) == pytest.approx(exact, abs=0.02)


def test_probes_take_each_steer_skills_distinct_items_only():
    measurements = [{"task": "cl_copy_t0", "skill": "copy"}, {"task": "cl_copy_ll_t0", "skill": "copy"},
                    {"task": "cl_copy_holdout_t0", "skill": "copy_holdout"}, {"task": "heldout_loss/x"}]
    samples = [{"task": "cl_copy_t0", "prompt": "copy: a b =", "target": "a b"},
               {"task": "cl_copy_ll_t0", "prompt": "copy: a b =", "target": " a b"},  # the same item
               {"task": "cl_copy_t0", "prompt": "copy: c =", "target": "c"},
               {"task": "cl_copy_holdout_t0", "prompt": "dup c", "target": "c"},
               {"task": "cl_copy_t0", "prompt": "copy: d =", "target": ""}]
    assert probes(measurements, samples, {"copy"}) == {"copy": [("copy: a b =", "a b"), ("copy: c =", "c")]}


def test_nothing_to_probe_gives_no_rows(tokenizer):
    model = tiny_model(tokenizer, CONTEXT)
    assert gradient_alignment(model, tokenizer, {}, {"copy": [("a =", "a")]}, CPU, max_length=CONTEXT) == []
    assert gradient_alignment(model, tokenizer, {"d": np.zeros((2, CONTEXT + 1), dtype=np.int64)}, {}, CPU,
                              max_length=CONTEXT) == []


def test_the_common_part_of_the_gradients_is_taken_out():
    rng = torch.Generator().manual_seed(0)
    common, own = torch.randn(4000, generator=rng), torch.randn(3, 4000, generator=rng)
    domains = [5 * common + own[j] for j in range(3)]  # every domain mostly teaches what all do
    skill = 5 * common + own[1]  # the skill's answers need domain 1's own part
    raw = [float(g @ skill / (g.norm() * skill.norm())) for g in domains]
    assert min(raw) > 0.9  # raw cosines cannot tell the domains apart
    centred = alignment._centred_cosines(domains, skill)
    assert centred.argmax() == 1 and centred[1] > 0.6 and max(centred[0], centred[2]) < 0
    assert alignment._centred_cosines(domains[:1], skill) == pytest.approx([0.0])  # one domain: nothing to tell
