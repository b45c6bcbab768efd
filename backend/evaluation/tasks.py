"""Skills as lm-eval tasks over local data files.

Each skill becomes one task per variant: `cl_<skill>` (steer: template 0,
lower value range) and `cl_<skill>_holdout` (template 1, upper range). The
items are written as JSONL into the run folder and the task config points
lm-eval's `json` loader at that file, so nothing comes from a hub.
"""

from __future__ import annotations

import json
from pathlib import Path

from backend.data.skills import eval_items, get_skill

VARIANTS = {"steer": ("steer", 0), "holdout": ("holdout", 1)}  # kind -> (split, template)


def skill_name(base: str, kind: str) -> str:
    return base if kind == "steer" else f"{base}_{kind}"


def task_name(base: str, kind: str) -> str:
    return f"cl_{skill_name(base, kind)}"


def task_config(base: str, kind: str, data_file: Path, max_gen_toks: int) -> dict:
    """An lm-eval task config (the same keys as a task YAML): greedy
    generation until newline, exact match after stripping whitespace."""
    return {
        "task": task_name(base, kind),
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data_file)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n", "<eos>"], "max_gen_toks": max_gen_toks, "do_sample": False},
        "filter_list": [
            {"name": "strip", "filter": [{"function": "remove_whitespace"}, {"function": "take_first"}]}
        ],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1, "skill": skill_name(base, kind), "template": VARIANTS[kind][1]},
    }


def build_tasks(skills: list[str], kinds: list[str], data_dir: Path, n_items: int, seed: int,
                max_gen_toks: int) -> list[dict]:
    """Write each task's items to data_dir and return the task configs."""
    data_dir.mkdir(parents=True, exist_ok=True)
    configs = []
    for base in skills:
        get_skill(base)  # unknown names fail here, listing the known ones
        for kind in kinds:
            split, _ = VARIANTS[kind]
            path = data_dir / f"{task_name(base, kind)}.jsonl"
            items = eval_items(base, split, n_items, seed)
            path.write_text("".join(json.dumps(it) + "\n" for it in items))
            configs.append(task_config(base, kind, path, max_gen_toks))
    return configs
