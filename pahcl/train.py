"""The PA-HCL pretrain loop: ``Trainer`` with callbacks, checkpoints and per-epoch validation.

    from pahcl.config import load_config
    from pahcl.train import Trainer, Callback, prepare_data

    cfg = load_config("pahcl/configs/pretrain.yaml", preset="small", overrides=["training.num_epochs=5"])
    train, val = prepare_data(cfg, "synthetic:16", cache_dir="out/cache")
    trainer = Trainer(cfg, train, val, callbacks=[MyCallback()], out_dir="runs/x")
    last = trainer.fit()                       # dict of the last epoch's metrics
    trainer.load_checkpoint("runs/x/checkpoint_last.pt"); trainer.fit()   # resume

What one optimizer step does
    * ``gradient_accumulation_steps`` micro-batches of ``batch_size`` cycles; each micro-batch's loss is
      checked for NaN/inf (``NonFiniteLossError`` names the step, micro-batch and which loss) and then
      back-propagated as ``loss / n_micro`` so the accumulated gradient is the mean of the micro-batch
      gradients. MoCo: each micro-batch's keys are enqueued right after its loss is computed.
    * lr from ``pahcl.schedules.get_lr`` (linear warmup over ``warmup_epochs`` converted to optimizer
      steps, then cosine to ``min_lr``); AdamW, no weight decay on biases, norm weights and other 1-D
      parameters (nor on parameters flagged ``_no_weight_decay``).
    * ``clip_grad_norm_`` (``grad_clip_norm`` > 0); the norm BEFORE clipping is ``grad_norm``.
    * AMP on CUDA only (bf16 where supported, else fp16 with ``torch.amp.GradScaler``); CPU is fp32
      unless ``Trainer(..., amp_dtype=torch.bfloat16)`` asks for CPU bf16 autocast (``amp_dtype_for``).
    * MoCo: ``model.momentum_update()`` after every optimizer step.

Per-epoch order of work is a deterministic function of (seed, epoch): the sampler's generator is
seeded with ``seed + epoch`` and ``dataset.set_epoch(epoch)`` is called when the dataset has it, so a
resumed run reproduces an uninterrupted one step for step. Micro-batches are full (``drop_last``)
unless the whole set is smaller than one batch; a trailing group of fewer than
``gradient_accumulation_steps`` micro-batches is dropped (unless it is the only one);
``max_steps_per_epoch`` > 0 caps optimizer steps per epoch.

Step metrics (``Callback.on_step_end``, after every optimizer step): loss, loss_cycle, loss_sub,
grad_norm, lr, cycle_acc (means over the step's micro-batches), epoch (0-based epoch in progress),
step (optimizer steps done), cycles_per_s; MoCo adds kq_cos, queue_fill, queue_ptr every step and
drift, drift/cnn, drift/mamba, drift/projector on steps where ``step % log_interval == 0`` and on the
last step of every epoch (every step if any callback has ``every_step_drift = True``); on other steps
the drift keys are absent. ``last_in_epoch`` = 1.0 on the last optimizer step of each epoch (both modes;
absent otherwise): step loggers log that step whatever their interval.

Epoch metrics (``Callback.on_epoch_end``, after validation): epoch (completed epochs, 1-based), step,
train/loss (epoch mean), val/knn_acc and val/knn_bal_acc (cycle-level weighted kNN, training cycles as
the bank; omitted, with one log line, when the data has no labels), val/logo_knn_acc (the same kNN over
training + validation cycles, each patient against the others: the search's objective), val/align, val/uniform (Wang &
Isola on two fixed augmented views of the validation cycles). A callback may set
``trainer.stop_training = True`` to end ``fit`` after the current epoch.

With ``out_dir`` the trainer writes ``checkpoint_last.pt`` every epoch, ``checkpoint_epoch{N}.pt``
every ``save_interval`` epochs (and after the last one), and appends ``metrics.csv`` (one row per epoch).
"""
from __future__ import annotations

import csv
import gc
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from pahcl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from pahcl.config import Config, ConfigError, config_from_dict
from pahcl.metrics import EPOCH as EPOCH_METRICS
from pahcl.schedules import get_lr

__all__ = [
    "Callback",
    "NonFiniteLossError",
    "StepOutOfMemoryError",
    "Trainer",
    "prepare_data",
    "check_runtime",
    "plan_batches",
    "amp_dtype_for",
    "resolve_device",
    "seed_everything",
    "param_groups",
    "CheckpointError",
]

CHECKPOINT_FORMAT = "pahcl-checkpoint-v1"


class NonFiniteLossError(FloatingPointError):
    """The loss (or one of its parts) became NaN or infinite; raised before backward."""

    def __init__(self, step: int, name: str, value: float, epoch: int | None = None, micro_batch: int | None = None):
        self.step, self.name, self.value, self.epoch, self.micro_batch = step, name, value, epoch, micro_batch
        where = f"step {step}"
        if epoch is not None:
            where += f" (epoch {epoch}"
            where += f", micro-batch {micro_batch})" if micro_batch is not None else ")"
        super().__init__(f"non-finite {name} = {value} at optimizer {where}; lower training.learning_rate, "
                         f"check the data for NaN/inf, or enable training.grad_clip_norm")


class StepOutOfMemoryError(RuntimeError):
    """An optimizer step ran out of memory again after ``Trainer.max_oom_retries`` retries."""

    def __init__(self, step: int, retries: int, reason: str):
        self.step, self.retries = step, retries
        super().__init__(f"out of memory at optimizer step {step} after {retries} retries (memory released "
                         f"before each retry): {reason}; lower training.batch_size (raise "
                         f"gradient_accumulation_steps to keep the effective batch) or give the trial more memory")


class Callback:
    """Hooks called by ``Trainer.fit``; every method is optional (the Trainer calls only the ones a callback has).

    ``on_micro_batch_start(trainer, index)`` runs inside the optimizer step before each micro-batch's
    forward pass (``trainer.global_step`` = the step in progress): an exception raised there is raised by
    the step itself (``torch.OutOfMemoryError`` is retried like a real one). ``on_loss(trainer, losses)``
    runs after each micro-batch's loss and before its finite check and backward; it may return a new
    losses dict that replaces it (None keeps it). Both exist for instrumentation and fault injection
    (tests/support/faults.py); ordinary callbacks use the step / epoch / train-end hooks."""

    def on_micro_batch_start(self, trainer: "Trainer", index: int) -> None: ...

    def on_loss(self, trainer: "Trainer", losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None: ...

    def on_step_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...

    def on_epoch_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...

    def on_train_end(self, trainer: "Trainer", metrics: dict[str, float]) -> None: ...


# ----------------------------------------------------------------------------- helpers


def check_runtime(cfg: Config) -> None:
    """What the config asks of this machine exists (a CUDA device, mamba_ssm's kernels): else a
    ``ConfigError`` naming the key and the fix, before any data is read."""
    from pahcl.models.mamba import MambaBackendError, resolve_backend

    try:
        resolve_device(cfg.training.device)
        resolve_backend(cfg.model.mamba_backend)
    except (RuntimeError, MambaBackendError) as e:
        raise ConfigError(str(e)) from None


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("training.device is 'cuda' but CUDA is not available; use 'auto' or 'cpu'")
    return dev


def amp_dtype_for(device: torch.device, use_amp: bool, requested: torch.dtype | str | None = "auto"):
    """The autocast dtype of the training step, or None (fp32). ``"auto"``: with ``training.use_amp``, bf16
    on CUDA where supported, else fp16 (with a GradScaler); fp32 on CPU. An explicit ``torch.bfloat16``
    also runs on CPU (CPU autocast): how the bf16 step is exercised without a GPU (tests, bench/gpu_check.py).
    ``None`` / ``torch.float32``: fp32 everywhere."""
    if requested is None or requested == torch.float32:
        return None
    if isinstance(requested, str):
        if requested != "auto":
            raise ValueError(f"amp_dtype: {requested!r} is not allowed; allowed: 'auto', None, torch.bfloat16, "
                             "torch.float16 (CUDA only)")
        if device.type != "cuda" or not use_amp:
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if requested == torch.float16 and device.type != "cuda":
        raise ValueError("amp_dtype: float16 autocast needs CUDA (GradScaler); use torch.bfloat16 on CPU")
    if requested not in (torch.bfloat16, torch.float16):
        raise ValueError(f"amp_dtype: {requested} is not allowed; allowed: torch.bfloat16, torch.float16, None")
    return requested


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on >= 2-D weights; none on biases, norm weights, other 1-D params, or
    parameters flagged ``_no_weight_decay`` (Mamba's A_log / D)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or getattr(p, "_no_weight_decay", False) or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def prepare_data(cfg: Config, spec: str = "synthetic", cache_dir: str | os.PathLike | None = None, log: Callable = print,
                 with_test: bool = False):
    """``load_cycles(spec, cfg.data, cache_dir)`` then ``split_train_val_test(..., cfg.data.val_fraction,
    cfg.data.test_fraction, cfg.seed)`` -> (train CycleSet, val CycleSet), plus the test CycleSet when
    ``with_test``. No recording's cycles land on two sides; training and validation never see the test side."""
    from pahcl.data import load_cycles, split_train_val_test

    cycles = load_cycles(spec, cfg.data, cache_dir=cache_dir, log=log)
    tr, va, te = split_train_val_test(cycles, cfg.data.val_fraction, cfg.data.test_fraction, cfg.seed)
    out = (cycles.subset(tr), cycles.subset(va))
    return out + (cycles.subset(te),) if with_test else out


def _rng_state() -> dict[str, Any]:
    """Global RNG states as plain tensors / lists (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(py[0]), "state": [int(v) for v in py[1]],
                   "gauss": None if py[2] is None else float(py[2])},
    }


def _set_rng_state(s: dict[str, Any]) -> None:
    torch.set_rng_state(s["torch"].cpu() if isinstance(s["torch"], torch.Tensor) else torch.as_tensor(s["torch"]))
    if s.get("cuda") and torch.cuda.is_available() and len(s["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in s["cuda"]])
    n = s["numpy"]
    keys = n["keys"].cpu().numpy() if isinstance(n["keys"], torch.Tensor) else np.asarray(n["keys"])
    np.random.set_state((n["kind"], keys.astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


class _Batches:
    """Micro-batch index lists of one epoch: a deterministic function of (seed, epoch)."""

    @staticmethod
    def plan(n: int, batch_size: int, accum: int, max_steps: int) -> tuple[int, int]:
        """-> (micro-batches per optimizer step, optimizer steps per epoch): see :func:`plan_batches`."""
        return plan_batches(n, batch_size, accum, max_steps)


def plan_batches(n: int, batch_size: int, accum: int, max_steps: int = 0) -> tuple[int, int]:
    """(micro-batches per optimizer step, optimizer steps per epoch) for ``n`` training cycles: full
    micro-batches of ``batch_size``, ``accum`` of them per step, a trailing group of fewer dropped. Data
    too small for one step is a ``ConfigError`` (never silently a smaller batch: what is recorded runs)."""
    if batch_size > n:
        raise ConfigError(f"training.batch_size: {batch_size} is larger than the {n} training cycles; "
                          f"set training.batch_size <= {n} (or use more data)")
    n_micro = n // batch_size
    if accum > n_micro:
        raise ConfigError(f"training.gradient_accumulation_steps: {accum} micro-batches of {batch_size} need "
                          f"{accum * batch_size} cycles per optimizer step, but the training set has {n}; "
                          f"set it <= {n_micro} or lower training.batch_size")
    steps = n_micro // accum
    return accum, (min(steps, max_steps) if max_steps > 0 else steps)


# ----------------------------------------------------------------------------- trainer


class Trainer:
    def __init__(
        self,
        cfg: Config,
        train,
        val=None,
        callbacks: Iterable[Callback] = (),
        out_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        log: Callable[[str], None] | None = print,
        amp_dtype: torch.dtype | str | None = "auto",
    ):
        from pahcl.data import ContrastiveCycleDataset
        from pahcl.models import PAHCL

        self.cfg = cfg
        self.train_set, self.val_set = train, val
        self.callbacks = list(callbacks)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = resolve_device(device if device is not None else cfg.training.device)
        self._log = log or (lambda m: None)
        self.epoch = 0
        self.global_step = 0
        self.stop_training = False
        self.last_metrics: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self.oom_retries = 0  # OOM-failed step attempts that were retried or gave up (see _step_with_oom_retry)

        t = cfg.training
        seed_everything(cfg.seed)
        self.model = PAHCL(cfg.model).to(self.device)
        self.use_moco = bool(cfg.model.use_moco)
        self.optimizer = torch.optim.AdamW(param_groups(self.model, t.weight_decay), lr=t.learning_rate,
                                           betas=(0.9, 0.999))
        self.amp_dtype = amp_dtype_for(self.device, t.use_amp, amp_dtype)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.dataset = ContrastiveCycleDataset(train, cfg.augmentation, seed=cfg.seed)
        self.micro_per_step, self.steps_per_epoch = _Batches.plan(
            len(self.dataset), t.batch_size, t.gradient_accumulation_steps, t.max_steps_per_epoch)
        self.total_steps = self.steps_per_epoch * t.num_epochs
        self.warmup_steps = t.warmup_epochs * self.steps_per_epoch
        self.every_step_drift = any(getattr(c, "every_step_drift", False) for c in self.callbacks)
        self._val_views = None
        self._no_label_logged = False

    # ------------------------------------------------------------------ data

    def _loader(self, epoch: int):
        t = self.cfg.training
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        g = torch.Generator()
        g.manual_seed(int(self.cfg.seed) + int(epoch))
        bs = t.batch_size  # plan_batches() checked that the data holds at least one full step
        kw: dict[str, Any] = {}
        if t.num_workers > 0:
            kw = dict(num_workers=t.num_workers, prefetch_factor=t.prefetch_factor, persistent_workers=False)
        return torch.utils.data.DataLoader(
            self.dataset, batch_size=bs, shuffle=True, drop_last=True, generator=g,
            pin_memory=t.pin_memory and self.device.type == "cuda", **kw)

    def _validation_views(self):
        """Two augmented views of every validation cycle, drawn once with a fixed seed (same every epoch)."""
        if self._val_views is None and self.val_set is not None and len(self.val_set) > 1:
            from pahcl.data import ContrastiveCycleDataset

            state = _rng_state()  # keep the global RNG streams untouched by validation
            try:
                ds = ContrastiveCycleDataset(self.val_set, self.cfg.augmentation, seed=self.cfg.seed + 1)
                if hasattr(ds, "set_epoch"):
                    ds.set_epoch(0)
                items = [ds[i] for i in range(len(ds))]
            finally:
                _set_rng_state(state)
            x1 = np.stack([np.asarray(it["view1"]) for it in items])
            x2 = np.stack([np.asarray(it["view2"]) for it in items])
            self._val_views = (x1, x2)
        return self._val_views

    # ------------------------------------------------------------------ one step

    def _forward_loss(self, batch):
        from pahcl.losses import hierarchical_loss

        dev = self.device
        nb = self.device.type == "cuda"
        x1 = batch["view1"].to(dev, non_blocking=nb)
        x2 = batch["view2"].to(dev, non_blocking=nb)
        b1 = batch["bounds1"].to(dev, non_blocking=nb)
        b2 = batch["bounds2"].to(dev, non_blocking=nb)
        with torch.autocast(device_type=dev.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            out = self.model(x1, b1, x2, b2)
            losses = hierarchical_loss(out, self.cfg.loss, queue=self.model.queue if self.use_moco else None)
        return out, losses

    def _call(self, hook: str, *args) -> None:
        """Call ``hook(self, *args)`` on every callback that has it, in order."""
        for cb in self.callbacks:
            if hasattr(cb, hook):
                getattr(cb, hook)(self, *args)

    def _lr(self, step: int) -> float:
        t = self.cfg.training
        return get_lr(step, max(self.total_steps, 1), self.warmup_steps, t.learning_rate, t.min_lr)

    def _optimizer_step(self, micro_batches: Sequence[dict], epoch: int, last_in_epoch: bool,
                        t0: float | None = None) -> dict[str, float]:
        """One optimizer step over ``micro_batches``; ``t0`` = when this step's data loading began
        (for ``cycles_per_s``, which therefore includes data loading but not callbacks)."""
        t = self.cfg.training
        t0 = time.perf_counter() if t0 is None else t0
        lr = self._lr(self.global_step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        n = len(micro_batches)
        parts = []  # detached [loss, loss_cycle, loss_sub, cycle_acc, kq_cos] per micro-batch
        n_cycles = 0
        for m, batch in enumerate(micro_batches):
            self._call("on_micro_batch_start", m)
            out, L = self._forward_loss(batch)
            for cb in self.callbacks:
                if hasattr(cb, "on_loss"):
                    L = cb.on_loss(self, L) or L
            vals = torch.stack([L["loss"].detach().float(), L["loss_cycle"].detach().float(),
                                L["loss_sub"].detach().float()])
            if not bool(torch.isfinite(vals).all()):  # one sync per micro-batch, before backward
                names = ["loss", "loss_cycle", "loss_sub"]
                bad = [i for i in range(3) if not math.isfinite(float(vals[i]))]
                i = next((j for j in bad if j > 0), bad[0])  # name the part that broke, else the total
                raise NonFiniteLossError(self.global_step, names[i], float(vals[i]), epoch, m)
            self.scaler.scale(L["loss"] / n).backward()
            if self.use_moco:
                self.model.dequeue_and_enqueue(out["k"].detach())
                kq = (out["q"].detach().float() * out["k"].float()).sum(-1).mean()
            else:
                kq = torch.zeros((), device=self.device)
            acc = torch.as_tensor(L.get("cycle_acc", float("nan")), device=self.device).detach().float()
            parts.append(torch.cat([vals, acc.reshape(1), kq.reshape(1)]))
            n_cycles += int(batch["view1"].shape[0])
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        if t.grad_clip_norm > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip_norm)
        else:
            grads = [p.grad.detach().norm() for p in params if p.grad is not None]
            grad_norm = torch.stack(grads).norm() if grads else torch.zeros(())
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.use_moco:
            self.model.momentum_update()
        self.global_step += 1

        mean = torch.stack(parts).mean(0).tolist()  # one sync for all the cheap metrics
        metrics: dict[str, float] = {
            "loss": mean[0], "loss_cycle": mean[1], "loss_sub": mean[2], "grad_norm": float(grad_norm),
            "lr": lr, "cycle_acc": mean[3], "epoch": float(epoch), "step": float(self.global_step),
        }
        if self.use_moco:
            metrics["kq_cos"] = mean[4]
            metrics["queue_fill"] = float(self.model.queue_fill())
            metrics["queue_ptr"] = float(int(self.model.queue_ptr[0]))
            if self.every_step_drift or last_in_epoch or self.global_step % t.log_interval == 0:
                metrics.update({k: float(v) for k, v in self.model.drift().items()})
        if last_in_epoch:  # loggers key on this (SimCLR has no drift): every epoch's last step is logged
            metrics["last_in_epoch"] = 1.0
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        metrics["cycles_per_s"] = n_cycles / max(time.perf_counter() - t0, 1e-9)
        return metrics

    max_oom_retries = 2  # per optimizer step; then StepOutOfMemoryError

    def _step_with_oom_retry(self, group, epoch: int, last_in_epoch: bool, t0: float | None = None):
        """``_optimizer_step`` with bounded retries on ``torch.OutOfMemoryError`` (= torch.cuda's): the
        failed attempt's activations/gradients are dropped (``zero_grad(set_to_none)``, ``gc.collect``,
        ``torch.cuda.empty_cache``) and the same step is run again; ``global_step`` only advances on
        success. (A MoCo step that failed after its first micro-batch has already enqueued those keys.)"""
        for attempt in range(self.max_oom_retries + 1):
            try:
                return self._optimizer_step(group, epoch, last_in_epoch, t0=t0)
            except torch.OutOfMemoryError as e:
                reason = (str(e).splitlines() or ["out of memory"])[0][:300]
            # outside the except block: the exception and the frames holding the step's tensors are gone
            self.oom_retries += 1
            self.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            if attempt == self.max_oom_retries:
                raise StepOutOfMemoryError(self.global_step, self.max_oom_retries, reason)
            self._log(f"[train] out of memory at optimizer step {self.global_step} (attempt {attempt + 1} of "
                      f"{self.max_oom_retries + 1}); memory released, retrying the step: {reason}")
            t0 = time.perf_counter()

    # ------------------------------------------------------------------ epochs

    def train_epoch(self, epoch: int, progress: Any = None) -> float:
        """One epoch of optimizer steps; returns the mean step loss."""
        loader = self._loader(epoch)
        group: list[dict] = []
        losses: list[float] = []
        steps = 0
        t0 = time.perf_counter()
        for batch in loader:
            group.append(batch)
            if len(group) < self.micro_per_step:
                continue
            steps += 1
            metrics = self._step_with_oom_retry(group, epoch, last_in_epoch=steps == self.steps_per_epoch, t0=t0)
            group = []
            losses.append(metrics["loss"])
            for cb in self.callbacks:
                if hasattr(cb, "on_step_end"):
                    cb.on_step_end(self, metrics)
            if progress is not None:
                progress(self, metrics)
            if steps >= self.steps_per_epoch:
                break
            t0 = time.perf_counter()
        return float(np.mean(losses)) if losses else float("nan")

    def validate(self) -> dict[str, float]:
        from pahcl.evaluate import validation_metrics

        def log_once(msg):
            if not self._no_label_logged:
                self._no_label_logged = True
                self._log(msg)

        return validation_metrics(self.model, self.train_set, self.val_set, self.cfg, self.device,
                                  val_views=self._validation_views(), log_fn=log_once)

    def fit(self, progress: Any = None) -> dict[str, float]:
        """Train from ``self.epoch`` to ``training.num_epochs`` (or until a callback sets
        ``stop_training``); returns the last epoch's metrics."""
        if self.use_moco and hasattr(self.model, "warn_if_queue_exceeds"):
            self.model.warn_if_queue_exceeds(len(self.train_set))
        self.stop_training = False
        while self.epoch < self.cfg.training.num_epochs and not self.stop_training:
            train_loss = self.train_epoch(self.epoch, progress)
            self.epoch += 1
            metrics: dict[str, float] = {"epoch": float(self.epoch), "step": float(self.global_step),
                                         "train/loss": train_loss}
            metrics.update(self.validate())
            self.last_metrics = metrics
            self.history.append(metrics)
            if self.out_dir is not None:
                self._write_epoch_outputs(metrics)
            for cb in self.callbacks:
                if hasattr(cb, "on_epoch_end"):
                    cb.on_epoch_end(self, metrics)
        for cb in self.callbacks:
            if hasattr(cb, "on_train_end"):
                cb.on_train_end(self, self.last_metrics)
        return self.last_metrics

    def _write_epoch_outputs(self, metrics: dict[str, float]) -> None:
        out = self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        self.save_checkpoint(out / "checkpoint_last.pt")
        t = self.cfg.training
        if self.epoch % t.save_interval == 0 or self.epoch == t.num_epochs:
            self.save_checkpoint(out / f"checkpoint_epoch{self.epoch}.pt")
        path = out / "metrics.csv"
        cols = list(EPOCH_METRICS)
        cols += [k for k in metrics if k not in cols]
        new = not path.exists()
        if not new:  # keep the header's columns (resume appends)
            with open(path, newline="") as f:
                header = next(csv.reader(f), None)
            if header:
                cols = header
            else:
                new = True
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: metrics.get(k, "") for k in cols})

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": int(self.global_step), "total_steps": int(self.total_steps),
                          "warmup_steps": int(self.warmup_steps)},
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "epoch": int(self.epoch),
            "step": int(self.global_step),
            "rng": _rng_state(),
            "config": self.cfg.to_dict(),
            "metrics": {k: float(v) for k, v in self.last_metrics.items()},
            "data": self.data_record(),
        }

    def data_record(self) -> dict[str, str]:
        """What this run trains on: the absolute data spec and its fingerprint (files + data settings)."""
        info = self.train_set.info or {}
        return {"spec": str(info.get("spec", "")), "fingerprint": str(info.get("fingerprint", ""))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"not a PA-HCL checkpoint (format {state.get('format')!r}, "
                                  f"expected {CHECKPOINT_FORMAT!r})")
        saved = config_from_dict(state["config"])
        if saved.model != self.cfg.model:
            raise CheckpointError("checkpoint was written for a different model config; "
                                  "build the Trainer from the checkpoint's config (state['config'])")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        self.global_step = int(state["step"])
        self.last_metrics = dict(state.get("metrics", {}))
        _set_rng_state(state["rng"])

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        return save_checkpoint(self.state_dict(), path)

    def load_checkpoint(self, path: str | os.PathLike) -> dict[str, Any]:
        state = load_checkpoint(path, map_location=self.device)
        self.load_state_dict(state)
        return state
