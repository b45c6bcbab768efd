"""The mixture schedule: export as versioned JSON and parse (validate) an
imported one; backend.exports renders it for other trainers.

A schedule is the ordered segments of weights actually trained, each with
where it came from (initial, proposal, manual, replay), the proposal id and
who approved it. An exported file holds the run's full config, so `replay`
can rebuild the same run and follow the same weights.
"""

from __future__ import annotations

import json

from backend import config as config_mod
from backend.config import ConfigError, Limits
from backend.config.loader import InputError, check_plain, key_path, parse_text, show
from backend.mixture import WeightsError, validate_weights
from backend.vocab import config_tokens_per_step

FORMAT = "closed-loop-schedule"
VERSION = 1
SOURCES = ("initial", "proposal", "manual", "replay")
TOP_KEYS = ("format", "version", "run", "config", "domains", "total_steps", "tokens_per_step", "segments")
"""The keys of an exported schedule; any other is refused."""
RUN_KEYS = {"id": int, "name": str, "seed": int, "status": str}
"""The exported `run` object: where the schedule came from (each may be null)."""
SEGMENT_KEYS = {"from_step": int, "to_step": int, "from_tokens": int, "to_tokens": int, "weights": dict,
                "source": str, "proposal_id": int, "strategy": str, "approved_by": str}
"""A segment's keys and types; all but from_step and weights may be absent
or null."""


class ScheduleError(ValueError):
    """An imported schedule is invalid; the message names the field."""


def export_schedule(store, run_id: int) -> dict:
    """The run's schedule as a JSON-ready dict (format and version first):
    the steps it trained. A run that has not finished (stopped, failed,
    still running) ends at the step it reached, and a segment applied there
    has trained nothing yet, so it is left out."""
    run = store.run(run_id)
    cfg = run["config"]
    tokens_per_step = config_tokens_per_step(cfg)
    total = cfg["train"]["steps"]
    # an outside trainer may finish without a checkpoint at its last step
    end = total if run["status"] == "finished" else min(run["step"], total)
    segments = [seg for seg in store.schedule(run_id) if seg["from_step"] < end]
    proposals = {p["id"]: p for p in store.proposals(run_id)}
    out = []
    for i, seg in enumerate(segments):
        to_step = segments[i + 1]["from_step"] if i + 1 < len(segments) else end
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


def parse_schedule(data, *, limits: Limits | None = None, untrusted: bool = False) -> dict:
    """Validate an imported schedule (JSON text, bytes or plain data) completely;
    returns it with a checked RunConfig under `run_config` and each segment's
    weights renormalised. Raises ScheduleError naming the first bad field.
    untrusted: an upload's; its config is built as backend.config.from_dict
    builds an untrusted one (paths confined to the data roots first).

    Refused: text over limits.max_schedule_bytes or nested deeper than
    limits.max_depth, unknown keys, integers outside 64 bits, text that is
    not valid Unicode, segments out of order, overlapping or not tiling the
    run (the last may end before train.steps: an unfinished run's export
    does), token counts that disagree with the config, and a replay record
    over limits.max_stored_schedule_bytes."""
    limits = limits or Limits.from_env()
    data = _read(data, limits)
    if not isinstance(data, dict):
        raise ScheduleError("top level: expected a JSON object")
    for key in data:
        if key not in TOP_KEYS:
            raise ScheduleError(f"{key_path('', key)}: unknown key (known: {', '.join(TOP_KEYS)})")
    if data.get("format") != FORMAT:
        raise ScheduleError(f"format: expected {FORMAT!r}, got {show(data.get('format'))}")
    version = data.get("version")
    if type(version) is not int or version != VERSION:  # True == 1.0 == 1 in Python
        raise ScheduleError(f"version: expected {VERSION}, got {show(version)}")
    if "config" not in data:
        raise ScheduleError("config: missing")
    try:
        cfg = config_mod.from_dict(data["config"], limits=limits, untrusted=untrusted)
    except ConfigError as e:
        raise ScheduleError(f"config.{e}") from None
    _check_header(data, cfg)
    segments = _check_segments(data.get("segments"), cfg)
    parsed = {**data, "segments": segments, "run_config": cfg}
    record = replay_record(parsed)
    size = len(json.dumps(record))
    if size > limits.max_stored_schedule_bytes:
        raise ScheduleError(f"segments: {len(segments)} segments take {size:,} bytes to store with the run; "
                            f"the limit is {limits.max_stored_schedule_bytes:,} "
                            "(CLOSED_LOOP_MAX_STORED_SCHEDULE_BYTES)")
    return parsed


def parse_replay(data, cfg=None, *, limits: Limits | None = None) -> dict:
    """What `replay FILE` follows, parsed as parse_schedule returns it, from
    either of two files (JSON text, bytes or plain data):

    - a native schedule (an object with `format`): it carries its own run
      config, so `cfg` must be None;
    - a plain mixture `{domain: weight}`: one segment over the whole run of
      `cfg` (a RunConfig, from --config or --preset), its weights checked by
      the one weights rule (backend.mixture) against cfg's domains.

    ScheduleError names the field (`weights.<domain>` for a mixture) and
    nothing is written."""
    limits = limits or Limits.from_env()
    data = _read(data, limits)
    if not isinstance(data, dict):
        raise ScheduleError("top level: expected a JSON object (a native schedule or a {domain: weight} mixture)")
    if not is_mixture(data):
        parsed = parse_schedule(data, limits=limits)  # a broken schedule: its own field is named first
        if cfg is not None:
            raise ScheduleError("--config/--preset: a native schedule carries its own run config; "
                                "give them only with a plain {domain: weight} mixture")
        return parsed
    if cfg is None:
        raise ScheduleError("weights: a plain {domain: weight} mixture needs a run: give --config FILE or --preset NAME")
    try:
        weights = validate_weights(data, cfg.domain_names)
    except WeightsError as e:
        field = key_path("weights", e.domain) if e.domain is not None else "weights"
        raise ScheduleError(f"{field}: {e}") from None
    return parse_schedule({"format": FORMAT, "version": VERSION, "run": None, "config": cfg.to_dict(),
                           "segments": [{"from_step": 0, "to_step": cfg.train.steps, "weights": weights,
                                         "source": "manual"}]}, limits=limits)


def _read(data, limits: Limits):
    """JSON text or bytes parsed, or plain data checked, within the limits."""
    try:
        if isinstance(data, (str, bytes)):
            return parse_text(data, "json", max_bytes=limits.max_schedule_bytes, max_depth=limits.max_depth)
        check_plain(data, max_depth=limits.max_depth)
        return data
    except InputError as e:
        raise ScheduleError(f"schedule: {e}" if str(e).startswith("the file") else str(e)) from None


def is_mixture(data) -> bool:
    """Whether imported data is a plain {domain: weight} mixture rather than
    a native schedule: an object without `format` whose values are no
    objects or lists (a broken schedule is still read as a schedule, so its
    error names the schedule's field)."""
    return (isinstance(data, dict) and "format" not in data
            and not any(isinstance(v, (dict, list)) for v in data.values()))


def replay_record(parsed: dict) -> dict:
    """What a replay run stores of a parsed schedule: where it came from and
    its segments (the config is stored with the run already)."""
    keep = ("from_step", "to_step", "weights", "source", "proposal_id", "approved_by")
    return {
        "format": FORMAT,
        "version": VERSION,
        "run": parsed.get("run"),
        "segments": [{k: seg.get(k) for k in keep} for seg in parsed["segments"]],
    }


def _check_header(data: dict, cfg) -> None:
    """run, domains, total_steps and tokens_per_step, where given, agree with the config."""
    run = data.get("run")
    if run is not None:
        if not isinstance(run, dict):
            raise ScheduleError(f"run: expected an object or null, got {type(run).__name__}")
        _check_keys(run, RUN_KEYS, "run")
    domains = data.get("domains")
    if domains is not None and (not isinstance(domains, list) or sorted(map(str, domains)) != sorted(cfg.domain_names)
                                or len(domains) != len(cfg.domain_names)):
        raise ScheduleError(f"domains: expected the config's domains {cfg.domain_names}, got {show(domains)}")
    expected = {"total_steps": cfg.train.steps, "tokens_per_step": config_tokens_per_step(cfg.to_dict())}
    for key, want in expected.items():
        got = data.get(key)
        if got is not None and (type(got) is not int or got != want):  # not True, not 30.0
            raise ScheduleError(f"{key}: expected {want} (from the config), got {show(got)}")


def _check_keys(obj: dict, types: dict[str, type], where: str) -> None:
    for k, v in obj.items():
        if k not in types:
            raise ScheduleError(f"{key_path(where, k)}: unknown key (known: {', '.join(types)})")
        want = types[k]
        if v is not None and (not isinstance(v, want) or isinstance(v, bool) and want is not bool):
            raise ScheduleError(f"{where}.{k}: expected {want.__name__} or null, got {show(v)}")


def _check_segments(segs, cfg) -> list[dict]:
    """Each segment checked in order (from_step and weights first, so the
    first wrong step is named), then the tiling: to_step meets the next
    from_step, the last ends at train.steps or, an unfinished run's, before
    it; tokens follow steps."""
    if not isinstance(segs, list) or not segs:
        raise ScheduleError("segments: expected a non-empty list")
    domains, every, total = cfg.domain_names, cfg.train.checkpoint_every, cfg.train.steps
    out, prev = [], -1
    for i, seg in enumerate(segs):
        where = f"segments[{i}]"
        if not isinstance(seg, dict):
            raise ScheduleError(f"{where}: expected an object")
        step = seg.get("from_step")
        if isinstance(step, bool) or not isinstance(step, int):
            raise ScheduleError(f"{where}.from_step: expected an integer, got {show(step)}")
        if i == 0 and step != 0:
            raise ScheduleError(f"{where}.from_step: the first segment must start at step 0, got {step}")
        if step <= prev:
            raise ScheduleError(f"{where}.from_step: {step} is not after the previous segment's {prev}")
        if step % every or step >= total:
            raise ScheduleError(
                f"{where}.from_step: {step} is not a checkpoint step (multiples of {every} below {total})"
            )
        prev = step
        if "weights" not in seg:
            raise ScheduleError(f"{where}.weights: missing")
        try:
            weights = validate_weights(seg["weights"], domains)
        except WeightsError as e:
            field = key_path(f"{where}.weights", e.domain) if e.domain is not None else f"{where}.weights"
            raise ScheduleError(f"{field}: {e}") from None
        # An export's weights already sum to 1: keep their exact floats, so a
        # replay samples bit-for-bit what the run did (as floats in the
        # domains' order; + 0.0 turns a -0.0 into 0.0)
        if abs(sum(seg["weights"].values()) - 1.0) <= 1e-9:
            weights = {d: float(seg["weights"][d]) + 0.0 for d in domains}
        seg = {**seg, "weights": weights}
        _check_keys(seg, SEGMENT_KEYS, where)
        if seg.get("source", "proposal") not in SOURCES:
            raise ScheduleError(f"{where}.source: expected one of {', '.join(SOURCES)}, got {show(seg.get('source'))}")
        out.append(seg)
    tokens_per_step = config_tokens_per_step(cfg.to_dict())
    for i, seg in enumerate(out):
        where, to_step = f"segments[{i}]", seg.get("to_step")
        if i + 1 < len(out):
            end = out[i + 1]["from_step"]
            if to_step is not None and to_step != end:
                raise ScheduleError(f"{where}.to_step: {to_step} must equal segments[{i + 1}].from_step {end}")
        elif to_step is None:
            end = total
        elif seg["from_step"] < to_step <= total:
            end = to_step  # an unfinished run's export ends at the step it reached
        else:
            raise ScheduleError(f"{where}.to_step: {to_step} must be after from_step {seg['from_step']} and at most "
                                f"train.steps {total}")
        for key, step in (("from_tokens", seg["from_step"]), ("to_tokens", end)):
            if seg.get(key) is not None and seg[key] != step * tokens_per_step:
                raise ScheduleError(f"{where}.{key}: {seg[key]} is not step {step} x {tokens_per_step} "
                                    f"tokens per step ({step * tokens_per_step})")
    return out

