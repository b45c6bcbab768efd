"""backend/trainer.py with a tiny real Llama on CPU: training steps, the LR
schedule, and checkpoints (save, verify, fall back, prune, resume exactly)."""

import errno
import hashlib
import itertools
import json
import math
import os
import pickle
import resource
import signal

import pytest
import torch

from backend.config import ModelConfig, TrainConfig
from backend.model import build_model
from backend.trainer import (
    CheckpointError,
    Trainer,
    checkpoint_dir,
    checkpoint_step,
    latest_valid_checkpoint,
    load_checkpoint,
    pick_device,
    prune_checkpoints,
    save_checkpoint,
    verify_checkpoint,
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
        "config.json", "generation_config.json", "manifest.json", "meta.json", "model.safetensors",
        "trainer.json", "trainer.safetensors"]
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
    # param groups come back with their types (betas a tuple), state keyed by index
    saved, restored = trainer.optimizer.state_dict(), fresh_trainer.optimizer.state_dict()
    assert restored["param_groups"] == saved["param_groups"]
    assert type(restored["param_groups"][0]["betas"]) is tuple
    assert restored["state"].keys() == saved["state"].keys()
    assert all(torch.equal(restored["state"][i][k], v) and restored["state"][i][k].dtype == v.dtype
               for i, st in saved["state"].items() for k, v in st.items())

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


# -- no pickle ---------------------------------------------------------------


class RunsCode:
    """A pickle payload: unpickling it creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def trained_checkpoint(root, steps=1, seed=0):
    model = tiny_model(seed)
    trainer = Trainer(model, train_cfg(), CPU)
    for i in range(steps):
        trainer.train_step(batch(i))
    return model, trainer, save_checkpoint(root, model, trainer, {"sampler": {"sequences_drawn": 4 * steps}})


def rewrite_manifest(path):
    """What an attacker who can write the folder can also do."""
    manifest = json.loads((path / "manifest.json").read_text())
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        entry.update(bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_pickle_planted_in_a_checkpoint_is_never_run(tmp_path):
    _, _, path = trained_checkpoint(tmp_path / "ck")
    marker = tmp_path / "pwned"
    (path / "trainer.pt").write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(CheckpointError, match=r"trainer\.pt") as e:
        load_checkpoint(path, tiny_model(), Trainer(tiny_model(), train_cfg(), CPU))
    assert "step-0000001" in str(e.value)
    assert not marker.exists()


def test_a_checkpoint_of_the_pickled_format_is_refused_unread(tmp_path):
    """The layout before this version: model.safetensors, trainer.pt, meta.json."""
    model, trainer, path = trained_checkpoint(tmp_path / "ck")
    for name in ("trainer.safetensors", "trainer.json", "manifest.json"):
        (path / name).unlink()
    marker = tmp_path / "pwned"
    (path / "trainer.pt").write_bytes(pickle.dumps({"optimizer": RunsCode(marker)}))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path, tiny_model(), Trainer(tiny_model(), train_cfg(), CPU))
    assert "trainer.pt" in str(e.value) and "missing trainer.safetensors" in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("name", ["trainer.safetensors", "trainer.json", "meta.json", "model.safetensors"])
def test_a_pickle_in_place_of_a_state_file_is_unreadable_not_run(tmp_path, name):
    _, _, path = trained_checkpoint(tmp_path / "ck")
    marker = tmp_path / "pwned"
    (path / name).write_bytes(pickle.dumps(RunsCode(marker)))
    with pytest.raises(CheckpointError, match=f"unreadable: {name}") as e:
        load_checkpoint(path, tiny_model(), Trainer(tiny_model(), train_cfg(), CPU))
    assert "manifest.json" in str(e.value)  # caught by its checksum
    rewrite_manifest(path)  # checksums that vouch for the payload: still only parsed, never run
    with pytest.raises(CheckpointError, match=f"unreadable: {name}"):
        load_checkpoint(path, tiny_model(), Trainer(tiny_model(), train_cfg(), CPU))
    assert not marker.exists()


def test_trainer_json_holds_the_structure_and_names_each_tensor(tmp_path):
    from safetensors.torch import load_file

    _, trainer, path = trained_checkpoint(tmp_path, steps=2)
    saved = json.loads((path / "trainer.json").read_text())
    tensors = load_file(str(path / "trainer.safetensors"))
    state = saved["state"]
    assert saved["format"] == 1 and state["step"] == 2
    assert state["scheduler"]["last_epoch"] == 2
    assert state["optimizer"]["param_groups"][0]["betas"] == {"$tuple": [0.9, 0.95]}
    assert state["torch_rng"] == {"$tensor": "trainer.torch_rng"}
    assert torch.equal(tensors["trainer.torch_rng"], trainer.state_dict()["torch_rng"])
    assert tensors["trainer.torch_rng"].dtype == torch.uint8
    exp_avg = state["optimizer"]["state"]["$int_keys"]["0"]["exp_avg"]["$tensor"]
    assert torch.equal(tensors[exp_avg], trainer.optimizer.state_dict()["state"][0]["exp_avg"])


# -- manifest, verification, fallback ------------------------------------------


def test_the_manifest_lists_size_and_sha256_of_every_file(tmp_path):
    _, _, path = trained_checkpoint(tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 1
    assert sorted(manifest["files"]) == ["config.json", "generation_config.json", "meta.json", "model.safetensors",
                                         "trainer.json", "trainer.safetensors"]
    for name, entry in manifest["files"].items():
        data = (path / name).read_bytes()
        assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    verify_checkpoint(path)


def test_a_truncated_file_fails_verification_and_resume_falls_back(tmp_path):
    cfg = train_cfg()
    model = tiny_model()
    trainer = Trainer(model, cfg, CPU)
    paths = []
    for i in range(3):
        trainer.train_step(batch(i))
        paths.append(save_checkpoint(tmp_path, model, trainer, {"step_seen": i + 1}))
    newest = paths[-1]
    with open(newest / "model.safetensors", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(CheckpointError, match=r"model\.safetensors is 100 bytes") as e:
        verify_checkpoint(newest)
    assert "step-0000003" in str(e.value)

    chosen, skipped = latest_valid_checkpoint(reversed(paths))
    assert chosen == paths[1]
    assert len(skipped) == 1 and "step-0000003" in skipped[0] and "model.safetensors" in skipped[0]
    fresh = tiny_model(9)
    fresh_trainer = Trainer(fresh, cfg, CPU)
    assert load_checkpoint(chosen, fresh, fresh_trainer) == {"step_seen": 2, "step": 2}
    assert fresh_trainer.step == 2
    # retraining step 3 from the fallback replaces the corrupt folder with a good one
    fresh_trainer.train_step(batch(2))
    assert save_checkpoint(tmp_path, fresh, fresh_trainer, {"step_seen": 3}) == newest
    verify_checkpoint(newest)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), fresh.parameters()))


def _dangling_model(path):
    (path / "model.safetensors").unlink()
    (path / "model.safetensors").symlink_to(path / "gone")


def _infinite_bytes(path):
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["model.safetensors"]["bytes"] = math.inf
    (path / "manifest.json").write_text(json.dumps(manifest))  # written as Infinity, which json reads back


def _manifest_folder(path):
    (path / "manifest.json").unlink()
    (path / "manifest.json").mkdir()


@pytest.mark.parametrize("corrupt, words", [
    (_dangling_model, ["model.safetensors cannot be read", "FileNotFoundError"]),
    (_infinite_bytes, ["manifest.json is malformed", "OverflowError"]),
    (lambda p: (p / "manifest.json").write_text('{"files": ' + "[" * 100_000 + "]" * 100_000 + "}"),
     ["manifest.json is malformed", "RecursionError"]),
    (_manifest_folder, ["manifest.json cannot be read", "IsADirectoryError"]),
])
def test_a_checkpoint_that_cannot_be_read_is_skipped_for_the_previous_one(tmp_path, corrupt, words):
    model = tiny_model()
    trainer = Trainer(model, train_cfg(), CPU)
    paths = []
    for i in range(2):
        trainer.train_step(batch(i))
        paths.append(save_checkpoint(tmp_path, model, trainer, {"step_seen": i + 1}))
    corrupt(paths[-1])
    chosen, skipped = latest_valid_checkpoint(reversed(paths))
    assert chosen == paths[0]
    assert len(skipped) == 1 and "step-0000002" in skipped[0], skipped
    assert all(w in skipped[0] for w in words), skipped
    fresh = tiny_model(9)
    fresh_trainer = Trainer(fresh, train_cfg(), CPU)
    assert load_checkpoint(chosen, fresh, fresh_trainer) == {"step_seen": 1, "step": 1}
    assert fresh_trainer.step == 1


def test_a_changed_byte_fails_the_checksum(tmp_path):
    _, _, path = trained_checkpoint(tmp_path)
    data = bytearray((path / "trainer.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "trainer.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"trainer\.safetensors does not match its sha256"):
        verify_checkpoint(path)


@pytest.mark.parametrize("manifest", ["", "[]", '{"files": {}}', '{"files": {"meta.json": 1}}'])
def test_a_malformed_manifest_is_named(tmp_path, manifest):
    _, _, path = trained_checkpoint(tmp_path)
    (path / "manifest.json").write_text(manifest)
    with pytest.raises(CheckpointError, match=r"unreadable: manifest\.json is malformed"):
        verify_checkpoint(path)


def test_no_valid_checkpoint_gives_none_with_every_reason(tmp_path):
    _, _, path = trained_checkpoint(tmp_path)
    (path / "meta.json").unlink()
    chosen, skipped = latest_valid_checkpoint([tmp_path / "step-0000009", path])
    assert chosen is None
    assert "step-0000009" in skipped[0] and "does not exist" in skipped[0]
    assert "missing meta.json" in skipped[1]
    assert latest_valid_checkpoint([]) == (None, [])


def test_checkpoint_step_reads_the_folder_name():
    assert checkpoint_step("/x/step-0000120") == 120
    assert checkpoint_step("step-0000120.tmp") is None and checkpoint_step("notes") is None


# -- a write that fails midway ---------------------------------------------------


def folder_bytes(path) -> dict:
    return {f.name: f.read_bytes() for f in path.iterdir()}


def assert_only_complete_checkpoints(root, steps):
    assert sorted(p.name for p in root.iterdir()) == [f"step-{s:07d}" for s in steps]
    for s in steps:
        verify_checkpoint(checkpoint_dir(root, s))


@pytest.fixture
def file_size_limit():
    """Cap the size of any file this process writes (RLIMIT_FSIZE): a real
    write error (EFBIG) at the first file that outgrows it, like a full disk."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail the write, do not kill the process

    def limit(n_bytes):
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, hard))

    yield limit
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, handler)


def test_a_write_failing_midway_leaves_the_previous_checkpoint_resumable(tmp_path, file_size_limit):
    model, trainer, first = trained_checkpoint(tmp_path)
    before = folder_bytes(first)
    trainer.train_step(batch(1))
    # model.safetensors fits, trainer.safetensors (two AdamW moments per weight) does not
    file_size_limit((first / "model.safetensors").stat().st_size + 1024)
    with pytest.raises(CheckpointError, match=r"step-0000002.*not written.*File too large"):
        save_checkpoint(tmp_path, model, trainer, {})
    file_size_limit(resource.RLIM_INFINITY)
    assert_only_complete_checkpoints(tmp_path, [1])  # no step-2 folder, no .tmp
    assert folder_bytes(first) == before
    chosen, _ = latest_valid_checkpoint([checkpoint_dir(tmp_path, 2), first])
    assert chosen == first
    load_checkpoint(chosen, tiny_model(), Trainer(tiny_model(), train_cfg(), CPU))
    save_checkpoint(tmp_path, model, trainer, {})  # space again: the next save works
    assert_only_complete_checkpoints(tmp_path, [1, 2])


def test_meta_that_cannot_be_written_fails_after_the_tensor_files(tmp_path):
    model, trainer, first = trained_checkpoint(tmp_path)
    trainer.train_step(batch(1))
    with pytest.raises(CheckpointError, match=r"step-0000002.*TypeError"):
        save_checkpoint(tmp_path, model, trainer, {"weights": {"a", "b"}})  # a set is not JSON
    assert_only_complete_checkpoints(tmp_path, [1])


def test_a_failed_save_of_the_same_step_keeps_the_old_folder(tmp_path, monkeypatch):
    """After a fallback the same step is saved again: the folder there is
    swapped, never deleted before its replacement is complete."""
    import safetensors.torch

    model, trainer, path = trained_checkpoint(tmp_path)
    before = folder_bytes(path)
    real_save, calls = safetensors.torch.save_file, []

    def disk_full_after_one_file(*args, **kw):
        calls.append(args[1])
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kw)

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full_after_one_file)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_checkpoint(tmp_path, model, trainer, {})
    assert calls[0].endswith("step-0000001.tmp/model.safetensors")
    assert_only_complete_checkpoints(tmp_path, [1])
    assert folder_bytes(path) == before


def test_leftovers_of_an_interrupted_save_are_cleared_or_restored(tmp_path):
    model, trainer, path = trained_checkpoint(tmp_path)
    for stale in ("step-0000007.tmp", "step-0000008.tmp"):
        (tmp_path / stale).mkdir()
        (tmp_path / stale / "model.safetensors").write_bytes(b"half")
    # killed between moving step 1 aside and renaming its replacement in
    path.rename(tmp_path / "step-0000001.old")
    trainer.train_step(batch(1))
    save_checkpoint(tmp_path, model, trainer, {})
    assert_only_complete_checkpoints(tmp_path, [1, 2])


# -- retention -----------------------------------------------------------------------


def checkpoints_at(root, steps):
    model = tiny_model()
    trainer = Trainer(model, train_cfg(), CPU)
    for s in steps:
        trainer.step = s  # retention reads names and manifests only; no need to train
        save_checkpoint(root, model, trainer, {})


def test_prune_keeps_the_newest_and_the_needed_steps(tmp_path):
    checkpoints_at(tmp_path, [0, 10, 20, 30, 40, 50])
    (tmp_path / "step-0000060.tmp").mkdir()
    removed = prune_checkpoints(tmp_path, keep_last=2, keep_steps={0, 20})
    assert sorted(p.name for p in removed) == ["step-0000010", "step-0000030"]
    assert_only_complete_checkpoints(tmp_path, [0, 20, 40, 50])
    assert prune_checkpoints(tmp_path, keep_last=2, keep_steps={0, 20}) == []


def test_prune_with_keep_last_zero_keeps_everything_but_leftovers(tmp_path):
    checkpoints_at(tmp_path, [0, 10, 20])
    (tmp_path / "step-0000030.tmp").mkdir()
    assert prune_checkpoints(tmp_path, keep_last=0, keep_steps=set()) == []
    assert_only_complete_checkpoints(tmp_path, [0, 10, 20])
    assert prune_checkpoints(tmp_path / "absent", keep_last=1, keep_steps=set()) == []
    with pytest.raises(ValueError, match="keep_last"):
        prune_checkpoints(tmp_path, keep_last=-1, keep_steps=set())


def test_prune_never_counts_a_corrupt_checkpoint_as_kept(tmp_path):
    checkpoints_at(tmp_path, [0, 10, 20])
    with open(tmp_path / "step-0000020" / "trainer.json", "r+b") as fh:
        fh.truncate(5)
    removed = prune_checkpoints(tmp_path, keep_last=1, keep_steps=set())
    assert sorted(p.name for p in removed) == ["step-0000000", "step-0000020"]
    assert_only_complete_checkpoints(tmp_path, [10])  # the newest that resumes


@pytest.mark.slow
def test_a_run_checkpoint_loads_in_transformers_and_in_the_lm_eval_cli(tiny_run, tmp_path):
    """Checkpoints are save_pretrained-style (config.json, weights with the
    tied embedding once, the run's tokenizer): AutoModelForCausalLM and
    `lm_eval --model hf --model_args pretrained=CHECKPOINT` load one as it is,
    and it computes what the run's model computed."""
    import subprocess
    import sys
    from pathlib import Path

    from conftest import ROOT
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backend.store import Store

    db, run_id = tiny_run
    ck = Store(db).checkpoints(run_id)[-1]["path"]
    model = AutoModelForCausalLM.from_pretrained(ck, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(ck, local_files_only=True)
    assert model.config.tie_word_embeddings and model.lm_head.weight.data_ptr() == \
        model.get_input_embeddings().weight.data_ptr()
    ids = torch.tensor([tok("copy a b =")["input_ids"]])
    weights = load_file(str(Path(ck) / "model.safetensors"))
    assert torch.equal(model.get_input_embeddings().weight, weights["model.embed_tokens.weight"])
    assert torch.isfinite(model(input_ids=ids).logits).all()
    out = tmp_path / "lm_eval"
    p = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={ck}",
         "--tasks", "ex_addition", "--include_path", str(ROOT / "examples" / "tasks"), "--limit", "8",
         "--device", "cpu", "--batch_size", "8", "--output_path", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    assert p.returncode == 0, p.stderr[-3000:]
    results = json.loads(next(out.rglob("results*.json")).read_text())["results"]["ex_addition"]
    assert 0.0 <= results["acc,none"] <= 1.0


# -- fast training: gradient accumulation, compile -----------------------------------


def test_grad_accum_takes_the_same_step_as_one_batch():
    one, four = tiny_model(0), tiny_model(0)
    t1 = Trainer(one, train_cfg(batch_size=8), CPU)
    t4 = Trainer(four, train_cfg(batch_size=8, grad_accum=4), CPU)  # 4 micro-batches of 2 sequences
    for i in range(3):
        l1, l4 = t1.train_step(batch(i, b=8)), t4.train_step(batch(i, b=8))
        assert float(l4) == pytest.approx(float(l1), rel=1e-5)
    for k, v in one.state_dict().items():
        torch.testing.assert_close(four.state_dict()[k], v, rtol=1e-4, atol=1e-6)
    assert t4.step == 3


def test_grad_accum_must_divide_the_batch():
    from backend.config import ConfigError

    with pytest.raises(ConfigError, match=r"^train\.grad_accum: must divide batch_size 8, got 3"):
        train_cfg(batch_size=8, grad_accum=3).validate("train")


def test_train_step_returns_the_loss_as_a_tensor_and_keeps_grad_norm_and_lr():
    trainer = Trainer(tiny_model(), train_cfg(), CPU)
    loss = trainer.train_step(batch())
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
    assert float(trainer.last_grad_norm) > 0
    assert trainer.last_lr == pytest.approx(1e-2 * 1 / 2)  # warmup step 1 of 2


@pytest.mark.slow
def test_a_compiled_model_trains_like_the_eager_one():
    # inductor compiles C++ for the CPU here (gcc): the first step takes ~a minute
    pytest.importorskip("torch._inductor")
    eager, compiled = tiny_model(0), tiny_model(0)
    te = Trainer(eager, train_cfg(), CPU)
    tc = Trainer(compiled, train_cfg(compile=True), CPU)
    for i in range(3):
        assert float(tc.train_step(batch(i))) == pytest.approx(float(te.train_step(batch(i))), rel=1e-4)
    assert "OptimizedModule" in type(tc.forward).__name__
    for k, v in eager.state_dict().items():  # checkpoints see the plain module's keys
        torch.testing.assert_close(compiled.state_dict()[k], v, rtol=1e-3, atol=1e-5)


def test_a_step_after_an_evaluation_trains_in_training_mode():
    """train_step skips Module.train() while the model is in training mode
    (it walks every module); after model.eval() (an evaluation) it restores
    it, every submodule included."""
    trainer = Trainer(tiny_model(), train_cfg(), torch.device("cpu"))
    trainer.train_step(batch())
    trainer.model.eval()
    trainer.train_step(batch(1))
    assert all(m.training for m in trainer.model.modules())
