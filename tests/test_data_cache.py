"""backend/data/cache.py and the sources it reads (backend/data/sources.py),
the vectorised sampler over token caches, and the loop's per-domain data
accounting and max_epochs (with the fakes of backend.testing)."""

import gzip
import json
import os
import re
import time

import numpy as np
import pytest

from backend import frames
from backend.config import DomainConfig, preset
from backend.data import cache as cache_mod
from backend.data import tokenizer as tokenizer_mod
from backend.data.cache import CorruptCacheWarning, cache_root, token_cache
from backend.data.domains import DataError, build_domain, build_domains
from backend.data.sampler import MixtureSampler, cap_weights, hash64
from backend.data.sources import folder_shards
from backend.decisions import DecisionError, set_mixture
from backend.loop import ClosedLoop
from backend.store import Store
from backend.testing import fake_components

CONTEXT = 16
DOCS = [f"document {i}: " + " ".join(f"word{(i * 7 + k) % 50}" for k in range(40 + i)) for i in range(30)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """30 documents in three formats: .txt files, a .jsonl.gz and a .jsonl.zst (field `body`)."""
    import zstandard

    folder = tmp_path_factory.mktemp("corpus")
    for i in range(10):
        (folder / f"a{i:02d}.txt").write_text(DOCS[i])
    with gzip.open(folder / "b.jsonl.gz", "wt") as f:
        f.write("".join(json.dumps({"body": d, "n": i}) + "\n" for i, d in enumerate(DOCS[10:20])))
    lines = "".join(json.dumps({"body": d}) + "\n" for d in DOCS[20:])
    (folder / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode()))
    return folder


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tokenizer_mod, "CHARS_PER_DOMAIN", 20_000)
        domains = build_domains([DomainConfig(name="s", source="synthetic", skills=["copy"])])
        return tokenizer_mod.train_tokenizer(domains, 350, 0, tmp_path_factory.mktemp("tok"))


def prose(corpus, **kw):
    return build_domain(DomainConfig(name="prose", source="folder", path=str(corpus), text_field="body", **kw))


def shards(corpus):
    return folder_shards(corpus, "body", "prose")


# -- the cache ------------------------------------------------------------------------


def test_cache_holds_every_document_in_order_with_eos(corpus, tokenizer, tmp_path):
    c = token_cache("prose", shards(corpus), tokenizer, tmp_path, progress=False)
    assert c.tokens.dtype == np.uint16 and c.offsets.dtype == np.int64  # vocabulary 350 < 65536
    assert c.n_docs == 30 and int(c.offsets[-1]) == len(c.tokens)
    for k in (0, 9, 10, 29):
        doc = c.document(k)
        assert doc[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(doc[:-1].tolist()) == DOCS[k]
    meta = json.loads((c.path / "meta.json").read_text())
    assert meta["n_tokens"] == len(c.tokens) and meta["dtype"] == "uint16"


def test_a_cache_is_reused_and_rebuilt_when_a_key_changes(corpus, tokenizer, tmp_path, tmp_path_factory):
    first = token_cache("prose", shards(corpus), tokenizer, tmp_path, progress=False)
    built = (first.path / "tokens.bin").stat().st_mtime_ns
    again = token_cache("prose", shards(corpus), tokenizer, tmp_path, progress=False)
    assert again.path == first.path and (again.path / "tokens.bin").stat().st_mtime_ns == built
    # another tokenizer: another cache
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tokenizer_mod, "CHARS_PER_DOMAIN", 5_000)
        other = tokenizer_mod.train_tokenizer(build_domains([DomainConfig(name="r", source="random")]), 320, 1,
                                              tmp_path_factory.mktemp("tok2"))
    assert token_cache("prose", shards(corpus), other, tmp_path, progress=False).path != first.path
    # a source file changes (size and mtime): another cache, holding the new text
    copy = tmp_path_factory.mktemp("copy")
    for p in corpus.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    before = token_cache("prose", folder_shards(copy, "body", "prose"), tokenizer, tmp_path, progress=False)
    (copy / "a00.txt").write_text("a changed document")
    after = token_cache("prose", folder_shards(copy, "body", "prose"), tokenizer, tmp_path, progress=False)
    assert after.path != before.path and tokenizer.decode(after.document(0)[:-1].tolist()) == "a changed document"


def test_a_corrupt_cache_is_rebuilt_with_a_named_warning(corpus, tokenizer, tmp_path):
    c = token_cache("prose", shards(corpus), tokenizer, tmp_path, progress=False)
    want = np.array(c.tokens)
    with open(c.path / "tokens.bin", "r+b") as f:
        f.truncate(10)  # a cache cut short (disk full, a copy interrupted)
    with pytest.warns(CorruptCacheWarning, match="tokens.bin is 10, expected"):
        again = token_cache("prose", shards(corpus), tokenizer, tmp_path, progress=False)
    assert np.array_equal(np.array(again.tokens), want)


def test_a_half_written_build_is_never_opened(corpus, tokenizer, tmp_path, monkeypatch):
    def crash(*args):
        raise KeyboardInterrupt  # the builder killed mid-way

    monkeypatch.setattr(cache_mod, "_tokenize_shard", crash)
    with pytest.raises(KeyboardInterrupt):
        token_cache("prose", shards(corpus), tokenizer, tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither a cache nor its temporary folder
    monkeypatch.undo()
    assert token_cache("prose", shards(corpus), tokenizer, tmp_path, progress=False).n_docs == 30


def test_a_parallel_build_writes_the_same_cache(corpus, tokenizer, tmp_path, monkeypatch):
    serial = token_cache("prose", shards(corpus), tokenizer, tmp_path / "one", processes=1, progress=False)
    monkeypatch.setattr(cache_mod, "PARALLEL_MIN_BYTES", 0)
    parallel = token_cache("prose", shards(corpus), tokenizer, tmp_path / "two", processes=2, progress=False)
    for f in ("tokens.bin", "docs.idx"):
        assert (serial.path / f).read_bytes() == (parallel.path / f).read_bytes()


def test_cache_root_defaults_beside_the_run_folders(tmp_path):
    assert cache_root(None, tmp_path / "runs" / "cl-run-3") == (tmp_path / "runs" / "token-cache").resolve()
    assert cache_root(str(tmp_path / "mine"), tmp_path / "runs" / "cl-run-3") == tmp_path / "mine"


# -- sources ------------------------------------------------------------------------


def test_a_saved_dataset_is_a_domain(tokenizer, tmp_path):
    import datasets

    datasets.Dataset.from_dict({"content": DOCS[:5], "n": list(range(5))}).save_to_disk(str(tmp_path / "ds"))
    d = build_domain(DomainConfig(name="saved", source="saved", path=str(tmp_path / "ds"), text_field="content"))
    assert list(d.documents()) == DOCS[:5]
    d.attach(tokenizer, tmp_path / "cache")
    assert d.cache.n_docs == 5 and d.size_tokens == len(d.train_tokens) < len(d.cache.tokens)
    with pytest.raises(DataError, match=r"ds: no field 'text' \(fields: content, n\)"):
        build_domain(DomainConfig(name="saved", source="saved", path=str(tmp_path / "ds")))
    with pytest.raises(DataError, match="not a dataset saved with save_to_disk"):
        build_domain(DomainConfig(name="saved", source="saved", path=str(tmp_path)))


def test_a_missing_text_field_names_file_and_field(corpus, tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "x"}) + "\n")
    d = build_domain(DomainConfig(name="p", source="folder", path=str(tmp_path), text_field="body"))
    with pytest.raises(DataError, match=r"a\.jsonl: no field 'body' \(fields: text\)"):
        list(d.documents())


def _lines(n: int, start: int = 0) -> bytes:
    return "".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(start, start + n)).encode()


def _cut(data: bytes) -> bytes:
    return data[:len(data) // 2]


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


BROKEN = {  # kind -> (file name, its bytes, what the refusal says after the file's path)
    "non-JSON line": ("a.jsonl", b'{"text": "ok"}\n{"text": "unterminated\n', ": line 2: not JSON"),
    "missing text field": ("a.jsonl", b'{"text": "ok"}\n{"body": "x"}\n', ": line 2 has no string field 'text'"),
    "truncated gz": ("a.jsonl.gz", _cut(gzip.compress(_lines(50))), ": unreadable (EOFError"),
    # cut far past the bytes the preflight decompresses: found by walking the frames to the end
    "truncated zst": ("a.jsonl.zst", _zstd(_lines(20_000))[:-100], ": not a complete zstd file"),
    "not parquet": ("a.parquet", b"PAR1 this is not a parquet file", ": not a parquet file"),
    "not UTF-8": ("a.txt", b"caf\xe9 au lait", ": not UTF-8 text (byte 3)"),
}


def broken_folder(root, kind: str) -> tuple[str, str]:
    """A folder of one good file and one broken file of `kind`; returns the
    folder and what its refusal must say (the broken file's path and why)."""
    name, data, said = BROKEN[kind]
    folder = root / f"data-{kind.replace(' ', '-')}"
    folder.mkdir()
    (folder / "0-good.txt").write_text("a good document")
    (folder / name).write_bytes(data)
    return str(folder), str(folder / name) + said


@pytest.mark.parametrize("kind", BROKEN)
def test_preflight_refuses_each_broken_file_naming_it(kind, tmp_path):
    folder, said = broken_folder(tmp_path, kind)
    d = build_domain(DomainConfig(name="mine", source="folder", path=folder))
    with pytest.raises(DataError) as e:
        d.preflight(tmp_path / "caches")
    assert said in str(e.value), str(e.value)
    with pytest.raises(DataError, match=re.escape(said.split(":")[0])):
        list(d.documents())  # the worker's read refuses the same file


def test_preflight_accepts_what_the_worker_reads(corpus, tmp_path):
    prose(corpus).preflight(tmp_path)  # .txt, .jsonl.gz, .jsonl.zst with field body
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "a"}\r\n\n  \n{"text": "b"}{"text": "c"}')
    (tmp_path / "list.jsonl").write_text(json.dumps([{"text": "d"}, {"text": "e"}]))
    (tmp_path / "cut.txt").write_bytes("é".encode() * 40_000)  # the bound cuts a character in two
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": pa.array(["f", None, "f"]).dictionary_encode()}), tmp_path / "g.parquet")
    d = build_domain(DomainConfig(name="mine", source="folder", path=str(tmp_path)))
    d.preflight(tmp_path / "caches")
    assert [t[:2] for t in d.documents()] == ["a", "b", "c", "éé", "f", "f", "d", "e"]


def test_preflight_reads_a_bounded_prefix_and_skips_what_a_cache_read(tokenizer, tmp_path):
    """A bad line past PREFLIGHT_BYTES is left to the worker (the preflight
    does not read a corpus twice); a file a complete token cache was built
    from (same path, size and mtime) is not read again."""
    from backend.data.sources import PREFLIGHT_BYTES

    data, caches = tmp_path / "data", tmp_path / "caches"
    data.mkdir()
    good = _lines(PREFLIGHT_BYTES // 20)
    assert len(good) > PREFLIGHT_BYTES
    (data / "a.jsonl").write_bytes(good + b"not json\n")
    build_domain(DomainConfig(name="mine", source="folder", path=str(data))).preflight(caches)
    (data / "a.jsonl").write_bytes(_lines(3))
    d = build_domain(DomainConfig(name="mine", source="folder", path=str(data)))
    d.attach(tokenizer, caches)
    # the same size and mtime, another content: the fingerprint cannot tell (cache.py says so)
    stat = (data / "a.jsonl").stat()
    (data / "a.jsonl").write_bytes(_lines(3).replace(b'"document 0"', b'"document \xff"'))
    os.utime(data / "a.jsonl", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    d = build_domain(DomainConfig(name="mine", source="folder", path=str(data)))
    d.preflight(caches)  # the cache read this file: skipped
    with pytest.raises(DataError, match=r"a\.jsonl: line 1: not UTF-8 text"):
        d.preflight(tmp_path / "no-caches")


def test_text_field_and_max_epochs_are_checked_by_config():
    from backend.config import ConfigError

    with pytest.raises(ConfigError, match=r"d\.text_field"):
        DomainConfig(name="p", source="folder", path="x", text_field="").validate("d")
    with pytest.raises(ConfigError, match=r"d\.max_epochs: must be > 0"):
        DomainConfig(name="p", source="folder", path="x", max_epochs=0).validate("d")
    with pytest.raises(ConfigError, match=r"d\.max_epochs: source 'synthetic' streams endlessly"):
        DomainConfig(name="s", source="synthetic", skills=["copy"], max_epochs=2).validate("d")
    from backend.config.loader import from_dict

    cfg = preset("tiny").to_dict()
    cfg["data"]["on_max_epochs"] = "skip"
    with pytest.raises(ConfigError, match=r"data\.on_max_epochs: must be refuse or cap"):
        from_dict(cfg)


# -- the vectorised sampler ---------------------------------------------------------


@pytest.fixture(scope="module")
def sampler_parts(corpus, tokenizer):
    return [prose(corpus), *build_domains([DomainConfig(name="strings", source="synthetic", skills=["copy"])])]


def make_sampler(parts, tokenizer, tmp_path, seed=0):
    return MixtureSampler(parts, tokenizer, CONTEXT, seed, cache_dir=tmp_path)


W = {"prose": 0.7, "strings": 0.3}


def test_sequences_are_a_pure_function_of_the_global_index(sampler_parts, tokenizer, tmp_path):
    s = make_sampler(sampler_parts, tokenizer, tmp_path)
    whole, tokens = s.sequences(np.arange(40), W)
    assert whole.shape == (40, CONTEXT + 1) and whole.dtype == np.int64
    assert sum(tokens.values()) == 40 * CONTEXT and tokens["prose"] > tokens["strings"] > 0
    # two "ranks" drawing disjoint strided slices draw together what one draws
    even, _ = s.sequences(np.arange(0, 40, 2), W)
    odd, _ = s.sequences(np.arange(1, 40, 2), W)
    assert np.array_equal(even, whole[0::2]) and np.array_equal(odd, whole[1::2])
    # batches are the same sequences, in order, whatever the batch size
    b = make_sampler(sampler_parts, tokenizer, tmp_path)
    assert np.array_equal(np.concatenate([b.batch(W, 7)[0] for _ in range(5)] + [b.batch(W, 5)[0]]), whole)
    assert s.sequences_drawn == 0 and b.sequences_drawn == 40
    # another seed, other data
    assert not np.array_equal(make_sampler(sampler_parts, tokenizer, tmp_path, seed=1).sequences(np.arange(40), W)[0],
                              whole)


def test_text_windows_are_token_uniform_slices_of_the_training_split(sampler_parts, tokenizer, tmp_path):
    s = make_sampler(sampler_parts, tokenizer, tmp_path)
    d = sampler_parts[0]
    train = np.array(d.train_tokens)
    n = len(train)
    rows, tokens = s.sequences(np.arange(3000), {"prose": 1.0})
    assert tokens == {"prose": 3000 * CONTEXT, "strings": 0}
    ring = np.concatenate([train, train[:CONTEXT + 1]])  # windows past the end wrap to the start
    for r in rows[:200]:
        assert any(np.array_equal(ring[i:i + CONTEXT + 1], r) for i in np.flatnonzero(ring[:n] == r[0])), \
            "every window is a slice of the training tokens"
    # the held-out documents (the last 5%: document 29) are never trained on
    held = np.array(d.holdout_tokens)
    assert len(held) == len(d.cache.document(29)) and n + len(held) == len(d.cache.tokens)
    # window starts are token-uniform: each quarter of the split gets a fair share of 4000
    starts = (hash64(0, np.arange(4000), 1) % np.uint64(n)).astype(np.int64)
    quarters = np.bincount(starts * 4 // n, minlength=4)
    assert quarters.min() > 850, quarters


def test_usage_counts_tokens_and_epochs_and_survives_a_restore(sampler_parts, tokenizer, tmp_path):
    s = make_sampler(sampler_parts, tokenizer, tmp_path)
    for _ in range(4):
        s.batch(W, 25)
    u = s.usage(W)
    n = len(sampler_parts[0].train_tokens)
    drawn = s.sequences(np.arange(100), W)[1]
    assert {d: v["tokens"] for d, v in u.items()} == drawn
    assert u["prose"]["epochs"] == pytest.approx(drawn["prose"] / n) and u["prose"]["train_tokens"] == n
    assert u["strings"]["epochs"] is None and u["strings"]["train_tokens"] is None
    r = make_sampler(sampler_parts, tokenizer, tmp_path)
    r.load_state_dict(s.state_dict())
    s.batch({"strings": 1.0}, 10)
    r.batch({"strings": 1.0}, 10)
    assert s.usage({"strings": 1.0}) == r.usage({"strings": 1.0})
    assert r.usage({"strings": 1.0})["strings"]["tokens"] == drawn["strings"] + 10 * CONTEXT


def test_cap_weights_gives_a_capped_domain_what_its_epochs_allow():
    w = {"a": 0.5, "b": 0.3, "c": 0.2}
    same, over = cap_weights(w, {"a": 0}, {"a": 10_000}, {"a": 1.0}, 1000)
    assert same == w and over == {}
    capped, over = cap_weights(w, {"a": 900}, {"a": 1000}, {"a": 1.0}, 1000)
    assert capped["a"] == pytest.approx(0.1) and sum(capped.values()) == pytest.approx(1.0)
    assert capped["b"] / capped["c"] == pytest.approx(1.5) and over == {"a": pytest.approx(1.4)}
    # nothing can take the rest: no weights (the loop refuses even when told to cap)
    assert cap_weights({"a": 1.0}, {"a": 1000}, {"a": 1000}, {"a": 1.0}, 1000) == (None, {"a": 2.0})


# -- the loop: per-domain data at every checkpoint, max_epochs --------------------------


def limited_run(store, on_max_epochs: str) -> int:
    cfg = preset("tiny").to_dict()
    code = next(d for d in cfg["data"]["domains"] if d["name"] == "code")
    # the controller gives code ~5% of 384 tokens a step, 10 steps a stretch: past 240 by the second stretch
    code.update(size_tokens=240, max_epochs=1.0)
    cfg["data"]["on_max_epochs"] = on_max_epochs
    from backend.config.loader import from_dict

    return store.create_run(from_dict(cfg).to_dict())


def loop(store, rid):
    return ClosedLoop(store, rid, components=fake_components(), progress=False)


def test_every_checkpoint_records_tokens_and_epochs_per_domain(tmp_path):
    store = Store(tmp_path / "cl.db")
    rid = limited_run(store, "cap")
    assert loop(store, rid).run() == "finished"
    cks = store.checkpoints(rid)
    assert [c["step"] for c in cks] == [0, 10, 20, 30]
    for c in cks:
        u = c["domain_usage"]
        assert sum(v["tokens"] for v in u.values()) == c["tokens_seen"]
        assert u["strings"]["epochs"] is None and u["code"]["epochs"] == pytest.approx(u["code"]["tokens"] / 240)
    # capped: the event says so, the checkpoint records the weights actually trained (below the
    # schedule's), and code ends near one epoch (the draws are random: within 3 sequences of 48 tokens)
    events = store.events(rid, "max_epochs")
    assert events and "mixture capped for steps" in events[0]["message"]
    assert "code would reach" in events[0]["message"] and "(max_epochs 1)" in events[0]["message"]
    assert events[0]["after"]["code"] < events[0]["before"]["code"]
    capped = [c for c in cks[1:] if c["weights"]["code"] < store.weights_at(rid, c["step"] - 10)["code"] - 1e-12]
    assert capped
    assert cks[-1]["domain_usage"]["code"]["epochs"] <= 1.0 + 3 * 48 / 240
    # the Mixture page's table: requested (the schedule) vs sampled shares, tokens, epochs
    table = frames.domain_usage(store, rid).set_index("domain")
    assert table["requested"].sum() == pytest.approx(1.0) and table["sampled"].sum() == pytest.approx(1.0)
    assert table.loc["code", "sampled"] < table.loc["code", "requested"]  # capped below the schedule's share
    assert table.loc["code", "tokens"] == cks[-1]["domain_usage"]["code"]["tokens"]
    assert np.isnan(table.loc["strings", "epochs"]) and table.loc["code", "epochs"] > 0


def test_refuse_stops_the_run_at_the_checkpoint_until_a_mixture_that_fits_is_set(tmp_path):
    store = Store(tmp_path / "cl.db")
    rid = limited_run(store, "refuse")
    assert loop(store, rid).run() == "stopped"  # not failed: a person can go on from here
    run = store.run(rid)
    assert run["status"] == "stopped" and run["error"] is None
    (event,) = store.events(rid, "max_epochs")
    last = store.checkpoints(rid)[-1]["step"]
    assert re.search(rf"mixture refused for steps {last}-{last + 10}: code would reach \d\.\d\d epochs "
                     r"\(max_epochs 1\)", event["message"])  # nothing trained past it
    assert f"stopped at step {last}: mixture refused" in store.events(rid, "stopped")[-1]["message"]
    # the policy's proposal there took code past its limit too: rejected, never in the schedule
    (auto,) = store.proposals(rid)
    assert (auto["decided_by"], auto["status"]) == ("auto", "rejected") and "code would reach" in auto["decision_reason"]
    assert [s["source"] for s in store.schedule(rid)] == ["initial"]
    # the boundary is open again: a mixture set now applies there when the run resumes
    assert not store.checkpoint(rid, last)["boundary_done"]
    with pytest.raises(DecisionError, match=r"code would reach .* epochs \(max_epochs 1\)"):
        set_mixture(store, rid, dict.fromkeys(store.current_weights(rid), 1.0), by="ana")
    fits = set_mixture(store, rid, {d: 0.0 if d == "code" else 1.0 for d in store.current_weights(rid)}, by="ana")
    assert loop(store, rid).run() == "finished"
    assert store.proposal(fits)["applied_step"] == last and store.weights_at(rid, last)["code"] == 0.0
    assert store.checkpoints(rid)[-1]["domain_usage"]["code"]["epochs"] <= 1.0


def test_an_untrusted_config_writes_token_caches_only_inside_the_data_roots(tmp_path):
    from backend.config import ConfigError
    from backend.config.limits import check_untrusted

    cfg = preset("tiny")
    inside = cfg.replace(data={**cfg.to_dict()["data"], "cache_dir": str(tmp_path / "caches")})
    check_untrusted(inside, roots=[tmp_path])
    with pytest.raises(ConfigError, match=r"data\.cache_dir: .* is outside the data roots"):
        check_untrusted(inside, roots=[tmp_path / "elsewhere"])
