"""Runs the skill tasks with lm-eval on the model already in memory.

lm-eval is set up once per worker: one TaskManager, the task objects (their
local datasets loaded once), and one HFLM wrapping the live model, whose
weights the trainer updates in place between checkpoints. Our tasks are
inline configs, so the TaskManager skips indexing lm-eval's bundled tasks
(include_defaults=False saves ~10 s per worker). Each checkpoint calls
lm-eval's `evaluate` (what `simple_evaluate` calls after its set-up), which
skips simple_evaluate's environment report: that shells out to `pip list`
and costs seconds per checkpoint.
"""

from __future__ import annotations

import logging
import math


def _num(x) -> float | None:
    """A finite number, or None (lm-eval reports "N/A" or nan for a stderr it cannot compute)."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


class HarnessEvaluator:
    """lm-eval on the live model: the task configs of tasks.build_tasks,
    `items_per_round` items of each at a checkpoint (None: all of them)
    rotating over a pool of `rounds` x items_per_round. batch_size and
    max_length (tokens) are HFLM's."""

    def __init__(self, model, tokenizer, task_configs: list[dict], *, batch_size: int,
                 max_length: int, device, items_per_round: int | None = None, rounds: int = 1):
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        self.task_configs = task_configs
        self.tokenizer = tokenizer
        self.items_per_round = items_per_round  # None: every item, every time
        self.rounds = rounds
        self.task_manager = TaskManager(include_defaults=False)
        self.loaded = self.task_manager.load(list(task_configs))
        for task in self.loaded["tasks"].values():  # as simple_evaluate sets them
            if task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=1234)
        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                       max_length=max_length, device=str(device))

    def evaluate(self, round_: int = 0, skills: list[str] | None = None) -> tuple[list[dict], list[dict]]:
        """Returns (measurements, per-item samples) for every task (or the
        tasks of `skills`, stored skill names), on the items of checkpoint
        number round_ (see tasks.rotation).

        A measurement: task, skill, metric, value, stderr, n and its facets
        (prompt_variant, decoding, scorer)."""
        from lm_eval.evaluator import evaluate

        from backend.evaluation.tasks import rotation

        configs = [c for c in self.task_configs if skills is None or c["metadata"]["skill"] in skills]
        if not configs:
            return [], []
        loaded = {"tasks": {c["task"]: self.loaded["tasks"][c["task"]] for c in configs}, "groups": {},
                  "group_map": {}}
        samples = None
        if self.items_per_round is not None:
            idx = rotation(round_, self.items_per_round, self.rounds)
            samples = {c["task"]: idx for c in configs}
        res = evaluate(lm=self.lm, task_dict=loaded, samples=samples, log_samples=True,
                       bootstrap_iters=1000, verbosity="ERROR")
        measurements, samples = [], []
        for cfg in configs:
            name, meta = cfg["task"], cfg["metadata"]
            r, items = res["results"][name], res["samples"][name]
            facets = {"task": name, "skill": meta["skill"], "n": res["n-samples"][name]["effective"],
                      "prompt_variant": f"template{meta['template']}"}
            if meta["output"] == "gen":
                measurements.append({**facets, "metric": "exact_match", "value": float(r["exact_match,strip"]),
                                     "stderr": _num(r.get("exact_match_stderr,strip")),
                                     "decoding": "greedy", "scorer": "exact_match"})
                for s in items:
                    resp = s["filtered_resps"][0] if s["filtered_resps"] else ""
                    samples.append({"task": name, "doc_id": s["doc_id"], "prompt": s["doc"]["prompt"],
                                    "target": s["target"], "response": str(resp),
                                    "correct": int(s["exact_match"] >= 1.0)})
                continue
            measurements.append({**facets, "metric": "ll_acc", "value": float(r["acc,none"]),
                                 "stderr": _num(r.get("acc_stderr,none")),
                                 "decoding": "teacher_forced", "scorer": "loglikelihood_acc"})
            # per-token loss of the answer (nats/token), mean over items
            losses = []
            for s in items:
                ll, greedy = s["resps"][0][0]
                n_tok = max(1, len(self.tokenizer(s["target"], add_special_tokens=False)["input_ids"]))
                losses.append(-float(ll) / n_tok)
                samples.append({"task": name, "doc_id": s["doc_id"], "prompt": s["doc"]["prompt"],
                                "target": s["target"].strip(), "response": f"loglik {float(ll):.2f}",
                                "correct": int(bool(greedy))})
            n = len(losses)
            mean = sum(losses) / n
            sd = math.sqrt(sum((x - mean) ** 2 for x in losses) / (n - 1)) if n > 1 else None
            measurements.append({**facets, "metric": "answer_nll", "value": mean,
                                 "stderr": sd / math.sqrt(n) if sd is not None else None,
                                 "decoding": "teacher_forced", "scorer": "answer_nll"})
        return measurements, samples
