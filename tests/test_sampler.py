"""backend/data/sampler.py and backend/data/tokenizer.py with a real BPE
tokenizer trained once for the module on small domains."""

import sysconfig
from pathlib import Path

import numpy as np
import pytest

from backend.config import DomainConfig
from backend.data import tokenizer as tokenizer_mod
from backend.data.domains import build_domains
from backend.data.sampler import MixtureSampler
from backend.data.tokenizer import WordEncoder

CONTEXT = 24
CACHE: dict = {}  # the module's token-cache folder (fixture cache_dir)


@pytest.fixture(scope="module")
def domains(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prose")
    for i in range(4):
        (folder / f"{i}.txt").write_text(f"document number {i} says hello to the mixture sampler. " * 5)
    return build_domains([
        DomainConfig(name="strings", source="synthetic", skills=["copy", "reverse"]),
        DomainConfig(name="arithmetic", source="synthetic", skills=["add2"]),
        DomainConfig(name="noise", source="random"),
        DomainConfig(name="prose", source="folder", path=str(folder)),
    ])


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tok")


@pytest.fixture(scope="module", autouse=True)
def cache_dir(tmp_path_factory):
    """Token caches of this module's samplers (not the user's default folder)."""
    CACHE["dir"] = tmp_path_factory.mktemp("token-cache")
    return CACHE["dir"]


@pytest.fixture(scope="module")
def tokenizer(domains, tok_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tokenizer_mod, "CHARS_PER_DOMAIN", 20_000)
        return tokenizer_mod.train_tokenizer(domains, vocab_size=350, seed=0, out_dir=tok_dir)


def sampler(domains, tokenizer, seed=0):
    return MixtureSampler(domains, tokenizer, CONTEXT, seed, cache_dir=CACHE["dir"])


WEIGHTS = {"strings": 0.4, "arithmetic": 0.3, "noise": 0.2, "prose": 0.1}


# -- tokenizer ----------------------------------------------------------------------


def test_tokenizer_has_specials_and_size(tokenizer):
    assert tokenizer.eos_token == "<eos>" and tokenizer.pad_token == "<pad>"
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    assert 300 <= len(tokenizer) <= 350


def test_digits_split_one_per_token(tokenizer):
    for text in ("12345", "a 907 + 31 = 938", "x99y"):
        ids = tokenizer.encode(text, add_special_tokens=False)
        pieces = [tokenizer.decode([i]) for i in ids]
        assert "".join(pieces) == text
        digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
        assert all(len(p.strip()) == 1 for p in digit_pieces), pieces
        assert sum(len(p.strip()) for p in digit_pieces) == sum(c.isdigit() for c in text)


def test_round_trip_decodes_to_the_same_text(tokenizer):
    text = "reverse a b c = c b a\n99 + 1 = 1 0 0 ünïcode ✓"
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_saved_tokenizer_loads_with_identical_ids(tokenizer, tok_dir):
    loaded = tokenizer_mod.load_tokenizer(tok_dir)
    text = "copy a b c = a b c 12 + 34 = 46 document number 3"
    assert loaded.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    assert (loaded.eos_token_id, loaded.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert len(loaded) == len(tokenizer)


def test_load_tokenizer_refuses_a_folder_without_one(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer can be loaded"):
        tokenizer_mod.load_tokenizer(tmp_path)


def test_a_tokenizer_without_pad_pads_with_eos_and_one_without_eos_is_refused(tokenizer, tmp_path):
    from transformers import PreTrainedTokenizerFast

    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<eos>")
    bare.save_pretrained(str(tmp_path / "no_pad"))
    loaded = tokenizer_mod.load_tokenizer(tmp_path / "no_pad")
    assert loaded.pad_token_id == loaded.eos_token_id == tokenizer.eos_token_id
    PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer).save_pretrained(str(tmp_path / "no_eos"))
    with pytest.raises(ValueError, match="no EOS token"):
        tokenizer_mod.load_tokenizer(tmp_path / "no_eos")


def test_training_is_deterministic(domains, tokenizer, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tokenizer_mod, "CHARS_PER_DOMAIN", 20_000)
        again = tokenizer_mod.train_tokenizer(domains, vocab_size=350, seed=0, out_dir=tmp_path)
    assert again.get_vocab() == tokenizer.get_vocab()


# -- word encoder -------------------------------------------------------------------

ODD_TEXTS = ["two  spaces", " leading", "trailing ", "a\nnewline", "tab\there", "nb\u00a0space", "",
             "it's 12'5 o'clock", "x<eos>y z<pad>", "ünïcode ✓ -> 907+31=938", "$$ ?? (( )) == ->",
             "a \nb", "a\n b", "x  \n y", " \t ", "a b\u2003c", "a 'll b", "'s x"]


def fuzz_texts(n: int) -> list[str]:
    """Short random strings over letters, digits, spaces, other whitespace,
    apostrophes and symbols: every way a word boundary can look."""
    import random

    rng = random.Random(0)
    alphabet = ["a", "b", "1", "2", " ", " ", "  ", "\n", "\t", "\u00a0", "'", "'s", "s", "-", ">", "é", "<eos>"]
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(n)]


def test_word_encoder_gives_the_tokenizers_own_ids(domains, tokenizer):
    import random

    raw = tokenizer.backend_tokenizer
    rng = random.Random(0)
    prose = [p.read_text() for p in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:40]]
    texts = [d.document(rng, "train", max_chars=200) for d in domains[:3] for _ in range(300)] + ODD_TEXTS + prose + fuzz_texts(3000)
    encode = WordEncoder(raw)
    want = [e.ids for e in raw.encode_batch_fast(texts, add_special_tokens=False)]
    assert encode(texts) == want
    assert encode(texts[::-1]) == want[::-1]  # from the cache this time


def test_synthetic_documents_reuse_a_few_words(domains, tokenizer):
    import random

    rng = random.Random(1)
    encode = WordEncoder(tokenizer.backend_tokenizer)
    encode([d.document(rng, "train", max_chars=200) for d in domains[:3] for _ in range(1000)])
    assert len(encode.first) + len(encode.after) < 200


def test_word_encoder_starts_over_past_its_size(tokenizer, monkeypatch):
    monkeypatch.setattr(WordEncoder, "MAX_WORDS", 5)
    encode = WordEncoder(tokenizer.backend_tokenizer)
    texts = [f"w{i} a b c d e f g" for i in range(20)]
    assert encode(texts) == [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    encode(["h i"])
    assert len(encode.first) + len(encode.after) == 2


def test_only_a_tokenizer_that_splits_at_spaces_is_encoded_a_word_at_a_time(tokenizer):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

    assert tokenizer_mod.splits_at_spaces(tokenizer)
    other = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    other.pre_tokenizer = pre_tokenizers.Metaspace()  # a word's pieces depend on where it stands
    assert not tokenizer_mod.splits_at_spaces(other)
    other = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    other.normalizer = normalizers.Lowercase()
    assert not tokenizer_mod.splits_at_spaces(other)
    assert not tokenizer_mod.splits_at_spaces(Tokenizer(models.BPE(dropout=0.1)))


# -- sampler ------------------------------------------------------------------------


def test_batch_shape_dtype_and_counts(domains, tokenizer):
    s = sampler(domains, tokenizer)
    batch, counts = s.batch(WEIGHTS, 8)
    assert batch.shape == (8, CONTEXT + 1) and batch.dtype == np.int64
    assert sum(counts.values()) == 8 and set(counts) == set(WEIGHTS)
    assert batch.min() >= 0 and batch.max() < len(tokenizer)
    assert s.sequences_drawn == 8
    # documents are EOS-separated inside packed sequences
    assert (batch == tokenizer.eos_token_id).any()


def test_same_seed_same_batches_other_seed_other_batches(domains, tokenizer):
    a, b, c = sampler(domains, tokenizer), sampler(domains, tokenizer), sampler(domains, tokenizer, seed=1)
    for _ in range(3):
        ba, ca = a.batch(WEIGHTS, 4)
        bb, cb = b.batch(WEIGHTS, 4)
        assert np.array_equal(ba, bb) and ca == cb
    assert not np.array_equal(a.batch(WEIGHTS, 4)[0], c.batch(WEIGHTS, 4)[0])


def test_restored_sampler_draws_what_the_uninterrupted_one_draws(domains, tokenizer):
    first = sampler(domains, tokenizer)
    for _ in range(3):
        first.batch(WEIGHTS, 5)
    state = first.state_dict()
    expected = [first.batch(WEIGHTS, 5)[0] for _ in range(2)]
    # a new weight set after resume changes only what is drawn from now on
    expected.append(first.batch({"strings": 0.5, "noise": 0.5}, 5)[0])

    resumed = sampler(domains, tokenizer)
    resumed.load_state_dict(state)
    got = [resumed.batch(WEIGHTS, 5)[0] for _ in range(2)] + [resumed.batch({"strings": 0.5, "noise": 0.5}, 5)[0]]
    for e, g in zip(expected, got):
        assert np.array_equal(e, g)
    # a fresh sampler that did not restore draws something else
    assert not np.array_equal(sampler(domains, tokenizer).batch(WEIGHTS, 5)[0], expected[0])


def test_batch_size_does_not_change_the_stream(domains, tokenizer):
    a, b = sampler(domains, tokenizer), sampler(domains, tokenizer)
    big = a.batch(WEIGHTS, 6)[0]
    small = np.concatenate([b.batch(WEIGHTS, 2)[0], b.batch(WEIGHTS, 4)[0]])
    assert np.array_equal(big, small)


def test_load_state_dict_with_wrong_seed_raises(domains, tokenizer):
    s = sampler(domains, tokenizer, seed=3)
    with pytest.raises(ValueError, match="seed"):
        s.load_state_dict({"sequences_drawn": 10, "seed": 4})
    assert s.sequences_drawn == 0


def random_domains(*names):
    """Cheap real domains (random strings) so that thousands of sequences stay fast."""
    return build_domains([DomainConfig(name=n, source="random") for n in names])


def test_domain_frequencies_follow_the_weights(tokenizer):
    s = MixtureSampler(random_domains("a", "b"), tokenizer, 4, seed=0)
    _, counts = s.batch({"a": 0.8, "b": 0.2}, 2000)
    assert counts["a"] + counts["b"] == 2000
    assert abs(counts["a"] / 2000 - 0.8) < 0.03


def test_zero_weight_is_never_drawn(tokenizer):
    s = MixtureSampler(random_domains("a", "b", "c"), tokenizer, 4, seed=0)
    for w in ({"a": 0.5, "b": 0.0, "c": 0.5}, {"a": 0.5, "b": 0.5, "c": 0.0}, {"a": 0.0, "b": 0.3, "c": 0.7}):
        _, counts = s.batch(w, 500)
        zero = [k for k, v in w.items() if v == 0]
        assert all(counts[z] == 0 for z in zero), (w, counts)
        assert all(counts[k] > 0 for k, v in w.items() if v > 0)


def test_missing_weight_counts_as_zero(domains, tokenizer):
    s = sampler(domains, tokenizer)
    _, counts = s.batch({"noise": 1.0}, 20)
    assert counts == {"strings": 0, "arithmetic": 0, "noise": 20, "prose": 0}


def test_heldout_is_deterministic_and_independent_of_training_draws(domains, tokenizer):
    a, b = sampler(domains, tokenizer), sampler(domains, tokenizer)
    b.batch(WEIGHTS, 7)
    ha, hb = a.heldout(3), b.heldout(3)
    assert list(ha) == [d.name for d in domains]
    for name in ha:
        assert ha[name].shape == (3, CONTEXT + 1) and ha[name].dtype == np.int64
        assert np.array_equal(ha[name], hb[name])
    # text domains draw held-out sequences from their held-out documents only
    text = tokenizer.decode(ha["prose"][0])
    assert "document number 3" in text  # the last of 4 documents is held out
    assert not any(f"document number {i}" in text for i in range(3))


# -- batches for a training stretch --------------------------------------------------


@pytest.mark.parametrize("background", [False, True])
def test_batches_are_the_batches_drawn_one_by_one(domains, tokenizer, background):
    one_by_one = sampler(domains, tokenizer)
    expected = [one_by_one.batch(WEIGHTS, 3)[0] for _ in range(4)]
    s = sampler(domains, tokenizer)
    it = s.batches(WEIGHTS, 3, 4, background=background)
    got = [next(it) for _ in range(4)]
    it.close()
    assert [tuple(g.shape) for g in got] == [(3, CONTEXT + 1)] * 4
    assert all(np.array_equal(g.numpy(), e) for g, e in zip(got, expected))
    assert s.sequences_drawn == 12


def test_background_batches_raise_the_drawing_threads_error(domains, tokenizer, monkeypatch):
    s = sampler(domains, tokenizer)

    def broken(weights, batch_size):
        raise OSError("data folder vanished")

    monkeypatch.setattr(s, "batch", broken)
    it = s.batches(WEIGHTS, 2, 3, background=True)
    with pytest.raises(OSError, match="vanished"):  # in the consumer, not lost in the thread
        next(it)


def test_batches_drawn_on_the_cpu_raise_the_data_error_and_count_only_what_was_taken(domains, tokenizer,
                                                                                       monkeypatch):
    s = sampler(domains, tokenizer)

    def broken(indices, weights):
        raise OSError("data folder vanished")

    monkeypatch.setattr(s, "sequences", broken)
    it = s.batches(WEIGHTS, 2, 3, background=False)
    with pytest.raises(OSError, match="data folder vanished"):
        next(it)
    monkeypatch.undo()
    it = s.batches(WEIGHTS, 2, 50, background=False)
    next(it)
    it.close()  # a stretch cut short (stop command)
    assert s.sequences_drawn == 2  # only what was taken counts
