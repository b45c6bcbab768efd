"""The mixture schedule: export as versioned JSON, parse (validate) an
imported one, and render it for other trainers.

A schedule is the ordered segments of weights actually trained, each with
where it came from (initial, proposal, manual, replay), the proposal id and
who approved it. An exported file holds the run's full config, so `replay`
can rebuild the same run and follow the same weights.
"""

from __future__ import annotations

import json
import math

from backend import config as config_mod
from backend.config import ConfigError

FORMAT = "closed-loop-schedule"
VERSION = 1
SOURCES = ("initial", "proposal", "manual", "replay")


class ScheduleError(ValueError):
    """An imported schedule is invalid; the message names the field."""


def export_schedule(store, run_id: int) -> dict:
    """The run's schedule as a JSON-ready dict (format and version first)."""
    run = store.run(run_id)
    cfg = run["config"]
    tokens_per_step = cfg["train"]["batch_size"] * cfg["data"]["context_length"]
    segments = store.schedule(run_id)
    proposals = {p["id"]: p for p in store.proposals(run_id)}
    total = cfg["train"]["steps"]
    out = []
    for i, seg in enumerate(segments):
        to_step = segments[i + 1]["from_step"] if i + 1 < len(segments) else total
        p = proposals.get(seg["proposal_id"])
        out.append({
            "from_step": seg["from_step"],
            "to_step": to_step,
            "from_tokens": seg["from_step"] * tokens_per_step,
            "to_tokens": to_step * tokens_per_step,
            "weights": seg["weights"],
            "source": seg["source"],
            "proposal_id": seg["proposal_id"],
            "strategy": p["strategy"] if p else None,
            "approved_by": seg["decided_by"] or (p["decided_by"] if p else None),
        })
    return {
        "format": FORMAT,
        "version": VERSION,
        "run": {"id": run_id, "name": run["name"], "seed": cfg["seed"], "status": run["status"]},
        "config": cfg,
        "domains": [d["name"] for d in store.domains(run_id)] or [d["name"] for d in cfg["data"]["domains"]],
        "total_steps": total,
        "tokens_per_step": tokens_per_step,
        "segments": out,
    }


def parse_schedule(data) -> dict:
    """Validate an imported schedule; returns it with a checked RunConfig
    under `run_config`. Raises ScheduleError naming the first bad field."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except UnicodeDecodeError:
            raise ScheduleError("not valid JSON: the file is not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise ScheduleError(f"not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ScheduleError("top level: expected a JSON object")
    if data.get("format") != FORMAT:
        raise ScheduleError(f"format: expected {FORMAT!r}, got {data.get('format')!r}")
    if data.get("version") != VERSION:
        raise ScheduleError(f"version: expected {VERSION}, got {data.get('version')!r}")
    if "config" not in data:
        raise ScheduleError("config: missing")
    try:
        cfg = config_mod.from_dict(data["config"])
    except ConfigError as e:
        raise ScheduleError(f"config.{e}") from None
    domains = cfg.domain_names
    segs = data.get("segments")
    if not isinstance(segs, list) or not segs:
        raise ScheduleError("segments: expected a non-empty list")
    every = cfg.train.checkpoint_every
    prev = -1
    for i, seg in enumerate(segs):
        where = f"segments[{i}]"
        if not isinstance(seg, dict):
            raise ScheduleError(f"{where}: expected an object")
        step = seg.get("from_step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise ScheduleError(f"{where}.from_step: expected an integer, got {step!r}")
        if i == 0 and step != 0:
            raise ScheduleError(f"{where}.from_step: the first segment must start at step 0, got {step}")
        if step <= prev:
            raise ScheduleError(f"{where}.from_step: {step} is not after the previous segment's {prev}")
        if step % every or step >= cfg.train.steps:
            raise ScheduleError(
                f"{where}.from_step: {step} is not a checkpoint step (multiples of {every} below {cfg.train.steps})"
            )
        prev = step
        w = seg.get("weights")
        if not isinstance(w, dict):
            raise ScheduleError(f"{where}.weights: expected an object mapping domain to weight")
        for d in domains:
            if d not in w:
                raise ScheduleError(f"{where}.weights: missing domain {d!r}")
        for d, v in w.items():
            if d not in domains:
                raise ScheduleError(f"{where}.weights.{d}: unknown domain (domains: {', '.join(domains)})")
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v) or v < 0:
                raise ScheduleError(f"{where}.weights.{d}: expected a finite number >= 0, got {v!r}")
        total = sum(w.values())
        if abs(total - 1.0) > 1e-6:
            raise ScheduleError(f"{where}.weights: must sum to 1, got {total:.6f}")
        if seg.get("source", "proposal") not in SOURCES:
            raise ScheduleError(f"{where}.source: expected one of {', '.join(SOURCES)}, got {seg.get('source')!r}")
    return {**data, "run_config": cfg}


def _finite(v) -> bool:
    try:
        return math.isfinite(v)
    except OverflowError:  # an int too large for a float
        return False


def to_megatron_blend(schedule: dict, paths: dict[str, str] | None = None) -> list[dict]:
    """Per segment, the `--data-path` blend of Megatron-LM / GPT-NeoX
    ("w1 path1 w2 path2 ...") with the step range it applies to."""
    out = []
    for seg in schedule["segments"]:
        parts = []
        for d, w in seg["weights"].items():
            parts += [f"{w:.6f}", (paths or {}).get(d, d)]
        out.append({"from_step": seg["from_step"], "to_step": seg["to_step"], "data_path": " ".join(parts)})
    return out
