"""Build (or load from a local folder) the transformers causal LM."""

from __future__ import annotations

from backend.config import ModelConfig


def build_model(cfg: ModelConfig, vocab_size: int, context_length: int, *, eos_id: int, pad_id: int, seed: int):
    """A Llama-style causal LM sized by cfg, initialised from `seed`, or the
    model saved in cfg.pretrained (a local folder; nothing is downloaded).
    A folder that holds no loadable model raises ValueError naming
    model.pretrained."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if cfg.pretrained:
        try:
            model = AutoModelForCausalLM.from_pretrained(cfg.pretrained, local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"model.pretrained: no causal LM loads from {cfg.pretrained!r} ({e})") from None
        if model.config.vocab_size < vocab_size:
            raise ValueError(
                f"model.pretrained: vocab {model.config.vocab_size} is smaller than the tokenizer's {vocab_size}"
            )
        return model
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=context_length,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=True,
        attention_dropout=0.0,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.config.use_cache = True  # generation during evaluation
    return model


def count_parameters(model) -> int:
    """Parameters of the model, a tied embedding counted once."""
    return sum(p.numel() for p in model.parameters())
