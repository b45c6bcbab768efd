"""Run configuration: keyword-only dataclasses, presets, validation.

Every field has a docstring-style comment; every error names the field by its
dotted path (``train.lr``), so a typo in a config file is caught before any
work starts. A run stores its fully resolved config in the store.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field."""


SYNTHETIC_SOURCES = ("synthetic", "random")
TEXT_SOURCES = ("stdlib", "folder", "shakespeare")
DOMAIN_SOURCES = SYNTHETIC_SOURCES + TEXT_SOURCES
POLICIES = ("auto", "human")


@dataclass(kw_only=True)
class ModelConfig:
    """The causal LM (a transformers Llama; built from these sizes or loaded)."""

    hidden_size: int = 128
    """Width of the residual stream."""
    num_layers: int = 4
    """Number of transformer blocks."""
    num_heads: int = 4
    """Attention heads (hidden_size must divide by it)."""
    intermediate_size: int = 384
    """Width of the MLP."""
    pretrained: str | None = None
    """Local folder of a saved transformers model to start from (no hub)."""

    def validate(self, path: str) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            _positive(self, name, path)
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"{path}.num_heads: hidden_size {self.hidden_size} is not divisible "
                f"by num_heads {self.num_heads}"
            )
        if self.pretrained is not None and not Path(self.pretrained).is_dir():
            raise ConfigError(f"{path}.pretrained: no such folder {self.pretrained!r}")


@dataclass(kw_only=True)
class DomainConfig:
    """One named stream of training text."""

    name: str
    """Domain name, unique within the run (used as the mixture key)."""
    source: str
    """synthetic (skill examples), random (strings that teach no skill),
    stdlib (Python standard library source), shakespeare (Gutenberg plays from
    the `shakespeare` package) or folder (.txt / .jsonl / .parquet files)."""
    skills: list[str] = field(default_factory=list)
    """For source=synthetic: the skills whose training examples this domain
    streams (names from backend.data.skills)."""
    path: str | None = None
    """For source=folder: the folder of .txt / .jsonl (field `text`) /
    .parquet (column `text`) files."""
    size_tokens: int | None = None
    """Nominal corpus size in tokens, used by the `natural` mixture. Text
    domains measure their own size when this is unset."""
    contamination: float = 0.0
    """For source=synthetic: share of examples that are the steer evaluation
    items themselves (a planted leak: teaching to the test, which the
    Goodhart guard must catch). 0 for an honest domain."""

    def validate(self, path: str) -> None:
        if not 0.0 <= self.contamination <= 1.0:
            raise ConfigError(f"{path}.contamination: must be within [0, 1], got {self.contamination}")
        if self.contamination and self.source != "synthetic":
            raise ConfigError(f"{path}.contamination: only synthetic domains can leak evaluation items")
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{path}.name: must be a non-empty identifier, got {self.name!r}")
        if self.source not in DOMAIN_SOURCES:
            raise ConfigError(
                f"{path}.source: unknown source {self.source!r} (known: {', '.join(DOMAIN_SOURCES)})"
            )
        if self.source == "synthetic":
            from backend.data.skills import SKILLS

            if not self.skills:
                raise ConfigError(f"{path}.skills: a synthetic domain needs at least one skill")
            for s in self.skills:
                if s not in SKILLS:
                    raise ConfigError(
                        f"{path}.skills: unknown skill {s!r} (known: {', '.join(SKILLS)})"
                    )
        elif self.skills:
            raise ConfigError(f"{path}.skills: only synthetic domains stream skills")
        if self.source == "folder" and not self.path:
            raise ConfigError(f"{path}.path: a folder domain needs a path")
        if self.size_tokens is not None and self.size_tokens <= 0:
            raise ConfigError(f"{path}.size_tokens: must be > 0, got {self.size_tokens}")


@dataclass(kw_only=True)
class DataConfig:
    """Domains, tokenizer and packing."""

    context_length: int = 64
    """Tokens per training sequence (sequences are packed to this length)."""
    tokenizer_vocab: int = 512
    """Vocabulary size of the BPE tokenizer trained locally for the run."""
    tokenizer_path: str | None = None
    """Local folder holding a tokenizer to load instead of training one."""
    domains: list[DomainConfig] = field(default_factory=list)
    """The domains of the mixture."""

    def validate(self, path: str) -> None:
        _positive(self, "context_length", path)
        if self.tokenizer_vocab < 300:
            raise ConfigError(f"{path}.tokenizer_vocab: must be >= 300 (bytes + specials), got {self.tokenizer_vocab}")
        if self.tokenizer_path is not None and not Path(self.tokenizer_path).is_dir():
            raise ConfigError(f"{path}.tokenizer_path: no such folder {self.tokenizer_path!r}")
        if len(self.domains) < 2:
            raise ConfigError(f"{path}.domains: a mixture needs at least 2 domains, got {len(self.domains)}")
        seen = set()
        for i, d in enumerate(self.domains):
            d.validate(f"{path}.domains[{i}]")
            if d.name in seen:
                raise ConfigError(f"{path}.domains[{i}].name: duplicate domain {d.name!r}")
            seen.add(d.name)


@dataclass(kw_only=True)
class MixtureConfig:
    """The starting mixture."""

    initial: str | dict[str, float] = "uniform"
    """uniform, natural (proportional to domain size) or explicit weights per
    domain (renormalised to sum to 1)."""


@dataclass(kw_only=True)
class EvalConfig:
    """What is measured at every checkpoint."""

    skills: list[str] = field(default_factory=list)
    """Skills to evaluate; empty means every skill some domain streams."""
    holdout: bool = True
    """Also evaluate each skill's held-out variant (other template and value
    range; watched, never steered)."""
    items_per_skill: int = 50
    """Evaluation items per skill task and checkpoint (seeded)."""
    item_rounds: int = 20
    """Each task holds item_rounds x items_per_skill items and every
    checkpoint evaluates the next items_per_skill: fresh items make each
    checkpoint's sampling error independent, so the latent estimate can
    average it away. 1 evaluates the same items every time (a fixed
    benchmark)."""
    batch_size: int = 64
    """lm-eval batch size."""
    max_gen_toks: int = 16
    """Longest generated answer, in tokens."""
    loglikelihood: bool = True
    """Also score each skill by the loglikelihood of its answer (accuracy of
    the greedy continuation, and the per-token loss of the answer)."""
    heldout_loss_sequences: int = 16
    """Held-out sequences per domain for the per-domain loss."""

    def validate(self, path: str) -> None:
        for name in ("items_per_skill", "item_rounds", "batch_size", "max_gen_toks", "heldout_loss_sequences"):
            _positive(self, name, path)
        from backend.data.skills import SKILLS

        for s in self.skills:
            if s not in SKILLS:
                raise ConfigError(f"{path}.skills: unknown skill {s!r} (known: {', '.join(SKILLS)})")


@dataclass(kw_only=True)
class ControllerConfig:
    """The strategy that proposes mixtures, and the constraints every
    strategy's proposal passes through."""

    strategy: str = "deficit"
    """Registered strategy name (see backend.controllers.STRATEGIES)."""
    step_size: float = 2.0
    """Exponentiated-gradient step size (eta)."""
    target: float = 1.0
    """Score a steer skill should reach; deficit = target - score."""
    saturation: float = 0.95
    """A skill at or above this score counts as saturated."""
    floor: float = 0.02
    """Minimum weight of any domain."""
    cap: float = 0.7
    """Maximum weight of any domain."""
    max_change: float = 0.25
    """Largest change of one domain's weight in one proposal."""
    smoothing: float = 0.1
    """Share of the uniform mixture blended into every proposal."""
    reference_step: int | None = None
    """doremi: the checkpoint step whose held-out domain losses are the
    reference (a frozen earlier checkpoint of this run); None: the first
    checkpoint after step 0."""
    reference_losses: dict[str, float] | None = None
    """doremi: held-out loss per domain of a separately trained reference
    model (DoReMi's reference: a run of the same model on the baseline
    mixture, e.g. its last checkpoint's `domain_loss` rows). Set, it replaces
    reference_step."""

    def validate(self, path: str) -> None:
        from backend.controllers import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"{path}.strategy: unknown strategy {self.strategy!r} (known: {', '.join(STRATEGIES)})"
            )
        _positive(self, "step_size", path)
        for name in ("target", "saturation", "floor", "cap", "max_change", "smoothing"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"{path}.{name}: must be within [0, 1], got {v}")
        if self.floor > self.cap:
            raise ConfigError(f"{path}.floor: {self.floor} is above cap {self.cap}")
        if self.reference_step is not None and self.reference_step < 0:
            raise ConfigError(f"{path}.reference_step: must be >= 0 (a checkpoint step), got {self.reference_step}")
        for d, v in (self.reference_losses or {}).items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(f"{path}.reference_losses.{d}: must be a finite loss > 0, got {v!r}")


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation and cadence."""

    steps: int = 800
    """Optimizer steps in the run."""
    checkpoint_every: int = 100
    """Steps between checkpoints (each is evaluated and may change the mixture)."""
    batch_size: int = 16
    """Sequences per optimizer step."""
    lr: float = 2e-3
    """Peak learning rate (AdamW)."""
    min_lr_ratio: float = 0.1
    """Cosine decays the learning rate to lr * min_lr_ratio."""
    warmup_steps: int = 50
    """Linear warmup steps."""
    weight_decay: float = 0.1
    """AdamW weight decay (on matrices only)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""
    device: str = "auto"
    """auto (cuda if available, else cpu), cpu or cuda."""
    threads: int = 0
    """torch CPU threads (0: leave torch's default)."""

    def validate(self, path: str) -> None:
        for name in ("steps", "checkpoint_every", "batch_size", "lr"):
            _positive(self, name, path)
        if self.checkpoint_every > self.steps:
            raise ConfigError(
                f"{path}.checkpoint_every: {self.checkpoint_every} exceeds steps {self.steps}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"{path}.min_lr_ratio: must be within [0, 1], got {self.min_lr_ratio}")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name}: must be >= 0, got {getattr(self, name)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"{path}.device: must be auto, cpu or cuda, got {self.device!r}")


@dataclass(kw_only=True)
class RunConfig:
    """Everything a run needs; stored resolved with the run."""

    name: str = "run"
    """Human-readable run name."""
    seed: int = 0
    """Seeds model init, data streams, evaluation sets and the controller."""
    policy: str = "auto"
    """auto: proposals are approved at once; human: they wait for a person."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.policy not in POLICIES:
            raise ConfigError(f"policy: must be auto or human, got {self.policy!r}")
        if self.seed < 0:
            raise ConfigError(f"seed: must be >= 0, got {self.seed}")
        self.model.validate("model")
        self.data.validate("data")
        self.evaluation.validate("evaluation")
        self.controller.validate("controller")
        self.train.validate("train")
        names = [d.name for d in self.data.domains]
        init = self.mixture.initial
        if isinstance(init, str):
            if init not in ("uniform", "natural"):
                raise ConfigError(
                    f"mixture.initial: must be uniform, natural or weights per domain, got {init!r}"
                )
            if init == "natural":
                for i, d in enumerate(self.data.domains):
                    if d.source not in TEXT_SOURCES and d.size_tokens is None:
                        raise ConfigError(
                            f"data.domains[{i}].size_tokens: the natural mixture needs a size for "
                            f"{d.source} domain {d.name!r}"
                        )
        else:
            from backend.mixture import WeightsError, validate_weights

            try:
                validate_weights(init, names)
            except WeightsError as e:
                raise ConfigError(f"mixture.initial: {e}") from None
        ref = self.controller.reference_step
        if ref is not None and (ref % self.train.checkpoint_every or ref >= self.train.steps):
            raise ConfigError(
                f"controller.reference_step: {ref} is not a checkpoint the run can still steer from "
                f"(a multiple of train.checkpoint_every {self.train.checkpoint_every} below train.steps "
                f"{self.train.steps})"
            )
        if self.controller.reference_losses is not None and set(self.controller.reference_losses) != set(names):
            missing = sorted(set(names) - set(self.controller.reference_losses))
            extra = sorted(set(self.controller.reference_losses) - set(names))
            raise ConfigError(f"controller.reference_losses: needs exactly the domains {names} "
                              f"(missing {missing}, unknown {extra})")
        streamed = {s for d in self.data.domains for s in d.skills}
        for s in self.evaluation.skills:
            if s not in streamed:
                raise ConfigError(f"evaluation.skills: skill {s!r} is streamed by no domain")

    # -- derived --------------------------------------------------------
    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.data.domains]

    @property
    def steer_skills(self) -> list[str]:
        if self.evaluation.skills:
            return list(self.evaluation.skills)
        seen: list[str] = []
        for d in self.data.domains:
            seen += [s for s in d.skills if s not in seen]
        return seen

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "RunConfig":
        """A copy with top-level fields changed (validated again)."""
        return from_dict({**self.to_dict(), **changes})


# -- loading --------------------------------------------------------------


def from_dict(data: dict, cls: type = RunConfig, path: str = "") -> typing.Any:
    """Build a config dataclass from plain data, refusing unknown keys and
    values of the wrong type with a message that names the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'}: expected a table/object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{where}: unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(value, hints[name], f"{path}.{name}" if path else name)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = f"{path}.{missing[0]}" if path else missing[0]
        raise ConfigError(f"{where}: required")
    return cls(**kwargs)


def _coerce(value, hint, path: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[-1] if len(errors) == 1 else f"{path}: unexpected value {value!r}")
    if dataclasses.is_dataclass(hint):
        return from_dict(value, hint, path)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__}")
        return [_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a table/object, got {type(value).__name__}")
        return {str(k): _coerce(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {hint}")


def load(path: str | Path) -> RunConfig:
    """Load a run config from a .json or .toml file; it may name a preset
    under key `preset` and override any of its fields."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".toml":
            data = tomllib.loads(text)
        elif p.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {str(p)!r}: expected .json or .toml")
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(p)!r} is not UTF-8 text") from None
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"config file {str(p)!r} is not valid {p.suffix[1:].upper()}: {e}") from None
    return from_data(data)


def from_data(data: dict) -> RunConfig:
    """A config from plain data, starting from `preset` when it names one."""
    if not isinstance(data, dict):
        raise ConfigError("config: expected a table/object at the top level")
    data = dict(data)
    preset_name = data.pop("preset", None)
    if preset_name is not None:
        base = preset(preset_name).to_dict()
        data = _deep_merge(base, data)
    return from_dict(data)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "initial":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _positive(obj, name: str, path: str) -> None:
    v = getattr(obj, name)
    if not v > 0:
        raise ConfigError(f"{path}.{name}: must be > 0, got {v}")


# -- presets ----------------------------------------------------------------


def _suite_domains() -> list[dict]:
    """The built-in synthetic suite: skill groups of graded difficulty, a
    domain that teaches nothing measured (random strings), and real code."""
    return [
        {"name": "strings", "source": "synthetic", "skills": ["copy", "reverse", "sort"], "size_tokens": 4_000_000},
        {"name": "arithmetic", "source": "synthetic", "skills": ["add2", "add3", "mul1"], "size_tokens": 3_000_000},
        {"name": "logic", "source": "synthetic", "skills": ["parity", "brackets"], "size_tokens": 2_000_000},
        {"name": "recall", "source": "synthetic", "skills": ["kv_recall"], "size_tokens": 1_000_000},
        {"name": "noise", "source": "random", "size_tokens": 6_000_000},
        {"name": "code", "source": "stdlib"},
    ]


def _demo() -> dict:
    return {
        "name": "demo",
        "seed": 0,
        "policy": "auto",
        "model": {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "intermediate_size": 384},
        "data": {"context_length": 64, "tokenizer_vocab": 512, "domains": _suite_domains()},
        "mixture": {"initial": "uniform"},
        "evaluation": {"items_per_skill": 50, "batch_size": 100, "max_gen_toks": 12, "heldout_loss_sequences": 16},
        "train": {"steps": 900, "checkpoint_every": 100, "batch_size": 16, "lr": 2e-3, "warmup_steps": 50},
    }


def _gpu_small() -> dict:
    # A ~125M-parameter Llama (12 x 768, like GPT-2 small) for one GPU.
    d = _demo()
    d.update(
        name="gpu-small",
        model={"hidden_size": 768, "num_layers": 12, "num_heads": 12, "intermediate_size": 2048},
        data={"context_length": 512, "tokenizer_vocab": 8192, "domains": _suite_domains() + [
            {"name": "prose", "source": "shakespeare"}]},
        evaluation={"items_per_skill": 200, "batch_size": 128, "max_gen_toks": 16, "heldout_loss_sequences": 64},
        train={"steps": 5000, "checkpoint_every": 250, "batch_size": 32, "lr": 6e-4,
               "warmup_steps": 200, "device": "cuda"},
    )
    return d


def _tiny() -> dict:
    """For tests: seconds, not minutes."""
    d = _demo()
    d.update(
        name="tiny",
        model={"hidden_size": 64, "num_layers": 2, "num_heads": 4, "intermediate_size": 128},
        data={"context_length": 48, "tokenizer_vocab": 400, "domains": _suite_domains()},
        evaluation={"skills": ["copy", "add2"], "items_per_skill": 12, "batch_size": 32,
                    "max_gen_toks": 8, "heldout_loss_sequences": 4},
        train={"steps": 30, "checkpoint_every": 10, "batch_size": 8, "lr": 2e-3, "warmup_steps": 5},
    )
    return d


PRESETS: dict[str, typing.Callable[[], dict]] = {"demo": _demo, "gpu-small": _gpu_small, "tiny": _tiny}


def preset(name: str) -> RunConfig:
    """A preset by name; the error lists the presets that exist."""
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return from_dict(PRESETS[name]())
