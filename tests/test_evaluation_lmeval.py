"""backend/evaluation/lmeval_tasks.py: any lm-eval task as a skill, on the
shipped YAML tasks in examples/tasks (real lm-eval, local JSONL files)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT

from backend.evaluation.lmeval_tasks import FEWSHOT_SEED, TaskError, evaluate_tasks, resolve_tasks, rotation_indices

TASKS = str(ROOT / "examples" / "tasks")


@dataclass
class Spec:
    skill: str
    task: str
    include_path: str | None = TASKS
    metric: str | None = None
    holdout: str | None = None
    num_fewshot: int | None = None


@pytest.fixture(scope="module")
def taskset(tmp_path_factory):
    # another working directory: data files resolve against the YAML folder
    cwd = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("elsewhere"))
    try:
        return resolve_tasks([
            Spec("add", "ex_addition_templates", metric="acc_norm", holdout="ex_addition_holdout"),
            Spec("copy", "ex_copy", holdout="ex_copy_holdout"),
            Spec("verse", "ex_verse", metric="bits_per_byte"),
        ])
    finally:
        os.chdir(cwd)


def test_leaves_carry_type_metric_direction_and_chance(taskset):
    by = {leaf.name: leaf for leaf in taskset.leaves}
    # the group expands to one facet per subtask; include: gives the held-out twin
    assert {n: (b.skill, b.kind) for n, b in by.items()} == {
        "ex_addition": ("add", "steer"), "ex_addition_alt": ("add", "steer"),
        "ex_addition_holdout": ("add_holdout", "holdout"),
        "ex_copy": ("copy", "steer"), "ex_copy_holdout": ("copy_holdout", "holdout"),
        "ex_verse": ("verse", "steer"),
    }
    add = by["ex_addition"]
    assert add.output_type == "multiple_choice" and add.metric == "acc_norm" and add.higher_is_better
    assert add.chance == pytest.approx(0.25)  # 4 choices: a uniform guess
    assert add.n_docs == 300
    copy = by["ex_copy"]
    assert copy.output_type == "generate_until" and copy.metric == "exact_match"
    assert 0 < copy.chance < 0.1  # the most frequent answer's share
    verse = by["ex_verse"]
    assert verse.metric == "bits_per_byte" and verse.higher_is_better is False and verse.chance is None
    # the holdout uses another phrasing through include:
    doc = by["ex_addition_holdout"].task.eval_docs[0]
    assert by["ex_addition_holdout"].task.doc_to_text(doc).startswith("add ")


def test_rotation_is_seeded_fresh_each_checkpoint_and_wraps():
    a = [rotation_indices("t", 100, 30, r, seed=0) for r in range(4)]
    assert a == [rotation_indices("t", 100, 30, r, seed=0) for r in range(4)]  # resume/replay: same items
    assert not set(a[0]) & set(a[1]) and not set(a[1]) & set(a[2])  # fresh items each checkpoint
    assert set().union(*a[:3]) | set(a[3]) == set(range(100))  # the 4th round wraps to cover all
    assert rotation_indices("t", 100, 30, 0, seed=1) != a[0]
    assert rotation_indices("t", 10, 30, 5, seed=0) == list(range(10))  # fewer docs than asked: all


@pytest.mark.parametrize("spec, words", [
    (Spec("x", "ex_adition"), ["evaluation.tasks[0].task", "unknown", "ex_addition"]),
    (Spec("x", "ex_addition", metric="f1"), ["evaluation.tasks[0].metric", "'f1'", "acc_norm"]),
    (Spec("x", "ex_addition", holdout="ex_addition"), ["evaluation.tasks[0].holdout", "equals"]),
    # the guard would weigh a falling perplexity against a rising exact match
    (Spec("x", "ex_copy", holdout="ex_verse"), ["evaluation.tasks[0].metric", "holdout 'ex_verse'",
                                                "word_perplexity (lower is better)", "'ex_copy' by exact_match"]),
])
def test_bad_specs_are_refused_naming_the_field(spec, words):
    with pytest.raises(TaskError) as e:
        resolve_tasks([spec])
    for w in words:
        assert w in str(e.value), str(e.value)


def test_a_yaml_folder_that_does_not_parse_is_refused(tmp_path):
    (tmp_path / "bad.yaml").write_text("task: [unclosed\n")
    with pytest.raises(TaskError, match=r"evaluation.tasks\[0\].include_path: .*bad.yaml.* not a valid"):
        resolve_tasks([Spec("x", "whatever", include_path=str(tmp_path))])
    with pytest.raises(TaskError, match="include_path: no such file or folder"):
        resolve_tasks([Spec("x", "whatever", include_path=str(tmp_path / "missing"))])


def test_a_task_named_twice_is_refused():
    with pytest.raises(TaskError, match="already measured by skill 'a'"):
        resolve_tasks([Spec("a", "ex_addition"), Spec("b", "ex_addition_templates")])


def test_a_registry_task_without_local_data_names_the_task(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(TaskError) as e:
        resolve_tasks([Spec("arc", "arc_easy")])
    assert "evaluation.tasks[0].task" in str(e.value) and "arc_easy" in str(e.value), str(e.value)
    assert "not available on this machine" in str(e.value), str(e.value)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """lm-eval's HFLM over a tiny untrained Llama and a locally trained tokenizer."""
    from lm_eval.models.huggingface import HFLM

    from backend.config import ModelConfig
    from backend.data.tokenizer import train_tokenizer
    from backend.model import build_model

    class Text:
        def sample_text(self, n, seed):
            return (ROOT / "examples" / "prose" / "sample.txt").read_text()[:n]

    tok = train_tokenizer([Text()], 400, 0, tmp_path_factory.mktemp("tok"))
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
                        len(tok), 128, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, seed=0)
    return HFLM(pretrained=model, tokenizer=tok, batch_size=16, max_length=128, device="cpu")


def test_evaluate_measures_every_facet_with_stderr_and_items(taskset, lm):
    rows, items = evaluate_tasks(taskset, lm, round_=1, per_checkpoint=10, seed=0)
    own = {leaf.name: leaf.metric for leaf in taskset.leaves}
    primary = {r["task"]: r for r in rows if r["metric"] == own[r["task"]]}
    assert set(primary) == {leaf.name for leaf in taskset.leaves}
    for r in primary.values():
        assert r["n"] == 10 and r["stderr"] is not None and r["stderr"] >= 0
    assert primary["ex_verse"]["higher_is_better"] is False and primary["ex_verse"]["value"] > 0
    assert primary["ex_addition"]["chance"] == pytest.approx(0.25)
    assert 0 <= primary["ex_addition"]["value"] <= 1
    # every metric of a task is kept as its own scorer facet
    assert {r["metric"] for r in rows if r["task"] == "ex_addition"} == {"acc", "acc_norm"}
    assert {r["scorer"] for r in rows if r["task"] == "ex_copy"} == {"exact_match/letters"}
    # per-item results: the items of round 1, with the model's answer
    by_task = {}
    for it in items:
        by_task.setdefault(it["task"], []).append(it["doc_id"])
    leaf = next(lf for lf in taskset.leaves if lf.name == "ex_copy")
    assert sorted(by_task["ex_copy"]) == rotation_indices("ex_copy", leaf.n_docs, 10, 1, seed=0)
    mc = next(it for it in items if it["task"] == "ex_addition")
    assert mc["prompt"].endswith("=") and mc["response"] and mc["correct"] in (0, 1)
    assert Path(TASKS, "data", "addition.jsonl").is_file()


SHAPES = {
    "utils.py": "def process(dataset):\n    return dataset.map(lambda d: {**d, 'question': d['a'] + ' + ' + d['b'] + ' ='})\n",
    "fn.yaml": """task: t_fn
tag: my_tag
dataset_path: json
dataset_kwargs: {data_files: {test: data/addition.jsonl}}
test_split: test
process_docs: !function utils.process
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list: [{metric: acc}]
""",
    "ll.yaml": """task: t_ll
tag: my_tag
dataset_path: json
dataset_kwargs: {data_files: {test: data/copy.jsonl}}
test_split: test
output_type: loglikelihood
doc_to_text: "copy {{x}} ="
doc_to_target: " {{answer}}"
metric_list: [{metric: perplexity}, {metric: acc}]
""",
}


def test_other_task_shapes_load_and_measure(tmp_path, lm):
    """What users' folders hold beyond the shipped examples: process_docs
    through a !function, a loglikelihood task with a perplexity (lower is
    better), and a tag naming several tasks; data paths relative to the
    folder. (Two filters: test_only_the_first_filter_scores_the_skill.)"""
    import shutil

    (tmp_path / "data").mkdir()
    for name in ("addition.jsonl", "copy.jsonl"):
        shutil.copy(Path(TASKS) / "data" / name, tmp_path / "data" / name)
    for name, text in SHAPES.items():
        (tmp_path / name).write_text(text)
    ts = resolve_tasks([Spec("fn", "t_fn", include_path=str(tmp_path)),
                        Spec("ll", "t_ll", include_path=str(tmp_path), metric="acc")])
    leaves = {leaf.name: leaf for leaf in ts.leaves}
    assert leaves["t_fn"].task.doc_to_text(leaves["t_fn"].task.eval_docs[0]).endswith(" =")  # process_docs ran
    assert leaves["t_ll"].metrics == {"perplexity": False, "acc": True}
    rows, _ = evaluate_tasks(ts, lm, round_=0, per_checkpoint=6, seed=0)
    ppl = next(r for r in rows if r["task"] == "t_ll" and r["metric"] == "perplexity")
    assert ppl["higher_is_better"] is False and ppl["value"] > 1 and ppl["chance"] is None
    tagged = resolve_tasks([Spec("tagged", "my_tag", include_path=str(tmp_path), metric="acc")])
    assert sorted((leaf.name, leaf.skill) for leaf in tagged.leaves) == [("t_fn", "tagged"), ("t_ll", "tagged")]
    with pytest.raises(TaskError, match="t_fn: acc .*t_ll: perplexity"):  # each task's first metric: not alike
        resolve_tasks([Spec("tagged", "my_tag", include_path=str(tmp_path))])


# -- a fixed-answer model: what each score must be is known ------------------------
def _jsonl(rows: list[dict]) -> str:
    import json

    return "".join(json.dumps(r) + "\n" for r in rows)


FIXED = {
    "data/yn.jsonl": _jsonl([{"q": f"is {i} even", "label": int(i % 2 == 0)} for i in range(8)]),
    "data/pick.jsonl": _jsonl([{"q": f"pick {i}", "choices": ["a", "b", "c", "d"], "label": i % 4}
                               for i in range(8)]),
    "data/sum.jsonl": _jsonl([{"q": f"what is {i} plus {i}", "answer": f"because #### {2 * i}"} for i in range(8)]),
    "yn.yaml": """task: t_yn
dataset_path: json
dataset_kwargs: {data_files: {test: data/yn.jsonl}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{q}}?"
doc_to_choice: ["no", "yes"]
doc_to_target: label
metric_list: [{metric: acc}, {metric: acc_norm}]
""",
    "brier.yaml": """include: yn.yaml
task: t_brier
metric_list: [{metric: acc}, {metric: brier_score, higher_is_better: false}]
""",
    "pick.yaml": """include: yn.yaml
task: t_pick
dataset_kwargs: {data_files: {test: data/pick.jsonl}}
doc_to_choice: "{{choices}}"
metric_list: [{metric: acc}]
""",
    # gsm8k's two filters: strict-match first, then flexible-extract
    "sum.yaml": """task: t_sum
dataset_path: json
dataset_kwargs: {data_files: {test: data/sum.jsonl}}
test_split: test
output_type: generate_until
doc_to_text: "Q: {{q}}\\nA:"
doc_to_target: "{{answer.split('####')[-1].strip()}}"
generation_kwargs: {until: ["\\n"], max_gen_toks: 8}
filter_list:
  - {name: strict-match, filter: [{function: regex, regex_pattern: "#### (\\\\-?[0-9]+)"}, {function: take_first}]}
  - {name: flexible-extract, filter: [{function: regex, group_select: -1, regex_pattern: "(-?[0-9]+)"},
                                      {function: take_first}]}
metric_list: [{metric: exact_match, aggregation: mean, higher_is_better: true}]
""",
    "roll.yaml": """task: t_roll
dataset_path: json
dataset_kwargs: {data_files: {test: data/sum.jsonl}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{q}}"
metric_list: [{metric: word_perplexity}, {metric: bits_per_byte}]
""",
    # the same task scored twice by one filter under two names
    "roll2.yaml": """include: roll.yaml
task: t_roll2
filter_list:
  - {name: a, filter: [{function: take_first}]}
  - {name: b, filter: [{function: take_first}]}
""",
    "data/none.jsonl": "",
    "none.yaml": "include: yn.yaml\ntask: t_none\ndataset_kwargs: {data_files: {test: data/none.jsonl}}\n",
    "mixed.yaml": "group: g_mixed\ntask: [t_pick, t_sum]\n",
    "chances.yaml": "group: g_chances\ntask: [t_yn, t_pick]\n",
    # groups lm-eval scores by another metric, or filter, than their tasks' first
    "norm.yaml": "group: g_norm\ntask: [t_yn]\naggregate_metric_list: [{metric: acc_norm, weight_by_size: true}]\n",
    "flex.yaml": "group: g_flex\ntask: [t_sum]\n"
                 "aggregate_metric_list: [{metric: exact_match, filter_list: flexible-extract}]\n",
}


@pytest.fixture(scope="module")
def fixed_tasks(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("fixed")
    (root / "data").mkdir()
    for name, text in FIXED.items():
        (root / name).write_text(text)
    return str(root)


@pytest.fixture(scope="module")
def fixed_lm():
    """lm-eval's LM contract with fixed answers: "no" has the higher
    loglikelihood (-1.0 vs -1.4) but the lower per character (-0.50 vs
    -0.47); a generation names the right sum without gsm8k's "####"; a
    text's loglikelihood is between -16 and -10, by its characters."""
    import re

    from lm_eval.api.model import LM

    class FixedLM(LM):
        def loglikelihood(self, requests):
            return [(-1.0 if r.args[1].strip() == "no" else -1.4, False) for r in requests]

        def loglikelihood_rolling(self, requests):
            return [-10.0 - sum(map(ord, r.args[0])) % 7 for r in requests]

        def generate_until(self, requests):
            return [" it is %d" % (2 * int(re.findall(r"what is (\d+)", r.args[0])[-1])) for r in requests]

    return FixedLM()


def run_config(task: dict):
    """The tiny preset (one synthetic skill, copy) with one evaluation task."""
    from backend.config import preset
    from backend.config.loader import from_dict

    cfg = preset("tiny").to_dict()
    return from_dict({**cfg, "evaluation": {**cfg["evaluation"], "skills": ["copy"], "tasks": [task]}})


def test_a_metric_without_stderr_measures_without_one(fixed_tasks, fixed_lm):
    """brier_score: per item (gold, probabilities), no stderr from lm-eval;
    it is no corpus perplexity, so its stderr is None (it crashed the run)."""
    ts = resolve_tasks([Spec("yn", "t_brier", include_path=fixed_tasks, metric="brier_score")])
    rows, items = evaluate_tasks(ts, fixed_lm, round_=0, seed=0)
    by = {r["metric"]: r for r in rows}
    assert by["brier_score"]["stderr"] is None and by["brier_score"]["value"] > 0
    assert by["acc"]["stderr"] > 0 and len(items) == 8


def test_a_corpus_perplexity_stderr_reads_only_its_own_filter(fixed_tasks, fixed_lm):
    """Two filters of one task: each filter's stderr from its own items, as
    with one filter (both filters' items pooled doubled n: ~0.7x the stderr)."""
    ts = resolve_tasks([Spec("r", "t_roll", include_path=fixed_tasks), Spec("r2", "t_roll2", include_path=fixed_tasks)])
    rows, _ = evaluate_tasks(ts, fixed_lm, round_=0, seed=0)
    se = {(r["task"], r["scorer"]): r["stderr"] for r in rows}
    for metric in ("word_perplexity", "bits_per_byte"):
        one = se[("t_roll", metric)]
        assert one > 0
        assert se[("t_roll2", f"{metric}/a")] == pytest.approx(one) == se[("t_roll2", f"{metric}/b")]


def test_only_the_first_filter_scores_the_skill(fixed_tasks, fixed_lm, tmp_path):
    """gsm8k's strict-match then flexible-extract: the skill's measurement
    is strict-match's (0 of 8: no "####"), its items counted once; the
    flexible row (8 of 8) is a metric of its own, shown as a facet. Through
    a registered run: real store, estimator, frames."""
    from backend.charts import facet_figure
    from backend.client import RunClient, taskset_configs
    from backend.frames import facet_frame, skill_scores
    from backend.store import Store

    ts = resolve_tasks([Spec("sum", "t_sum", include_path=fixed_tasks)])
    rows, items = evaluate_tasks(ts, fixed_lm, round_=0, seed=0)
    assert [(r["metric"], r["scorer"], r["value"], r["n"]) for r in rows] == [
        ("exact_match", "exact_match/strict-match", 0.0, 8),
        ("exact_match/flexible-extract", "exact_match/flexible-extract", 1.0, 8)]
    assert sorted(it["doc_id"] for it in items) == list(range(8))
    assert all(it["correct"] == 0 and it["response"] == "[invalid]" for it in items)  # strict-match's answers

    client = RunClient.register(Store(tmp_path / "run.db"), run_config(
        {"skill": "sum", "task": "t_sum", "include_path": fixed_tasks, "domains": ["arithmetic"]}))
    store, run = client.store, client.run_id
    assert taskset_configs(ts)[0]["metadata"]["metric"] == "exact_match"
    client.report_checkpoint(0, 0)
    keep = ("task", "skill", "metric", "value", "stderr", "n", "prompt_variant", "decoding", "scorer")
    client.report_measurements(0, [{k: r[k] for k in keep} for r in rows], items)
    client.boundary(0)
    assert [s["correct"] for s in store.samples(run, 0, "t_sum")] == [0] * 8
    score = skill_scores(store, run).query("skill == 'sum'")
    assert list(score["value"]) == [0.0] and list(score["n"]) == [8]
    cap = next(c for c in store.capability(run) if c["skill"] == "sum")
    assert cap["raw_mean"] == 0.0  # the estimate's data: strict-match alone
    facets = facet_frame(store.measurements(run, skill="sum"), 0, "exact_match")  # the dashboard's drill-down
    assert sorted(zip(facets["metric"], facets["value"])) == [("exact_match", 0.0),
                                                              ("exact_match/flexible-extract", 1.0)]
    assert len(facet_figure(facets).data[0].x) == 2


def test_the_spec_chooses_the_filter_that_scores_the_skill(fixed_tasks, fixed_lm):
    """`metric = "exact_match,flexible-extract"` (lm-eval's results key):
    flexible-extract's row (8 of 8) scores the skill and its answers are the
    items; strict-match's is the metric of its own."""
    from backend.client import taskset_configs

    ts = resolve_tasks([Spec("sum", "t_sum", include_path=fixed_tasks, metric="exact_match,flexible-extract")])
    rows, items = evaluate_tasks(ts, fixed_lm, round_=0, seed=0)
    assert [(r["metric"], r["scorer"], r["value"], r["chance"] is None) for r in rows] == [
        ("exact_match/strict-match", "exact_match/strict-match", 0.0, True),
        ("exact_match", "exact_match/flexible-extract", 1.0, False)]
    assert [it["correct"] for it in items] == [1] * 8 and taskset_configs(ts)[0]["metadata"]["metric"] == "exact_match"
    ts = resolve_tasks([Spec("yn", "t_yn", include_path=fixed_tasks, metric="acc_norm,none")])  # no filter_list
    assert {r["metric"] for r in evaluate_tasks(ts, fixed_lm, round_=0, seed=0)[0]} == {"acc", "acc_norm"}


@pytest.mark.parametrize("metric, words", [
    ("exact_match,flexible", ["has no metric 'exact_match,flexible'", "filters: strict-match, flexible-extract"]),
    ("exact_match/flexible-extract", ["has no metric 'exact_match/flexible-extract'", "`metric,filter`"]),
])
def test_a_filter_the_task_has_not_is_refused(fixed_tasks, metric, words):
    with pytest.raises(TaskError) as e:
        resolve_tasks([Spec("sum", "t_sum", include_path=fixed_tasks, metric=metric)])
    for w in ["evaluation.tasks[0].metric: task 't_sum'"] + words:
        assert w in str(e.value), str(e.value)


@pytest.mark.parametrize("spec, words", [
    (Spec("mixed", "g_mixed"), ["evaluation.tasks[0].metric", "task 'g_mixed'", "t_pick: acc (higher is better)",
                                "t_sum: exact_match (higher is better)", "set `metric`"]),
    (Spec("yn", "t_yn", holdout="g_mixed"), ["evaluation.tasks[0].metric", "holdout 'g_mixed'", "yn_holdout"]),
])
def test_a_group_scored_by_different_metrics_is_refused(fixed_tasks, spec, words):
    with pytest.raises(TaskError) as e:
        resolve_tasks([Spec(spec.skill, spec.task, include_path=fixed_tasks, holdout=spec.holdout)])
    for w in words:
        assert w in str(e.value), str(e.value)


@pytest.mark.parametrize("group, scored", [
    ("g_norm", ("acc_norm", "none")), ("g_flex", ("exact_match", "flexible-extract")), ("g_chances", ("acc", "none"))])
def test_a_group_is_scored_as_its_aggregate_metric_list_scores_it(fixed_tasks, group, scored):
    """Without `metric`, the skill's metric and filter are the first of the
    group's aggregate_metric_list (as lm-eval scores the group), else its
    tasks' first."""
    ts = resolve_tasks([Spec("g", group, include_path=fixed_tasks)])
    assert {(leaf.metric, leaf.filter) for leaf in ts.leaves} == {scored}


def test_a_task_without_documents_is_refused_as_such(fixed_tasks):
    with pytest.raises(TaskError, match=r"evaluation.tasks\[0\].task: task 't_none' has no documents"):
        resolve_tasks([Spec("none", "t_none", include_path=fixed_tasks)])


def test_a_skills_chance_is_the_mean_of_its_tasks(fixed_tasks):
    """A group of a yes/no (chance 1/2) and a 4-way (1/4) question: the
    skill's score is the mean of both, so is its chance."""
    from backend.client import skill_rows, taskset_configs

    cfg = run_config({"skill": "both", "task": "g_chances", "include_path": fixed_tasks})
    ts = resolve_tasks([Spec("both", "g_chances", include_path=fixed_tasks)])
    assert sorted(leaf.chance for leaf in ts.leaves) == [0.25, 0.5]
    row = next(r for r in skill_rows(cfg, [], taskset_configs(ts)) if r["name"] == "both")
    assert row["chance"] == pytest.approx(0.375) and row["metric"] == "acc"


@pytest.mark.parametrize("metric, answer", [("acc", "no"), ("acc_norm", "yes")])
def test_an_items_response_is_the_choice_its_metric_picks(fixed_tasks, fixed_lm, metric, answer):
    """acc picks the highest loglikelihood ("no"), acc_norm the highest per
    character ("yes"): the response and `correct` agree."""
    ts = resolve_tasks([Spec("yn", "t_yn", include_path=fixed_tasks, metric=metric)])
    _, items = evaluate_tasks(ts, fixed_lm, round_=0, seed=0)
    assert {it["response"] for it in items} == {answer}
    assert all(it["correct"] == int(it["target"] == answer) for it in items)


def _one_task(folder: Path, doc_to_text: str) -> str:
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "q.jsonl").write_text(_jsonl([{"q": "one", "answer": "1"}]))
    (folder / "t.yaml").write_text(f"""task: t_render
dataset_path: json
dataset_kwargs: {{data_files: {{test: data/q.jsonl}}}}
test_split: test
output_type: generate_until
doc_to_text: "{doc_to_text}"
doc_to_target: "{{{{answer}}}}"
metric_list: [{{metric: exact_match}}]
""")
    return str(folder)


def test_a_prompt_template_cannot_run_code(tmp_path):
    """lm-eval renders templates in a plain Jinja environment, where this
    runs a shell command while the task loads; here they render in the
    sandbox, and the task is refused when the run is configured, naming it."""
    marker = tmp_path / "ran"
    folder = _one_task(tmp_path / "tasks",
                       "{{ cycler.__init__.__globals__.os.system('touch " + str(marker) + "') }}")
    with pytest.raises(TaskError, match=r"evaluation.tasks\[0\].task: task 't_render' cannot .*SecurityError"):
        resolve_tasks([Spec("x", "t_render", include_path=folder)])
    assert not marker.exists()



def test_more_shots_than_fewshot_documents_are_refused(fixed_tasks, fixed_lm):
    """t_yn draws its examples from its own 8 documents: 9 shots cannot be
    drawn, which lm-eval found only at the first checkpoint (random.sample,
    mid-run); 8 can, and the draw of the check leaves the seeded ones."""
    with pytest.raises(TaskError, match=r"evaluation.tasks\[0\].num_fewshot: task 't_yn' cannot draw 9 .* its 8 "):
        resolve_tasks([Spec("yn", "t_yn", include_path=fixed_tasks, num_fewshot=9)])
    ts = resolve_tasks([Spec("yn", "t_yn", include_path=fixed_tasks, num_fewshot=8)])
    _, items = evaluate_tasks(ts, fixed_lm, round_=0, seed=0)
    assert items[0]["prompt"].count("?") == 9
    ts.leaves[0].task.set_fewshot_seed(seed=FEWSHOT_SEED)  # as lm-eval seeds it
    assert evaluate_tasks(ts, fixed_lm, round_=0, seed=0)[1] == items
