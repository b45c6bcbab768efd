"""backend/schedule.py: parse (validate) imported schedules and export a
run's schedule from a store filled by hand."""

import copy
import itertools
import json
import math

import pytest

from backend.config import RunConfig, preset
from backend.schedule import (
    FORMAT,
    VERSION,
    ScheduleError,
    export_schedule,
    parse_replay,
    parse_schedule,
)
from backend.decisions import decide, set_mixture
from backend.store import Store

CFG = preset("tiny").to_dict()  # 30 steps, a checkpoint every 10, 8 x 48 tokens per step
DOMAINS = [d["name"] for d in CFG["data"]["domains"]]
UNIFORM = {d: 1 / 6 for d in DOMAINS}
SKEWED = {"strings": 0.3, "arithmetic": 0.3, "logic": 0.1, "recall": 0.1, "noise": 0.05, "code": 0.15}


def schedule() -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": copy.deepcopy(CFG),
        "segments": [
            {"from_step": 0, "to_step": 10, "weights": dict(UNIFORM), "source": "initial"},
            {"from_step": 10, "to_step": 30, "weights": dict(SKEWED), "source": "proposal"},
        ],
    }


def refused(data) -> str:
    with pytest.raises(ScheduleError) as e:
        parse_schedule(data)
    return str(e.value)


def test_valid_schedule_passes_with_a_checked_config():
    out = parse_schedule(schedule())
    assert isinstance(out["run_config"], RunConfig)
    assert out["run_config"].to_dict() == CFG
    assert out["segments"] == schedule()["segments"]
    # the same from JSON text and bytes
    text = json.dumps(schedule())
    assert parse_schedule(text)["segments"] == out["segments"]
    assert parse_schedule(text.encode())["run_config"] == out["run_config"]


def mutated(fn) -> dict:
    s = schedule()
    fn(s)
    return s


def seg_weights(i, **changes):
    def fn(s):
        s["segments"][i]["weights"].update(changes)
    return fn


@pytest.mark.parametrize("fn, start", [
    (lambda s: s.update(format="other-tool"), "format:"),
    (lambda s: s.pop("format"), "format:"),
    (lambda s: s.update(version=2), "version:"),
    (lambda s: s.update(version="1"), "version:"),
    (lambda s: s.pop("config"), "config: missing"),
    (lambda s: s["config"]["train"].update(lr=-1.0), "config.train.lr:"),
    (lambda s: s["config"]["train"].update(lrr=1.0), "config.train.lrr:"),
    (lambda s: s["config"]["data"]["domains"][0].update(sorce="x"), "config.data.domains[0].sorce:"),
    (lambda s: s["config"].update(policy="never"), "config.policy:"),
    (lambda s: s.update(segments=[]), "segments:"),
    (lambda s: s.update(segments={"0": {}}), "segments:"),
    (lambda s: s.pop("segments"), "segments:"),
    (lambda s: s["segments"].__setitem__(1, "10:skewed"), "segments[1]:"),
    (lambda s: s["segments"][1].update(from_step=15), "segments[1].from_step:"),
    (lambda s: s["segments"][1].update(from_step=30), "segments[1].from_step:"),
    (lambda s: s["segments"][1].update(from_step="10"), "segments[1].from_step:"),
    (lambda s: s["segments"][1].update(from_step=10.0), "segments[1].from_step:"),
    (lambda s: s["segments"][1].update(from_step=True), "segments[1].from_step:"),
    (lambda s: s["segments"][0].update(from_step=10), "segments[0].from_step:"),
    (lambda s: s["segments"][1].update(from_step=0), "segments[1].from_step:"),
    (lambda s: s["segments"].append({"from_step": 10, "weights": dict(UNIFORM)}), "segments[2].from_step:"),
    (lambda s: s["segments"].insert(1, {"from_step": 20, "weights": dict(UNIFORM)}), "segments[2].from_step:"),
    (lambda s: s["segments"][1]["weights"].pop("code"), "segments[1].weights:"),
    (lambda s: s["segments"][1].update(weights=[0.5, 0.5]), "segments[1].weights:"),
    (lambda s: s["segments"][0].pop("weights"), "segments[0].weights:"),
    (seg_weights(1, web=0.0), "segments[1].weights.web:"),
    (seg_weights(1, noise=-0.05, code=0.25), "segments[1].weights.noise:"),
    (seg_weights(1, noise=math.nan), "segments[1].weights.noise:"),
    (seg_weights(1, noise=math.inf), "segments[1].weights.noise:"),
    (seg_weights(1, noise="0.05"), "segments[1].weights.noise:"),
    (seg_weights(1, noise=True), "segments[1].weights.noise:"),
    (lambda s: s["segments"][1].update(source="magic"), "segments[1].source:"),
])
def test_broken_schedule_is_refused_naming_the_field(fn, start):
    msg = refused(mutated(fn))
    assert msg.startswith(start), msg


def test_messages_say_what_is_wrong():
    assert "not a checkpoint step" in refused(mutated(lambda s: s["segments"][1].update(from_step=15)))
    assert "not after" in refused(mutated(lambda s: s["segments"][1].update(from_step=0)))
    assert "must start at step 0" in refused(mutated(lambda s: s["segments"][0].update(from_step=10)))
    assert "missing weight for domain 'code'" in refused(mutated(lambda s: s["segments"][1]["weights"].pop("code")))
    assert "unknown domain" in refused(mutated(seg_weights(1, web=0.0)))


def test_weights_follow_the_one_mixture_rule_renormalised():
    # backend.mixture.validate_weights: any finite weights >= 0, not all zero,
    # renormalised (an import used to demand a sum of exactly 1)
    out = parse_schedule(mutated(seg_weights(1, noise=0.5)))
    w = out["segments"][1]["weights"]
    assert sum(w.values()) == pytest.approx(1.0)
    assert w["noise"] == pytest.approx(0.5 / 1.45) and w["strings"] == pytest.approx(0.3 / 1.45)
    assert "all weights are zero" in refused(mutated(lambda s: s["segments"][0].update(
        weights=dict.fromkeys(DOMAINS, 0))))
    # weights whose sum passes the largest float are scaled, not turned into zeros
    huge = parse_schedule(mutated(lambda s: s["segments"][0].update(weights=dict.fromkeys(DOMAINS, 1e308))))
    assert huge["segments"][0]["weights"] == pytest.approx(UNIFORM)
    # an export's weights already sum to 1 and keep their exact floats (bit-for-bit replay)
    assert parse_schedule(schedule())["segments"][0]["weights"] == UNIFORM


def test_weights_are_kept_as_floats_in_the_domains_order_without_a_negative_zero():
    """-0.0 is a weight of 0 (an export must not show a negative share); an
    integer 1 is 1.0; a file's own key order gives way to the domains'."""
    for weights in ({**SKEWED, "noise": -0.0, "code": 0.2},  # sums to 1: the exact floats are kept
                    {**SKEWED, "noise": -0.0},  # renormalised
                    dict.fromkeys(DOMAINS, 0) | {"logic": 1}):
        reordered = dict(reversed(list(weights.items())))
        (_, seg) = parse_schedule(mutated(lambda s: s["segments"][1].update(weights=reordered)))["segments"]
        assert list(seg["weights"]) == DOMAINS
        assert all(type(w) is float and math.copysign(1, w) == 1 for w in seg["weights"].values())
        assert json.dumps(seg["weights"]).count("-") == 0


@pytest.mark.parametrize("data", ["{not json", b"\xff\xfe", "[1, 2]", "42", None])
def test_not_a_json_object_is_refused(data):
    msg = refused(data)
    assert "JSON" in msg


@pytest.mark.parametrize("data", [b"\xff\xff\xff", b'{"format": "caf\xe9"}'])
def test_bytes_that_are_not_utf8_are_refused(data):
    assert "JSON" in refused(data)


def test_segment_source_is_optional():
    s = schedule()
    for seg in s["segments"]:
        seg.pop("source")
    out = parse_schedule(s)
    assert [seg.get("source") for seg in out["segments"]] == [None, None]


# -- export from a store filled by hand ---------------------------------------------


@pytest.fixture
def filled(tmp_path):
    """A run whose mixture changed at step 10 (an approved proposal) and at
    step 20 (a manual mixture); a later proposal is still pending."""
    store = Store(tmp_path / "cl.db")
    rid = store.create_run(CFG)
    tokens_per_step = CFG["train"]["batch_size"] * CFG["data"]["context_length"]
    store.add_segment(rid, from_step=0, tokens_at=0, weights=UNIFORM, source="initial")
    pid = store.add_proposal(rid, step=10, strategy="deficit", current_weights=UNIFORM, weights=SKEWED,
                             rationale={}, forecast={})
    decide(store, pid, "approve", by="alice")
    store.apply_approved(rid, step=10, tokens_at=10 * tokens_per_step)
    manual = set_mixture(store, rid, dict.fromkeys(DOMAINS, 1) | {"code": 4}, step=15, by="bob")
    store.apply_approved(rid, step=20, tokens_at=20 * tokens_per_step)
    store.add_proposal(rid, step=20, strategy="deficit", current_weights=UNIFORM, weights=UNIFORM,
                       rationale={}, forecast={})
    store.update_run(rid, status="finished", step=30)
    yield store, rid, pid, manual
    store.close()


def test_export_describes_the_trained_segments(filled):
    store, rid, pid, manual = filled
    out = export_schedule(store, rid)
    assert list(out)[:2] == ["format", "version"]
    assert (out["format"], out["version"], out["total_steps"], out["tokens_per_step"]) == (FORMAT, VERSION, 30, 384)
    assert out["domains"] == DOMAINS and out["config"] == CFG
    assert out["run"] == {"id": rid, "name": "tiny", "seed": 0, "status": "finished"}
    segs = out["segments"]
    assert [(s["from_step"], s["to_step"]) for s in segs] == [(0, 10), (10, 20), (20, 30)]
    assert [s["source"] for s in segs] == ["initial", "proposal", "manual"]
    assert [s["proposal_id"] for s in segs] == [None, pid, manual]
    assert [s["strategy"] for s in segs] == [None, "deficit", "manual"]
    assert [s["approved_by"] for s in segs] == [None, "alice", "bob"]
    assert segs[1]["weights"] == SKEWED and segs[2]["weights"]["code"] == pytest.approx(4 / 9)
    # segments tile the run: each ends where the next starts, tokens follow steps
    for a, b in itertools.pairwise(segs):
        assert a["to_step"] == b["from_step"] and a["to_tokens"] == b["from_tokens"]
    for s in segs:
        assert s["from_tokens"] == s["from_step"] * 384 and s["to_tokens"] == s["to_step"] * 384
    assert segs[-1]["to_tokens"] == 30 * 384
    # the stored tokens_at agree with the exported token counts
    assert [r["tokens_at"] for r in store.schedule(rid)] == [s["from_tokens"] for s in segs]


def test_export_round_trips_through_json_and_parse(filled):
    store, rid, *_ = filled
    exported = export_schedule(store, rid)
    parsed = parse_schedule(json.dumps(exported))
    assert isinstance(parsed["run_config"], RunConfig) and parsed["run_config"].to_dict() == CFG
    assert parsed["segments"] == exported["segments"]


@pytest.mark.parametrize("status, step, spans", [
    ("stopped", 25, [(0, 10), (10, 20), (20, 25)]),  # stopped mid-stretch
    ("stopped", 20, [(0, 10), (10, 20)]),  # at checkpoint 20: the manual mixture applied there trained nothing
    ("failed", 10, [(0, 10)]),
    ("running", 0, []),
    ("finished", 20, [(0, 10), (10, 20), (20, 30)]),  # an outside trainer's last checkpoint may be before its end
])
def test_an_unfinished_run_exports_the_steps_it_trained(filled, status, step, spans):
    store, rid, *_ = filled
    store.update_run(rid, status=status, step=step)
    out = export_schedule(store, rid)
    assert [(s["from_step"], s["to_step"]) for s in out["segments"]] == spans
    assert [(s["from_tokens"], s["to_tokens"]) for s in out["segments"]] == [(a * 384, b * 384) for a, b in spans]
    assert out["total_steps"] == 30  # the config's, as the run was planned
    if spans:  # and it reads back for a replay, which trains on with the last mixture
        parsed = parse_schedule(json.dumps(out))
        assert parsed["segments"] == out["segments"]


def test_export_prefers_the_stored_domains(filled):
    store, rid, *_ = filled
    store.set_domains(rid, [{"name": d, "source": "x", "skills": []} for d in reversed(DOMAINS)])
    assert export_schedule(store, rid)["domains"] == DOMAINS[::-1]


# -- consistency and hostile input ------------------------------------------------------


def exported() -> dict:
    """schedule() with everything an export carries."""
    s = schedule()
    s.update(run={"id": 1, "name": "tiny", "seed": 0, "status": "finished"}, domains=list(DOMAINS),
             total_steps=30, tokens_per_step=384)
    for seg in s["segments"]:
        seg.update(from_tokens=seg["from_step"] * 384, to_tokens=seg["to_step"] * 384, proposal_id=None,
                   strategy=None, approved_by=None)
    return s


def test_a_full_export_passes():
    assert parse_schedule(exported())["segments"][1]["to_tokens"] == 30 * 384


@pytest.mark.parametrize("fn, start", [
    (lambda s: s.update(version=True), "version: expected 1, got True"),
    (lambda s: s.update(extra=1), "extra: unknown key"),
    (lambda s: s.update(run_config={}), "run_config: unknown key"),
    (lambda s: s["segments"][0].update(colour="red"), "segments[0].colour: unknown key"),
    (lambda s: s["run"].update(owner="x"), "run.owner: unknown key"),
    (lambda s: s.update(run=[1]), "run: expected an object"),
    (lambda s: s["run"].update(name={"a": 1}), "run.name: expected str or null"),
    (lambda s: s["segments"][1].update(approved_by={"name": "x"}), "segments[1].approved_by: expected str or null"),
    (lambda s: s["segments"][1].update(approved_by=7), "segments[1].approved_by: expected str or null"),
    (lambda s: s["segments"][1].update(proposal_id="3"), "segments[1].proposal_id: expected int or null"),
    (lambda s: s["segments"][1].update(proposal_id=2**63), "segments[1].proposal_id: 9223372036854775808 is outside"),
    (lambda s: s["segments"][0].update(to_step=20), "segments[0].to_step: 20 must equal segments[1].from_step 10"),
    (lambda s: s["segments"][0].update(to_step=5), "segments[0].to_step: 5 must equal segments[1].from_step 10"),
    (lambda s: s["segments"][1].update(to_step=40, to_tokens=None),
     "segments[1].to_step: 40 must be after from_step 10 and at most train.steps 30"),
    (lambda s: s["segments"][1].update(to_step=10, to_tokens=None),
     "segments[1].to_step: 10 must be after from_step 10"),
    (lambda s: s["segments"][1].update(from_tokens=3841), "segments[1].from_tokens: 3841 is not step 10 x 384"),
    (lambda s: s["segments"][0].update(to_tokens=0), "segments[0].to_tokens: 0 is not step 10 x 384"),
    (lambda s: s["segments"].reverse(), "segments[0].from_step: the first segment must start at step 0"),
    (lambda s: s.update(total_steps=40), "total_steps: expected 30"),
    (lambda s: s.update(tokens_per_step=True), "tokens_per_step: expected 384"),
    (lambda s: s.update(total_steps=30.0), "total_steps: expected 30 (from the config), got 30.0"),
    (lambda s: s.update(version=1.0), "version: expected 1, got 1.0"),
    (lambda s: s.update(domains=DOMAINS[:-1]), "domains: expected the config's domains"),
    (lambda s: s["segments"][1]["weights"].update(noise=10**5000), "segments[1].weights.noise: an integer of"),
    (lambda s: s["segments"][1].update(approved_by="bob\ud800"), "segments[1].approved_by: text with a lone surrogate"),
    (lambda s: s["config"].update(seed=2**70), "config.seed: an integer of 71 bits"),
    (lambda s: s["config"]["model"].update(pretrained="/"), "config.model.pretrained: '/' is not a saved"),
])
def test_inconsistent_or_hostile_schedule_is_refused_naming_the_field(fn, start):
    s = exported()
    fn(s)
    msg = refused(s)
    assert msg.startswith(start), msg[:200]


@pytest.mark.parametrize("text, start", [
    ('{"a":' * 100_000 + "1" + "}" * 100_000, "not valid JSON: nested deeper than 32 levels"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON: nested deeper than 32 levels"),
    (json.dumps(exported()).replace('"noise": 0.05', '"noise": ' + "9" * 5000),
     "segments[1].weights.noise: an integer of 5000 digits"),
    (json.dumps(exported()).replace('"approved_by": null', '"approved_by": "\\udc00"', 1),
     "segments[0].approved_by: text with a lone surrogate"),
    # json.loads keeps the last of a duplicate key without a word: the file means two things
    (json.dumps(exported()).replace('"noise": 0.05', '"noise": 0.05, "noise": 0.9'),
     "segments[1].weights: key 'noise' is given twice"),
    (json.dumps(exported())[:-1] + ', "segments": []}', "top level: key 'segments' is given twice"),
], ids=["objects", "lists", "5000-digits", "surrogate", "duplicate-weight", "duplicate-top-key"])
def test_hostile_text_is_refused_naming_the_field(text, start):
    msg = refused(text)
    assert msg.startswith(start), msg[:200]


def test_size_limits_for_the_file_and_what_a_run_stores(monkeypatch):
    text = json.dumps(exported())
    monkeypatch.setenv("CLOSED_LOOP_MAX_SCHEDULE_BYTES", str(len(text) - 1))
    assert refused(text).startswith(f"schedule: the file is {len(text):,} bytes")
    monkeypatch.setenv("CLOSED_LOOP_MAX_SCHEDULE_BYTES", str(len(text)))
    parse_schedule(text)
    monkeypatch.setenv("CLOSED_LOOP_MAX_STORED_SCHEDULE_BYTES", "200")
    assert refused(text).startswith("segments: 2 segments take")


def test_a_replay_stores_the_segments_not_the_config():
    from backend.schedule import replay_record

    record = replay_record(parse_schedule(exported()))
    assert "config" not in record and record["run"]["name"] == "tiny"
    assert [s["from_step"] for s in record["segments"]] == [0, 10]
    assert record["segments"][1]["weights"] == SKEWED


def test_short_fuzz_finds_no_unexpected_exception():
    from bench.fuzz import fuzz_schedules

    out = fuzz_schedules(100, seed=1)
    assert out["unexpected_exceptions"] == [] and out["unexpected"] == 0
    assert out["refused_named"] > out["accepted"] > 0
    assert out["refused_named"] + out["accepted"] == out["cases"]


def test_short_fuzz_through_the_store_changes_nothing_on_refusal(tmp_path):
    from bench.fuzz import soak

    out = soak(n_schedules=60, n_configs=30, seed=2, workdir=tmp_path)
    assert out["ok"] and out["unexpected"] == 0 and out["db_changed_on_refusal"] == 0
    assert out["accepted"] > 0 and out["refused"] > 0 and out["cases"] == out["schedules"] + out["configs"]
    # every accepted case is a stored run
    store = Store(tmp_path / "fuzz.db")
    assert len(store.runs()) == out["accepted"]
    store.close()


# -- replay FILE: a native schedule or a plain {domain: weight} mixture ----------


def test_a_plain_mixture_replays_as_one_segment_over_the_configured_run(tmp_path):
    from backend.worker import start_replay

    raw = {"strings": 3, "arithmetic": 3, "logic": 1, "recall": 1, "noise": 0.5, "code": 1.5}
    out = parse_replay(json.dumps(raw), preset("tiny"))
    assert out["run_config"] == preset("tiny")
    assert [(g["from_step"], g["to_step"], g["source"]) for g in out["segments"]] == [(0, 30, "manual")]
    assert out["segments"][0]["weights"] == pytest.approx(SKEWED)  # renormalised by the one weights rule
    db = tmp_path / "r.db"
    rid = start_replay(str(db), out, source="mix.json", detach=False)
    run = Store(db).run(rid)
    assert run["replay_schedule"]["segments"][0]["weights"] == pytest.approx(SKEWED)
    assert run["config"]["train"]["steps"] == 30 and run["name"] == "replay-tiny"


def test_a_native_schedule_still_replays_and_takes_no_config():
    assert parse_replay(json.dumps(exported()))["segments"] == parse_schedule(exported())["segments"]
    with pytest.raises(ScheduleError, match="--config/--preset: a native schedule carries its own"):
        parse_replay(exported(), preset("tiny"))


@pytest.mark.parametrize("data, start", [
    ({**UNIFORM, "web": 0.1}, "weights.web: unknown domain 'web'"),
    ({d: w for d, w in UNIFORM.items() if d != "code"}, "weights: missing weight for domain 'code'"),
    ({**UNIFORM, "noise": -1}, "weights.noise: weight of 'noise' is negative"),
    ({**UNIFORM, "noise": "lots"}, "weights.noise: weight of 'noise' is not a number"),
    ({**UNIFORM, "noise": True}, "weights.noise: weight of 'noise' is not a number"),
    (dict.fromkeys(UNIFORM, 0), "weights: all weights are zero"),
    ({}, "weights: missing weight for domain 'strings'"),
    ([0.5, 0.5], "top level: expected a JSON object"),
    ({"segments": [], "config": {}}, "format: expected"),  # a broken schedule stays a schedule
])
def test_a_bad_mixture_is_refused_naming_the_field(data, start):
    with pytest.raises(ScheduleError) as e:
        parse_replay(json.dumps(data), preset("tiny"))
    assert str(e.value).startswith(start), str(e.value)


def test_a_mixture_without_a_run_config_is_refused():
    with pytest.raises(ScheduleError, match="weights: a plain .* needs a run: give --config FILE or --preset"):
        parse_replay(json.dumps(UNIFORM))


def test_replay_cli_refuses_a_bad_mixture_and_writes_nothing(tmp_path):
    from conftest import cli

    db = tmp_path / "x.db"
    mix = tmp_path / "mix.json"
    cases = [
        ({**UNIFORM, "web": 1}, ("--preset", "tiny"), "weights.web: unknown domain"),
        (UNIFORM, (), "needs a run: give --config FILE or --preset NAME"),
        (UNIFORM, ("--preset", "tiny", "--config", str(mix)), "give one, not both"),
        (UNIFORM, ("--preset", "huge"), "huge"),
        (exported(), ("--preset", "tiny"), "a native schedule carries its own run config"),
    ]
    for data, flags, words in cases:
        mix.write_text(json.dumps(data))
        p = cli("replay", mix, *flags, db=db, check=False)
        assert p.returncode == 2 and words in p.stderr and "Traceback" not in p.stderr, (flags, p.stderr[-400:])
    assert not db.exists() or Store(db).runs() == []


def test_replay_cli_refuses_a_file_over_the_limit_before_reading_it(tmp_path):
    """A 2 GiB schedule (sparse: no disk) is refused by its size, under a
    1.5 GB address-space limit that reading it whole would break."""
    import resource

    from conftest import cli

    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(2**31)
    db = tmp_path / "x.db"
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (1_500_000_000, 1_500_000_000))  # noqa: E731
    p = cli("replay", big, db=db, check=False, preexec_fn=limit)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-400:]
    assert "schedule: the file is 2,147,483,648 bytes, above the limit of 5,000,000 bytes" in p.stderr
    assert not db.exists() or Store(db).runs() == []
