"""Any lm-eval task as a skill: a registry task, a YAML file or folder of the
user's own tasks, or a group (each subtask its own facet).

`resolve_tasks(specs, seed)` loads what a run's `evaluation.tasks` name once
per worker and checks it before any training starts: an unknown task (with
the closest names), a metric or filter the task does not have, a group whose
tasks are not all scored by one metric and direction (the skill's score is
the unweighted mean of its facets; a group's own metric is the first of its
aggregate_metric_list), a held-out task equal to its steer task or scored by
another metric or direction (the guard compares the two), more few-shot
examples than the task has documents to draw them from, a YAML folder that
does not parse, or a registry task whose data is not on this machine (HF
offline) is a `TaskError` naming the field.

What it learns about each leaf task: its output type, its metrics with their
direction (`higher_is_better`, from the task itself), its document count, and
its chance level:
- multiple choice: the expected accuracy of a uniform guess, mean of
  1/len(choices) over the documents;
- generated answers: the rate of the best constant answer, the share of the
  most frequent target (a model that always answers "even" scores it);
- a task may declare its own in `metadata: {chance: 0.25}`;
- perplexity-like metrics have none (None).

Documents rotate across checkpoints: each task's documents are shuffled once
by a seeded permutation and checkpoint k evaluates the k-th slice of
`items_per_checkpoint` (wrapping), so a resumed or replayed run evaluates
exactly the same items and every checkpoint is a fresh sample. Data files
named relative to a task's YAML folder are resolved against that folder (a
shipped task folder works from any working directory).
"""

from __future__ import annotations

import collections
import copy
import difflib
import functools
import logging
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from backend.vocab import skill_name

# lm-eval output types -> how the answer is produced (the `decoding` facet)
DECODING = {
    "generate_until": "greedy",
    "multiple_choice": "teacher_forced",
    "loglikelihood": "teacher_forced",
    "loglikelihood_rolling": "teacher_forced",
}


FEWSHOT_SEED = 1234  # lm-eval's default few-shot seed: the examples a plain lm_eval run draws


class TaskError(ValueError):
    """A task spec that cannot be evaluated here; the message names the field."""


@dataclass
class LeafTask:
    """One lm-eval task that is a facet of a skill."""

    name: str
    skill: str
    kind: str
    """steer | holdout"""
    task: object = field(repr=False)
    """The lm-eval Task object."""
    output_type: str
    metric: str
    """The metric that scores the skill (without lm-eval's filter suffix)."""
    filter: str
    """The lm-eval filter whose `metric` scores the skill ("none" where the
    task has no filter_list)."""
    higher_is_better: bool
    n_docs: int
    chance: float | None
    metrics: dict[str, bool] = field(default_factory=dict)
    """Every metric of the task -> higher_is_better."""
    per_checkpoint: int | None = None
    """Documents evaluated per checkpoint (None: all)."""
    domains: list[str] = field(default_factory=list)
    """The domains declared to feed the skill."""


def _num(x) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def resolve_data_files(cfg: dict, base: Path) -> dict:
    """Data files given relative to the task's YAML folder become absolute
    (when the file exists there); others stay as given (working directory)."""
    cfg = copy.deepcopy(cfg)
    files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if files is None:
        return cfg

    def fix(p):
        if isinstance(p, str) and not Path(p).is_absolute():
            for cand in (base / p, base / Path(p).name, base / "data" / Path(p).name):
                if cand.is_file():
                    return str(cand.resolve())
        return p

    if isinstance(files, dict):
        cfg["dataset_kwargs"]["data_files"] = {k: ([fix(x) for x in v] if isinstance(v, list) else fix(v))
                                               for k, v in files.items()}
    elif isinstance(files, list):
        cfg["dataset_kwargs"]["data_files"] = [fix(x) for x in files]
    else:
        cfg["dataset_kwargs"]["data_files"] = fix(files)
    return cfg


def _check_yaml(include_paths: list[str], where: str) -> None:
    """lm-eval's index skips a YAML file it cannot parse with only a log
    line; a user's task folder is checked here so that the broken file is
    named instead of its task being reported unknown."""
    from lm_eval.tasks._yaml_loader import load_yaml

    for p in include_paths:
        root = Path(p)
        if not root.exists():
            raise TaskError(f"{where}.include_path: no such file or folder {p!r}")
        files = [root] if root.is_file() else sorted(root.rglob("*.yaml")) + sorted(root.rglob("*.yml"))
        for f in files:
            try:
                load_yaml(f, resolve_func=False)
            except Exception as e:  # noqa: BLE001 - yaml, include and shape errors alike
                raise TaskError(f"{where}.include_path: {str(f)!r} is not a valid lm-eval task YAML: "
                                f"{type(e).__name__}: {str(e)[:300]}") from None


@functools.lru_cache(maxsize=1)
def _sandbox_templates() -> None:
    """Render every lm-eval prompt template (doc_to_text, doc_to_target,
    doc_to_choice...) in Jinja's sandbox. lm-eval renders them in a plain
    Environment, where `{{ cycler.__init__.__globals__.os.system(...) }}`
    in a task YAML runs code; the sandbox refuses attributes like
    `__globals__` (SecurityError) and renders every real template alike.
    The same filters, undefined handling and newline rule as lm-eval's."""
    import lm_eval.utils
    from jinja2 import BaseLoader, StrictUndefined
    from jinja2.sandbox import SandboxedEnvironment

    env = SandboxedEnvironment(loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True)
    env.filters.update(lm_eval.utils.env.filters)
    lm_eval.utils.env = env


@functools.lru_cache(maxsize=4)
def _manager(include_paths: tuple[str, ...], need_registry: bool):
    """One TaskManager per process and include paths: indexing lm-eval's
    bundled tasks takes ~10 s, so it happens once, and only when needed.
    Templates render in Jinja's sandbox from here on (_sandbox_templates)."""
    from lm_eval.tasks import TaskManager

    _sandbox_templates()
    return TaskManager(include_path=list(include_paths) or None, include_defaults=need_registry)


class TaskSet:
    """The lm-eval tasks of a run, loaded once: the TaskManager (bundled
    tasks indexed only when a spec needs one), every leaf task with its
    facts, and the `loaded` dict lm-eval's `evaluate` takes."""

    def __init__(self, include_paths: list[str], need_registry: bool):
        logging.getLogger("lm_eval").setLevel(logging.ERROR)
        self.manager = _manager(tuple(include_paths), need_registry)
        self.leaves: list[LeafTask] = []

    def names(self) -> list[str]:
        return self.manager.all_tasks

    def group_metric(self, name: str) -> str | None:
        """How lm-eval scores a group: the first metric of its
        aggregate_metric_list, as "metric,filter" where it names a filter;
        None for a task, a tag or a group without one."""
        entry = self.manager.task_index.get(name)
        if entry is None or entry.kind.name != "GROUP":
            return None
        agg = entry.cfg.get("aggregate_metric_list") or []
        first = (agg if isinstance(agg, list) else [agg])[0] if agg else None
        if not isinstance(first, dict) or not first.get("metric"):
            return None
        flt = first.get("filter_list")  # a name or a list of names; none: every filter
        flt = flt[0] if isinstance(flt, list) and flt else flt
        return f"{first['metric']},{flt}" if isinstance(flt, str) and flt != "none" else str(first["metric"])

    def load(self, name: str, where: str) -> list:
        """lm-eval Task objects of a task or group name (groups: every leaf)."""
        from lm_eval.tasks._yaml_loader import load_yaml

        entry = self.manager.task_index.get(name)
        if entry is None:
            close = difflib.get_close_matches(name, self.names(), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise TaskError(f"{where}: unknown lm-eval task or group {name!r}{hint}")
        try:
            if entry.kind.name == "TAG":  # every task carrying the tag, each resolved as itself
                return [t for member in sorted(entry.tags) for t in self.load(member, where)]
            if entry.kind.name == "GROUP":
                children = entry.cfg.get("task") or []
                tasks = []
                for child in children if isinstance(children, list) else [children]:
                    if isinstance(child, str):
                        tasks += self.load(child, where)
                    elif isinstance(child, dict):
                        base = Path(entry.yaml_path).parent if entry.yaml_path else Path.cwd()
                        tasks += list(self.manager.load([resolve_data_files(child, base)])["tasks"].values())
                return tasks
            if entry.yaml_path is not None:
                cfg = resolve_data_files(load_yaml(entry.yaml_path, resolve_func=True), Path(entry.yaml_path).parent)
                for k in ("tag", "group"):
                    cfg.pop(k, None)
                return list(self.manager.load([cfg])["tasks"].values())
            return list(self.manager.load([name])["tasks"].values())
        except TaskError:
            raise
        except StopIteration:  # datasets' json reader, on a data file without a row
            raise TaskError(f"{where}: task {name!r} has no documents (an empty data file?)") from None
        except Exception as e:
            text = f"{type(e).__name__}: {e}"
            if any(w in text for w in ("offline", "Offline", "ConnectionError", "couldn't be found",
                                       "Couldn't find", "not found on the Hugging Face Hub", "LocalEntryNotFound")):
                raise TaskError(
                    f"{where}: the data of task {name!r} is not available on this machine (no network, "
                    f"HF_DATASETS_OFFLINE=1): download it once where there is a network "
                    f"(`python -c \"import datasets; datasets.load_dataset(...)\"` or run lm_eval once), "
                    f"or point the task's YAML at local files ({text[:200]})") from None
            raise TaskError(f"{where}: task {name!r} cannot be loaded: {text[:400]}") from None


def _task_metrics(task) -> dict[str, bool]:
    hib = task.higher_is_better() or {}
    return {str(k): bool(v) for k, v in hib.items()}


def _filters(task) -> list[str]:
    """The task's filter names in order: its filter_list's, else lm-eval's "none"."""
    return [f["name"] for f in task.config.filter_list or []] or ["none"]


def _chance(task, output_type: str, metric: str) -> float | None:
    declared = (task.config.metadata or {}).get("chance") if isinstance(task.config.metadata, dict) else None
    if _num(declared) is not None:
        return float(declared)
    docs = task.eval_docs
    if not len(docs):
        return None
    if output_type == "multiple_choice" and metric in ("acc", "acc_norm", "acc_mutual_info"):
        return sum(1 / max(1, len(task.doc_to_choice(d))) for d in docs) / len(docs)
    if output_type == "generate_until" and metric in ("exact_match",):
        targets = collections.Counter(str(task.doc_to_target(d)).strip() for d in docs)
        return targets.most_common(1)[0][1] / len(docs)
    return None


def _check_shots(task, where: str, name: str) -> None:
    """The few-shot examples of a prompt can be drawn: one prompt is built
    here, since lm-eval would fail only at the first checkpoint, mid-run,
    when num_fewshot exceeds the documents it draws them from."""
    shots = task.get_config("num_fewshot") or 0
    if not shots:
        return
    try:
        task.fewshot_context(doc=task.eval_docs[0], num_fewshot=shots)
    except (ValueError, AssertionError):  # random.sample / first_n: more shots than documents
        pool = len(task.sampler.fewshot_docs())
        raise TaskError(f"{where}: task {name!r} cannot draw {shots} few-shot examples for a prompt from its {pool} "
                        f"few-shot documents (less the evaluated one where they are its own split); "
                        f"lower num_fewshot") from None
    task.set_fewshot_seed(seed=FEWSHOT_SEED)  # the draw above moved it


def _scored(leaf: LeafTask) -> str:
    """How a leaf scores its skill: "acc (higher is better)"."""
    return f"{leaf.metric} ({'higher' if leaf.higher_is_better else 'lower'} is better)"


def resolve_tasks(specs: list, *, where: str = "evaluation.tasks") -> TaskSet:
    """Load and check every spec (objects with skill, task, include_path,
    metric, holdout, num_fewshot); returns the TaskSet with one LeafTask per
    facet (steer and held-out)."""
    include = sorted({str(Path(s.include_path).resolve()) for s in specs if s.include_path})
    for i, s in enumerate(specs):
        if s.include_path:
            _check_yaml([s.include_path], f"{where}[{i}]")
    # index the bundled tasks only when a name is not among the user's own
    probe = TaskSet(include, need_registry=False) if include else None
    wanted = {n for s in specs for n in (s.task, s.holdout) if n}
    need_registry = probe is None or not wanted <= set(probe.names())
    ts = probe if probe is not None and not need_registry else TaskSet(include, need_registry=True)
    seen: dict[str, str] = {}
    for i, spec in enumerate(specs):
        at = f"{where}[{i}]"
        if spec.holdout is not None and spec.holdout == spec.task:
            raise TaskError(f"{at}.holdout: equals its steer task {spec.task!r}; a held-out task must be another task")
        for kind, name in (("steer", spec.task), ("holdout", spec.holdout)):
            if name is None:
                continue
            field_ = "task" if kind == "steer" else "holdout"
            skill = skill_name(spec.skill, kind)
            side = []
            scored_by = spec.metric or ts.group_metric(name) or ""
            for task in ts.load(name, f"{at}.{field_}"):
                tname = task.config.task
                if tname in seen:
                    raise TaskError(f"{at}.{field_}: task {tname!r} is already measured by skill {seen[tname]!r}")
                seen[tname] = skill
                metrics, filters = _task_metrics(task), _filters(task)
                metric, _, flt = scored_by.partition(",")  # lm-eval's key: "exact_match,strict-match"
                metric, flt = metric or next(iter(metrics), None), flt or filters[0]
                if metric not in metrics or flt not in filters:
                    scored = (f"; its filters: {', '.join(filters)}, chosen as `metric,filter`"
                              if len(filters) > 1 or flt not in filters else "")
                    raise TaskError(f"{at}.metric: task {tname!r} has no metric {scored_by or metric!r} "
                                    f"(its metrics: {', '.join(metrics) or 'none'}{scored})")
                if spec.num_fewshot is not None:
                    task.set_config(key="num_fewshot", value=spec.num_fewshot)
                elif task.get_config("num_fewshot") is None:
                    task.set_config(key="num_fewshot", value=0)
                task.set_fewshot_seed(seed=FEWSHOT_SEED)
                try:
                    n_docs = len(task.eval_docs)
                except Exception as e:  # noqa: BLE001 - a broken data file
                    raise TaskError(f"{at}.{field_}: task {tname!r} has no readable documents: {e}") from None
                if n_docs == 0:
                    raise TaskError(f"{at}.{field_}: task {tname!r} has no documents")
                _check_shots(task, f"{at}.num_fewshot", tname)
                out = task.OUTPUT_TYPE
                side.append(LeafTask(name=tname, skill=skill, kind=kind, task=task, output_type=out,
                                     metric=metric, filter=flt, higher_is_better=metrics[metric], n_docs=n_docs,
                                     chance=_chance(task, out, metric), metrics=metrics,
                                     per_checkpoint=getattr(spec, "items_per_checkpoint", None),
                                     domains=list(getattr(spec, "domains", []) or [])))
            # the skill's score is the mean of its facets: one metric, one direction
            if len({_scored(leaf) for leaf in side}) > 1:
                scored = ", ".join(f"{leaf.name}: {_scored(leaf)}" for leaf in side)
                hint = "" if spec.metric else "; set `metric` to one metric they all have"
                raise TaskError(f"{at}.metric: the tasks of {field_} {name!r} are not scored alike ({scored}): "
                                f"skill {skill!r} needs one metric and direction for all of them{hint}")
            # the Goodhart guard compares the held-out score's rise with the steer score's: one scale
            if kind == "holdout" and _scored(side[0]) != _scored(ts.leaves[-1]):
                hint = "" if spec.metric else "; set `metric` to one metric both have"
                raise TaskError(f"{at}.metric: holdout {name!r} is scored by {_scored(side[0])}, its steer task "
                                f"{spec.task!r} by {_scored(ts.leaves[-1])}: the guard compares the two, so "
                                f"both need one metric and direction{hint}")
            ts.leaves += side
    return ts


class TaskEvaluator:
    """The lm-eval tasks of a run's `evaluation.tasks` on the live model: one
    HFLM over the model the trainer updates in place, the TaskSet loaded once.
    `evaluate` gives store-ready measurement rows (the skill's own metric is
    one of them; its direction and chance go to the skills table)."""

    def __init__(self, taskset: TaskSet, model, tokenizer, *, batch_size: int, max_length: int, device,
                 seed: int):
        from lm_eval.models.huggingface import HFLM

        self.taskset = taskset
        self.seed = seed
        self.lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length,
                       device=str(device))
        # the loop's view: task name and skill, plus what the skills table keeps
        self.task_configs = [{"task": leaf.name, "metadata": {
            "skill": leaf.skill, "metric": leaf.metric, "higher_is_better": leaf.higher_is_better,
            "chance": leaf.chance}} for leaf in taskset.leaves]

    def evaluate(self, round_: int = 0, skills: list[str] | None = None) -> tuple[list[dict], list[dict]]:
        """(measurements, samples) of checkpoint number round_ (see evaluate_tasks)."""
        rows, items = evaluate_tasks(self.taskset, self.lm, round_=round_, seed=self.seed, skills=skills)
        keep = ("task", "skill", "metric", "value", "stderr", "n", "prompt_variant", "decoding", "scorer")
        return [{k: r[k] for k in keep} for r in rows], items


def rotation_indices(task_name: str, n_docs: int, per_checkpoint: int | None, round_: int, seed: int) -> list[int]:
    """The documents checkpoint number `round_` evaluates: the round_-th slice
    of a seeded permutation of the task's documents (wrapping); every
    document when per_checkpoint is None or covers them all."""
    import numpy as np

    if per_checkpoint is None or per_checkpoint >= n_docs:
        return list(range(n_docs))
    perm = np.random.default_rng([seed, zlib.crc32(task_name.encode())]).permutation(n_docs)
    start = (round_ * per_checkpoint) % n_docs
    idx = [int(perm[(start + j) % n_docs]) for j in range(per_checkpoint)]
    return sorted(idx)


def _metric_keys(result: dict, metric: str) -> list[tuple[str, str]]:
    """(key, filter) of `metric` in one task's lm-eval results ("acc,none")."""
    out = []
    for k in result:
        if "," in k:
            m, flt = k.split(",", 1)
            if m == metric:
                out.append((k, flt))
    return out


CORPUS_PERPLEXITIES = frozenset({"word_perplexity", "byte_perplexity", "bits_per_byte"})
"""lm-eval's corpus-level perplexities: per item (loglikelihood, length),
aggregated as a ratio of sums, with no stderr of lm-eval's own."""


def _ratio_stderr(items: list, metric: str) -> float | None:
    """Stderr of a corpus perplexity (CORPUS_PERPLEXITIES) from its per-item
    (loglikelihood, length) pairs: the ratio estimator r = -sum(ll)/sum(len)
    with the delta method, then mapped like the metric (bits per byte: r /
    ln 2; perplexities: exp(r), so se = exp(r) * se(r)). None for any other
    metric and for items it cannot read."""
    if metric not in CORPUS_PERPLEXITIES:
        return None
    pairs = [(_num(p[0]), _num(p[1])) if isinstance(p, (list, tuple)) and len(p) == 2 else (None, None)
             for p in items]
    n = len(pairs)
    if n < 2 or any(None in p for p in pairs):
        return None
    x = [-ll for ll, _ in pairs]  # nats per item
    w = [length for _, length in pairs]
    sw = sum(w)
    if sw <= 0:
        return None
    r = sum(x) / sw
    se = math.sqrt(n / (n - 1) * sum((xi - r * wi) ** 2 for xi, wi in zip(x, w)) / sw**2)
    if metric == "bits_per_byte":
        return se / math.log(2)
    return math.exp(r) * se if r < 700 else None  # beyond: exp overflows a float


# how a multiple-choice metric picks its choice from the per-choice
# loglikelihoods (as lm-eval's process_results does); others: argmax ll
_CHOICE_SCORE = {
    "acc_norm": lambda ll, choice: ll / len(choice) if choice else -math.inf,
    "acc_bytes": lambda ll, choice: ll / len(choice.encode()) if choice else -math.inf,
}


def _sample_row(leaf: LeafTask, s: dict, metric: str) -> dict:
    """One item's result for the samples table: prompt, target, response, score.

    A multiple-choice response is the choice `metric` picks: acc_norm the
    highest loglikelihood per character of the choice, acc_bytes per byte,
    any other metric (acc, ...) the highest loglikelihood."""
    args = s.get("arguments") or []
    prompt = ""
    if args:
        first = args[0]
        prompt = first[0] if isinstance(first, (list, tuple)) and first else str(first)
    target = s.get("target")
    resp = s.get("filtered_resps")
    if leaf.output_type == "multiple_choice" and isinstance(resp, list):
        choices = [str(c) for c in leaf.task.doc_to_choice(s["doc"])]
        lls = [_num(r[0] if isinstance(r, (list, tuple)) else r) for r in resp][:len(choices)]
        by = _CHOICE_SCORE.get(metric, lambda ll, choice: ll)
        scores = [-math.inf if ll is None else by(ll, c) for ll, c in zip(lls, choices)]
        best = max(range(len(scores)), key=scores.__getitem__) if scores else None
        response = choices[best] if best is not None else ""
        if isinstance(target, int) and target < len(choices):
            target = choices[target]
    elif leaf.output_type.startswith("loglikelihood") and isinstance(resp, list) and resp:
        first = resp[0]
        ll = first[0] if isinstance(first, (list, tuple)) else first
        response = f"loglik {float(ll):.2f}" if _num(ll) is not None else str(first)
    elif isinstance(resp, list):
        response = str(resp[0]) if resp else ""
    else:
        response = str(resp)
    value = _num(s.get(metric))
    return {"task": leaf.name, "doc_id": int(s["doc_id"]), "prompt": str(prompt)[-2000:],
            "target": str(target)[:2000], "response": response[:2000],
            "correct": None if value is None or not leaf.higher_is_better or value not in (0.0, 1.0)
            else int(value)}


def evaluate_tasks(ts: TaskSet, lm, *, round_: int, seed: int, per_checkpoint: int | None = None,
                   skills: list[str] | None = None, bootstrap_iters: int = 1000) -> tuple[list[dict], list[dict]]:
    """Evaluate every leaf task on checkpoint `round_`'s documents with the
    model wrapped in `lm` (an lm-eval LM, e.g. HFLM over the live model).

    Returns (measurements, samples). A measurement: task, skill, metric, value,
    stderr, n, higher_is_better, chance and the facets prompt_variant (the
    task name: each task of a group is one facet), decoding and scorer (the
    metric and its lm-eval filter). Every metric of the task is measured; the
    skill's own metric is the one named in its spec. A metric lm-eval scores
    under several filters (gsm8k's strict-match, then flexible-extract) is
    measured once per filter, but only the skill's filter's row carries the
    metric's name (LeafTask.filter: the first, unless the spec names one as
    "exact_match,flexible-extract"): it scores the skill, and another
    filter's row is named by its scorer ("exact_match/strict-match"), a
    metric of its own that nothing reading the skill's metric pools with it.
    The samples are the skill's filter's. `per_checkpoint` overrides each
    task's own count; `skills` limits it to those skills' tasks."""
    from lm_eval.evaluator import evaluate

    leaves = [leaf for leaf in ts.leaves if skills is None or leaf.skill in skills]
    if not leaves:
        return [], []
    loaded = {"tasks": {leaf.name: leaf.task for leaf in leaves}, "groups": {}, "group_map": {}}
    samples = {leaf.name: rotation_indices(leaf.name, leaf.n_docs, per_checkpoint or leaf.per_checkpoint,
                                           round_, seed) for leaf in leaves}
    res = evaluate(lm=lm, task_dict=loaded, samples=samples, log_samples=True,
                   bootstrap_iters=bootstrap_iters, verbosity="ERROR")
    measurements, items = [], []
    for leaf in leaves:
        r = res["results"][leaf.name]
        n = res["n-samples"][leaf.name]["effective"]
        logged = res["samples"][leaf.name]  # one per document and filter, in filter order
        for metric, hib in leaf.metrics.items():
            for key, flt in _metric_keys(r, metric):
                value = _num(r[key])
                if value is None:
                    continue
                scorer = metric if flt == "none" else f"{metric}/{flt}"
                stderr = _num(r.get(f"{metric}_stderr,{flt}"))
                if stderr is None:  # corpus-level perplexities carry none: from the items
                    stderr = _ratio_stderr([s.get(metric) for s in logged if s["filter"] == flt], metric)
                measurements.append({
                    "task": leaf.name, "skill": leaf.skill, "metric": metric if flt == leaf.filter else scorer,
                    "value": value, "stderr": stderr, "n": n, "higher_is_better": hib,
                    "chance": leaf.chance if metric == leaf.metric and flt == leaf.filter else None,
                    "prompt_variant": leaf.name, "decoding": DECODING.get(leaf.output_type, leaf.output_type),
                    "scorer": scorer,
                })
        items += [_sample_row(leaf, s, leaf.metric) for s in logged if s["filter"] == leaf.filter]
    return measurements, items
