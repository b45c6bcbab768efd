"""backend/exports.py: every format round-trips, document formats draw the
schedule's token shares, the native schedule follows its published schema,
and bad requests are clear errors."""

import copy
import json
import math
import re

import numpy as np
import pytest

from backend.config import preset
from backend.exports import (
    FORMATS,
    ExportError,
    document_shares,
    export,
    parse,
    token_shares,
    validate_native,
)
from backend.schedule import export_schedule
from backend.store import Store

DOMAINS = ["code", "prose", "math"]
# mean tokens per document, deliberately far apart (short prose, long code)
TPD = {"code": 400.0, "prose": 90.0, "math": 150.0}
PREFIXES = {"code": "/data/code_text_document", "prose": "s3://bucket/prose"}
DOCUMENT_FORMATS = ["streaming", "hf", "data-juicer"]
TOKEN_FORMATS = ["native", "megatron", "nemo", "olmo-core"]


def segment(from_step, to_step, weights, source="proposal", **extra):
    return {"from_step": from_step, "to_step": to_step, "from_tokens": from_step * 384, "to_tokens": to_step * 384,
            "weights": weights, "source": source, "proposal_id": None, "strategy": None, "approved_by": None} | extra


def schedule() -> dict:
    """Three segments: uniform-ish, one with a zero-weight domain, awkward floats."""
    return {
        "format": "closed-loop-schedule", "version": 1,
        "run": {"id": 3, "name": "demo", "seed": 1, "status": "finished"},
        "config": {"data": {"context_length": 48}, "train": {"batch_size": 8, "steps": 30}},
        "domains": list(DOMAINS), "total_steps": 30, "tokens_per_step": 384,
        "segments": [
            segment(0, 10, {"code": 0.2, "prose": 0.5, "math": 0.3}, source="initial"),
            segment(10, 20, {"code": 0.7, "prose": 0.3, "math": 0.0}, proposal_id=4, strategy="deficit",
                    approved_by="alice"),
            segment(20, 30, {"code": 1 / 3, "prose": 1 / 7, "math": 1 - 1 / 3 - 1 / 7}, source="manual",
                    approved_by="bob"),
        ],
    }


def test_every_registered_format_is_tested():
    assert sorted(FORMATS.names()) == sorted(TOKEN_FORMATS + DOCUMENT_FORMATS)


@pytest.mark.parametrize("fmt", TOKEN_FORMATS + DOCUMENT_FORMATS)
def test_round_trip_gives_the_same_token_weights(fmt):
    s = schedule()
    text = export(s, fmt, prefixes=PREFIXES, tokens_per_doc=TPD)
    back = parse(text, fmt)
    assert len(back) == len(s["segments"])
    for got, seg in zip(back, s["segments"]):
        assert list(got) == DOMAINS
        for d in DOMAINS:
            assert abs(got[d] - seg["weights"][d]) < 1e-9, (fmt, d, got, seg["weights"])


@pytest.mark.parametrize("fmt", TOKEN_FORMATS + DOCUMENT_FORMATS)
def test_each_output_states_its_unit_and_where_each_segment_starts(fmt):
    text = export(schedule(), fmt, prefixes=PREFIXES, tokens_per_doc=TPD)
    if fmt == "native":
        assert json.loads(text) == schedule()
        return
    unit = "DOCUMENTS" if fmt in DOCUMENT_FORMATS else "TOKENS"
    assert f"Unit: {unit}" in text and "At each segment boundary:" in text
    assert "steps [10, 20), tokens [3840, 7680): proposal #4 (deficit), approved by alice" in text
    # the file prefixes, not the domain names, are what the trainer reads
    assert "/data/code_text_document" in text and "s3://bucket/prose" in text


@pytest.mark.parametrize("fmt", DOCUMENT_FORMATS)
def test_document_formats_write_document_probabilities(fmt):
    s = schedule()
    written = parse(export(s, fmt, prefixes=PREFIXES, tokens_per_doc=TPD), fmt, as_written=True)
    for got, seg in zip(written, s["segments"]):
        want = document_shares(seg["weights"], TPD)
        assert got == pytest.approx(want, abs=1e-12)
        # short prose documents must be drawn more often than their token share
        if seg["weights"]["prose"] > 0:
            assert got["prose"] > seg["weights"]["prose"]


def test_megatron_blend_and_per_split_json_are_spelt_as_megatron_reads_them():
    out = json.loads(export(schedule(), "megatron", prefixes=PREFIXES))
    seg = out["segments"][1]
    # get_blend_from_list: "w1 prefix1 w2 prefix2 ..."; the zero-weight domain is left out
    assert seg["data_path"] == "0.7 /data/code_text_document 0.3 s3://bucket/prose"
    assert set(seg["per_split_data_args"]) == {"train", "valid", "test"}
    assert seg["per_split_data_args"]["train"] == seg["data_path"]
    assert seg["per_split_data_args"]["valid"].split() == ["/data/code_text_document", "s3://bucket/prose", "math"]
    # iterations and samples: 8 sequences of 48 tokens per step
    assert (seg["train_iters"], seg["from_samples"], seg["to_samples"]) == (20, 80, 160)
    assert out["global_batch_size"] == 8 and out["unit"] == "tokens"


def test_olmo_requested_tokens_run_to_the_segment_end():
    text = export(schedule(), "olmo-core")
    assert "requested_tokens=3840," in text and "requested_tokens=11520," in text
    assert "global_batch_size=384," in text
    # source_mixture validates ratios summing to 1: the zero-weight source is left out
    seg1 = text.split("segment_1 = ")[1].split("segment_2 = ")[0]
    assert "'math'" not in seg1


def test_document_counts_follow_the_segment_tokens():
    # segment 0: 3840 tokens = 768 code (1.92 docs of 400) + 1920 prose (21.33 of 90) + 1152 math (7.68 of 150)
    text = export(schedule(), "data-juicer", tokens_per_doc=TPD)
    assert "max_sample_num: 31\n" in text  # ceil(30.93)
    assert "epoch_size: 31\n" in export(schedule(), "streaming", tokens_per_doc=TPD)
    assert ").take(31)" in export(schedule(), "hf", tokens_per_doc=TPD)


# -- token to document conversion, checked by sampling ---------------------------------


def test_sampling_documents_with_converted_probabilities_draws_the_token_shares():
    """Domains whose documents differ in length: drawing 200k documents with
    the exported per-document probabilities gives the schedule's token
    shares within 1%; drawing with the token shares themselves would not."""
    rng = np.random.default_rng(0)
    lengths = {  # synthetic documents per domain, mean lengths 400 / 90 / 150 tokens
        "code": rng.integers(100, 701, size=5000),
        "prose": rng.geometric(1 / 90, size=5000),
        "math": rng.integers(140, 161, size=5000),
    }
    measured = {d: float(v.mean()) for d, v in lengths.items()}
    s = schedule()
    written = parse(export(s, "hf", prefixes=PREFIXES, tokens_per_doc=measured), "hf", as_written=True)

    def drawn_token_shares(probs: dict[str, float]) -> dict[str, float]:
        picks = rng.choice(len(DOMAINS), size=200_000, p=[probs[d] for d in DOMAINS])
        tokens = {}
        for k, d in enumerate(DOMAINS):
            n = int((picks == k).sum())
            tokens[d] = float(rng.choice(lengths[d], size=n).sum())
        total = sum(tokens.values())
        return {d: t / total for d, t in tokens.items()}

    for probs, seg in zip(written, s["segments"]):
        got = drawn_token_shares(probs)
        for d in DOMAINS:
            assert abs(got[d] - seg["weights"][d]) < 0.01, (d, got, seg["weights"])
    # the check can fail: the unconverted token shares as document probabilities miss by far
    naive = drawn_token_shares(s["segments"][0]["weights"])
    assert max(abs(naive[d] - s["segments"][0]["weights"][d]) for d in DOMAINS) > 0.05


def test_document_and_token_shares_are_inverse():
    w = {"code": 0.25, "prose": 0.6, "math": 0.15}
    assert token_shares(document_shares(w, TPD), TPD) == pytest.approx(w, abs=1e-15)


# -- errors --------------------------------------------------------------------------


def test_unknown_format_names_it_and_lists_the_known():
    with pytest.raises(ExportError) as e:
        export(schedule(), "deepspeed")
    assert "'deepspeed'" in str(e.value) and "megatron" in str(e.value) and "data-juicer" in str(e.value)
    with pytest.raises(ExportError, match="'deepspeed'"):
        parse("{}", "deepspeed")


@pytest.mark.parametrize("fmt", ["native", "megatron", "hf"])
def test_a_schedule_without_segments_is_a_clear_error(fmt):
    s = schedule()
    s["segments"] = []
    with pytest.raises(ExportError, match=r"run 3 \(demo\) has no segments: nothing to export"):
        export(s, fmt, tokens_per_doc=TPD)


@pytest.mark.parametrize("fmt", DOCUMENT_FORMATS)
def test_document_formats_need_tokens_per_document(fmt):
    with pytest.raises(ExportError, match=f"format '{fmt}' samples documents: pass tokens_per_doc"):
        export(schedule(), fmt)
    with pytest.raises(ExportError, match="tokens_per_doc: missing domain 'math'"):
        export(schedule(), fmt, tokens_per_doc={"code": 1.0, "prose": 2.0})
    with pytest.raises(ExportError, match=r"tokens_per_doc.prose: expected a finite number > 0, got 0"):
        export(schedule(), fmt, tokens_per_doc=TPD | {"prose": 0})


@pytest.mark.parametrize("prefixes, match", [
    ({"cdoe": "/x"}, "prefixes: unknown domain 'cdoe'"),
    ({"code": "/a b"}, "prefixes.code: expected a path without whitespace"),
    ({"code": "0.5"}, "prefixes.code: expected a path without whitespace"),
    ({"code": "/x", "prose": "/x"}, "prefixes.prose: '/x' is also the prefix of 'code'"),
])
def test_bad_prefixes_are_refused(prefixes, match):
    with pytest.raises(ExportError, match=match):
        export(schedule(), "megatron", prefixes=prefixes)


@pytest.mark.parametrize("fn, match", [
    (lambda s: s["segments"][1].update(from_step=12), r"segments\[1\].from_step: 12 does not continue"),
    (lambda s: s["segments"][0]["weights"].pop("math"), r"segments\[0\].weights: missing weight for domain 'math'"),
    (lambda s: s["segments"][0]["weights"].update(java=0.1), r"segments\[0\].weights: unknown domain 'java'"),
])
def test_inconsistent_schedules_are_refused(fn, match):
    s = schedule()
    fn(s)
    with pytest.raises(ExportError, match=match):
        export(s, "megatron")


@pytest.mark.parametrize("fmt, text, match", [
    ("native", "{", "native: not valid JSON"),
    ("megatron", '{"format": "nemo"}', "megatron: expected a JSON object with format 'megatron'"),
    ("hf", "segment_0 = (", "hf: not valid Python"),
    ("olmo-core", "domains = ['a']\n", "olmo-core: no `segment_<i> = ...` assignments"),
    ("streaming", "format: streaming\n  bad: [", "streaming: not valid YAML"),
])
def test_unreadable_text_is_a_clear_parse_error(fmt, text, match):
    with pytest.raises(ExportError, match=match):
        parse(text, fmt)


def first(pattern: str, repl: str):
    """An edit of an export's text: the first match of `pattern` replaced."""
    return lambda text: re.sub(pattern, repl, text, count=1)


@pytest.mark.parametrize("fmt, edit, match", [
    # weights: backend.mixture's rule, naming the segment and the domain
    ("megatron", first(r'"data_path": "0.2 ', '"data_path": "nan '),
     r"segments\[0\].data_path: weight of 'code' is not finite: nan"),
    ("megatron", first(r'"data_path": "0.2 ', '"data_path": "1e999 '),
     r"segments\[0\].data_path: weight of 'code' is not finite"),
    ("megatron", first(r'"data_path": "0.2 ', '"data_path": "-5 '),
     r"segments\[0\].data_path: weight of 'code' is negative"),
    ("megatron", first(r'"data_path": "0.2 ', '"data_path": "abc '),
     r"segments\[0\].data_path: weight of .* is not a number"),
    ("nemo", first(r"'train': \['0.2'", "'train': ['nan'"),
     r"nemo: segment_0: paths: weight of 'code' is not finite"),
    ("olmo-core", first(r"target_ratio=0.2", "target_ratio=-0.2"),
     r"olmo-core: segment_0: weight of 'code' is negative"),
    ("olmo-core", first(r"source_name='prose'", "source_name='code'"),
     r"olmo-core: segment_0: domain 'code' is given twice"),
    ("streaming", first(r"proportion: [0-9.]+", "proportion: .nan"),
     r"streaming: segments\[0\]: weight of 'code' is not finite"),
    ("streaming", first(r"proportion: [0-9.]+", "proportion: abc"),
     r"streaming: segments\[0\]: weight of 'code' is not a number: 'abc'"),
    ("streaming", first(r"proportion: [0-9.]+", "proportion: [1]"),
     r"streaming: segments\[0\]: weight of 'code' is not a number: \[1\]"),
    ("streaming", first(r"proportion: [0-9.]+", "proportion: -1"),
     r"streaming: segments\[0\]: weight of 'code' is negative"),
    ("streaming", first(r"code: 400.0", "code: 0"), r"streaming: tokens_per_doc.code: expected a finite number > 0"),
    ("hf", first(r"probabilities=\[[0-9.]+", "probabilities=[1e999"),
     r"hf: segment_0: weight of 'code' is not finite"),
    ("data-juicer", first(r"weight: [0-9.]+", "weight: .inf"),
     r"data-juicer: segments\[0\].dataset.configs: weight of 'code' is not finite"),
    ("native", first(r'"code": 0.2', '"code": NaN'), r"segments\[0\].weights: weight of 'code' is not finite"),
    # structure
    ("megatron", first(r'"domains": \[', '"domains": [[1], '),
     r"megatron: domains: expected a list of distinct domain names"),
    ("megatron", lambda t: '{"format": "megatron", "x": ' + "[" * 100_000 + "]" * 100_000 + "}",
     "megatron: not valid JSON"),
    ("megatron", first(r'"segments": \[', '"segments": [1, '),
     r"megatron: segments: expected a non-empty list of objects"),
    ("streaming", lambda t: t + "x: " + "[" * 100_000 + "\n", "streaming: not valid YAML"),
    # a key given twice: json.loads and yaml.safe_load would keep the last without a word
    ("megatron", first(r'"data_path": "', '"data_path": "1 code", "data_path": "'),
     r"megatron: segments\[0\]: key 'data_path' is given twice"),
    ("native", first(r'"code": 0.2', '"code": 0.9, "code": 0.2'), r"native: segments\[0\].weights: key 'code' is given"),
    ("streaming", first(r"\n  code: 400.0\n", "\n  code: 400.0\n  code: 40.0\n"),
     r"streaming: not valid YAML: key 'code' is given twice \(line \d+\)"),
    ("data-juicer", first(r"\nunit: documents\n", "\nunit: documents\nunit: tokens\n"),
     r"data-juicer: not valid YAML: key 'unit' is given twice"),
    ("streaming", lambda t: t.replace("segments:", "old_segments:"), "streaming: segments: expected a non-empty list"),
    ("nemo", lambda t: t + "\nfoo = {[1]: 2}\n", None),  # code that is no literal: not read, not an error
    ("nemo", first(r"paths=\{", "paths={[1]: 2}, other={"), r"nemo: segment_0: paths= is not a literal"),
    ("nemo", first(r"prefixes = \{'code': '[^']+'", "prefixes = {'code': ['x']"),
     r"nemo: segment_0: `prefixes = \{...\}`"),
    ("hf", first(r"datasets\['code'\]", "datasets[['code']]"),
     r"hf: segment_0: expected a domain name, got \['code'\]"),
])
def test_malformed_text_is_refused_naming_the_field(fmt, edit, match):
    text = export(schedule(), fmt, prefixes=PREFIXES, tokens_per_doc=TPD)
    bad = edit(text)
    assert bad != text
    if match is None:
        assert parse(bad, fmt) == parse(text, fmt)
        return
    with pytest.raises(ExportError, match=match):
        parse(bad, fmt)


def test_parse_refuses_a_prefix_it_does_not_know():
    text = export(schedule(), "megatron", prefixes=PREFIXES).replace("0.3 s3://bucket/prose", "0.3 /elsewhere")
    with pytest.raises(ExportError, match=r"megatron: segments\[1\].data_path: unknown prefix '/elsewhere'"):
        parse(text, "megatron")


# -- the published schema ------------------------------------------------------------


def test_native_export_passes_the_schema():
    validate_native(json.loads(export(schedule(), "native")))


@pytest.mark.parametrize("fn, match", [
    (lambda s: s.pop("domains"), "top level: 'domains' is a required property"),
    (lambda s: s["segments"][0].pop("to_tokens"), r"segments\[0\]: 'to_tokens' is a required property"),
    (lambda s: s.update(tokens_per_step="384"), "tokens_per_step: '384' is not of type 'integer'"),
    (lambda s: s["segments"][1]["weights"].update(code="0.7"), r"segments\[1\].weights.code: '0.7' is not of type"),
    (lambda s: s["segments"][0].update(source="import"), r"segments\[0\].source: 'import' is not one of"),
    (lambda s: s.update(version=2), "version: 1 was expected"),
    (lambda s: s["segments"][2].update(approved_by=7), r"segments\[2\].approved_by: 7 is not of type"),
])
def test_a_broken_native_schedule_fails_the_schema(fn, match):
    s = schedule()
    fn(s)
    with pytest.raises(ExportError, match=match):
        validate_native(s)
    with pytest.raises(ExportError, match=match):
        export(s, "native")


def test_what_the_store_exports_passes_the_schema(tmp_path):
    """The schema describes export_schedule's real output, not only our dicts."""
    cfg = preset("tiny").to_dict()
    domains = [d["name"] for d in cfg["data"]["domains"]]
    store = Store(tmp_path / "cl.db")
    try:
        rid = store.create_run(cfg)
        store.add_segment(rid, from_step=0, tokens_at=0, weights={d: 1 / len(domains) for d in domains},
                          source="initial")
        store.update_run(rid, status="finished", step=30)
        native = export_schedule(store, rid)
    finally:
        store.close()
    validate_native(native)
    assert parse(export(native, "megatron"), "megatron")[0] == pytest.approx(native["segments"][0]["weights"])
    assert copy.deepcopy(native) == json.loads(export(native, "native"))


def test_the_hf_export_runs_as_pasted_with_real_datasets(tmp_path):
    """Execute the exported Python with the real `datasets` library on local
    JSONL folders: each segment yields its documents, in its proportions,
    and never a domain whose weight is 0."""
    prefixes = {}
    for d in DOMAINS:
        (tmp_path / d).mkdir()
        rows = "".join(json.dumps({"domain": d, "text": "x"}) + "\n" for _ in range(200))
        (tmp_path / d / "train.jsonl").write_text(rows)
        prefixes[d] = str(tmp_path / d)
    s = schedule()
    s["tokens_per_step"] = 12_000  # about 400 documents per segment
    for seg in s["segments"]:
        seg["from_tokens"], seg["to_tokens"] = seg["from_step"] * 12_000, seg["to_step"] * 12_000
    text = export(s, "hf", prefixes=prefixes, tokens_per_doc=TPD)
    namespace = {}
    exec(compile(text, "hf_export", "exec"), namespace)
    for i, probs in enumerate(parse(text, "hf", as_written=True)):
        drawn = [row["domain"] for row in namespace[f"segment_{i}"]]
        assert len(drawn) == math.ceil(sum(120_000 * w / TPD[d] for d, w in s["segments"][i]["weights"].items()))
        for d in DOMAINS:
            assert abs(drawn.count(d) / len(drawn) - probs[d]) < 0.06, (i, d)
        assert ("math" in drawn) == (probs["math"] > 0)


def test_cli_exports_a_real_run_in_every_format(tiny_run, tmp_path):
    """export-schedule --format F on a real run: each file parses back to
    the run's segments; document formats use the run's measured tokens per
    document; an unknown format exits 2 naming the known ones."""
    from conftest import cli, cli_json

    db, run_id = tiny_run
    store = Store(db)
    want = [s["weights"] for s in store.schedule(run_id)]
    assert all(d["tokens_per_doc"] > 1 for d in store.domains(run_id))
    for fmt in FORMATS.names():
        out = tmp_path / f"schedule.{fmt}"
        res = cli_json("export-schedule", run_id, "-o", out, "--format", fmt, db=db)
        assert res["segments"] == len(want)
        got = parse(out.read_text(), fmt)
        assert len(got) == len(want), fmt
        for g, w in zip(got, want):
            assert max(abs(g[d] - w[d]) for d in w) < 1e-9, fmt
    p = cli("export-schedule", run_id, "-o", tmp_path / "x", "--format", "nope", db=db, check=False)
    assert p.returncode == 2 and "unknown export format 'nope'" in p.stderr and "megatron" in p.stderr
