"""backend/trainer.py with a tiny real Llama on CPU: training steps, the LR
schedule, and checkpoints (save, verify, fall back, prune, resume exactly)."""

import itertools
import json
import math

import pytest
import torch

from backend.config import ModelConfig, TrainConfig
from backend.model import build_model
from backend.trainer import (
    CheckpointError,
    Trainer,
    checkpoint_dir,
    load_checkpoint,
    pick_device,
    save_checkpoint,
)

VOCAB, CONTEXT = 300, 16
CPU = torch.device("cpu")
MODEL = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)


def tiny_model(seed=0):
    return build_model(MODEL, VOCAB, CONTEXT, eos_id=0, pad_id=1, seed=seed)


def train_cfg(**kw):
    return TrainConfig(**{"steps": 40, "checkpoint_every": 10, "batch_size": 4, "lr": 1e-2,
                          "warmup_steps": 2, **kw})


def batch(seed=0, b=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (b, CONTEXT + 1), generator=g)


def params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_pick_device():
    assert pick_device("cpu") == CPU
    if not torch.cuda.is_available():
        assert pick_device("auto") == CPU
        with pytest.raises(RuntimeError, match="cuda"):
            pick_device("cuda")


def test_train_step_lowers_loss_on_a_repeated_batch():
    model = tiny_model()
    trainer = Trainer(model, train_cfg(), CPU)
    x = batch()
    losses = [trainer.train_step(x) for _ in range(12)]
    assert math.isclose(losses[0], math.log(VOCAB), rel_tol=0.1)  # untrained: ~uniform
    assert losses[-1] < losses[0] - 1.0
    assert trainer.step == 12


def test_save_then_load_resumes_exactly(tmp_path):
    cfg = train_cfg()
    model = tiny_model(0)
    trainer = Trainer(model, cfg, CPU)
    for i in range(3):
        trainer.train_step(batch(i))
    path = save_checkpoint(tmp_path, model, trainer, {"sampler": {"sequences_drawn": 12, "seed": 0}})
    assert path == checkpoint_dir(tmp_path, 3) and path.name == "step-0000003"
    assert sorted(f.name for f in path.iterdir()) == [
        "manifest.json", "meta.json", "model.safetensors", "trainer.json", "trainer.safetensors"]
    assert not list(tmp_path.glob("*.tmp"))

    fresh = tiny_model(seed=123)  # different init: everything must come from the checkpoint
    fresh_trainer = Trainer(fresh, cfg, CPU)
    meta = load_checkpoint(path, fresh, fresh_trainer)
    assert meta == {"sampler": {"sequences_drawn": 12, "seed": 0}, "step": 3}
    assert fresh_trainer.step == 3
    before = params(model)
    after = params(fresh)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # still tied after loading
    assert fresh.get_output_embeddings().weight.data_ptr() == fresh.get_input_embeddings().weight.data_ptr()
    assert fresh_trainer.scheduler.get_last_lr() == trainer.scheduler.get_last_lr()

    # the next steps give the identical loss and parameters as continuing
    for i in range(3, 5):
        assert fresh_trainer.train_step(batch(i)) == trainer.train_step(batch(i))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))


def test_checkpoint_restores_the_torch_rng(tmp_path):
    model = tiny_model()
    trainer = Trainer(model, train_cfg(), CPU)
    trainer.train_step(batch())
    torch.manual_seed(42)
    path = save_checkpoint(tmp_path, model, trainer, {})
    expected = torch.rand(3)
    torch.manual_seed(7)
    load_checkpoint(path, tiny_model(), Trainer(tiny_model(), train_cfg(), CPU))
    assert torch.equal(torch.rand(3), expected)


def test_saving_over_a_leftover_tmp_folder_replaces_it(tmp_path):
    model = tiny_model()
    trainer = Trainer(model, train_cfg(), CPU)
    trainer.train_step(batch())
    stale = tmp_path / "step-0000001.tmp"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half written")
    path = save_checkpoint(tmp_path, model, trainer, {})
    assert not stale.exists()
    load_checkpoint(path, tiny_model(), Trainer(tiny_model(), train_cfg(), CPU))


def test_leftover_tmp_folder_is_not_a_checkpoint(tmp_path):
    half = tmp_path / "step-0000010.tmp"
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(half, tiny_model(), Trainer(tiny_model(), train_cfg(), CPU))
    msg = str(e.value)
    assert "step-0000010.tmp" in msg and "trainer.safetensors" in msg and "meta.json" in msg
    assert "manifest.json" in msg
    assert "model.safetensors" not in msg.split("missing", 1)[1]


def test_checkpoint_missing_trainer_state_names_it(tmp_path):
    model = tiny_model()
    trainer = Trainer(model, train_cfg(), CPU)
    trainer.train_step(batch())
    path = save_checkpoint(tmp_path, model, trainer, {})
    (path / "trainer.safetensors").unlink()
    fresh = tiny_model(5)
    untouched = params(fresh)
    with pytest.raises(CheckpointError, match=r"missing trainer\.safetensors"):
        load_checkpoint(path, fresh, Trainer(fresh, train_cfg(), CPU))
    # refused before anything was loaded
    assert all(torch.equal(untouched[k], v) for k, v in fresh.state_dict().items())


def test_corrupt_checkpoint_files_raise_checkpoint_error(tmp_path):
    model = tiny_model()
    trainer = Trainer(model, train_cfg(), CPU)
    path = save_checkpoint(tmp_path, model, trainer, {})
    (path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path, tiny_model(), Trainer(tiny_model(), train_cfg(), CPU))


def test_checkpoint_of_another_model_shape_is_refused(tmp_path):
    model = tiny_model()
    trainer = Trainer(model, train_cfg(), CPU)
    path = save_checkpoint(tmp_path, model, trainer, {})
    bigger = build_model(ModelConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64),
                         VOCAB, CONTEXT, eos_id=0, pad_id=1, seed=0)
    with pytest.raises(CheckpointError, match=str(path.name)):
        load_checkpoint(path, bigger, Trainer(bigger, train_cfg(), CPU))


def test_meta_json_records_the_step(tmp_path):
    model = tiny_model()
    trainer = Trainer(model, train_cfg(), CPU)
    trainer.train_step(batch())
    trainer.train_step(batch())
    path = save_checkpoint(tmp_path, model, trainer, {"tokens_seen": 128, "step": 999})
    assert json.loads((path / "meta.json").read_text()) == {"tokens_seen": 128, "step": 2}


def test_lr_schedule_warms_up_then_cosine_to_min_ratio():
    cfg = train_cfg(steps=20, checkpoint_every=10, lr=1e-2, warmup_steps=4, min_lr_ratio=0.1)
    trainer = Trainer(tiny_model(), cfg, CPU)
    lrs = []
    for _ in range(25):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()  # no gradients: a no-op that keeps the scheduler's order check quiet
        trainer.scheduler.step()
    # linear warmup: lr * (step + 1) / warmup for steps 0..3
    assert lrs[:4] == pytest.approx([2.5e-3, 5e-3, 7.5e-3, 1e-2])
    assert lrs[4] == pytest.approx(1e-2)
    # cosine: never rising, halfway at the midpoint, min at the last step and after
    assert all(a >= b - 1e-15 for a, b in itertools.pairwise(lrs[4:]))
    assert lrs[12] == pytest.approx(1e-3 + 0.5 * 9e-3)
    assert lrs[20] == pytest.approx(1e-3) and lrs[24] == pytest.approx(1e-3)
    assert min(lrs) == pytest.approx(1e-3)


def test_weight_decay_only_on_matrices():
    model = tiny_model()
    trainer = Trainer(model, train_cfg(weight_decay=0.3), CPU)
    decay, no_decay = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.3 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
