"""Pretrain loop: accumulation, loss falls, MoCo/SimCLR, resume equality, NaN guard, outputs, CLI smoke.

All on the tiny preset and a few synthetic recordings; every test caps steps per epoch.
"""
import json
import math

import numpy as np
import pytest
import torch

from pahcl.config import load_config
import pahcl.train as _T
from pahcl.train import Callback, NonFiniteLossError, Trainer
prepare_data = lambda *a, **k: _T.prepare_data(*a, **k)


def tiny(**over):
    # 2 kHz keeps the 1 s windows short (L = 2000) so the tests stay fast on 2 shared cores;
    # queue 32 < the ~44 training cycles of synthetic:8 (no stale-key warning)
    base = {"training.device": "cpu", "training.max_steps_per_epoch": 2, "training.num_epochs": 2,
            "training.warmup_epochs": 1, "data.sample_rate": 2000, "model.queue_size": 32}
    base.update(over)
    return load_config(preset="tiny", overrides=base)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    cfg = tiny()
    return prepare_data(cfg, "synthetic:8", cache_dir=tmp_path_factory.mktemp("cache"), log=lambda m: None)


class Record(Callback):
    def __init__(self, stop_after=None):
        self.steps, self.epochs, self.stop_after = [], [], stop_after

    def on_step_end(self, trainer, m):
        self.steps.append(dict(m))

    def on_epoch_end(self, trainer, m):
        self.epochs.append(dict(m))
        if self.stop_after is not None and trainer.epoch >= self.stop_after:
            trainer.stop_training = True


def test_prepare_data_groups_disjoint(data):
    train, val = data
    assert len(train) > 0 and len(val) > 0
    assert not set(train.table["group"]) & set(val.table["group"])


@pytest.mark.parametrize("moco", [False, True])
def test_gradient_accumulation_equals_mean_of_micro_batch_grads(data, moco):
    k = 2
    cfg = tiny(**{"model.use_moco": moco, "training.gradient_accumulation_steps": k, "training.grad_clip_norm": 0.0})
    tr = Trainer(cfg, data[0], None, log=None)
    batches = []
    for b in tr._loader(0):
        batches.append(b)
        if len(batches) == k:
            break
    assert len(batches) == k
    params = [p for p in tr.model.parameters() if p.requires_grad]
    queue0 = tr.model.queue.clone() if moco else None
    ptr0 = tr.model.queue_ptr.clone() if moco else None

    # reference: each micro-batch's gradient on its own (MoCo: queue advanced exactly as in the loop)
    ref = [torch.zeros_like(p) for p in params]
    for b in batches:
        tr.model.zero_grad(set_to_none=True)
        out, L = tr._forward_loss(b)
        L["loss"].backward()
        for r, p in zip(ref, params):
            r += p.grad / k
        if moco:
            tr.model.dequeue_and_enqueue(out["k"])
    if moco:
        tr.model.queue.copy_(queue0)
        tr.model.queue_ptr.copy_(ptr0)

    tr.optimizer.step = lambda *a, **kw: None  # keep the accumulated grads, do not move the weights
    if moco:
        tr.model.momentum_update = lambda: None
    m = tr._optimizer_step(batches, 0, last_in_epoch=False)
    for r, p in zip(ref, params):
        # fp32 sums in a different order: compare relative to each tensor's norm
        assert (p.grad - r).norm() <= 1e-4 * r.norm() + 1e-7
    total = torch.stack([r.norm() for r in ref]).norm().item()
    assert m["grad_norm"] == pytest.approx(total, rel=1e-4)


def test_loss_falls_on_synthetic(data):
    cfg = tiny(**{"model.use_moco": False, "training.num_epochs": 8, "training.max_steps_per_epoch": 3,
                  "training.warmup_epochs": 1, "training.learning_rate": 3e-3})
    rec = Record()
    Trainer(cfg, data[0], None, callbacks=[rec], log=None).fit()
    losses = [m["loss"] for m in rec.steps]
    assert len(losses) == 24 and all(math.isfinite(v) for v in losses)
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert last < first * 0.9, (first, last, losses)


@pytest.mark.parametrize("moco", [True, False])
def test_moco_and_simclr_train_and_report(data, moco, tmp_path):
    cfg = tiny(**{"model.use_moco": moco, "training.log_interval": 3})
    rec = Record()
    tr = Trainer(cfg, data[0], data[1], callbacks=[rec], out_dir=tmp_path, log=None)
    last = tr.fit()
    base = {"loss", "loss_cycle", "loss_sub", "grad_norm", "lr", "cycle_acc", "epoch", "step", "cycles_per_s"}
    moco_keys = {"kq_cos", "queue_fill", "queue_ptr"}
    drift = {"drift", "drift/cnn", "drift/mamba", "drift/projector"}
    assert len(rec.steps) == 4 and [m["step"] for m in rec.steps] == [1, 2, 3, 4]
    for i, m in enumerate(rec.steps):
        assert base <= set(m) and all(math.isfinite(v) for v in m.values())
        if moco:
            assert moco_keys <= set(m)
            # drift only every log_interval (3) steps and on each epoch's last step: steps 2, 3, 4
            assert (drift <= set(m)) is (m["step"] in (2, 3, 4)) and (drift & set(m)) in (set(), drift)
        else:
            assert not (moco_keys | drift) & set(m)
    assert [m["epoch"] for m in rec.epochs] == [1, 2] and last == rec.epochs[-1]
    assert {"epoch", "step", "train/loss", "val/knn_acc", "val/knn_bal_acc", "val/logo_knn_acc", "val/align",
            "val/uniform"} <= set(last)
    assert 0 <= last["val/knn_acc"] <= 1 and 0 <= last["val/logo_knn_acc"] <= 1
    if moco:
        assert rec.steps[-1]["queue_ptr"] == (4 * cfg.training.batch_size) % cfg.model.queue_size
    names = sorted(p.name for p in tmp_path.iterdir())
    assert {"checkpoint_last.pt", "checkpoint_epoch1.pt", "checkpoint_epoch2.pt", "metrics.csv"} <= set(names)
    rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3 and rows[0].startswith("epoch,step,train/loss,val/knn_acc")
    state = torch.load(tmp_path / "checkpoint_last.pt", weights_only=True)
    for key in ["model", "optimizer", "scheduler", "scaler", "epoch", "step", "rng", "config"]:
        assert key in state
    assert state["epoch"] == 2 and state["step"] == 4 and state["config"]["model"]["use_moco"] is moco
    if moco:
        assert "queue" in state["model"] and "queue_ptr" in state["model"]
        assert any(k.startswith("encoder_k.") for k in state["model"])


def test_resume_continues_exactly(data, tmp_path):
    cfg = tiny(**{"training.num_epochs": 3})
    full = Record()
    Trainer(cfg, data[0], data[1], callbacks=[full], log=None).fit()

    first = Record(stop_after=2)
    t1 = Trainer(cfg, data[0], data[1], callbacks=[first], log=None)
    t1.fit()
    assert t1.epoch == 2 and t1.global_step == 4
    t1.save_checkpoint(tmp_path / "c.pt")
    torch.manual_seed(123)  # disturb every global RNG stream: the checkpoint must restore them
    np.random.seed(123)

    resumed = Record()
    t2 = Trainer(cfg, data[0], data[1], callbacks=[resumed], log=None)
    t2.load_checkpoint(tmp_path / "c.pt")
    assert (t2.epoch, t2.global_step) == (2, 4)
    t2.fit()
    a = [m["loss"] for m in full.steps[4:]]
    b = [m["loss"] for m in resumed.steps]
    assert len(a) == len(b) == 2
    assert b == pytest.approx(a, abs=1e-6)
    assert resumed.epochs[-1]["val/knn_acc"] == pytest.approx(full.epochs[-1]["val/knn_acc"])


def test_nan_loss_raises_naming_step(data):
    # deterministic injection: poison every training wave, so the first micro-batch's loss is NaN
    train = data[0].subset(np.arange(len(data[0])))
    train.waves = np.full_like(train.waves, np.nan)
    cfg = tiny()
    tr = Trainer(cfg, train, None, log=None)
    before = [p.detach().clone() for p in tr.model.parameters()]
    with pytest.raises(NonFiniteLossError, match=r"step 0") as ei:
        tr.fit()
    assert ei.value.step == 0 and ei.value.name in {"loss", "loss_cycle", "loss_sub"}
    assert all(torch.equal(a, p) for a, p in zip(before, tr.model.parameters()))  # nothing was stepped


def test_unlabelled_data_skips_knn(data):
    train = data[0].subset(np.arange(len(data[0])))
    val = data[1].subset(np.arange(len(data[1])))
    train.table["label"] = None
    val.table["label"] = None
    logs = []
    cfg = tiny(**{"training.max_steps_per_epoch": 1})
    last = Trainer(cfg, train, val, log=logs.append).fit()
    assert "val/knn_acc" not in last and "val/knn_bal_acc" not in last
    assert "val/align" in last and "val/uniform" in last
    assert sum("no labels" in m for m in logs) == 1  # logged once, not every epoch


def test_cli_smoke_and_resume(tmp_path, capsys):
    from pahcl.pretrain import main

    out = tmp_path / "smoke"
    assert main(["--out", str(out), "--smoke-test", "--no-progress"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and summary["steps"] == 4 and "val/align" in summary
    # without a bar, each epoch still writes one metrics line to stderr
    assert sum(line.startswith("epoch=") for line in captured.err.splitlines()) == 2
    for name in ["config.yaml", "checkpoint_last.pt", "checkpoint_epoch1.pt", "checkpoint_epoch2.pt", "metrics.csv"]:
        assert (out / name).is_file()
    # resume with more epochs: continues from epoch 2
    assert main(["--out", str(out), "--smoke-test", "--no-progress", "--resume",
                 "--set", "training.num_epochs=3"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 3 and summary["steps"] == 6
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 4


class InStep(Callback):
    """The in-step hooks: records (step, micro-batch) and the losses seen; optionally replaces a loss or raises."""

    def __init__(self, nan_at_step=None, oom_at_step=None):
        self.starts, self.losses, self.nan_at_step, self.oom_at_step = [], [], nan_at_step, oom_at_step

    def on_micro_batch_start(self, trainer, index):
        self.starts.append((trainer.global_step, index))
        if trainer.global_step == self.oom_at_step:
            self.oom_at_step = None  # once: the retried step succeeds
            raise torch.OutOfMemoryError("injected by the test")

    def on_loss(self, trainer, losses):
        self.losses.append(float(losses["loss"].detach()))
        if trainer.global_step == self.nan_at_step:
            return {**losses, "loss_sub": losses["loss_sub"] * float("nan")}
        return None


def test_in_step_hooks_see_every_micro_batch_and_can_replace_the_loss(data):
    cfg = tiny(**{"model.use_moco": True, "training.gradient_accumulation_steps": 2, "training.num_epochs": 1})
    hook, rec = InStep(), Record()
    Trainer(cfg, data[0], None, callbacks=[hook, rec], log=None).fit()
    assert hook.starts == [(0, 0), (0, 1), (1, 0), (1, 1)]  # 2 steps x 2 micro-batches, before each forward
    assert len(hook.losses) == 4 and all(math.isfinite(v) for v in hook.losses)
    assert [m["loss"] for m in rec.steps] == pytest.approx([np.mean(hook.losses[:2]), np.mean(hook.losses[2:])])

    with pytest.raises(NonFiniteLossError, match="loss_sub = nan at optimizer step 1"):  # the replaced loss is checked
        Trainer(cfg, data[0], None, callbacks=[InStep(nan_at_step=1)], log=None).fit()


def test_out_of_memory_raised_by_a_hook_is_retried_like_a_real_one(data):
    cfg = tiny(**{"training.num_epochs": 1})
    hook, logs = InStep(oom_at_step=1), []
    tr = Trainer(cfg, data[0], None, callbacks=[hook], log=logs.append)
    tr.fit()
    assert tr.global_step == 2 and tr.oom_retries == 1
    assert hook.starts == [(0, 0), (1, 0), (1, 0)] and sum("retrying the step" in m for m in logs) == 1
