"""Limits for untrusted input: how large, deep and long a config, schedule or
run may be, and which folders a config may read.

Every limit has a default sized for a small shared machine (2 CPU cores) and
is overridden by an environment variable named after it in capitals:
`max_params` by `CLOSED_LOOP_MAX_PARAMS`, and so on. The folders a config may
read are $CLOSED_LOOP_DATA_ROOTS (os.pathsep-separated), by default the
repository's examples/ and the runs folder.

`check_untrusted` applies them to a config from someone who should not be
able to read any file, run code or occupy the machine for a year (an upload
to the dashboard); `backend.config.loader` and `backend.schedule` apply the
input limits (size, depth) to every file they parse, and with
`untrusted=True` confine its paths (`confine_paths`) before the schema looks
whether the model and tokenizer folders exist, so that a refusal never tells
whether a path outside the roots exists.

Such a config runs no Python: the one way a config names code is an lm-eval
task YAML under `evaluation.tasks[].include_path` carrying a `!function` tag
(lm-eval imports the module it names when it loads the task), so a task
folder holding one, in any of its *.yaml / *.yml files or a file they
`include:`, is refused with the file named (its prompt templates render in
Jinja's sandbox: backend.evaluation.lmeval_tasks). The task data those
YAMLs name (`dataset_kwargs.data_files`, a local `dataset_path`) must lie
within the roots too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from backend.config.schema import ConfigError, RunConfig
from backend.vocab import checkpoint_steps, tokens_per_step

REPO = Path(__file__).resolve().parents[2]
ENV_PREFIX = "CLOSED_LOOP_"


@dataclass(kw_only=True)
class Limits:
    """Upper bounds on untrusted input; each overridable by CLOSED_LOOP_<NAME>."""

    # input files
    max_config_bytes: int = 1_000_000
    """Largest config file or upload, in bytes."""
    max_schedule_bytes: int = 5_000_000
    """Largest schedule file or upload, in bytes."""
    max_stored_schedule_bytes: int = 1_000_000
    """Largest replay schedule kept with a run (JSON bytes of its segments)."""
    max_depth: int = 32
    """Deepest nesting of objects and lists in a config or schedule (a real
    one nests about 6 deep)."""
    # model
    max_params: int = 150_000_000
    """Largest model, in parameters (embeddings included, tied)."""
    max_layers: int = 48
    """Most transformer blocks."""
    max_context: int = 4096
    """Longest training sequence, in tokens."""
    max_vocab: int = 262_144
    """Largest tokenizer vocabulary."""
    max_batch_tokens: int = 1_048_576
    """Most tokens in one optimizer step (train.batch_size x data.context_length)."""
    # run
    max_steps: int = 1_000_000
    """Most optimizer steps in one run."""
    max_checkpoints: int = 1_000
    """Most checkpoints in one run (steps / checkpoint_every + 1)."""
    max_domains: int = 64
    """Most domains in one mixture."""
    max_eval_items: int = 100_000
    """Most evaluation items generated per skill task
    (evaluation.items_per_skill x evaluation.item_rounds)."""

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Limits":
        """The defaults, overridden by CLOSED_LOOP_<NAME> variables (integers)."""
        env = os.environ if environ is None else environ
        values = {}
        for f in dataclasses.fields(cls):
            var = ENV_PREFIX + f.name.upper()
            if var not in env:
                continue
            try:
                values[f.name] = int(env[var])
            except ValueError:
                raise ConfigError(f"{var}: expected an integer, got {env[var][:40]!r}") from None
            if values[f.name] <= 0:
                raise ConfigError(f"{var}: must be > 0, got {values[f.name]}")
        return cls(**values)


def env_name(limit: str) -> str:
    """The environment variable that overrides a limit: max_params -> CLOSED_LOOP_MAX_PARAMS."""
    return ENV_PREFIX + limit.upper()


def runs_folder() -> Path:
    """Where run folders live: beside $CLOSED_LOOP_DB, else the repository's runs/."""
    db = os.environ.get("CLOSED_LOOP_DB")
    return Path(db).resolve().parent if db else REPO / "runs"


def data_roots() -> list[Path]:
    """The folders an untrusted config may read: $CLOSED_LOOP_DATA_ROOTS
    (os.pathsep-separated), else the repository's examples/ and the runs folder.
    Each is resolved (symlinks followed)."""
    raw = os.environ.get(ENV_PREFIX + "DATA_ROOTS")
    roots = [Path(p) for p in raw.split(os.pathsep) if p.strip()] if raw else [REPO / "examples", runs_folder()]
    return [Path(os.path.realpath(p)) for p in roots]


def estimate_params(cfg: RunConfig) -> int:
    """Parameters of the run's Llama (tied embeddings, as backend.model builds
    it); for a pretrained folder, read from its config.json."""
    m = cfg.model
    h, layers, inter, vocab = m.hidden_size, m.num_layers, m.intermediate_size, cfg.data.tokenizer_vocab
    if m.pretrained:
        saved = _read_model_config(Path(m.pretrained))
        h = saved.get("hidden_size", h)
        layers = saved.get("num_hidden_layers", layers)
        inter = saved.get("intermediate_size", inter)
        vocab = saved.get("vocab_size", vocab)
    # per block: q, k, v, o (h x h each), gate/up/down (h x inter each), two norms
    block = 4 * h * h + 3 * h * inter + 2 * h
    return vocab * h + layers * block + h


def _read_model_config(folder: Path) -> dict[str, int]:
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8")[:1_000_000])
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**40}


def check_untrusted(cfg: RunConfig, limits: Limits | None = None, roots: list | None = None) -> None:
    """Refuse (ConfigError naming the field) a config that reads outside the
    data roots, would run Python (a `!function` tag in a task YAML), or
    exceeds the limits. Paths are resolved with realpath, so a symlink or `..`
    cannot leave a root."""
    limits = limits or Limits.from_env()
    roots = _real(roots)
    confine_paths(cfg.to_dict(), roots)
    for i, spec in enumerate(cfg.evaluation.tasks):
        if spec.include_path:
            _no_task_code(spec.include_path, f"evaluation.tasks[{i}].include_path", roots)
    m, t = cfg.model, cfg.train
    _at_most("model.num_layers", m.num_layers, limits, "max_layers")
    _at_most("data.context_length", cfg.data.context_length, limits, "max_context")
    _at_most("data.tokenizer_vocab", cfg.data.tokenizer_vocab, limits, "max_vocab")
    _at_most("data.domains", len(cfg.data.domains), limits, "max_domains")
    _at_most("train.batch_size", tokens_per_step(cfg.train.batch_size, cfg.data.context_length), limits,
             "max_batch_tokens",
             what="tokens per step (train.batch_size x data.context_length)")
    _at_most("model", estimate_params(cfg), limits, "max_params", what="estimated parameters")
    ev = cfg.evaluation
    _at_most("evaluation.item_rounds", ev.items_per_skill * ev.item_rounds, limits, "max_eval_items",
             what="items per task (items_per_skill x item_rounds)")
    _at_most("train.steps", t.steps, limits, "max_steps")
    _at_most("train.checkpoint_every", len(checkpoint_steps(t.checkpoint_every, t.steps)), limits, "max_checkpoints",
             what="checkpoints (train.steps / train.checkpoint_every + 1)")


def config_paths(data) -> list[tuple[str, str]]:
    """(field, path) for every file or folder a config's plain data names:
    each folder domain's path, the model and tokenizer folders, the token
    cache folder (written to) and each lm-eval task's include_path. Read
    from plain data (RunConfig.to_dict(), or an upload not built yet): a
    value that is no string is left to the schema, which refuses it."""

    def table(obj, key) -> dict:
        value = obj.get(key) if isinstance(obj, dict) else None
        return value if isinstance(value, dict) else {}

    def rows(obj, key) -> list[dict]:
        value = obj.get(key) if isinstance(obj, dict) else None
        return [row for row in value if isinstance(row, dict)] if isinstance(value, list) else []

    model, data_, evaluation = table(data, "model"), table(data, "data"), table(data, "evaluation")
    named = [(f"data.domains[{i}].path", d.get("path")) for i, d in enumerate(rows(data_, "domains"))]
    named += [("model.pretrained", model.get("pretrained")), ("data.tokenizer_path", data_.get("tokenizer_path")),
              ("data.cache_dir", data_.get("cache_dir"))]
    named += [(f"evaluation.tasks[{i}].include_path", t.get("include_path"))
              for i, t in enumerate(rows(evaluation, "tasks"))]
    return [(field, path) for field, path in named if isinstance(path, str)]


def confine_paths(data, roots: list | None = None) -> None:
    """Refuse (ConfigError naming the field) a path in a config's plain data
    (config_paths) that lies outside the data roots. Run on an untrusted
    config before it is built (backend.config.loader, untrusted=True): the
    schema looks whether model.pretrained and data.tokenizer_path exist, so
    building first would tell an upload whether any folder on the machine
    exists. A path outside the roots gets the same refusal whether it exists
    or not; only one inside is looked for."""
    roots = _real(roots)
    for field, path in config_paths(data):
        _confined(path, field, roots)


def _real(roots: list | None) -> list[Path]:
    """The roots (default: data_roots()) resolved with realpath."""
    return [Path(os.path.realpath(r)) for r in (data_roots() if roots is None else roots)]


def _confined(path: str, field: str, roots: list[Path]) -> None:
    if "\0" in path:  # realpath cannot take one
        raise ConfigError(f"{field}: a path cannot hold a NUL character")
    real = Path(os.path.realpath(path))
    if not any(real == r or r in real.parents for r in roots):
        raise ConfigError(
            f"{field}: {path!r} is outside the data roots ({', '.join(str(r) for r in roots) or 'none'}); "
            f"set {ENV_PREFIX}DATA_ROOTS to allow it"
        )


def _no_task_code(include_path: str, field: str, roots: list[Path]) -> None:
    """Refuse a task folder (or file) whose YAML would make lm-eval import
    Python: a `!function` tag in any *.yaml / *.yml under it (the files
    backend.evaluation.lmeval_tasks checks) or in a file one of them
    `include:`s, which must lie within the roots too."""
    root = Path(include_path)
    files = [root] if root.is_file() else sorted(root.rglob("*.yaml")) + sorted(root.rglob("*.yml"))
    seen: set[Path] = set()
    for f in files:
        _check_task_yaml(f, field, roots, seen)


def _check_task_yaml(path: Path, field: str, roots: list[Path], seen: set[Path]) -> None:
    """One task YAML and what it includes, read as lm-eval's load_yaml reads
    them (safe YAML plus the `!function` tag, includes relative to the
    file's resolved folder), without importing anything."""
    import yaml

    real = Path(os.path.realpath(path))
    if real in seen:  # shared by several files, or an include cycle (lm-eval refuses those itself)
        return
    seen.add(real)
    _confined(str(path), field, roots)
    tags: list[str] = []

    class Loader(yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader):
        """Safe YAML that records each `!function` tag instead of importing it."""

    def record(loader, node):
        tags.append(node.value if isinstance(node, yaml.ScalarNode) else "?")

    Loader.add_constructor("!function", record)
    try:
        with open(real, "rb") as fh:
            data = yaml.load(fh, Loader=Loader)  # noqa: S506 - a safe loader plus one recording constructor
    except Exception as e:  # noqa: BLE001 - unreadable or malformed alike: refused, naming the file
        raise ConfigError(f"{field}: {str(path)!r} cannot be read as a task YAML: {type(e).__name__}: "
                          f"{str(e)[:200]}") from None
    if tags:
        module, _, _ = tags[0].rpartition(".")
        local = real.parent / f"{module.replace('.', '/')}.py"
        code = str(local) if module and local.exists() else f"module {module or tags[0]!r}"
        raise ConfigError(f"{field}: {str(path)!r} has a `!function {tags[0]}` tag, which would import and run "
                          f"Python ({code}); a config from the dashboard may not run code, so its tasks may "
                          f"not use !function (run it from the command line)")
    _data_confined(data, path, real.parent, field, roots)
    includes = data.get("include") if isinstance(data, dict) else None
    for inc in includes if isinstance(includes, list) else [] if includes is None else [includes]:
        if not isinstance(inc, str) or "\0" in inc:
            raise ConfigError(f"{field}: {str(path)!r}: include must name YAML files, got {inc!r}"[:300])
        _check_task_yaml(Path(inc) if Path(inc).is_absolute() else real.parent / inc, field, roots, seen)


def _data_confined(data, path: Path, base: Path, field: str, roots: list[Path]) -> None:
    """A task YAML's local data (its `dataset_kwargs.data_files`, resolved
    as backend.evaluation.lmeval_tasks resolves them, a `dataset_path` that
    names a local file or folder, and `dataset_kwargs.data_dir` /
    `cache_dir`, which `datasets` reads from and writes to) must lie within
    the roots."""
    from backend.evaluation.lmeval_tasks import resolve_data_files

    if not isinstance(data, dict):
        return
    kwargs = data.get("dataset_kwargs")
    if isinstance(kwargs, dict) and kwargs.get("data_files") is not None:
        files = resolve_data_files({"dataset_kwargs": {"data_files": kwargs["data_files"]}}, base)
        files = files["dataset_kwargs"]["data_files"]
        flat = [x for v in (files.values() if isinstance(files, dict) else [files])
                for x in (v if isinstance(v, list) else [v])]
        for f in flat:
            if not isinstance(f, str) or "\0" in f:
                raise ConfigError(f"{field}: {str(path)!r}: data_files must name files, got {f!r}"[:300])
            _confined(f, f"{field}: {str(path)!r} data_files", roots)
    local = data.get("dataset_path")
    if isinstance(local, str) and "\0" not in local and (Path(local).exists() or (base / local).exists()):
        _confined(local if Path(local).exists() else str(base / local), f"{field}: {str(path)!r} dataset_path",
                  roots)
    for key in ("data_dir", "cache_dir"):  # datasets reads every file under data_dir, writes under cache_dir
        where = kwargs.get(key) if isinstance(kwargs, dict) else None
        if where is None:
            continue
        if not isinstance(where, str) or "\0" in where:
            raise ConfigError(f"{field}: {str(path)!r}: dataset_kwargs.{key} must name a folder, got {where!r}"[:300])
        near = base / where
        _confined(str(near) if not Path(where).is_absolute() and near.exists() else where,
                  f"{field}: {str(path)!r} dataset_kwargs.{key}", roots)


def _at_most(field: str, value: int, limits: Limits, limit: str, what: str = "") -> None:
    cap = getattr(limits, limit)
    if value > cap:
        raise ConfigError(f"{field}: {value:,}{' ' + what if what else ''} exceeds the limit {cap:,} "
                          f"(set {env_name(limit)} to change it)")
