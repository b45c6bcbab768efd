"""backend/config/limits.py: limits for untrusted configs, data roots and
confinement of every path a config reads."""

import json
import os

import pytest

from backend.config import ConfigError, Limits, check_untrusted, data_roots, from_dict, from_text, preset
from backend.config.limits import REPO, estimate_params


def tiny() -> dict:
    return preset("tiny").to_dict()


def refused(cfg, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        check_untrusted(cfg, **kw)
    return str(e.value)


def model_folder(path):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text('{"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, '
                                      '"vocab_size": 400}')
    return path


def with_folder_domain(path) -> dict:
    d = tiny()
    d["data"]["domains"].append({"name": "mine", "source": "folder", "path": str(path)})
    return d


# -- limits -------------------------------------------------------------------------------


def test_limits_default_and_come_from_the_environment(monkeypatch):
    assert Limits().max_params == 150_000_000 and Limits().max_depth == 32
    monkeypatch.setenv("CLOSED_LOOP_MAX_PARAMS", "1000")
    monkeypatch.setenv("CLOSED_LOOP_MAX_STEPS", "20")
    limits = Limits.from_env()
    assert (limits.max_params, limits.max_steps, limits.max_layers) == (1000, 20, Limits().max_layers)


@pytest.mark.parametrize("value", ["lots", "-5", "0"])
def test_a_bad_limit_variable_is_named(monkeypatch, value):
    monkeypatch.setenv("CLOSED_LOOP_MAX_STEPS", value)
    with pytest.raises(ConfigError, match="^CLOSED_LOOP_MAX_STEPS:"):
        Limits.from_env()


def test_every_preset_passes_the_default_limits():
    for name in ("tiny", "demo", "gpu-small"):
        check_untrusted(preset(name), roots=[])


def test_parameter_estimate_matches_the_built_model():
    from backend.model import build_model, count_parameters

    cfg = preset("tiny")
    model = build_model(cfg.model, cfg.data.tokenizer_vocab, cfg.data.context_length, eos_id=0, pad_id=1, seed=0)
    assert estimate_params(cfg) == count_parameters(model)


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["model"].update(num_layers=512), "model.num_layers"),
    (lambda d: d["model"].update(hidden_size=4096, num_heads=32, intermediate_size=16384), "model"),
    (lambda d: d["train"].update(steps=10**12, checkpoint_every=10**11), "train.steps"),
    (lambda d: d["train"].update(steps=100_000, checkpoint_every=1), "train.checkpoint_every"),
    (lambda d: d["data"].update(context_length=100_000), "data.context_length"),
    (lambda d: d["data"].update(tokenizer_vocab=10**6), "data.tokenizer_vocab"),
    (lambda d: d["evaluation"].update(item_rounds=10**9), "evaluation.item_rounds"),
    (lambda d: d["train"].update(batch_size=10**6), "train.batch_size"),
])
def test_limits_refuse_naming_the_field(mutate, field):
    d = tiny()
    mutate(d)
    msg = refused(from_dict(d), roots=[])
    assert msg.startswith(f"{field}:") and "CLOSED_LOOP_MAX_" in msg, msg


def test_a_lower_limit_passed_in_applies():
    msg = refused(preset("tiny"), limits=Limits(max_steps=10), roots=[])
    assert msg.startswith("train.steps: 30 exceeds the limit 10")


# -- confinement ---------------------------------------------------------------------------


def test_data_roots_default_to_examples_and_the_runs_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("CLOSED_LOOP_DATA_ROOTS", raising=False)
    monkeypatch.setenv("CLOSED_LOOP_DB", str(tmp_path / "runs" / "cl.db"))
    assert data_roots() == [REPO / "examples", (tmp_path / "runs").resolve()]
    monkeypatch.setenv("CLOSED_LOOP_DATA_ROOTS", os.pathsep.join([str(tmp_path / "a"), "", str(tmp_path / "b")]))
    assert data_roots() == [(tmp_path / "a").resolve(), (tmp_path / "b").resolve()]


def test_the_shipped_example_folder_is_inside_the_default_roots(monkeypatch):
    monkeypatch.delenv("CLOSED_LOOP_DATA_ROOTS", raising=False)
    check_untrusted(from_dict(with_folder_domain(REPO / "examples" / "prose")))


@pytest.mark.parametrize("where", ["/", "/etc", "{root}/../outside", "{root}/sub/../../outside"])
def test_a_folder_domain_outside_the_roots_is_refused(tmp_path, where):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "outside").mkdir()
    msg = refused(from_dict(with_folder_domain(where.format(root=root))), roots=[root])
    assert msg.startswith("data.domains[6].path:") and "outside the data roots" in msg
    assert "CLOSED_LOOP_DATA_ROOTS" in msg


def test_a_symlink_out_of_a_root_is_refused(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert refused(from_dict(with_folder_domain(root / "link")), roots=[root]).startswith("data.domains[6].path:")
    (root / "data").mkdir()
    check_untrusted(from_dict(with_folder_domain(root / "data")), roots=[root])


def test_model_and_tokenizer_folders_are_confined(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    d = tiny()
    d["model"]["pretrained"] = str(model_folder(outside / "model"))
    assert refused(from_dict(d), roots=[root]).startswith("model.pretrained:")
    d["model"]["pretrained"] = str(model_folder(root / "model"))
    check_untrusted(from_dict(d), roots=[root])
    (outside / "tok").mkdir()
    (outside / "tok" / "tokenizer.json").write_text("{}")
    d["data"]["tokenizer_path"] = str(outside / "tok")
    assert refused(from_dict(d), roots=[root]).startswith("data.tokenizer_path:")


@pytest.mark.parametrize("field", ["model.pretrained", "data.tokenizer_path"])
def test_an_upload_learns_nothing_of_folders_outside_the_roots(tmp_path, monkeypatch, field):
    """The schema looks whether these folders exist; built from an upload
    (untrusted), a path outside the roots is refused as outside before that,
    with the same message whether a folder is there or not. Inside the roots
    it is looked for."""
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    monkeypatch.setenv("CLOSED_LOOP_DATA_ROOTS", str(root))
    section, key = field.split(".")

    def upload(path) -> str:
        text = json.dumps({"preset": "tiny", section: {key: str(path)}})
        with pytest.raises(ConfigError) as e:
            from_text(text, "json", untrusted=True)
        return str(e.value).replace(repr(str(path)), "PATH")

    there, absent = upload(tmp_path / "outside"), upload(tmp_path / "absent")
    assert there == absent and there.startswith(f"{field}: PATH is outside the data roots"), (there, absent)
    assert upload(root / "absent") == f"{field}: no such folder PATH"
    assert upload("/usr/lib\0x") == f"{field}: a path cannot hold a NUL character"


def test_a_schedule_upload_learns_nothing_of_folders_outside_the_roots(tmp_path, monkeypatch):
    from backend.schedule import ScheduleError, parse_schedule

    monkeypatch.setenv("CLOSED_LOOP_DATA_ROOTS", str(tmp_path / "root"))
    (tmp_path / "outside").mkdir()
    messages = []
    for path in (tmp_path / "outside", tmp_path / "absent"):
        cfg = tiny()
        cfg["model"]["pretrained"] = str(path)
        segment = {"from_step": 0, "to_step": cfg["train"]["steps"],
                   "weights": {d["name"]: 1.0 for d in cfg["data"]["domains"]}}
        with pytest.raises(ScheduleError) as e:
            parse_schedule({"format": "closed-loop-schedule", "version": 1, "config": cfg, "segments": [segment]},
                           untrusted=True)
        messages.append(str(e.value).replace(repr(str(path)), "PATH"))
    assert messages[0] == messages[1] and "config.model.pretrained: PATH is outside the data roots" in messages[0]


def test_a_pretrained_model_is_sized_from_its_config_json(tmp_path):
    d = tiny()
    folder = model_folder(tmp_path / "model")
    (folder / "config.json").write_text('{"hidden_size": 8192, "num_hidden_layers": 80, '
                                        '"intermediate_size": 28672, "vocab_size": 128256}')
    d["model"]["pretrained"] = str(folder)
    msg = refused(from_dict(d), roots=[tmp_path])
    assert msg.startswith("model:") and "estimated parameters" in msg


# -- checkpoint retention -------------------------------------------------------------------


def test_keep_checkpoints_defaults_to_all_and_refuses_negative():
    assert preset("tiny").train.keep_checkpoints == 0
    d = tiny()
    d["train"]["keep_checkpoints"] = 3
    assert from_dict(d).train.keep_checkpoints == 3
    d["train"]["keep_checkpoints"] = -1
    with pytest.raises(ConfigError, match=r"^train\.keep_checkpoints: must be >= 0"):
        from_dict(d)


# -- lm-eval task folders: confined, and no code -------------------------------------------

RUNS_CODE = "import pathlib\npathlib.Path({marker!r}).write_text('ran')\n\ndef process(docs):\n    return docs\n"


def task_folder(folder, marker, text, name="task.yaml"):
    """A folder of one task YAML beside helpers.py, which creates `marker` when imported."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "helpers.py").write_text(RUNS_CODE.format(marker=str(marker)))
    (folder / name).write_text(text)
    return folder


def with_task_folder(path) -> dict:
    d = tiny()
    d["evaluation"]["tasks"] = [{"skill": "mine", "task": "my_task", "include_path": str(path)}]
    return d


def test_the_shipped_task_folder_passes_the_default_roots(monkeypatch):
    monkeypatch.delenv("CLOSED_LOOP_DATA_ROOTS", raising=False)
    check_untrusted(from_dict(with_task_folder(REPO / "examples" / "tasks")))


def test_a_task_folder_outside_the_roots_is_refused(tmp_path):
    (tmp_path / "root").mkdir()
    folder = task_folder(tmp_path / "outside", tmp_path / "ran", "task: my_task\n")
    msg = refused(from_dict(with_task_folder(folder)), roots=[tmp_path / "root"])
    assert msg.startswith("evaluation.tasks[0].include_path:") and "outside the data roots" in msg, msg


@pytest.mark.parametrize("text, name", [
    ("task: my_task\nprocess_docs: !function helpers.process\n", "task.yaml"),
    ("task: my_task\nprocess_docs: !function helpers.process\n", "task.yml"),
    ("task: my_task\nprocess_docs: !<!function> helpers.process\n", "task.yaml"),  # a verbatim tag
    ("%TAG !f! !func\n---\ntask: my_task\nprocess_docs: !f!tion helpers.process\n", "task.yaml"),  # a tag handle
])
def test_a_task_yaml_that_would_run_python_is_refused_naming_it(tmp_path, text, name):
    """Every spelling here makes lm-eval's own loader import helpers.py;
    check_untrusted refuses each without importing it."""
    from lm_eval.tasks._yaml_loader import load_yaml

    marker = tmp_path / "ran"
    folder = task_folder(tmp_path / "root" / "tasks", marker, text, name)
    msg = refused(from_dict(with_task_folder(folder)), roots=[tmp_path / "root"])
    assert msg.startswith("evaluation.tasks[0].include_path:") and "may not run code" in msg, msg
    assert str(folder / name) in msg and str(folder / "helpers.py") in msg, msg
    assert not marker.exists()
    load_yaml(folder / name, resolve_func=True)  # what lm-eval does with it when the task loads
    assert marker.exists()


def test_a_function_tag_in_an_included_file_is_refused(tmp_path):
    root = tmp_path / "root"
    task_folder(root / "tasks" / "common", tmp_path / "ran", "process_docs: !function helpers.process\n",
                name="base.inc")  # not *.yaml: reached only through the include
    (root / "tasks" / "task.yaml").write_text("include: common/base.inc\ntask: my_task\n")
    msg = refused(from_dict(with_task_folder(root / "tasks")), roots=[root])
    assert msg.startswith("evaluation.tasks[0].include_path:") and "base.inc" in msg and "!function" in msg, msg
    assert not (tmp_path / "ran").exists()


def test_an_include_outside_the_roots_is_refused(tmp_path):
    root = tmp_path / "root"
    task_folder(tmp_path / "outside", tmp_path / "ran", "output_type: generate_until\n", name="base.yaml")
    (root / "tasks").mkdir(parents=True)
    (root / "tasks" / "task.yaml").write_text(f"include: {tmp_path / 'outside' / 'base.yaml'}\ntask: my_task\n")
    msg = refused(from_dict(with_task_folder(root / "tasks")), roots=[root])
    assert msg.startswith("evaluation.tasks[0].include_path:") and "outside" in msg and "base.yaml" in msg, msg
    (root / "tasks" / "task.yaml").write_text("include: ../tasks/task.yaml\ntask: my_task\n")  # a cycle: lm-eval's to name
    check_untrusted(from_dict(with_task_folder(root / "tasks")), roots=[root])


def test_a_task_whose_data_lies_outside_the_roots_is_refused(tmp_path):
    root = tmp_path / "root"
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "q.jsonl").write_text('{"q": "secret"}\n')
    (root / "tasks" / "data").mkdir(parents=True)
    (root / "tasks" / "data" / "q.jsonl").write_text('{"q": "one"}\n')
    task = root / "tasks" / "task.yaml"
    task.write_text("task: my_task\ndataset_path: json\ndataset_kwargs: {data_files: {test: data/q.jsonl}}\n")
    check_untrusted(from_dict(with_task_folder(root / "tasks")), roots=[root])  # relative to the YAML: inside
    task.write_text("task: my_task\ndataset_path: json\n"
                    f"dataset_kwargs: {{data_files: {{test: [data/q.jsonl, {tmp_path / 'outside' / 'q.jsonl'}]}}}}\n")
    msg = refused(from_dict(with_task_folder(root / "tasks")), roots=[root])
    assert "data_files" in msg and "outside the data roots" in msg and "task.yaml" in msg, msg
    task.write_text(f"task: my_task\ndataset_path: {tmp_path / 'outside'}\n")  # a local dataset folder
    msg = refused(from_dict(with_task_folder(root / "tasks")), roots=[root])
    assert "dataset_path" in msg and "outside the data roots" in msg, msg
    for key in ("data_dir", "cache_dir"):  # datasets reads every file under data_dir
        task.write_text(f"task: my_task\ndataset_path: json\ndataset_kwargs: {{{key}: {tmp_path / 'outside'}}}\n")
        msg = refused(from_dict(with_task_folder(root / "tasks")), roots=[root])
        assert f"dataset_kwargs.{key}" in msg and "outside the data roots" in msg, msg
    task.write_text("task: my_task\ndataset_path: json\ndataset_kwargs: {data_dir: data}\n")  # beside the YAML
    check_untrusted(from_dict(with_task_folder(root / "tasks")), roots=[root])
