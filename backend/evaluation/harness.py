"""Runs the skill tasks with lm-eval on the model already in memory.

lm-eval is set up once per worker: one TaskManager and one HFLM wrapping the
live model, whose weights the trainer updates in place between checkpoints.
Our tasks are inline configs, so the TaskManager skips indexing lm-eval's
bundled tasks (include_defaults=False saves ~10 s per worker).
"""

from __future__ import annotations

import logging
import math


class HarnessEvaluator:
    def __init__(self, model, tokenizer, task_configs: list[dict], *, batch_size: int,
                 max_length: int, device):
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        self.task_configs = task_configs
        self.task_manager = TaskManager(verbosity="ERROR", include_defaults=False)
        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                       max_length=max_length, device=str(device))

    def evaluate(self) -> tuple[list[dict], list[dict]]:
        """Returns (measurements, per-item samples) for every task.

        A measurement: task, skill, metric, value, stderr, n and the facets
        (prompt_variant, decoding, scorer)."""
        import lm_eval

        res = lm_eval.simple_evaluate(
            model=self.lm, tasks=list(self.task_configs), task_manager=self.task_manager,
            log_samples=True, bootstrap_iters=1000, verbosity="ERROR",
        )
        measurements, samples = [], []
        for cfg in self.task_configs:
            name = cfg["task"]
            r = res["results"][name]
            stderr = r.get("exact_match_stderr,strip")
            n = res["n-samples"][name]["effective"]
            measurements.append({
                "task": name,
                "skill": cfg["metadata"]["skill"],
                "metric": "exact_match",
                "value": float(r["exact_match,strip"]),
                "stderr": float(stderr) if isinstance(stderr, (int, float)) and math.isfinite(stderr) else None,
                "n": n,
                "prompt_variant": f"template{cfg['metadata']['template']}",
                "decoding": "greedy",
                "scorer": "exact_match",
            })
            for s in res["samples"][name]:
                resp = s["filtered_resps"][0] if s["filtered_resps"] else ""
                samples.append({
                    "task": name, "doc_id": s["doc_id"], "prompt": s["doc"]["prompt"],
                    "target": s["target"], "response": resp if isinstance(resp, str) else str(resp),
                    "correct": int(s["exact_match"] >= 1.0),
                })
        return measurements, samples
