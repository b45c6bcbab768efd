"""backend/model.py: a tiny real Llama, built from a seed or loaded from a
local folder."""

import math

import pytest
import torch

from backend.config import ModelConfig
from backend.model import build_model, count_parameters

VOCAB, CONTEXT = 300, 16
MODEL = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def tiny_model(seed=0, cfg=MODEL, vocab=VOCAB):
    return build_model(cfg, vocab, CONTEXT, eos_id=0, pad_id=1, seed=seed)


def test_build_model_is_seeded_and_sized():
    a, b, c = tiny_model(0), tiny_model(0), tiny_model(1)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))
    assert a.config.vocab_size == VOCAB and a.config.hidden_size == 32 and a.config.num_hidden_layers == 1
    assert a.config.tie_word_embeddings
    assert a.get_output_embeddings().weight.data_ptr() == a.get_input_embeddings().weight.data_ptr()
    assert count_parameters(a) == sum(p.numel() for p in a.parameters()) > 0


def test_config_fields_reach_the_model():
    m = tiny_model(cfg=ModelConfig(hidden_size=48, num_layers=3, num_heads=4, intermediate_size=96))
    c = m.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (48, 3, 4, 96)
    assert c.num_key_value_heads == 4  # full multi-head attention, no grouping
    assert c.max_position_embeddings == CONTEXT
    assert (c.eos_token_id, c.bos_token_id, c.pad_token_id) == (0, 0, 1)
    assert c.use_cache  # generation during evaluation reuses the KV cache


def test_count_parameters_counts_tied_embeddings_once():
    m = tiny_model()
    # embedding (V x H) once, not twice: lm_head shares it
    untied = sum(p.numel() for p in m.state_dict().values())
    assert count_parameters(m) == untied - VOCAB * 32


def test_pretrained_model_loads_from_a_local_folder(tmp_path):
    tiny_model(3).save_pretrained(tmp_path)
    cfg = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, pretrained=str(tmp_path))
    loaded = build_model(cfg, VOCAB, CONTEXT, eos_id=0, pad_id=1, seed=0)
    assert all(torch.equal(x, y) for x, y in zip(loaded.parameters(), tiny_model(3).parameters()))
    with pytest.raises(ValueError, match="vocab"):
        build_model(cfg, VOCAB + 1, CONTEXT, eos_id=0, pad_id=1, seed=0)


@pytest.mark.parametrize("content", [None, "{}", "not json"])
def test_pretrained_folder_without_a_model_is_refused_naming_the_field(tmp_path, content):
    if content is not None:
        (tmp_path / "config.json").write_text(content)
    cfg = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, pretrained=str(tmp_path))
    with pytest.raises(ValueError, match="model.pretrained") as e:
        build_model(cfg, VOCAB, CONTEXT, eos_id=0, pad_id=1, seed=0)
    assert str(tmp_path) in str(e.value)


def _own_model_folder(tmp_path, spare_ids: int):
    """A user's model: a tiny Llama saved with save_pretrained, and beside
    it a tokenizer without a pad token (as many HF causal LMs ship)."""
    from transformers import PreTrainedTokenizerFast

    from backend.data.tokenizer import train_tokenizer

    class Text:
        def sample_text(self, n, seed):
            return "copy a b = a b\nthe quick brown fox jumps over the lazy dog 12 + 34 = 46\n" * 200

    tok = train_tokenizer([Text()], 400, 0, tmp_path / "trained")
    folder = tmp_path / "own"
    model = build_model(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
                        len(tok) + spare_ids, 32, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id, seed=0)
    model.save_pretrained(str(folder))
    PreTrainedTokenizerFast(tokenizer_object=tok.backend_tokenizer, eos_token="<eos>").save_pretrained(str(folder))
    return folder, len(tok)


def test_your_own_model_brings_its_own_tokenizer(tmp_path):
    """model.pretrained alone: the tokenizer comes from the same folder, pads
    with EOS, and the run's components train and checkpoint it."""
    from backend.config import preset
    from backend.loop import build_components

    folder, n_tokens = _own_model_folder(tmp_path, spare_ids=16)  # a model may embed more ids than it uses
    d = preset("tiny").to_dict()
    d["model"] = {**d["model"], "pretrained": str(folder)}
    c = build_components(preset("tiny").replace(model=d["model"]), tmp_path / "run")
    tok = c.sampler.tokenizer
    assert len(tok) == n_tokens and tok.pad_token_id == tok.eos_token_id
    assert not (tmp_path / "run" / "tokenizer").exists()  # nothing trained: the model's own
    loss = c.trainer.train_step(torch.from_numpy(c.sampler.batch({d.name: 1.0 for d in c.domains}, 2)[0]))
    assert math.isfinite(loss)


def test_a_tokenizer_that_does_not_fit_the_model_is_refused(tmp_path):
    from backend.config import preset
    from backend.loop import build_components

    folder, n_tokens = _own_model_folder(tmp_path, spare_ids=-10)  # fewer ids than the tokenizer has
    d = preset("tiny").to_dict()
    d["model"] = {**d["model"], "pretrained": str(folder)}
    with pytest.raises(ValueError, match="model.pretrained: .*tokenizer"):
        build_components(preset("tiny").replace(model=d["model"]), tmp_path / "run")
