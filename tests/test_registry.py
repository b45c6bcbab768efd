"""backend/registry.py, and the three registries built on it (strategies,
skills, domain sources): a user's entry works exactly as a built-in one."""

import random
from dataclasses import dataclass

import pytest

from backend.config import ConfigError, ControllerConfig, DomainConfig, preset
from backend.controllers import STRATEGIES, Proposal, make_strategy, register_strategy
from backend.data.domains import SOURCES, Domain, build_domain, register_source
from backend.data.skills import SKILLS, register_skill
from backend.registry import DuplicateName, Registry, RegistryError, UnknownName


def test_a_duplicate_is_refused_and_the_first_entry_kept():
    reg = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(DuplicateName, match="widget 'a' is already registered"):
        reg.add("a", 2)
    assert reg.get("a") == 1 and len(reg) == 1


def test_an_unknown_name_lists_the_known_ones():
    reg = Registry("widget")
    reg.register("first")(1)
    reg.register("second")(2)
    with pytest.raises(UnknownName) as e:
        reg.get("third")
    assert str(e.value) == "unknown widget 'third' (known: first, second)"
    # a KeyError and a ValueError both, so either kind of handler catches it
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    with pytest.raises(UnknownName, match=r"\(known: none\)"):
        Registry("gadget").get("x")


def test_names_must_be_non_empty_strings_and_removal_needs_a_known_name():
    reg = Registry("widget")
    for bad in ("", None, 3):
        with pytest.raises(RegistryError, match="non-empty string"):
            reg.add(bad, 1)
    reg.add("a", 1)
    reg.remove("a")
    assert "a" not in reg and reg.names() == []
    with pytest.raises(UnknownName):
        reg.remove("a")


@pytest.mark.parametrize("registry, kind", [(STRATEGIES, "strategy"), (SKILLS, "skill"),
                                            (SOURCES, "domain source")])
def test_the_three_registries_name_their_kind(registry, kind):
    with pytest.raises(UnknownName, match=f"unknown {kind} 'nope'"):
        registry.get("nope")


def test_sources_declare_what_the_config_may_ask_of_them():
    assert {n for n in SOURCES if SOURCES.get(n).sized} == {"stdlib", "shakespeare", "folder", "saved"}
    assert {n for n in SOURCES if SOURCES.get(n).streams_skills} == {"synthetic"}


# -- a user's entries ----------------------------------------------------------------


@dataclass(kw_only=True)
class HalfSettings:
    """Settings of the test strategy."""

    share: float = 0.5
    """Weight put on the first domain."""

    def validate(self, path, run_cfg=None):
        if not 0 < self.share < 1:
            raise ConfigError(f"{path}.share: must be within (0, 1), got {self.share}")


@pytest.fixture
def user_strategy():
    @register_strategy("test-half", settings=HalfSettings)
    class Half:
        def __init__(self, settings):
            self.settings = settings

        def propose(self, history, current):
            first = history.domains[0]
            raw = {d: self.settings.share if d == first else 1 - self.settings.share for d in current}
            return Proposal(weights=raw, rationale={d: "half" for d in current})

        def forecast(self, history, current, weights):
            return {}

    yield Half
    STRATEGIES.remove("test-half")


def test_a_users_strategy_validates_builds_and_proposes_like_a_built_in(user_strategy):
    d = preset("tiny").to_dict()
    d["controller"]["strategy"] = "test-half"
    cfg = preset("tiny").replace(controller=d["controller"])  # config validation knows it
    strat = make_strategy(cfg.controller)
    assert isinstance(strat, user_strategy) and strat.settings == HalfSettings()
    with pytest.raises(UnknownName, match="test-half"):
        make_strategy(ControllerConfig(strategy="test-halves"))


def test_a_users_skill_is_known_to_config_validation():
    @register_skill("test-echo", 1, "echo a letter", ("e {x} =", "h {x} =", "f {x} =", "g {x} ="))
    def _echo(rng, split):
        v = rng.choice("ab")
        return {"x": v}, v

    try:
        d = preset("tiny").to_dict()
        d["data"]["domains"][0]["skills"].append("test-echo")
        d["evaluation"]["skills"] = ["copy", "test-echo"]
        cfg = preset("tiny").replace(data=d["data"], evaluation=d["evaluation"])
        assert "test-echo" in cfg.steer_skills
        assert "test-echo" in build_domain(cfg.data.domains[0]).skills
    finally:
        SKILLS.remove("test-echo")


@pytest.fixture
def user_source():
    @register_source("test-constant")
    class Constant(Domain):
        def document(self, rng, split="train", max_chars=None):
            return "constant text"

    yield Constant
    SOURCES.remove("test-constant")


def test_a_users_source_builds_like_a_built_in(user_source):
    dom = build_domain(DomainConfig(name="mine", source="test-constant"))
    assert isinstance(dom, user_source) and dom.document(random.Random(0)) == "constant text"
    with pytest.raises(DuplicateName):
        register_source("test-constant")(user_source)


def test_a_users_source_passes_config_validation(user_source):
    d = preset("tiny").to_dict()
    d["data"]["domains"].append({"name": "mine", "source": "test-constant", "size_tokens": 1000})
    cfg = preset("tiny").replace(data=d["data"])
    assert cfg.domain_names[-1] == "mine"
