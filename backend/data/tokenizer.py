"""A byte-level BPE tokenizer trained locally with `tokenizers` (never
downloaded), saved with the run and wrapped as a transformers tokenizer.

Digits are split one per token so that arithmetic answers are digit strings.
"""

from __future__ import annotations

from pathlib import Path

EOS, PAD, UNK = "<eos>", "<pad>", "<unk>"
# characters of sample text per domain used to train the tokenizer
CHARS_PER_DOMAIN = 200_000


def train_tokenizer(domains, vocab_size: int, seed: int, out_dir: str | Path):
    """Train BPE on a deterministic sample of every domain, save it to
    out_dir and return it wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
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


def load_tokenizer(path: str | Path):
    """Load a tokenizer saved by save_pretrained from a local folder."""
    from transformers import AutoTokenizer

    p = Path(path)
    if not (p / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {str(p)!r}")
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    if tok.eos_token is None or tok.pad_token is None:
        raise ValueError(f"tokenizer in {str(p)!r} needs eos and pad tokens")
    return tok


def _wrap(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD, unk_token=UNK)
