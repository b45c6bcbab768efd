"""A byte-level BPE tokenizer trained locally with `tokenizers` (never
downloaded), saved with the run and wrapped as a transformers tokenizer.

Digits are split one per token so that arithmetic answers are digit strings.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

EOS, PAD, UNK = "<eos>", "<pad>", "<unk>"
# characters of sample text per domain used to train the tokenizer
CHARS_PER_DOMAIN = 200_000


def train_tokenizer(domains, vocab_size: int, seed: int, out_dir: str | Path):
    """Train BPE on a deterministic sample of every domain, save it to
    out_dir and return it wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = _pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, PAD, UNK],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    texts = [d.sample_text(CHARS_PER_DOMAIN, seed) for d in domains]
    tok.train_from_iterator(texts, trainer)
    wrapped = _wrap(tok)
    wrapped.save_pretrained(str(out_dir))
    return wrapped


def _pre_tokenizer():
    """Digits one per piece, then GPT-2's byte-level pattern."""
    from tokenizers import pre_tokenizers

    return pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )


def splits_at_spaces(tokenizer) -> bool:
    """Whether encoding a text gives the concatenated encodings of its
    words, each but the first with its leading space (a text splits into
    words at each space between two non-space characters). True for the
    tokenizers train_tokenizer builds: no normalizer; the pre-tokenizer's
    pieces (a digit; a run of letters, of digits or of other symbols with
    at most one leading space; a run of whitespace) never span such a space
    and start there whatever came before; added tokens hold no space and
    strip none; no BPE dropout. WordEncoder relies on it."""
    from tokenizers import Tokenizer, models

    spec = json.loads(getattr(tokenizer, "backend_tokenizer", tokenizer).to_str())
    ours = Tokenizer(models.BPE())
    ours.pre_tokenizer = _pre_tokenizer()
    return (spec.get("normalizer") is None and not spec["model"].get("dropout")
            and spec.get("pre_tokenizer") == json.loads(ours.to_str())["pre_tokenizer"]
            and all(" " not in t["content"] and not (t["lstrip"] or t["rstrip"] or t["single_word"])
                    for t in spec.get("added_tokens", [])))


class WordEncoder:
    """Token ids of texts for a tokenizer that `splits_at_spaces`, from a
    cache of each word's ids (a word: what lies between two single spaces
    with no whitespace beside them). A synthetic document is a few short
    words from a small vocabulary ("add 8 5 and 7 9 -> 1 6 4"), and prose
    follows Zipf's law, so nearly every word is a hit: joining cached lists
    costs ~1 us a synthetic document where the tokenizer's call costs 15-30
    us (its pattern matching per character). The ids are the tokenizer's own."""

    MAX_WORDS = 1 << 18
    """Cache size past which it starts over (bounds memory on a stream of
    free text, whose vocabulary does not end)."""

    def __init__(self, raw_tokenizer):
        self.tokenizer = raw_tokenizer
        self.first: dict[str, list[int]] = {}  # a text's first word -> its ids
        self.after: dict[str, list[int]] = {}  # a later word -> the ids of " " + word

    def __call__(self, texts: list[str]) -> list[list[int]]:
        """The token ids of each text (no special tokens added)."""
        split = [self._words(text) for text in texts]
        self._learn(split)
        first, after = self.first, self.after
        out = []
        for words in split:
            ids = first[words[0]].copy()
            for w in words[1:]:
                ids += after[w]
            out.append(ids)
        return out

    @staticmethod
    def _words(text: str) -> list[str]:
        words = text.split(" ")
        if "" in words or not text.isprintable():  # two spaces, an edge space, a newline...
            return _SINGLE_SPACE.split(text)
        return words

    def _learn(self, texts: list[list[str]]) -> None:
        """Encode the words of `texts` not yet cached, in one call."""
        if len(self.first) + len(self.after) > self.MAX_WORDS:
            self.first, self.after = {}, {}
        new_first = {w[0] for w in texts if w[0] not in self.first}
        new_after = {x for w in texts for x in w[1:] if x not in self.after}
        if not new_first and not new_after:
            return
        keys = [(self.first, w, w) for w in new_first] + [(self.after, w, " " + w) for w in new_after]
        encs = self.tokenizer.encode_batch_fast([text for _, _, text in keys], add_special_tokens=False)
        for (cache, word, _), e in zip(keys, encs):
            cache[word] = e.ids


_SINGLE_SPACE = re.compile(r"(?<=\S) (?=\S)")
"""Where a text splits into words: a space between two non-space characters."""


def encoder(raw_tokenizer):
    """texts -> their token ids (lists, no special tokens added) for a raw
    `tokenizers.Tokenizer`: a WordEncoder when the tokenizer splits_at_spaces,
    else the tokenizer's own batch call."""
    if splits_at_spaces(raw_tokenizer):
        return WordEncoder(raw_tokenizer)
    return lambda texts: [e.ids for e in raw_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def load_tokenizer(path: str | Path):
    """Load a tokenizer saved by save_pretrained from a local folder (never
    the hub). It needs an EOS token (documents are EOS-separated); one
    without a pad token pads with EOS, as HF causal LMs commonly do."""
    from transformers import AutoTokenizer

    p = Path(path)
    try:
        tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ValueError(f"no tokenizer can be loaded from {str(p)!r}: {e}") from None
    if tok.eos_token is None:
        raise ValueError(f"tokenizer in {str(p)!r} has no EOS token, which separates documents")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def check_fits(tokenizer, vocab: int, where: str) -> None:
    """Refuse a tokenizer whose ids a model embedding `vocab` ids cannot
    embed (a tokenizer from another model): every id, EOS and pad included,
    must be below it. ValueError; `where` names the config field."""
    if len(tokenizer) > vocab:
        raise ValueError(f"{where}: the tokenizer has {len(tokenizer)} tokens but the model embeds only {vocab}: "
                         f"they do not belong together")
    for name in ("eos_token_id", "pad_token_id"):
        i = getattr(tokenizer, name)
        if i is not None and not 0 <= i < vocab:
            raise ValueError(f"{where}: the tokenizer's {name} {i} is outside the model's vocabulary ({vocab})")


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=UNK)
