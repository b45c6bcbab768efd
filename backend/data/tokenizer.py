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


def check_fits(tokenizer, model, where: str) -> None:
    """Refuse a tokenizer whose ids the model cannot embed (a tokenizer
    from another model): every id, EOS and pad included, must be below the
    model's vocabulary size. `where` names the config field."""
    vocab = model.config.vocab_size
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
