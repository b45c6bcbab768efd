"""Render a run's mixture schedule for the trainers people already use.

`export(schedule, fmt)` takes the native schedule dict (what
`backend.schedule.export_schedule` returns: segments of TOKEN shares per
domain over step ranges) and writes text a person pastes into another
trainer's launch: Megatron-LM, NeMo, OLMo-core, MosaicML Streaming, Hugging
Face `datasets`, Data-Juicer. `parse(text, fmt)` reads that text back into
per-segment token shares, so every format is tested by a round trip.

Units. The schedule's weights are shares of tokens. Megatron-LM, NeMo and
OLMo-core sample fixed-length sequences of packed tokens, so their weights
are token shares as they are. Streaming, `datasets` and Data-Juicer sample
DOCUMENTS, so they get document probabilities converted with each domain's
measured mean tokens per document: p(d) = (w(d)/tpd(d)) / sum_e w(e)/tpd(e).
Every output says which unit its numbers are in and carries what it needs
to be read back (domains, prefixes, tokens per document).

A domain whose weight is 0 in a segment is left out of that segment's
mixture (Megatron builds no dataset of 0 samples, OLMo-core and Streaming
would still open its files); each output lists all domains, so parsing
gives it back as 0.

Formats come from a registry whose errors list what exists; a new one
registers as the built-in ones do: `FORMATS.add(name, Format(unit, render,
parse))`, `render` taking an `ExportJob`.
"""

from __future__ import annotations

import ast
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from backend.mixture import WeightsError, validate_weights
from backend.registry import Registry, UnknownName

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "schedule.schema.json"


class ExportError(ValueError):
    """A schedule that cannot be exported or text that cannot be parsed
    back; the message names the format and the field."""


@dataclass(frozen=True)
class Format:
    """How one trainer's mixture is written and read back."""

    unit: str
    """`tokens` (weights are token shares as trained) or `documents`
    (probabilities per document, converted with tokens per document)."""
    render: Callable[["ExportJob"], str]
    """The text for a checked schedule."""
    parse: Callable[[str], tuple[list[dict[str, float]], dict[str, float] | None]]
    """Text -> (per-segment numbers as written over all domains, the
    tokens per document the text was converted with, or None)."""


FORMATS: Registry[Format] = Registry("export format")


@dataclass(frozen=True)
class ExportJob:
    """One export: the checked schedule and what the caller supplied,
    what a format's `render` reads."""

    schedule: dict
    domains: list[str]
    weights: list[dict[str, float]]  # per segment, token shares summing to 1
    prefixes: dict[str, str]  # every domain -> its file prefix / path
    tokens_per_doc: dict[str, float] | None  # every domain, for document formats

    @property
    def segments(self) -> list[dict]:
        """The native segments (steps, tokens, provenance)."""
        return self.schedule["segments"]

    def shares(self, i: int, unit: str) -> dict[str, float]:
        """Segment i's mixture in `unit`, without its zero-weight domains,
        to 12 significant digits (0.2, not 0.19999999999999998; reading
        back is off by < 1e-12)."""
        w = self.weights[i]
        if unit == "documents":
            w = document_shares(w, self.tokens_per_doc)
        return {d: float(f"{v:.12g}") for d, v in w.items() if v > 0}

    def documents(self, i: int) -> int:
        """Documents drawn in segment i: its tokens split by weight, each
        domain's tokens divided by its tokens per document (rounded up)."""
        seg = self.segments[i]
        tokens = seg["to_tokens"] - seg["from_tokens"]
        docs = sum(tokens * w / self.tokens_per_doc[d] for d, w in self.weights[i].items())
        return math.ceil(round(docs, 6))  # 204800.00000001 is 204800 documents


# -- units --------------------------------------------------------------------


def document_shares(token_weights: dict[str, float], tokens_per_doc: dict[str, float]) -> dict[str, float]:
    """Token shares -> per-document sampling probabilities that draw those
    token shares: p(d) = (w(d) / tpd(d)) / sum_e (w(e) / tpd(e))."""
    raw = {d: w / tokens_per_doc[d] for d, w in token_weights.items()}
    total = sum(raw.values())
    return {d: v / total for d, v in raw.items()}


def token_shares(doc_probs: dict[str, float], tokens_per_doc: dict[str, float]) -> dict[str, float]:
    """The inverse of `document_shares`: the token shares that per-document
    probabilities draw, w(d) = p(d) tpd(d) / sum_e p(e) tpd(e)."""
    raw = {d: p * tokens_per_doc[d] for d, p in doc_probs.items()}
    total = sum(raw.values())
    return {d: v / total for d, v in raw.items()}


# -- public entry points -------------------------------------------------------


def export(
    schedule: dict,
    fmt: str,
    *,
    prefixes: dict[str, str] | None = None,
    tokens_per_doc: dict[str, float] | None = None,
) -> str:
    """The schedule as text for trainer format `fmt` (see `FORMATS.names()`).

    `prefixes` maps a domain to its file prefix or path in that trainer's
    world (default: the domain name). `tokens_per_doc` is each domain's
    measured mean tokens per document; required by the formats that sample
    documents, ignored by the ones that sample tokens. Raises ExportError
    for an unknown format, a schedule with no segments, a schedule that
    breaks docs/schedule.schema.json, or missing tokens per document."""
    f = _format(fmt)
    job = _job(schedule, fmt, f.unit, prefixes, tokens_per_doc)
    return f.render(job)


def parse(text: str, fmt: str, *, as_written: bool = False) -> list[dict[str, float]]:
    """Read an export back: per segment, {domain: weight} over all domains.

    Token shares by default (document probabilities converted back with the
    tokens per document the text carries); `as_written=True` gives the
    numbers as the text states them, in the format's own unit. Every weight
    read is checked by the one rule for weights (backend.mixture: finite,
    >= 0, not all zero); malformed text of any kind is an ExportError naming
    the format and the field."""
    f = _format(fmt)
    written, tpd = f.parse(text)
    if as_written or f.unit == "tokens":
        return written
    return [_weights(token_shares(w, tpd), list(w), f"{fmt}: segments[{i}]") for i, w in enumerate(written)]


def validate_native(schedule) -> None:
    """Check a native schedule against docs/schedule.schema.json; raises
    ExportError naming the first bad field."""
    import jsonschema  # only exports and their tests need it

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA_PATH.read_text()))
    errors = sorted(validator.iter_errors(schedule), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        raise ExportError(f"native schedule: {_path(e.absolute_path)}: {e.message}")


def _path(parts) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "top level"


def _format(fmt: str) -> Format:
    try:
        return FORMATS.get(fmt)
    except UnknownName as e:
        raise ExportError(str(e)) from None


def _job(schedule, fmt, unit, prefixes, tokens_per_doc) -> ExportJob:
    if isinstance(schedule, dict) and schedule.get("segments") == []:
        run = schedule.get("run") or {}
        raise ExportError(f"run {run.get('id', '?')} ({run.get('name', 'unnamed')}) has no segments: nothing to export")
    validate_native(schedule)
    domains = schedule["domains"]
    weights = []
    prev_to = 0
    for i, seg in enumerate(schedule["segments"]):
        if seg["from_step"] != prev_to:
            raise ExportError(f"segments[{i}].from_step: {seg['from_step']} does not continue the previous segment's "
                              f"to_step {prev_to}")
        if seg["to_step"] <= seg["from_step"]:
            raise ExportError(f"segments[{i}].to_step: {seg['to_step']} is not after from_step {seg['from_step']}")
        prev_to = seg["to_step"]
        try:
            weights.append(validate_weights(seg["weights"], domains))
        except WeightsError as e:
            raise ExportError(f"segments[{i}].weights: {e}") from None
    return ExportJob(schedule, domains, weights, _prefixes(prefixes, domains),
                _tokens_per_doc(tokens_per_doc, domains, fmt) if unit == "documents" else None)


def _prefixes(prefixes, domains) -> dict[str, str]:
    prefixes = dict(prefixes or {})
    unknown = [d for d in prefixes if d not in domains]
    if unknown:
        raise ExportError(f"prefixes: unknown domain {unknown[0]!r} (domains: {', '.join(domains)})")
    out = {d: prefixes.get(d, d) for d in domains}
    for d, p in out.items():
        # blends are whitespace-separated "weight prefix" lists; a number would read as a weight
        if not isinstance(p, str) or not p or any(c.isspace() for c in p) or _is_number(p):
            raise ExportError(f"prefixes.{d}: expected a path without whitespace, got {p!r}")
    seen: dict[str, str] = {}
    for d, p in out.items():
        if p in seen:
            raise ExportError(f"prefixes.{d}: {p!r} is also the prefix of {seen[p]!r}")
        seen[p] = d
    return out


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _tokens_per_doc(tpd, domains, fmt) -> dict[str, float]:
    if not isinstance(tpd, dict):
        raise ExportError(f"format {fmt!r} samples documents: pass tokens_per_doc, each domain's mean tokens per "
                          f"document (domains: {', '.join(domains)})")
    for d in domains:
        v = tpd.get(d)
        if v is None:
            raise ExportError(f"tokens_per_doc: missing domain {d!r} (format {fmt!r} samples documents)")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ExportError(f"tokens_per_doc.{d}: expected a finite number > 0, got {v!r}")
    return {d: float(tpd[d]) for d in domains}


# -- shared pieces ----------------------------------------------------------------


def _span(seg: dict) -> str:
    """One segment's range and provenance, for a comment."""
    src = seg["source"]
    if seg["proposal_id"] is not None:
        src += f" #{seg['proposal_id']}"
    if seg["strategy"]:
        src += f" ({seg['strategy']})"
    if seg["approved_by"]:
        src += f", approved by {seg['approved_by']}"
    return (f"steps [{seg['from_step']}, {seg['to_step']}), tokens [{seg['from_tokens']}, {seg['to_tokens']}): "
            f"{src}")


def _sequence_length(job: ExportJob) -> int | None:
    """Tokens per sequence, when the run's config says (Megatron samples)."""
    n = (job.schedule["config"].get("data") or {}).get("context_length")
    if isinstance(n, int) and n > 0 and job.schedule["tokens_per_step"] % n == 0:
        return n
    return None


def _header_lines(job: ExportJob, title: str, unit: str, relaunch: str) -> list[str]:
    """What every export states first: the run, the unit, the relaunch."""
    run = job.schedule["run"]
    if unit == "tokens":
        unit_line = "Unit: TOKENS -- each weight is the share of trained tokens, as in the schedule."
    else:
        unit_line = ("Unit: DOCUMENTS -- each number is the probability of drawing a document of that domain, "
                     "converted from the schedule's token shares with each domain's mean tokens per document "
                     "(tokens_per_doc).")
    return [f"Closed Loop schedule of run {run['id']} ({run['name']}) for {title}: "
            f"{len(job.segments)} segment(s), {job.schedule['tokens_per_step']} tokens per step.",
            unit_line, f"At each segment boundary: {relaunch}"]


def _header(job: ExportJob, title: str, unit: str, relaunch: str) -> str:
    """The header as comment lines (Python and YAML)."""
    return "".join(f"# {line}\n" for line in _header_lines(job, title, unit, relaunch))


def _blend(shares: dict[str, float], prefixes: dict[str, str]) -> list[str]:
    """Megatron's flattened blend: ["w1", "prefix1", "w2", "prefix2", ...]."""
    out = []
    for d, w in shares.items():
        out += [repr(w), prefixes[d]]
    return out


def _unblend(items, by_prefix: dict[str, str], domains: list[str], where: str) -> dict[str, float]:
    """Read a flattened weight/prefix list back into {domain: weight}."""
    if isinstance(items, str):
        items = items.split()
    if not isinstance(items, list) or not items or len(items) % 2:
        raise ExportError(f"{where}: expected weight/prefix pairs, got {items!r}")
    pairs = []
    for w, p in zip(items[::2], items[1::2]):
        if not isinstance(p, str) or p not in by_prefix:
            raise ExportError(f"{where}: unknown prefix {p!r} (prefixes: {', '.join(by_prefix)})"[:300])
        try:
            pairs.append((by_prefix[p], float(w) if isinstance(w, str) else w))  # a blend string's "0.25"
        except ValueError:
            raise ExportError(f"{where}: weight of {p!r} is not a number: {w!r}"[:300]) from None
    return _full(_shares(pairs, where), domains, where)


def _shares(pairs, where: str) -> dict:
    """(domain, weight) pairs -> {domain: weight}; a domain given twice is an error, not a silent overwrite."""
    out = {}
    for d, w in pairs:
        if not isinstance(d, str):
            raise ExportError(f"{where}: expected a domain name, got {d!r}"[:300])
        if d in out:
            raise ExportError(f"{where}: domain {d!r} is given twice")
        out[d] = w
    return out


def _full(shares, domains: list[str], where: str) -> dict[str, float]:
    """Shares over some domains -> over all, zero where left out, checked."""
    if not isinstance(shares, dict):
        raise ExportError(f"{where}: expected {{domain: weight}}, got {type(shares).__name__}")
    unknown = [d for d in shares if d not in domains]
    if unknown:
        raise ExportError(f"{where}: unknown domain {unknown[0]!r} (domains: {', '.join(domains)})"[:300])
    return _weights({d: shares.get(d, 0.0) for d in domains}, domains, where)


def _weights(weights: dict, domains: list[str], where: str) -> dict[str, float]:
    """Weights as written (not renormalised), checked by backend.mixture's rule."""
    try:
        validate_weights(weights, domains)
    except WeightsError as e:
        raise ExportError(f"{where}: {e}") from None
    return {d: float(weights[d]) for d in domains}


def _domains(value, fmt: str) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(d, str) for d in value) \
            or len(set(value)) != len(value):
        raise ExportError(f"{fmt}: domains: expected a list of distinct domain names, got {value!r}"[:300])
    return value


def _by_prefix(prefixes, where: str) -> dict[str, str]:
    """{domain: prefix} -> {prefix: domain}."""
    if not isinstance(prefixes, dict) or not all(isinstance(p, str) for p in prefixes.values()):
        raise ExportError(f"{where}: expected the prefixes mapping {{domain: prefix}} with string prefixes")
    return {p: d for d, p in prefixes.items()}


def _segments(data: dict, fmt: str) -> list[dict]:
    segments = data.get("segments")
    if not isinstance(segments, list) or not segments or not all(isinstance(s, dict) for s in segments):
        raise ExportError(f"{fmt}: segments: expected a non-empty list of objects")
    return segments


def _json_load(text: str, fmt: str, format_name: str | None = None) -> dict:
    """JSON text -> its top-level object, whose `format` is `format_name` (default: fmt),
    read as every input is (backend.config.loader.parse_text: within the schedule limits,
    no key given twice, no integer past 64 bits)."""
    from backend.config import Limits
    from backend.config.loader import InputError, parse_text

    limits = Limits.from_env()
    try:
        data = parse_text(text, "json", max_bytes=limits.max_schedule_bytes, max_depth=limits.max_depth)
    except InputError as e:
        raise ExportError(f"{fmt}: {str(e)[:300]}") from None
    if not isinstance(data, dict) or data.get("format") != (format_name or fmt):
        raise ExportError(f"{fmt}: expected a JSON object with format {fmt!r}")
    return data


def _yaml_load(text: str, fmt: str) -> dict:
    import yaml  # a dependency of lm-eval

    class Loader(yaml.SafeLoader):
        """safe_load that refuses a key given twice (PyYAML keeps the last without a word)."""

        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                try:
                    given = key in seen
                except TypeError:  # unhashable: SafeLoader's construct_mapping refuses it
                    continue
                if given:
                    raise yaml.YAMLError(f"key {key!r} is given twice (line {key_node.start_mark.line + 1})"[:200])
                seen.add(key)
            return super().construct_mapping(node, deep)

    try:
        data = yaml.load(text, Loader=Loader)  # noqa: S506 -- a SafeLoader
    except (yaml.YAMLError, ValueError, RecursionError) as e:  # ValueError: a 5,000-digit integer
        raise ExportError(f"{fmt}: not valid YAML: {str(e)[:200]}") from None
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise ExportError(f"{fmt}: expected a YAML mapping with format: {fmt}")
    return data


def _yaml_dump(data) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=120)


def _python_segments(text: str, fmt: str, read) -> tuple[list[dict[str, float]], dict]:
    """A Python export -> (read(value, names, where) for each `segment_<i> =
    ...` in order, its literal module-level names)."""
    names, segments = _python_load(text, fmt)
    return [read(node, names, f"{fmt}: segment_{i}") for i, node in enumerate(segments)], names


# what ast.parse / ast.literal_eval raise for text that is no (literal) Python: bad syntax,
# a NUL byte, an unhashable dict key, a 5,000-digit integer, nesting past the stack
_NOT_LITERAL = (SyntaxError, ValueError, TypeError, MemoryError, RecursionError)


def _python_load(text: str, fmt: str) -> tuple[dict, list[ast.expr]]:
    try:
        tree = ast.parse(text)
    except _NOT_LITERAL as e:
        raise ExportError(f"{fmt}: not valid Python: {str(e)[:200]}") from None
    names, segments = {}, []
    for node in tree.body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            continue
        name = node.targets[0].id
        if re.fullmatch(r"segment_\d+", name):
            segments.append(node.value)
            continue
        try:
            names[name] = ast.literal_eval(node.value)
        except _NOT_LITERAL:  # not a literal: code the person runs, not data we read
            pass
    if not segments:
        raise ExportError(f"{fmt}: no `segment_<i> = ...` assignments")
    if "domains" not in names:
        raise ExportError(f"{fmt}: missing the `domains = [...]` list")
    _domains(names["domains"], fmt)
    return names, segments


def _calls(node: ast.AST, func: str, where: str) -> list[ast.Call]:
    """Calls of `func` (a bare or dotted name) inside node, in source order;
    none is an error."""
    out = [n for n in ast.walk(node) if isinstance(n, ast.Call)
           and (getattr(n.func, "id", None) == func or getattr(n.func, "attr", None) == func)]
    if not out:
        raise ExportError(f"{where}: no {func}(...) call")
    return sorted(out, key=lambda n: (n.lineno, n.col_offset))


def _kwarg(call: ast.Call, name: str, where: str):
    for kw in call.keywords:
        if kw.arg == name:
            try:
                return ast.literal_eval(kw.value)
            except _NOT_LITERAL:
                raise ExportError(f"{where}: {name}= is not a literal") from None
    raise ExportError(f"{where}: missing {name}=")


def _tpd(value, domains: list[str], fmt: str) -> dict[str, float]:
    """The tokens per document a document format's text carries, checked as export checks them."""
    if not isinstance(value, dict):
        raise ExportError(f"{fmt}: tokens_per_doc must give a number for every domain ({', '.join(domains)})")
    try:
        return _tokens_per_doc(value, domains, fmt)
    except ExportError as e:
        raise ExportError(f"{fmt}: {e}") from None


def _py(value) -> str:
    """A Python literal (repr writes a float as the shortest text that
    reads back as the same float)."""
    return repr(value)


# -- native -------------------------------------------------------------------------


def _render_native(job: ExportJob) -> str:
    return json.dumps(job.schedule, indent=2) + "\n"


def _parse_native(text: str):
    data = _json_load(text, "native", "closed-loop-schedule")
    validate_native(data)
    segments = data["segments"]
    return [_full(s["weights"], data["domains"], f"segments[{i}].weights") for i, s in enumerate(segments)], None


FORMATS.add("native", Format("tokens", _render_native, _parse_native))


# -- Megatron-LM ---------------------------------------------------------------------
# --data-path takes "w1 prefix1 w2 prefix2 ..." (megatron.core get_blend_from_list);
# --per-split-data-args-path takes a JSON file {"train": ..., "valid": ..., "test": ...}
# whose values are such lists or one such string (megatron/training/utils.py).

MEGATRON_RELAUNCH = ("stop at the segment's to_step, relaunch with --load <checkpoint>, this segment's --data-path "
                     "(or --per-split-data-args-path file) and --train-iters <to_step>; the restored consumed samples "
                     "skip the start of the new blend, so steps from from_step on follow the new weights.")


def _render_megatron(job: ExportJob) -> str:
    seq = _sequence_length(job)
    segments = []
    for i, seg in enumerate(job.segments):
        blend = " ".join(_blend(job.shares(i, "tokens"), job.prefixes))
        held = " ".join(job.prefixes[d] for d in job.domains)  # unweighted: Megatron weighs by dataset size
        out = {"from_step": seg["from_step"], "to_step": seg["to_step"], "train_iters": seg["to_step"],
               "from_tokens": seg["from_tokens"], "to_tokens": seg["to_tokens"]}
        if seq:
            out |= {"from_samples": seg["from_tokens"] // seq, "to_samples": seg["to_tokens"] // seq}
        out |= {"provenance": _span(seg), "data_path": blend,
                "per_split_data_args": {"train": blend, "valid": held, "test": held}}
        segments.append(out)
    data = {
        "format": "megatron",
        "comment": _header_lines(job, "Megatron-LM", "tokens", MEGATRON_RELAUNCH),
        "unit": "tokens",
        "run": job.schedule["run"],
        "domains": job.domains,
        "prefixes": job.prefixes,
        "tokens_per_step": job.schedule["tokens_per_step"],
    }
    if seq:
        data |= {"seq_length": seq, "global_batch_size": job.schedule["tokens_per_step"] // seq}
    data["segments"] = segments
    return json.dumps(data, indent=2) + "\n"


def _parse_megatron(text: str):
    data = _json_load(text, "megatron")
    domains = _domains(data.get("domains"), "megatron")
    by_prefix = _by_prefix(data.get("prefixes"), "megatron: prefixes")
    return [_unblend(s.get("data_path"), by_prefix, domains, f"megatron: segments[{i}].data_path")
            for i, s in enumerate(_segments(data, "megatron"))], None


FORMATS.add("megatron", Format("tokens", _render_megatron, _parse_megatron))


# -- NeMo 2 ---------------------------------------------------------------------------
# nemo.collections.llm.PreTrainingDataModule(paths=...): a flattened weight/prefix list,
# or {"train": ..., "validation": ..., "test": ...}; it builds Megatron GPTDatasets.

NEMO_RELAUNCH = ("stop at the segment's to_step, resume the checkpoint with this segment's PreTrainingDataModule "
                 "and trainer max_steps=<to_step>; the restored consumed samples skip the start of the new blend.")


def _render_nemo(job: ExportJob) -> str:
    seq = _sequence_length(job)
    held = [job.prefixes[d] for d in job.domains]
    lines = [_header(job, "NeMo 2 (llm.PreTrainingDataModule)", "tokens", NEMO_RELAUNCH),
             "from nemo.collections import llm", "",
             f"domains = {_py(job.domains)}", f"prefixes = {_py(job.prefixes)}", ""]
    for i, seg in enumerate(job.segments):
        train = _blend(job.shares(i, "tokens"), job.prefixes)
        extra = (f"    seq_length={seq},\n"
                 f"    global_batch_size={job.schedule['tokens_per_step'] // seq},  # sequences\n") if seq else ""
        lines += [f"# segment {i}: {_span(seg)}; trainer max_steps={seg['to_step']}",
                  f"segment_{i} = llm.PreTrainingDataModule(\n"
                  f"    paths={{\n        'train': {_py(train)},\n        'validation': {_py(held)},\n"
                  f"        'test': {_py(held)},\n    }},\n{extra})", ""]
    return "\n".join(lines)


def _parse_nemo(text: str):
    def read(node, names, where):
        by_prefix = _by_prefix(names.get("prefixes"), f"{where}: `prefixes = {{...}}`")
        paths = _kwarg(_calls(node, "PreTrainingDataModule", where)[0], "paths", where)
        train = paths.get("train") if isinstance(paths, dict) else paths
        return _unblend(train, by_prefix, names["domains"], f"{where}: paths")

    return _python_segments(text, "nemo", read)[0], None


FORMATS.add("nemo", Format("tokens", _render_nemo, _parse_nemo))


# -- OLMo-core ------------------------------------------------------------------------
# olmo_core.data.source_mixture: SourceMixtureDatasetConfig(source_list=SourceMixtureList(
# sources=[SourceMixtureConfig(source_name, target_ratio, paths)]), requested_tokens,
# global_batch_size (tokens), seed); target ratios are token shares summing to 1.

OLMO_RELAUNCH = ("stop at the segment's to_step, resume the checkpoint with this segment's config as "
                 "NumpyFSLDatasetConfig.from_src_mix(...) and NumpyDataLoaderConfig(ignore_fingerprint_mismatch=True); "
                 "requested_tokens runs to the segment's end because the loader resumes at batch from_step.")


def _render_olmo(job: ExportJob) -> str:
    seed = job.schedule["run"].get("seed", 0)
    lines = [_header(job, "OLMo-core (SourceMixtureDatasetConfig)", "tokens", OLMO_RELAUNCH),
             "from olmo_core.data.source_mixture import SourceMixtureConfig, SourceMixtureDatasetConfig, "
             "SourceMixtureList", "",
             f"domains = {_py(job.domains)}", ""]
    for i, seg in enumerate(job.segments):
        sources = "".join(
            f"        SourceMixtureConfig(source_name={_py(d)}, target_ratio={_py(w)}, "
            f"paths=[{_py(job.prefixes[d])}]),\n"
            for d, w in job.shares(i, "tokens").items())
        lines += [f"# segment {i}: {_span(seg)}",
                  f"segment_{i} = SourceMixtureDatasetConfig(\n"
                  f"    source_list=SourceMixtureList(sources=[\n{sources}    ]),\n"
                  f"    requested_tokens={seg['to_tokens']},  # tokens from step 0 to this segment's end\n"
                  f"    global_batch_size={job.schedule['tokens_per_step']},  # tokens\n"
                  f"    seed={seed},\n)", ""]
    return "\n".join(lines)


def _parse_olmo(text: str):
    def read(node, names, where):
        shares = _shares([(_kwarg(c, "source_name", where), _kwarg(c, "target_ratio", where))
                          for c in _calls(node, "SourceMixtureConfig", where)], where)
        return _full(shares, names["domains"], where)

    return _python_segments(text, "olmo-core", read)[0], None


FORMATS.add("olmo-core", Format("tokens", _render_olmo, _parse_olmo))


# -- MosaicML Streaming (LLM Foundry / Composer YAML) ----------------------------------
# train_loader.dataset.streams: {name: {remote, local, split, proportion}}; proportion is a
# share of SAMPLES, one sample being one document as written by the MDS converter.

STREAMING_RELAUNCH = ("stop at the segment's to_step, resume model and optimizer from the checkpoint and start a "
                      "fresh train_loader with this segment's streams (the old loader position counts documents of "
                      "the old mixture); epoch_size is the segment's documents.")


def _render_streaming(job: ExportJob) -> str:
    segments = []
    for i, seg in enumerate(job.segments):
        streams = {}
        for d, p in job.shares(i, "documents").items():
            path = job.prefixes[d]
            # a remote is copied into a local cache; a plain path is read in place
            where = {"remote": path, "local": f"/tmp/streaming/{d}"} if "://" in path else {"local": path}
            streams[d] = where | {"split": "train", "proportion": p}
        segments.append({
            "from_step": seg["from_step"], "to_step": seg["to_step"],
            "from_tokens": seg["from_tokens"], "to_tokens": seg["to_tokens"], "provenance": _span(seg),
            "train_loader": {"name": "text", "dataset": {"streams": streams, "epoch_size": job.documents(i),
                                                         "shuffle": True}},
        })
    data = {"format": "streaming", "unit": "documents", "run": job.schedule["run"], "domains": job.domains,
            "tokens_per_doc": job.tokens_per_doc, "segments": segments}
    return _header(job, "MosaicML Streaming (LLM Foundry train_loader)", "documents", STREAMING_RELAUNCH) \
        + _yaml_dump(data)


def _parse_streaming(text: str):
    data = _yaml_load(text, "streaming")
    domains = _domains(data.get("domains"), "streaming")
    out = []
    for i, seg in enumerate(_segments(data, "streaming")):
        where = f"streaming: segments[{i}]"
        try:
            streams = seg["train_loader"]["dataset"]["streams"]
            shares = {d: s["proportion"] for d, s in streams.items()}
        except (KeyError, TypeError, AttributeError):
            raise ExportError(f"{where}: expected train_loader.dataset.streams.<domain>.proportion") from None
        out.append(_full(shares, domains, where))
    return out, _tpd(data.get("tokens_per_doc"), domains, "streaming")


FORMATS.add("streaming", Format("documents", _render_streaming, _parse_streaming))


# -- Hugging Face datasets --------------------------------------------------------------
# datasets.interleave_datasets(datasets, probabilities=[...], seed, stopping_strategy);
# each probability is the chance the next EXAMPLE (document) comes from that dataset.

HF_RELAUNCH = ("stop at the segment's to_step, resume the checkpoint (Trainer: resume_from_checkpoint) with this "
               "segment's dataset as train_dataset; it stops after the segment's documents.")


def _render_hf(job: ExportJob) -> str:
    seed = job.schedule["run"].get("seed", 0)
    lines = [_header(job, "Hugging Face datasets.interleave_datasets", "documents", HF_RELAUNCH),
             "from datasets import interleave_datasets, load_dataset", "",
             f"domains = {_py(job.domains)}",
             f"tokens_per_doc = {_py(job.tokens_per_doc)}",
             f"paths = {_py(job.prefixes)}",
             "# repeat(None): a domain smaller than its share is recycled, so each segment yields all its documents",
             "datasets = {d: load_dataset(p, split='train', streaming=True).repeat(None) for d, p in paths.items()}",
             ""]
    for i, seg in enumerate(job.segments):
        probs = job.shares(i, "documents")
        parts = ", ".join(f"datasets[{_py(d)}]" for d in probs)
        lines += [f"# segment {i}: {_span(seg)}; {job.documents(i)} documents",
                  f"segment_{i} = interleave_datasets(\n    [{parts}],\n"
                  f"    probabilities={_py(list(probs.values()))},\n"
                  f"    seed={seed},\n    stopping_strategy='first_exhausted',  # never: the streams repeat\n).take({job.documents(i)})", ""]
    return "\n".join(lines)


def _parse_hf(text: str):
    def read(node, names, where):
        call = _calls(node, "interleave_datasets", where)[0]
        if not call.args or not isinstance(call.args[0], ast.List):
            raise ExportError(f"{where}: expected interleave_datasets([datasets[...], ...], probabilities=[...])")
        try:
            order = [ast.literal_eval(el.slice) for el in call.args[0].elts]
        except (AttributeError, *_NOT_LITERAL):
            raise ExportError(f"{where}: datasets must be written datasets['<domain>']") from None
        probs = _kwarg(call, "probabilities", where)
        if not isinstance(probs, list) or len(probs) != len(order):
            raise ExportError(f"{where}: probabilities must give one number per dataset ({len(order)})")
        return _full(_shares(zip(order, probs), where), names["domains"], where)

    out, names = _python_segments(text, "hf", read)
    return out, _tpd(names.get("tokens_per_doc"), names["domains"], "hf")


FORMATS.add("hf", Format("documents", _render_hf, _parse_hf))


# -- Data-Juicer ------------------------------------------------------------------------
# dataset: {max_sample_num, configs: [{type: local, path, weight}]}: weights are normalised
# and times max_sample_num give the SAMPLES (documents) drawn from each dataset.

DJ_RELAUNCH = ("run dj-process with this segment's dataset block (it writes export_path), stop training at the "
               "segment's to_step and resume the checkpoint on the exported file.")


def _render_dj(job: ExportJob) -> str:
    segments = []
    for i, seg in enumerate(job.segments):
        configs = [{"type": "local", "path": job.prefixes[d], "weight": p}
                   for d, p in job.shares(i, "documents").items()]
        segments.append({
            "from_step": seg["from_step"], "to_step": seg["to_step"],
            "from_tokens": seg["from_tokens"], "to_tokens": seg["to_tokens"], "provenance": _span(seg),
            "dataset": {"max_sample_num": job.documents(i), "configs": configs},
            "export_path": f"segment_{i}.jsonl",
        })
    data = {"format": "data-juicer", "unit": "documents", "run": job.schedule["run"], "domains": job.domains,
            "prefixes": job.prefixes, "tokens_per_doc": job.tokens_per_doc, "segments": segments}
    return _header(job, "Data-Juicer (dataset mixture)", "documents", DJ_RELAUNCH) + _yaml_dump(data)


def _parse_dj(text: str):
    data = _yaml_load(text, "data-juicer")
    domains = _domains(data.get("domains"), "data-juicer")
    by_prefix = _by_prefix(data.get("prefixes"), "data-juicer: prefixes")
    out = []
    for i, seg in enumerate(_segments(data, "data-juicer")):
        where = f"data-juicer: segments[{i}].dataset.configs"
        try:
            pairs = [(c["path"], c["weight"]) for c in seg["dataset"]["configs"]]
        except (KeyError, TypeError):
            raise ExportError(f"{where}: expected a list of {{type, path, weight}}") from None
        unknown = [p for p, _ in pairs if not isinstance(p, str) or p not in by_prefix]
        if unknown:
            raise ExportError(f"{where}: unknown path {unknown[0]!r}"[:300])
        out.append(_full(_shares([(by_prefix[p], w) for p, w in pairs], where), domains, where))
    return out, _tpd(data.get("tokens_per_doc"), domains, "data-juicer")


FORMATS.add("data-juicer", Format("documents", _render_dj, _parse_dj))
