"""Skills as lm-eval tasks over local data files, one task per facet.

A skill is measured under several facets, each its own lm-eval task:
- steer variant (`cl_<skill>_t0`, `_t2`, `_t3`): the same items under three
  prompt templates, greedy generation until newline, exact match;
- `cl_<skill>_ll_t0`: loglikelihood of the answer under template 0, scored as
  accuracy (the answer is the greedy continuation) and as the per-token loss
  of the answer;
- held-out variant (`cl_<skill>_holdout_t1`, `..._ll_t1`): template 1 on the
  other value range, watched and never shown to the controller.
The items are written as JSONL into the run folder and the task config points
lm-eval's `json` loader at that file, so nothing comes from a hub.

Each task's file holds a pool of item_rounds x items_per_skill items and
every checkpoint evaluates the next items_per_skill of them (`rotation`):
the items of one checkpoint are a fresh sample, so their sampling error is
independent of the last checkpoint's and the latent estimate can average it
away over checkpoints; a fixed item set would carry the same bias at every
checkpoint, which no smoothing removes. Each template draws its own items
(eval_items keys them by template), so the templates are independent looks
at the skill; all of them evaluate the same positions of their pools at a
checkpoint. The items are seeded and the rotation is a function of the
checkpoint number, so a replay or a resumed run evaluates exactly the same
items.
"""

from __future__ import annotations

import json
from pathlib import Path

from backend.data.skills import HOLDOUT_TEMPLATE, STEER_TEMPLATES, eval_items, get_skill
from backend.vocab import skill_name

TEMPLATES = {"steer": STEER_TEMPLATES, "holdout": (HOLDOUT_TEMPLATE,)}
"""The prompt templates each kind of skill is evaluated under."""


def rotation(round_: int, n_items: int, rounds: int) -> list[int]:
    """Doc indices evaluated at checkpoint number round_ (0, 1, ...) when
    the pool holds `rounds` x n_items items."""
    start = (round_ % rounds) * n_items
    return list(range(start, start + n_items))


def task_name(base: str, kind: str, template: int, output: str = "gen") -> str:
    """cl_<skill>[_ll]_t<template>: e.g. cl_copy_t0, cl_copy_ll_t0, cl_copy_holdout_t1."""
    mid = "_ll" if output == "ll" else ""
    return f"cl_{skill_name(base, kind)}{mid}_t{template}"


def task_config(base: str, kind: str, template: int, output: str, data_file: Path, max_gen_toks: int) -> dict:
    """An lm-eval task config (the same keys as a task YAML)."""
    common = {
        "task": task_name(base, kind, template, output),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "doc_to_text": "{{prompt}}",
        "metadata": {"version": 1, "skill": skill_name(base, kind), "template": template, "output": output},
    }
    if output == "gen":
        return {
            **common,
            "output_type": "generate_until",
            "doc_to_target": "{{answer}}",
            "generation_kwargs": {"until": ["\n", "<eos>"], "max_gen_toks": max_gen_toks, "do_sample": False},
            "filter_list": [
                {"name": "strip", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}
            ],
            "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        }
    return {
        **common,
        "output_type": "loglikelihood",
        "doc_to_target": " {{answer}}",  # the space the prompt's "=" is followed by in training
        # the per-token answer loss is computed from the logged loglikelihoods
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }


def build_tasks(skills: list[str], kinds: list[str], data_dir: Path, n_items: int, seed: int,
                max_gen_toks: int, loglikelihood: bool = True, rounds: int = 1) -> list[dict]:
    """Write each task's items to data_dir and return the task configs.

    One JSONL file per (skill, kind, template) holds rounds x n_items items;
    the generation task and, for the first template of each kind when
    `loglikelihood`, the loglikelihood task read it. An unknown skill raises
    KeyError listing the known ones."""
    data_dir.mkdir(parents=True, exist_ok=True)
    configs = []
    for base in skills:
        get_skill(base)  # unknown names fail here, listing the known ones
        for kind in kinds:
            for i, template in enumerate(TEMPLATES[kind]):
                outputs = ["gen", "ll"] if loglikelihood and i == 0 else ["gen"]
                path = data_dir / f"{task_name(base, kind, template)}.jsonl"
                items = eval_items(base, kind, n_items * rounds, seed, template)
                path.write_text("".join(json.dumps(it) + "\n" for it in items))
                configs += [task_config(base, kind, template, out, path, max_gen_toks) for out in outputs]
    return configs


def constant_answer_rate(base: str, kind: str, seed: int, n: int = 2000) -> float:
    """The chance level of a generated answer: the exact-match rate of the
    best constant answer, the share of the most frequent answer among n
    seeded items of the skill's split (parity: about 0.5, "even" to all)."""
    from collections import Counter

    split = "steer" if kind == "steer" else "holdout"
    template = STEER_TEMPLATES[0] if kind == "steer" else HOLDOUT_TEMPLATE
    answers = Counter(it["answer"] for it in eval_items(base, split, n, seed, template))
    return answers.most_common(1)[0][1] / n


LOGLIK_PREFIX = "loglik "
"""A loglikelihood scorer's sample holds "loglik -1.23" as its response (the
answer's log-probability, backend.evaluation.harness), not an answer."""


def constant_response(samples: list[dict]) -> str | None:
    """The one answer a skill gave to every item at a checkpoint, or None.

    samples: the skill's per-item rows at one checkpoint (any of its tasks;
    {"response", "target"}); loglikelihood rows are left out, they hold no
    answer. A constant answer is flagged only over at least two items whose
    targets differ: then it cannot be right on every item, and its score is
    the share of items whose answer it happens to be (about chance; parity's
    "even" to every item). Whitespace around a response is ignored."""
    rows = [r for r in samples if not str(r.get("response") or "").startswith(LOGLIK_PREFIX)]
    answers = {str(r.get("response") or "").strip() for r in rows}
    targets = {str(r.get("target") or "").strip() for r in rows}
    if len(rows) < 2 or len(answers) != 1 or len(targets) < 2:
        return None
    return answers.pop()
