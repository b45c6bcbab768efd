"""backend/evaluation/tasks.py: skills as lm-eval task configs over local
JSONL files, and the item rotation across checkpoints."""

import json
from pathlib import Path

import pytest

from backend.data.skills import HOLDOUT_TEMPLATE, STEER_TEMPLATES, eval_items
from backend.evaluation.tasks import build_tasks, rotation, task_config, task_name


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_rotation_walks_the_pool_and_wraps():
    assert rotation(0, 4, 3) == [0, 1, 2, 3]
    assert rotation(1, 4, 3) == [4, 5, 6, 7]
    assert rotation(2, 4, 3) == [8, 9, 10, 11]
    assert rotation(3, 4, 3) == rotation(0, 4, 3)  # pool used up: start over
    assert rotation(7, 5, 1) == [0, 1, 2, 3, 4]  # one round: the same items every time
    # over `rounds` checkpoints every item of the pool is evaluated exactly once
    assert sorted(i for r in range(3) for i in rotation(r, 4, 3)) == list(range(12))


def test_task_names_say_skill_kind_output_and_template():
    assert task_name("copy", "steer", 0) == "cl_copy_t0"
    assert task_name("copy", "steer", 0, "ll") == "cl_copy_ll_t0"
    assert task_name("add2", "holdout", 1) == "cl_add2_holdout_t1"
    assert task_name("add2", "holdout", 1, "ll") == "cl_add2_holdout_ll_t1"


def test_generation_config_is_greedy_until_newline_scored_by_exact_match(tmp_path):
    cfg = task_config("copy", "steer", 2, "gen", tmp_path / "items.jsonl", max_gen_toks=7)
    assert cfg["task"] == "cl_copy_t2" and cfg["output_type"] == "generate_until"
    assert cfg["dataset_path"] == "json"
    assert cfg["dataset_kwargs"] == {"data_files": {"test": str(tmp_path / "items.jsonl")}}
    assert cfg["generation_kwargs"] == {"until": ["\n", "<eos>"], "max_gen_toks": 7, "do_sample": False}
    assert [m["metric"] for m in cfg["metric_list"]] == ["exact_match"]
    assert cfg["filter_list"][0]["name"] == "strip"
    assert cfg["metadata"] == {"version": 1, "skill": "copy", "template": 2, "output": "gen"}


def test_loglikelihood_config_scores_the_answer_after_a_space(tmp_path):
    cfg = task_config("add2", "holdout", 1, "ll", tmp_path / "items.jsonl", max_gen_toks=7)
    assert cfg["task"] == "cl_add2_holdout_ll_t1" and cfg["output_type"] == "loglikelihood"
    # training text is prompt + " " + answer: the space belongs to the answer
    assert cfg["doc_to_text"] == "{{prompt}}" and cfg["doc_to_target"] == " {{answer}}"
    assert [m["metric"] for m in cfg["metric_list"]] == ["acc"]
    assert "generation_kwargs" not in cfg
    assert cfg["metadata"]["skill"] == "add2_holdout" and cfg["metadata"]["output"] == "ll"


def test_build_tasks_writes_one_file_per_template_with_the_seeded_items(tmp_path):
    configs = build_tasks(["copy", "add2"], ["steer", "holdout"], tmp_path / "evaldata", n_items=3, seed=5,
                          max_gen_toks=6, rounds=2)
    names = [c["task"] for c in configs]
    assert names == [
        "cl_copy_t0", "cl_copy_ll_t0", "cl_copy_t2", "cl_copy_t3", "cl_copy_holdout_t1", "cl_copy_holdout_ll_t1",
        "cl_add2_t0", "cl_add2_ll_t0", "cl_add2_t2", "cl_add2_t3", "cl_add2_holdout_t1", "cl_add2_holdout_ll_t1",
    ]
    files = sorted(p.name for p in (tmp_path / "evaldata").iterdir())
    assert len(files) == 8  # 4 templates x 2 skills; the ll task shares its template's file
    for cfg in configs:
        meta = cfg["metadata"]
        base, kind = meta["skill"].removesuffix("_holdout"), "holdout" if "holdout" in meta["skill"] else "steer"
        assert meta["template"] in (STEER_TEMPLATES if kind == "steer" else (HOLDOUT_TEMPLATE,))
        path = tmp_path / "evaldata" / f"{task_name(base, kind, meta['template'])}.jsonl"
        assert cfg["dataset_kwargs"]["data_files"]["test"] == str(path)
        # the pool: rounds x n_items items, exactly eval_items' (skill, split, seed, template)
        assert read_jsonl(path) == eval_items(base, kind, 6, 5, meta["template"])


def test_build_tasks_without_loglikelihood_or_holdout(tmp_path):
    configs = build_tasks(["parity"], ["steer"], tmp_path, n_items=2, seed=0, max_gen_toks=4, loglikelihood=False)
    assert [c["task"] for c in configs] == ["cl_parity_t0", "cl_parity_t2", "cl_parity_t3"]
    assert all(c["output_type"] == "generate_until" for c in configs)
    assert all(len(read_jsonl(tmp_path / f"{c['task']}.jsonl")) == 2 for c in configs)


def test_build_tasks_is_deterministic(tmp_path):
    a = build_tasks(["sort"], ["steer"], tmp_path / "a", n_items=4, seed=1, max_gen_toks=4)
    b = build_tasks(["sort"], ["steer"], tmp_path / "b", n_items=4, seed=1, max_gen_toks=4)
    for ca, cb in zip(a, b, strict=True):
        fa, fb = ca["dataset_kwargs"]["data_files"]["test"], cb["dataset_kwargs"]["data_files"]["test"]
        assert open(fa).read() == open(fb).read()


def test_unknown_skill_is_refused_listing_the_known_ones(tmp_path):
    with pytest.raises(KeyError, match=r"unknown skill 'nope'.*copy"):
        build_tasks(["nope"], ["steer"], tmp_path, n_items=2, seed=0, max_gen_toks=4)


def test_lm_eval_loads_each_config_from_its_local_file(tmp_path):
    from lm_eval.tasks import TaskManager

    configs = build_tasks(["copy"], ["steer", "holdout"], tmp_path, n_items=3, seed=0, max_gen_toks=4, rounds=2)
    loaded = TaskManager(include_defaults=False).load(configs)["tasks"]
    assert sorted(loaded) == sorted(c["task"] for c in configs)
    for cfg in configs:
        task = loaded[cfg["task"]]
        docs = list(task.test_docs())
        assert docs == read_jsonl(Path(cfg["dataset_kwargs"]["data_files"]["test"]))
        assert len(docs) == 6
        assert task.doc_to_text(docs[0]) == docs[0]["prompt"]
        expected_target = docs[0]["answer"] if cfg["output_type"] == "generate_until" else " " + docs[0]["answer"]
        assert task.doc_to_target(docs[0]) == expected_target


def test_constant_response_flags_one_answer_to_every_item_and_nothing_else():
    from backend.evaluation.tasks import constant_response

    def rows(responses, targets):
        return [{"task": "cl_parity_t0", "response": r, "target": t} for r, t in zip(responses, targets)]

    targets = ["even", "odd"] * 5
    assert constant_response(rows([" even"] * 10, targets)) == "even"  # whitespace around is ignored
    assert constant_response(rows([""] * 10, targets)) == ""  # saying nothing to every item is one answer too
    assert constant_response(rows(["even"] * 9 + ["odd"], targets)) is None
    # right on every item is no guess: every target is that one answer
    assert constant_response(rows(["3"] * 10, ["3"] * 10)) is None
    assert constant_response(rows(["even"], ["odd"])) is None  # one item says nothing
    assert constant_response([]) is None
    # a loglikelihood scorer's rows hold no answer: left out
    ll = [{"task": "cl_parity_ll_t0", "response": f"loglik -0.{i}", "target": "even"} for i in range(10)]
    assert constant_response(rows(["odd"] * 10, targets) + ll) == "odd"
    assert constant_response(ll) is None
