"""Fuzz the config and schedule parsers with hostile input.

Each case is a valid config (the `tiny` preset, resolved or as overrides of
`preset = "tiny"`) or a valid exported schedule, mutated leaf by leaf: wrong
types, huge and 5,000-digit integers, NaN / inf (as numbers and as
strings), lone surrogates, deep nesting, unknown and missing keys, and for
schedules reordered, overlapping and inconsistent segments. Every case must
end in one of two ways:

- refused with ConfigError / ScheduleError whose message starts with the
  field at fault (`train.lr: ...`, `segments[2].to_step: ...`);
- accepted, and then storable: the resolved config (or the replay record)
  encodes as strict JSON in UTF-8 and its integers fit SQLite.

Anything else (another exception, a refusal that names no field, an
accepted value that cannot be stored) is counted as unexpected, with the
mutation that caused it. `fuzz_configs` / `fuzz_schedules` check the
parsers alone; `soak` (called by bench/soak.py) sends the same cases through
check_untrusted into a real store and checks that a refusal leaves the
database byte-identical. Run alone:

    python bench/fuzz.py --schedules 1000 --configs 300 --seed 0
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import re
import sqlite3
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backend.config import ConfigError, from_data, from_dict, from_text, preset  # noqa: E402
from backend.schedule import FORMAT, VERSION, ScheduleError, parse_schedule, replay_record  # noqa: E402

NAMES_A_FIELD = re.compile(r"^(not valid (JSON|TOML)|top level|schedule|config|[A-Za-z_][\w\-]*"
                           r"(\.[^\s:]+|\[\d+\])*)(\.[^\s:]*|\[\d+\])*:")
"""A refusal's message starts with the field at fault (or, for text that
does not parse at all, says which format it is not)."""

DEEP = 40  # a nesting just past the depth limit (32); text cases go to 100,000


def _deep(n: int):
    value: object = 1
    for _ in range(n):
        value = [value]
    return value


HOSTILE = [
    None, True, False, 0, -1, 1, 2**31, 2**32, 2**63 - 1, 2**63, -(2**63) - 1, 2**70, 10**5000, -(10**400),
    0.0, -0.0, 0.5, 1.5, 1e-320, 1e308, float("inf"), float("-inf"), float("nan"),
    "", " ", "x", "NaN", "inf", "-Infinity", "1e400", "0", "auto", "\ud800", "a\udfffb", "é", "x" * 10_000,
    [], [1], ["\ud800"], {}, {"a": 1}, {"\ud800": 1}, _deep(DEEP),
]
"""Replacement values for a leaf (or a whole table)."""


def _paths(data, max_depth: int = 12) -> list[tuple]:
    """Every path (keys and indices) to a value inside plain data, tables
    included, down to max_depth (an earlier mutation may have nested deep)."""
    out, stack = [], [((), data)]
    while stack:
        prefix, value = stack.pop()
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for k, v in items:
            out.append(prefix + (k,))
            if len(prefix) < max_depth:
                stack.append((prefix + (k,), v))
    return sorted(out, key=repr)


def _parent(data, path: tuple):
    for k in path[:-1]:
        data = data[k]
    return data


def _mutate(rng: random.Random, data, extra_ops=()) -> str:
    """Change `data` in place by one hostile mutation; returns what it did."""
    paths = _paths(data)
    ops = ["replace", "replace", "replace", "delete", "unknown_key", "surrogate_key", "deep"] + list(extra_ops)
    op = rng.choice(ops)
    if op in extra_ops:
        try:
            return extra_ops[op](rng, data)
        except (KeyError, TypeError, IndexError, ValueError, AttributeError):
            return f"{op} (not applicable after an earlier mutation)"
    path = rng.choice(paths)
    parent, key = _parent(data, path), path[-1]
    where = ".".join(map(str, path))
    if op == "replace":
        value = rng.choice(HOSTILE)
        parent[key] = value if not isinstance(value, (list, dict)) else copy.deepcopy(value)
        return f"{where} = {_short(value)}"
    if op == "delete":
        del parent[key]
        return f"del {where}"
    target = parent if isinstance(parent, dict) else data
    if op == "unknown_key":
        target[rng.choice(["extra", "lrr", "sorce", "options", "preset", "version"])] = rng.choice(HOSTILE[:12])
        return f"unknown key beside {where}"
    if op == "surrogate_key" and isinstance(parent, dict):
        parent[f"{key}\ud800" if isinstance(key, str) else "\ud800"] = parent.pop(key)
        return f"surrogate in key {where}"
    parent[key] = _deep(rng.choice([DEEP, 2_000]))
    return f"{where} nested deep"


def _short(value) -> str:
    if isinstance(value, int) and value.bit_length() > 64:
        return f"<int of {value.bit_length()} bits>"
    text = repr(value) if not isinstance(value, list) or len(repr(value)) < 60 else "<deep list>"
    return text[:60]


def _storable(obj) -> None:
    """What a run stores must be strict JSON, UTF-8, with 64-bit integers."""
    text = json.dumps(obj, allow_nan=False)
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (doc TEXT, steps INTEGER)")
    steps = obj.get("train", {}).get("steps", 0) if isinstance(obj, dict) else 0
    db.execute("INSERT INTO t VALUES (?, ?)", (text.encode("utf-8").decode("utf-8"), steps))
    db.close()


def _config_storable(cfg) -> None:
    """A run stores its resolved config and rebuilds it on resume: the same config."""
    stored = cfg.to_dict()
    _storable(stored)
    if from_dict(json.loads(json.dumps(stored))) != cfg:
        raise AssertionError("the stored config rebuilds a different config")


def _schedule_storable(parsed) -> None:
    _config_storable(parsed["run_config"])
    _storable(replay_record(parsed))


def _run_case(outcome: dict, what: str, parse, store) -> None:
    try:
        result = parse()
    except (ConfigError, ScheduleError) as e:
        if NAMES_A_FIELD.match(str(e)):
            outcome["refused_named"] += 1
        else:
            _unexpected(outcome, what, f"refusal names no field: {str(e)[:160]}")
        return
    except Exception as e:  # noqa: BLE001 -- counting them is the point
        _unexpected(outcome, what, f"{type(e).__name__}: {str(e)[:160]}")
        return
    try:
        store(result)
    except Exception as e:  # noqa: BLE001
        _unexpected(outcome, what, f"accepted, then not storable: {type(e).__name__}: {str(e)[:160]}")
        return
    outcome["accepted"] += 1


def _unexpected(outcome: dict, what: str, error: str) -> None:
    outcome["unexpected"] += 1
    if len(outcome["unexpected_exceptions"]) < 50:
        outcome["unexpected_exceptions"].append({"case": what, "error": error})


def _outcome(n: int) -> dict:
    return {"cases": n, "refused_named": 0, "accepted": 0, "unexpected": 0, "unexpected_exceptions": []}


# -- configs ----------------------------------------------------------------------------


def _config_case(rng: random.Random, base: dict):
    """A config (full or as preset overrides), mutated once or twice; as plain
    data or, one time in four, as JSON / TOML text."""
    if rng.random() < 0.3:
        data = {"preset": "tiny", "name": "fuzz", "train": {"steps": 40, "lr": 1e-3},
                "controller": {"strategy": rng.choice(["deficit", "doremi", "static"]), "step_size": 1.0}}
    else:
        data = copy.deepcopy(base)
    what = "; ".join(_mutate(rng, data, {"preset": _bad_preset}) for _ in range(rng.choice([1, 1, 2])))
    return data, what


def _bad_preset(rng: random.Random, data: dict) -> str:
    data["preset"] = rng.choice([["tiny"], {"a": 1}, 3, None, "huge", "\ud800", "tiny"])
    return f"preset = {_short(data['preset'])}"


def config_cases(n: int, seed: int = 0, untrusted: bool = False):
    """(what, parse) for n mutated configs, then the whole-text attacks:
    `parse()` runs backend.config.from_data, or from_text for JSON text
    (untrusted: as the dashboard parses an upload)."""
    rng = random.Random(seed)
    base = preset("tiny").to_dict()
    for i in range(n):
        data, what = _config_case(rng, base)
        text = _as_text(data) if i % 4 == 3 else None
        if text is not None:
            yield what, lambda t=text: from_text(t, "json", untrusted=untrusted)
        else:
            yield what, lambda d=data: from_data(d, untrusted=untrusted)
    for what, text, fmt in _text_extremes():
        yield what, lambda t=text, f=fmt: from_text(t, f, untrusted=untrusted)


def fuzz_configs(n: int, seed: int = 0) -> dict:
    """n mutated configs (plus the whole-text attacks) through
    backend.config; counts {cases, refused_named, accepted, unexpected,
    unexpected_exceptions: [{case, error}]}."""
    out = _outcome(0)
    for what, parse in config_cases(n, seed):
        out["cases"] += 1
        _run_case(out, what, parse, _config_storable)
    return out


def _as_text(data) -> str | None:
    try:
        return json.dumps(data)
    except (ValueError, RecursionError):  # ints past str()'s limit, nesting past json's
        return None


def _text_extremes() -> list[tuple[str, str, str]]:
    """Whole-text attacks no leaf mutation makes: 100,000-deep nesting,
    5,000-digit numbers, dotted keys 100,000 deep, a lone surrogate escape."""
    n = 100_000
    return [
        ("json: 100,000 nested lists", "[" * n + "]" * n, "json"),
        ("json: 100,000 nested objects", '{"a":' * n + "1" + "}" * n, "json"),
        ("toml: 100,000 nested arrays", "a = " + "[" * n + "]" * n, "toml"),
        ("toml: dotted key 100,000 deep", "a" + ".a" * n + " = 1", "toml"),
        ("json: 5,000-digit seed", '{"preset": "tiny", "seed": ' + "9" * 5000 + "}", "json"),
        ("toml: 5,000-digit seed", 'preset = "tiny"\nseed = ' + "9" * 5000 + "\n", "toml"),
        ("json: lr 1e400", '{"preset": "tiny", "train": {"lr": 1e400}}', "json"),
        ("json: surrogate escape", '{"preset": "tiny", "name": "a\\ud800"}', "json"),
        ("json: 2 MB", '{"preset": "tiny", "name": "' + "x" * 2_000_000 + '"}', "json"),
    ]


# -- schedules --------------------------------------------------------------------------


def valid_schedule() -> dict:
    """An exported schedule of a `tiny` run: three segments tiling 30 steps."""
    cfg = preset("tiny").to_dict()
    names = [d["name"] for d in cfg["data"]["domains"]]
    tps = cfg["train"]["batch_size"] * cfg["data"]["context_length"]
    bounds = [(0, 10), (10, 20), (20, 30)]
    segments = [{
        "from_step": a, "to_step": b, "from_tokens": a * tps, "to_tokens": b * tps,
        "weights": {d: (1.0 / len(names)) for d in names} if i == 0 else
        dict(zip(names, [0.3, 0.2, 0.1, 0.1, 0.1, 0.2])),
        "source": ["initial", "proposal", "manual"][i], "proposal_id": None if i == 0 else i,
        "strategy": None if i == 0 else "deficit", "approved_by": None if i == 0 else "alice",
    } for i, (a, b) in enumerate(bounds)]
    return {"format": FORMAT, "version": VERSION, "run": {"id": 1, "name": "tiny", "seed": 0, "status": "finished"},
            "config": cfg, "domains": names, "total_steps": 30, "tokens_per_step": tps, "segments": segments}


def _reorder(rng, s) -> str:
    rng.shuffle(s["segments"])
    return "segments shuffled"


def _overlap(rng, s) -> str:
    i = rng.randrange(len(s["segments"]))
    s["segments"][i]["to_step"] = rng.choice([0, 5, 15, 20, 25, 30, 40])
    return f"segments[{i}].to_step moved"


def _duplicate(rng, s) -> str:
    i = rng.randrange(len(s["segments"]))
    s["segments"].insert(i, copy.deepcopy(s["segments"][i]))
    return f"segments[{i}] duplicated"


def _shift_tokens(rng, s) -> str:
    i = rng.randrange(len(s["segments"]))
    key = rng.choice(["from_tokens", "to_tokens"])
    s["segments"][i][key] = s["segments"][i][key] + rng.choice([-1, 1, 384])
    return f"segments[{i}].{key} shifted"


def _rescale(rng, s) -> str:
    i = rng.randrange(len(s["segments"]))
    w = s["segments"][i]["weights"]
    factor = rng.choice([0.0, 2.0, 1e-300, 1e300])
    s["segments"][i]["weights"] = {d: v * factor for d, v in w.items()}
    return f"segments[{i}].weights x {factor}"


SCHEDULE_OPS = {"reorder": _reorder, "overlap": _overlap, "duplicate": _duplicate,
                "tokens": _shift_tokens, "rescale": _rescale}


def schedule_cases(n: int, seed: int = 0, untrusted: bool = False):
    """(what, parse) for n mutated schedules (plain data, or JSON text one
    time in four), then whole-text attacks; `parse()` runs parse_schedule
    (untrusted: as the dashboard parses an upload)."""
    rng = random.Random(seed)
    base = valid_schedule()
    for i in range(n):
        data = copy.deepcopy(base)
        what = "; ".join(_mutate(rng, data, SCHEDULE_OPS) for _ in range(rng.choice([1, 1, 2])))
        text = _as_text(data) if i % 4 == 3 else None
        yield what, lambda v=data if text is None else text: parse_schedule(v, untrusted=untrusted)
    for what, text in [
        ("100,000 nested objects", '{"a":' * 100_000 + "1" + "}" * 100_000),
        ("6 MB of spaces", " " * 6_000_000),
        ("version true", json.dumps({**base, "version": True})),
        ("approved_by an object", json.dumps(base).replace('"approved_by": "alice"', '"approved_by": {"x": 1}', 1)),
    ]:
        yield what, lambda t=text: parse_schedule(t, untrusted=untrusted)


def fuzz_schedules(n: int, seed: int = 0) -> dict:
    """n mutated schedules (plus whole-text attacks) through
    backend.schedule.parse_schedule; counts as fuzz_configs."""
    out = _outcome(0)
    for what, parse in schedule_cases(n, seed):
        out["cases"] += 1
        _run_case(out, what, parse, _schedule_storable)
    return out


# -- through the store ----------------------------------------------------------------


def soak(n_schedules: int, n_configs: int, seed: int, workdir) -> dict:
    """The same cases through the dashboard's entry points into a real store:
    a config is parsed, checked by check_untrusted and stored as a run; a
    schedule is parsed, its config checked, and stored as a replay run (not
    started). A refusal must leave the database files byte-identical.
    Returns {schedules, configs, refused, accepted, unexpected,
    unexpected_exceptions, db_changed_on_refusal, ok} (bench/soak.py)."""
    from backend.config import check_untrusted
    from backend.store import Store
    from backend.worker import create_run

    db = Path(workdir) / "fuzz.db"
    store = Store(db)
    out = {**_outcome(0), "db_changed_on_refusal": 0, "db_changes": []}

    def start_config(cfg):
        check_untrusted(cfg)
        return cfg

    def store_config(cfg):
        run_id = create_run(store, cfg)
        if from_dict(store.run(run_id)["config"]) != cfg:
            raise AssertionError("the stored config rebuilds a different config")

    def start_schedule(parsed):
        check_untrusted(parsed["run_config"])
        return parsed

    def store_schedule(parsed):
        cfg = parsed["run_config"].replace(name=f"replay-{parsed['run_config'].name}")
        run_id = create_run(store, cfg, replay_schedule=replay_record(parsed))
        if store.run(run_id)["replay_schedule"]["segments"][0]["from_step"] != 0:
            raise AssertionError("the stored replay schedule lost its first segment")

    try:
        for kind, cases, start, keep in (("schedules", schedule_cases(n_schedules, seed, untrusted=True),
                                          start_schedule, store_schedule),
                                         ("configs", config_cases(n_configs, seed, untrusted=True), start_config,
                                          store_config)):
            out[kind] = 0
            for what, parse in cases:
                out[kind] += 1
                out["cases"] += 1
                before = _db_bytes(db)
                refused = out["refused_named"] + out["unexpected"]
                _run_case(out, what, lambda p=parse, s=start: s(p()), keep)
                if out["refused_named"] + out["unexpected"] > refused and _db_bytes(db) != before:
                    out["db_changed_on_refusal"] += 1
                    out["db_changes"].append(what)
    finally:
        store.close()
    out["refused"] = out["refused_named"]
    out["ok"] = out["unexpected"] == 0 and out["db_changed_on_refusal"] == 0
    return out


def _db_bytes(db: Path) -> bytes:
    """The database and its write-ahead log, as they are on disk."""
    return b"".join(p.read_bytes() if p.exists() else b"-" for p in (db, db.with_name(db.name + "-wal")))


def main(argv=None) -> int:
    """Print the outcome of both fuzzers; exit 1 if anything was unexpected."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--schedules", type=int, default=1000)
    ap.add_argument("--configs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    bad = 0
    for label, result in (("schedules", fuzz_schedules(args.schedules, args.seed)),
                          ("configs", fuzz_configs(args.configs, args.seed))):
        print(f"{label}: {result['cases']} cases, {result['refused_named']} refused naming a field, "
              f"{result['accepted']} accepted, {result['unexpected']} unexpected")
        for ex in result["unexpected_exceptions"][:10]:
            print(f"  {ex['case']}: {ex['error']}")
        bad += result["unexpected"]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
