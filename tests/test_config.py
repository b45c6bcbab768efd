"""backend/config.py: presets, shipped config files, loading and validation.

Every error must name the field by its dotted path, so each refusal test
checks the path in the message, not just the exception type."""

import json
import math
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
    ({"strings": "1", "arithmetic": 1, "logic": 1, "recall": 1, "noise": 1, "code": 1},
     ["mixture.initial.strings:", "expected a number, got '1'"]),
    ({"strings": math.nan, "arithmetic": 1, "logic": 1, "recall": 1, "noise": 1, "code": 1},
     ["mixture.initial.strings:", "expected a finite number, got nan"]),
    ([1, 2], ["mixture.initial:", "expected a string or a table/object, got [1, 2]"]),
    (7, ["mixture.initial:", "expected a string or a table/object, got 7"]),
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


# -- registries: a user's source or strategy is checked like a built-in one ---------------


def _unregister(registry, name: str) -> None:
    # a plain dict today, a backend.registry.Registry once strategies and sources move there
    (registry.remove if hasattr(registry, "remove") else registry.pop)(name)


def test_a_user_registered_source_is_accepted_and_classified_by_its_class():
    from backend.data.domains import SOURCES, TextDomain, register_source

    @register_source("test-lines")
    class Lines(TextDomain):
        def documents(self):
            return ["one line", "another line"]

    try:
        d = tiny()
        d["data"]["domains"].append({"name": "lines", "source": "test-lines"})
        d["mixture"]["initial"] = "natural"  # a text source measures its own size
        assert from_dict(d).data.domains[-1].source == "test-lines"
        d["data"]["domains"][-1]["skills"] = ["copy"]
        assert refused(d).startswith("data.domains[6].skills: only skill-streaming")
    finally:
        _unregister(SOURCES, "test-lines")
    assert refused(d).startswith("data.domains[6].source: unknown source 'test-lines'")


def test_a_path_on_a_source_that_reads_no_folder_is_refused():
    d = tiny()
    d["data"]["domains"][5]["path"] = "examples/prose"
    assert refused(d).startswith("data.domains[5].path: source 'stdlib' reads no files; only folder and saved sources take a path")


@pytest.fixture
def settings_strategy():
    """A strategy that owns a settings dataclass (what every built-in one will)."""
    from dataclasses import dataclass

    from backend.controllers import STRATEGIES, register_strategy

    @dataclass(kw_only=True)
    class Settings:
        step_size: float = 1.0
        """Step."""
        horizon: int = 2
        """Checkpoints ahead."""

        def validate(self, path, run_cfg=None):
            if run_cfg is not None and self.horizon * run_cfg.train.checkpoint_every > run_cfg.train.steps:
                raise ConfigError(f"{path}.horizon: {self.horizon} checkpoints reach past train.steps")

    @register_strategy("test-settings")
    class Strategy:
        def __init__(self, settings):
            self.settings = settings

    Strategy.settings_class = Settings  # what register_strategy(name, settings=Settings) sets
    yield Settings
    _unregister(STRATEGIES, "test-settings")


def test_options_are_validated_against_the_strategys_settings(settings_strategy):
    d = tiny()
    d["controller"] = {"strategy": "test-settings", "options": {"horizon": 3}}
    cfg = from_dict(d)
    assert cfg.controller.settings == settings_strategy(horizon=3)
    assert cfg.controller.horizon == 3 and cfg.controller.step_size == 1.0  # strategies read cfg.<setting>
    assert cfg.to_dict()["controller"]["options"] == {"step_size": 1.0, "horizon": 3}  # stored resolved
    assert from_dict(cfg.to_dict()) == cfg
    d["controller"]["options"] = {"horizon": "far"}
    assert refused(d).startswith("controller.options.horizon: expected an integer")
    d["controller"]["options"] = {"horizn": 3}
    assert refused(d).startswith("controller.options.horizn: unknown key (known: step_size, horizon)")
    d["controller"]["options"] = {"horizon": 4}  # 4 x 10 steps > 30: the settings' own cross-field check
    assert refused(d).startswith("controller.options.horizon: 4 checkpoints reach past train.steps")


def test_flat_strategy_keys_of_older_configs_move_into_options(settings_strategy):
    # every config and database written before options held the five flat keys
    old = tiny()
    old["controller"] = {"strategy": "deficit", "step_size": 3.0, "target": 1.0, "saturation": 0.9, "floor": 0.02,
                         "cap": 0.7, "max_change": 0.25, "smoothing": 0.1, "reference_step": None,
                         "reference_losses": None}
    cfg = from_dict(old)
    stored = cfg.to_dict()["controller"]
    assert "step_size" not in stored and stored["options"]["step_size"] == 3.0
    assert cfg.controller.saturation == 0.9
    # a strategy with its own settings keeps the flat keys it knows and drops the rest
    old["controller"]["strategy"] = "test-settings"
    assert from_dict(old).to_dict()["controller"]["options"] == {"step_size": 3.0, "horizon": 2}
    # so does a config stored while every strategy shared the five settings
    shared = cfg.to_dict()
    shared["controller"]["strategy"] = "test-settings"
    shared["controller"]["options"] = {k: v for k, v in shared["controller"]["options"].items()
                                       if k in config.ControllerConfig.LEGACY_KEYS}  # that era knew no other key
    assert from_dict(shared).controller.options == {"step_size": 3.0, "horizon": 2}
    # a bad flat value is named as written
    old["controller"]["step_size"] = "big"
    assert refused(old).startswith("controller.step_size: expected a number")


def test_a_file_giving_another_strategys_setting_in_options_is_refused():
    """[controller.options] reference_losses with the default strategy (a
    slip: strategy = "doremi" forgotten) names the key instead of running
    deficit without it; a stored config of the era when options held every
    strategy's five settings still loads (from_dict)."""
    text = 'preset = "tiny"\n[controller.options]\nreference_losses = {strings = 1.0}\n'
    with pytest.raises(ConfigError, match=r"^controller.options.reference_losses: not a setting of strategy "
                                          r"'deficit' \(its settings: step_size, target, saturation\)"):
        config.from_text(text, "toml")
    stored = preset("tiny").to_dict()
    stored["controller"]["options"]["reference_losses"] = None
    assert "reference_losses" not in from_dict(stored).controller.options


def test_changing_the_strategy_over_a_preset_drops_its_options(settings_strategy):
    cfg = from_data({"preset": "tiny", "controller": {"strategy": "test-settings"}})
    assert cfg.controller.options == {"step_size": 1.0, "horizon": 2}
    base = preset("tiny").to_dict()
    assert from_data({"preset": "tiny", "controller": {"options": {"saturation": 0.5}}}).controller.saturation == 0.5
    assert config.merge(base, {"controller": {"strategy": "test-settings"}})["controller"].get("options") is None


def test_shipped_presets_are_toml_files_that_load_like_a_users():
    for name, path in config.PRESETS.items():
        assert path.suffix == ".toml" and load(path) == preset(name)


@pytest.mark.parametrize("value, words", [(["tiny"], "got list"), ({"a": 1}, "got dict"), (3, "got int"),
                                          ("huge", "unknown preset 'huge'")])
def test_a_preset_that_is_not_a_known_name_is_refused(value, words):
    with pytest.raises(ConfigError, match="^preset:") as e:
        from_data({"preset": value})
    assert words in str(e.value)


# -- hostile input: refused naming the field, never a traceback --------------------------


@pytest.mark.parametrize("text, suffix, start", [
    ("[" * 100_000 + "]" * 100_000, "json", "config file"),
    ('{"a":' * 100_000 + "1" + "}" * 100_000, "json", "config file"),
    ("a = " + "[" * 100_000 + "]" * 100_000, "toml", "config file"),
    ("a = " + "{b=" * 100_000 + "1" + "}" * 100_000, "toml", "config file"),
    ("a" + ".a" * 100_000 + " = 1", "toml", "config file"),
    ('{"preset": "tiny", "seed": ' + "9" * 5000 + "}", "json", "seed: an integer of 5000 digits"),
    ('preset = "tiny"\nseed = ' + "9" * 5000 + "\n", "toml", "config file"),
    ('{"preset": "tiny", "train": {"lr": 1e400}}', "json", "train.lr: expected a finite number"),
    ('{"preset": "tiny", "name": "a\\ud800"}', "json", "name: text with a lone surrogate"),
    ('{"preset": "tiny", "na\\udfffme": 1}', "json", "top level: a key with a lone surrogate"),
    ('{"preset": ["tiny"]}', "json", "preset: expected a preset name"),
    ('{"preset": "tiny", "train": {"lr": 0.001, "lr": 1e9}}', "json", "train: key 'lr' is given twice"),
], ids=["json-lists", "json-objects", "toml-arrays", "toml-inline-tables", "toml-dotted-key", "json-5000-digits",
        "toml-5000-digits", "json-1e400", "json-surrogate", "json-surrogate-key", "json-preset-list",
        "json-duplicate-key"])
def test_hostile_files_are_refused_naming_the_field(tmp_path, text, suffix, start):
    p = tmp_path / f"run.{suffix}"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load(p)
    assert str(e.value).startswith(start), str(e.value)[:200]
    if start == "config file":
        assert "nested deeper than 32" in str(e.value) or "5000 digits" in str(e.value)


def test_a_file_over_the_size_limit_is_refused_before_reading(tmp_path, monkeypatch):
    p = tmp_path / "run.toml"
    p.write_text('preset = "tiny"\nname = "' + "x" * 5000 + '"\n')
    monkeypatch.setenv("CLOSED_LOOP_MAX_CONFIG_BYTES", "1000")
    with pytest.raises(ConfigError, match="above the limit of 1,000 bytes"):
        load(p)
    with pytest.raises(ConfigError, match="above the limit of 1,000 bytes"):
        config.from_text(p.read_text(), "toml")


def nested(depth: int) -> list:
    value: list = ["copy"]
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("mutate, start", [
    (lambda d: d.update(seed=2**70), "seed: an integer of 71 bits is outside 64-bit integers"),
    (lambda d: d.update(seed=2**32), "seed: must be within [0, 2**32)"),
    (lambda d: d.update(seed=10**5000), "seed: an integer of 16610 bits"),
    (lambda d: d["train"].update(steps=2**63), "train.steps: 9223372036854775808 is outside 64-bit"),
    (lambda d: d["train"].update(steps=2**60), "train.steps: 1152921504606846976 steps of 8 x 48 tokens exceed"),
    (lambda d: d["train"].update(lr=10**400), "train.lr: an integer of 1329 bits"),
    (lambda d: d["train"].update(threads=2**40), "train.threads: at most 4096"),
    (lambda d: d["evaluation"].update(skills=["copy", "add2", "copy"]), "evaluation.skills: duplicate skill 'copy'"),
    (lambda d: d["data"]["domains"][0].update(skills=["copy", "copy"]), "data.domains[0].skills: duplicate skill"),
    (lambda d: d["data"]["domains"].append({"name": "mine", "source": "folder", "path": "a\x00b"}),
     "data.domains[6].path: a path cannot hold a NUL"),
    (lambda d: d["model"].update(pretrained="/"), "model.pretrained: '/' is not a saved transformers model"),
    (lambda d: d["data"].update(tokenizer_path="/"), "data.tokenizer_path: '/' is not a saved tokenizer"),
    (lambda d: d.update(name="caf\udce9"), "name: text with a lone surrogate"),
    (lambda d: d["evaluation"].update(skills=["\ud800"]), "evaluation.skills[0]: text with a lone surrogate"),
    (lambda d: d["data"]["domains"][0].update(skills=nested(40)), "data.domains[0].skills"),
])
def test_hostile_values_are_refused_naming_the_field(mutate, start):
    d = tiny()
    mutate(d)
    msg = refused(d)
    assert msg.startswith(start), msg[:200]


def test_a_model_folder_needs_a_loadable_model(tmp_path):
    d = tiny()
    d["model"]["pretrained"] = str(tmp_path)
    assert "no config.json" in refused(d)
    (tmp_path / "config.json").write_text("{}")
    assert from_dict(d).model.pretrained == str(tmp_path)


def test_short_fuzz_finds_no_unexpected_exception():
    from bench.fuzz import fuzz_configs

    out = fuzz_configs(50, seed=1)
    assert out["unexpected_exceptions"] == [] and out["unexpected"] == 0
    assert out["refused_named"] > out["accepted"] > 0
    assert out["refused_named"] + out["accepted"] == out["cases"]


@pytest.mark.parametrize("text, fmt", [
    ('{"name": "' + '\\"' * 400_000, "json"),  # an unterminated string of escaped quotes
    ('name = "' + '\\"' * 400_000, "toml"),
    ("a" + ".b" * 400_000, "toml"),  # dots with no `=`
    ('""' * 400_000, "json"),
], ids=["json-escaped-quotes", "toml-escaped-quotes", "toml-dots", "json-empty-strings"])
def test_the_depth_scan_stays_linear_on_hostile_text(text, fmt):
    import time

    start = time.perf_counter()
    with pytest.raises(ConfigError, match="^config: "):
        config.from_text(text, fmt)
    assert time.perf_counter() - start < 5.0  # a quadratic scan of 800 KB takes minutes


# -- [objective] ---------------------------------------------------------------------


def test_an_objective_section_parses_from_toml():
    cfg = config.from_text(b"""
preset = "tiny"
[objective]
heldout_mean_nondecreasing = true
[objective.skills.copy]
priority = 3
target = 0.8
at_least = 0.6
by_tokens = 2_000_000
[objective.domains.code]
min = 0.1
""", "toml")
    obj = cfg.objective
    assert obj.heldout_mean_nondecreasing
    copy = obj.skills["copy"]
    assert (copy.priority, copy.target, copy.at_least, copy.by_tokens) == (3.0, 0.8, 0.6, 2_000_000)
    assert (obj.domains["code"].min, obj.domains["code"].max) == (0.1, 1.0)
    assert from_dict(cfg.to_dict()) == cfg  # stored resolved, rebuilt the same


def test_an_evaluation_tasks_skill_may_carry_an_objective():
    data = tiny() | {"evaluation": {**tiny()["evaluation"], "tasks": [
        {"skill": "arc", "task": "arc_easy", "domains": ["strings"]}]}}
    cfg = from_dict(data | {"objective": {"skills": {"arc": {"priority": 2.0}}}})
    assert cfg.objective.skills["arc"].priority == 2.0


@pytest.mark.parametrize("objective, field", [
    ({"skills": {"kopy": {}}}, "objective.skills.kopy: unknown skill 'kopy' (steer skills: copy, add2)"),
    ({"skills": {"copy_holdout": {}}}, "objective.skills.copy_holdout: unknown skill"),
    ({"skills": {"copy": {"priority": -0.5}}}, "objective.skills.copy.priority: must be within [0, 1000]"),
    ({"skills": {"copy": {"target": 1.5}}}, "objective.skills.copy.target: must be within [0, 1]"),
    ({"skills": {"copy": {"at_least": 0.6}}},
     "objective.skills.copy.by_tokens: a deadline needs both at_least and by_tokens; only at_least is set"),
    ({"skills": {"copy": {"by_tokens": 10}}}, "objective.skills.copy.at_least: a deadline needs both"),
    ({"skills": {"copy": {"at_least": 0.6, "by_tokens": 0}}}, "objective.skills.copy.by_tokens: must be > 0"),
    ({"skills": {"copy": {"weight": 2}}}, "objective.skills.copy.weight: unknown key"),
    ({"domains": {"web": {"min": 0.1}}}, "objective.domains.web: unknown domain 'web' (domains: strings,"),
    ({"domains": {"code": {"min": 0.5, "max": 0.4}}}, "objective.domains.code.min: 0.5 is above max 0.4"),
    ({"domains": {"code": {"min": 0.8}}}, "objective.domains.code.min: 0.8 is above controller.cap 0.7"),
    ({"domains": {"code": {"max": 0.01}}}, "objective.domains.code.max: 0.01 is below controller.floor 0.02"),
    ({"domains": {"code": {"min": 0.5}, "noise": {"min": 0.5}}},
     "objective.domains: the least shares (with controller.floor) add up to 1.080 > 1"),
    ({"domains": {d: {"max": 0.1} for d in ("strings", "arithmetic", "logic", "recall", "noise", "code")}},
     "objective.domains: the largest shares (with controller.cap) add up to 0.600 < 1"),
    ({"heldout_mean_nondecreasing": "yes"}, "objective.heldout_mean_nondecreasing: expected true or false"),
])
def test_a_bad_objective_names_the_field(objective, field):
    assert field in refused(tiny() | {"objective": objective})


def test_a_config_path_that_is_not_a_file_says_which_it_is(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load(tmp_path)
