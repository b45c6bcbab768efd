"""backend/config.py: presets, shipped config files, loading and validation.

Every error must name the field by its dotted path, so each refusal test
checks the path in the message, not just the exception type."""

import json
from pathlib import Path

import pytest

from backend import config
from backend.config import ConfigError, RunConfig, from_data, from_dict, load, preset

ROOT = Path(__file__).resolve().parent.parent


def tiny() -> dict:
    return preset("tiny").to_dict()


def refused(data: dict) -> str:
    with pytest.raises(ConfigError) as e:
        from_dict(data)
    return str(e.value)


# -- presets and shipped files --------------------------------------------------


@pytest.mark.parametrize("name", sorted(config.PRESETS))
def test_every_preset_validates_and_round_trips(name):
    cfg = preset(name)
    assert isinstance(cfg, RunConfig)
    assert len(cfg.domain_names) >= 2
    # the resolved dict stored with a run rebuilds the same config
    assert from_dict(cfg.to_dict()) == cfg
    # what a run stores must be plain JSON
    assert json.loads(json.dumps(cfg.to_dict())) == cfg.to_dict()


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError) as e:
        preset("huge")
    msg = str(e.value)
    assert "huge" in msg
    for name in config.PRESETS:
        assert name in msg


SHIPPED = sorted(p for ext in ("*.toml", "*.json") for p in (ROOT / "configs").glob(ext)) \
    if (ROOT / "configs").is_dir() else []


@pytest.mark.skipif(not SHIPPED, reason="no configs/ folder with *.toml / *.json is shipped")
@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_file_loads(path):
    assert isinstance(load(path), RunConfig)


def test_steer_skills_default_to_every_streamed_skill_in_order():
    d = tiny()
    d["evaluation"]["skills"] = []
    cfg = from_dict(d)
    assert cfg.steer_skills == ["copy", "reverse", "sort", "add2", "add3", "mul1", "parity", "brackets", "kv_recall"]
    assert preset("tiny").steer_skills == ["copy", "add2"]


# -- unknown keys -----------------------------------------------------------------


@pytest.mark.parametrize("mutate, path", [
    (lambda d: d["train"].update(lrr=0.1), "train.lrr"),
    (lambda d: d["data"]["domains"][0].update(sorce="x"), "data.domains[0].sorce"),
    (lambda d: d["data"]["domains"][3].update(skils=["copy"]), "data.domains[3].skils"),
    (lambda d: d.update(modle={}), "modle"),
    (lambda d: d["controller"].update(flor=0.1), "controller.flor"),
])
def test_unknown_key_names_its_dotted_path(mutate, path):
    d = tiny()
    mutate(d)
    msg = refused(d)
    assert msg.startswith(f"{path}: unknown key"), msg


# -- wrong types and values -------------------------------------------------------


@pytest.mark.parametrize("mutate, field", [
    (lambda d: d["train"].update(lr=-0.001), "train.lr"),
    (lambda d: d["train"].update(lr=0), "train.lr"),
    (lambda d: d["train"].update(lr="fast"), "train.lr"),
    (lambda d: d["train"].update(lr=float("nan")), "train.lr"),
    (lambda d: d["train"].update(steps=10.0), "train.steps"),
    (lambda d: d["train"].update(steps=True), "train.steps"),
    (lambda d: d["train"].update(checkpoint_every=31), "train.checkpoint_every"),
    (lambda d: d["train"].update(min_lr_ratio=1.5), "train.min_lr_ratio"),
    (lambda d: d["train"].update(warmup_steps=-1), "train.warmup_steps"),
    (lambda d: d["train"].update(device="tpu"), "train.device"),
    (lambda d: d["model"].update(hidden_size=66), "model.num_heads"),
    (lambda d: d["model"].update(num_layers=0), "model.num_layers"),
    (lambda d: d["model"].update(pretrained="/no/such/folder"), "model.pretrained"),
    (lambda d: d["data"].update(tokenizer_vocab=200), "data.tokenizer_vocab"),
    (lambda d: d["data"].update(tokenizer_path="/no/such/folder"), "data.tokenizer_path"),
    (lambda d: d["data"].update(domains=d["data"]["domains"][:1]), "data.domains"),
    (lambda d: d["data"].update(domains={"a": 1}), "data.domains"),
    (lambda d: d["data"]["domains"][1].update(skills=["add2", "divide"]), "data.domains[1].skills"),
    (lambda d: d["data"]["domains"][4].update(skills=["copy"]), "data.domains[4].skills"),
    (lambda d: d["data"]["domains"][2].update(source="web"), "data.domains[2].source"),
    (lambda d: d["data"]["domains"][2].update(name="has space"), "data.domains[2].name"),
    (lambda d: d["data"]["domains"][2].update(size_tokens=0), "data.domains[2].size_tokens"),
    (lambda d: d["data"]["domains"][5].update(name="strings"), "data.domains[5].name"),
    (lambda d: d["data"]["domains"].append({"name": "mine", "source": "folder"}), "data.domains[6].path"),
    (lambda d: d["data"]["domains"].append({"name": "mine"}), "data.domains[6].source"),
    (lambda d: d["evaluation"].update(skills=["nope"]), "evaluation.skills"),
    (lambda d: d["evaluation"].update(items_per_skill=0), "evaluation.items_per_skill"),
    (lambda d: d["evaluation"].update(holdout="yes"), "evaluation.holdout"),
    (lambda d: d["controller"].update(strategy="greedy"), "controller.strategy"),
    (lambda d: d["controller"].update(floor=0.8, cap=0.5), "controller.floor"),
    (lambda d: d["controller"].update(max_change=1.5), "controller.max_change"),
    (lambda d: d["controller"].update(step_size=0), "controller.step_size"),
    (lambda d: d.update(policy="sometimes"), "policy"),
    (lambda d: d.update(seed=-1), "seed"),
    (lambda d: d["mixture"].update(initial="proportional"), "mixture.initial"),
])
def test_bad_value_names_the_field(mutate, field):
    d = tiny()
    mutate(d)
    msg = refused(d)
    assert msg.startswith(f"{field}:"), msg


def test_unknown_skill_and_strategy_list_what_exists():
    d = tiny()
    d["data"]["domains"][1]["skills"] = ["divide"]
    msg = refused(d)
    assert "'divide'" in msg and "add2" in msg and "kv_recall" in msg
    d = tiny()
    d["controller"]["strategy"] = "greedy"
    msg = refused(d)
    assert "'greedy'" in msg and "deficit" in msg and "static" in msg


def test_duplicate_domain_names_the_domain():
    d = tiny()
    d["data"]["domains"][5]["name"] = "strings"
    msg = refused(d)
    assert "duplicate" in msg and "'strings'" in msg


def test_evaluated_skill_must_be_streamed_by_some_domain():
    d = tiny()
    d["data"]["domains"] = [x for x in d["data"]["domains"] if x["name"] != "arithmetic"]
    msg = refused(d)  # tiny evaluates add2, which only `arithmetic` streams
    assert msg.startswith("evaluation.skills:") and "'add2'" in msg


@pytest.mark.parametrize("weights, words", [
    ({"strings": 1, "arithmetic": 1, "logic": 1, "recall": 1, "noise": 1}, ["missing", "'code'"]),
    ({"strings": 1, "arithmetic": 1, "logic": 1, "recall": 1, "noise": 1, "code": 1, "web": 1},
     ["unknown", "'web'"]),
    ({"strings": -1, "arithmetic": 1, "logic": 1, "recall": 1, "noise": 1, "code": 1}, ["negative", "'strings'"]),
    ({"strings": 0, "arithmetic": 0, "logic": 0, "recall": 0, "noise": 0, "code": 0}, ["zero"]),
    ({"strings": "1", "arithmetic": 1, "logic": 1, "recall": 1, "noise": 1, "code": 1}, ["mixture.initial"]),
])
def test_bad_initial_weights_are_refused(weights, words):
    d = tiny()
    d["mixture"]["initial"] = weights
    msg = refused(d)
    assert msg.startswith("mixture.initial"), msg
    for w in words:
        assert w in msg, msg


def test_explicit_initial_weights_are_accepted():
    d = tiny()
    d["mixture"]["initial"] = {"strings": 2, "arithmetic": 1, "logic": 1, "recall": 1, "noise": 0, "code": 1}
    cfg = from_dict(d)
    assert cfg.mixture.initial["strings"] == 2.0 and isinstance(cfg.mixture.initial["arithmetic"], float)


def test_constructing_dataclasses_directly_validates_too():
    with pytest.raises(ConfigError, match=r"^train\.checkpoint_every:"):
        RunConfig(data=preset("tiny").data, train=config.TrainConfig(steps=5, checkpoint_every=10))


def test_replace_validates_again():
    cfg = preset("tiny")
    assert cfg.replace(seed=3).seed == 3
    with pytest.raises(ConfigError, match=r"^policy:"):
        cfg.replace(policy="never")


def test_natural_mixture_needs_a_size_for_every_synthetic_domain():
    d = tiny()
    d["mixture"]["initial"] = "natural"
    del d["data"]["domains"][0]["size_tokens"]
    with pytest.raises(ConfigError, match=r"data\.domains\[0\]\.size_tokens"):
        from_dict(d)


# -- files --------------------------------------------------------------------------


def test_json_file_with_preset_and_overrides(tmp_path):
    p = tmp_path / "run.json"
    p.write_text(json.dumps({"preset": "tiny", "name": "mine", "train": {"steps": 40, "lr": 0.001},
                             "controller": {"strategy": "static"}}))
    cfg = load(p)
    assert (cfg.name, cfg.train.steps, cfg.train.lr, cfg.controller.strategy) == ("mine", 40, 0.001, "static")
    # untouched fields come from the preset, merged per table
    assert cfg.train.checkpoint_every == 10 and cfg.train.batch_size == 8
    assert cfg.model == preset("tiny").model


def test_toml_file_with_preset_and_overrides(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text(
        'preset = "tiny"\nseed = 7\n\n[model]\nhidden_size = 32\nnum_heads = 2\n\n'
        '[mixture.initial]\nstrings = 3\narithmetic = 1\nlogic = 1\nrecall = 1\nnoise = 1\ncode = 1\n'
    )
    cfg = load(p)
    assert cfg.seed == 7 and cfg.model.hidden_size == 32 and cfg.model.num_layers == 2
    assert cfg.mixture.initial == {"strings": 3.0, "arithmetic": 1.0, "logic": 1.0, "recall": 1.0,
                                   "noise": 1.0, "code": 1.0}


def test_toml_file_without_preset_uses_defaults(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text('[[data.domains]]\nname = "a"\nsource = "synthetic"\nskills = ["copy"]\n\n'
                 '[[data.domains]]\nname = "b"\nsource = "random"\n')
    cfg = load(p)
    assert cfg.domain_names == ["a", "b"] and cfg.train == config.TrainConfig()


def test_overrides_in_a_file_are_validated_with_their_path(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text('preset = "tiny"\n[train]\nlrr = 0.1\n')
    with pytest.raises(ConfigError, match=r"^train\.lrr: unknown key"):
        load(p)
    p.write_text('preset = "tiny"\n[train]\ncheckpoint_every = 100\n')
    with pytest.raises(ConfigError, match=r"^train\.checkpoint_every:"):
        load(p)
    p.write_text('preset = "giant"\n')
    with pytest.raises(ConfigError, match="giant"):
        load(p)


@pytest.mark.parametrize("name, text", [
    ("bad.toml", 'preset = "tiny"\n[train\nsteps = 3\n'),
    ("bad.json", '{"preset": "tiny", "train": {"steps": 3,}}'),
])
def test_invalid_file_names_the_file(tmp_path, name, text):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load(p)
    assert str(p) in str(e.value) and "not valid" in str(e.value)


def test_missing_file_and_unknown_suffix_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="nope.toml"):
        load(tmp_path / "nope.toml")
    p = tmp_path / "run.yaml"
    p.write_text("preset: tiny\n")
    with pytest.raises(ConfigError, match="run.yaml"):
        load(p)


def test_json_top_level_must_be_an_object(tmp_path):
    p = tmp_path / "run.json"
    p.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="top level"):
        load(p)
    with pytest.raises(ConfigError):
        from_data("tiny")


def test_non_utf8_file_gives_config_error_naming_the_file(tmp_path):
    p = tmp_path / "run.toml"
    p.write_bytes(b'preset = "tiny"\nname = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="run.toml"):
        load(p)
