"""Test-only fault injection for the search service (never active unless ``PAHCL_FAULTS`` is set).

The reliability tests (``tests/tune/test_reliability_*.py``) inject faults INSIDE the real training
loop of real Ray trials and count what happened through files, not mocks:

    PAHCL_FAULTS='[{"kind": "crash", "at_epoch": 2, "marker": "/abs/crash.marker"},
                   {"kind": "nan", "at_step": 3, "marker": "/abs/nan.marker"},
                   {"kind": "oom", "at_step": 2, "times": 3, "marker": "/abs/oom.count"}]'
    PAHCL_FAULTS_LOG=/abs/events.jsonl      # optional: one JSON line per trial start / epoch / fault

The driver (``tune/run_search.py``) reads both variables when it builds the trainable and passes them
to every trial with ``tune.with_parameters`` (Ray trial workers do NOT see variables set in the driver
after ``ray.init``: the raylet forks them with the environment it was started with). The trainable
hands them to :class:`FaultInjector`, a ``pahcl.train`` callback that also wraps the trainer's
``_forward_loss`` so faults fire inside an optimizer step.

Fault kinds (``at_step`` k = the trainer's ``global_step`` when the step starts, i.e. the step number
``NonFiniteLossError`` names; ``at_epoch`` e = completed epochs, so the fault fires in the first step
of epoch e+1, after epoch e was reported and checkpointed):

``crash``   raise ``InjectedCrash`` (``at_epoch`` or ``at_step``). Optional ``corrupt_checkpoint``:
            ``"truncate"`` (newest Ray checkpoint file cut to half its size), ``"truncate_all"`` (every
            checkpoint of the trial), or ``"malicious"`` (newest checkpoint replaced by a pickle whose
            ``__reduce__`` would create the file named by ``payload_marker``) - applied just before
            raising, so the retry must cope with it.
``nan``     multiply the step's ``loss_sub`` (and so ``loss``) by NaN in the first micro-batch: the
            Trainer's own finite check raises ``NonFiniteLossError`` naming the step.
``oom``     raise ``torch.OutOfMemoryError`` in the forward pass (``real: true`` and CUDA: allocate
            an impossible tensor so the CUDA caching allocator raises it for real).
``user_error`` raise ``DataSpecError`` (a deterministic user error: never retried into training).
``stall``   sleep ``seconds`` in the forward pass (a slow/hung step: keeps a trial unfinished, e.g. while
            the test kills the driver).

Firing is bounded by ``marker`` + ``times`` (default 1): the marker file is a counter (one byte per
firing, updated under ``flock``), so a retried or resumed trial does not fire an exhausted fault again
and tests assert exact counts with :func:`count`. Without ``marker`` a fault fires every time its
condition holds (e.g. in every trial).
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import Any

ENV = "PAHCL_FAULTS"
LOG_ENV = "PAHCL_FAULTS_LOG"
KINDS = ("crash", "nan", "oom", "stall", "user_error")
_KEYS = {"kind", "at_step", "at_epoch", "marker", "times", "corrupt_checkpoint", "payload_marker", "real", "seconds"}


class InjectedCrash(RuntimeError):
    """The crash a ``crash`` fault raises (a stand-in for any bug or lost worker)."""


def from_env(environ=None) -> dict | None:
    """``{"faults": [...], "log": path}`` from ``PAHCL_FAULTS`` / ``PAHCL_FAULTS_LOG``, or None."""
    environ = os.environ if environ is None else environ
    raw, log = environ.get(ENV), environ.get(LOG_ENV)
    if not raw and not log:
        return None
    faults = json.loads(raw) if raw else []
    if not isinstance(faults, list):
        raise ValueError(f"{ENV}: expected a JSON list of faults, got {type(faults).__name__}")
    for i, f in enumerate(faults):
        if not isinstance(f, dict) or f.get("kind") not in KINDS:
            raise ValueError(f"{ENV}[{i}]: 'kind' must be one of {KINDS}: {f!r}")
        unknown = set(f) - _KEYS
        if unknown:
            raise ValueError(f"{ENV}[{i}]: unknown keys {sorted(unknown)}; allowed {sorted(_KEYS)}")
        if ("at_step" in f) == ("at_epoch" in f):
            raise ValueError(f"{ENV}[{i}]: give exactly one of at_step / at_epoch: {f!r}")
    return {"faults": faults, "log": log}


def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(str(path) + ".lock", os.O_CREAT | os.O_RDWR, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def count(marker) -> int:
    """How many times the fault with this marker fired."""
    try:
        return Path(marker).stat().st_size
    except FileNotFoundError:
        return 0


def _claim(fault: dict) -> bool:
    """True when the fault may fire now (and records the firing in its marker)."""
    marker = fault.get("marker")
    if not marker:
        return True
    path = Path(marker)
    fd = _locked(path)
    try:
        if count(path) >= int(fault.get("times", 1)):
            return False
        with open(path, "ab") as f:
            f.write(b"x")
            f.flush()
            os.fsync(f.fileno())
        return True
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def record(log: str | None, event: str, **info: Any) -> None:
    """Append one JSON line to the event log (under flock: several trials write at once)."""
    if not log:
        return
    path = Path(log)
    line = json.dumps({"event": event, "t": round(time.time(), 3), "pid": os.getpid(), **info}, default=str)
    fd = _locked(path)
    try:
        with open(path, "a") as f:
            f.write(line + "\n")
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def read_events(log) -> list[dict]:
    p = Path(log)
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.exists() else []


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _checkpoint_files(trial_dir: Path, name: str) -> list[Path]:
    return sorted(trial_dir.glob(f"checkpoint_*/{name}"))


def corrupt_checkpoints(trial_dir, how: str, name: str = "checkpoint.pt", payload_marker: str | None = None) -> list[str]:
    """Damage the trial's persisted Ray checkpoints (newest, or all with ``truncate_all``)."""
    files = _checkpoint_files(Path(trial_dir), name)
    if not files:
        return []
    targets = files if how == "truncate_all" else files[-1:]
    for f in targets:
        if how in ("truncate", "truncate_all"):
            data = f.read_bytes()
            f.write_bytes(data[: len(data) // 2])
        elif how == "malicious":
            import pickle

            f.write_bytes(pickle.dumps({"format": "pahcl-checkpoint-v1", "x": _Evil(payload_marker or "/tmp/pahcl_pwned")}))
        else:
            raise ValueError(f"corrupt_checkpoint: unknown mode {how!r}")
    return [str(t) for t in targets]


class FaultInjector:
    """A ``pahcl.train`` callback (duck-typed: ``on_step_end``/``on_epoch_end``) plus a wrapper around
    ``trainer._forward_loss``. Built by the trainable only when faults were configured."""

    def __init__(self, spec: dict | None, trial_id: str = "?", trial_dir: str | None = None):
        spec = spec or {}
        self.faults = list(spec.get("faults") or [])
        self.log = spec.get("log")
        self.trial_id = trial_id
        self.trial_dir = trial_dir

    def event(self, event: str, **info) -> None:
        record(self.log, event, trial_id=self.trial_id, **info)

    def attach(self, trainer):
        """Wrap ``trainer._forward_loss``; returns the trainer."""
        if not self.faults:
            return trainer
        orig = trainer._forward_loss

        def forward_loss(batch, _orig=orig, _tr=trainer):
            self._before_forward(_tr)
            out, losses = _orig(batch)
            for f in self.faults:
                if f["kind"] == "nan" and self._due(f, _tr) and _claim(f):
                    self.event("fault", kind="nan", step=_tr.global_step, epoch=_tr.epoch)
                    losses = dict(losses)
                    losses["loss_sub"] = losses["loss_sub"] * float("nan")
                    losses["loss"] = losses["loss"] + losses["loss_sub"]
            return out, losses

        trainer._forward_loss = forward_loss
        return trainer

    @staticmethod
    def _due(f: dict, tr) -> bool:
        if "at_step" in f:
            return tr.global_step == int(f["at_step"])
        return tr.epoch >= int(f["at_epoch"])

    def _before_forward(self, tr) -> None:
        for f in self.faults:
            if f["kind"] == "crash" and self._due(f, tr) and _claim(f):
                damaged = []
                if f.get("corrupt_checkpoint") and self.trial_dir:
                    damaged = corrupt_checkpoints(self.trial_dir, f["corrupt_checkpoint"],
                                                  payload_marker=f.get("payload_marker"))
                self.event("fault", kind="crash", step=tr.global_step, epoch=tr.epoch, damaged=damaged)
                raise InjectedCrash(f"injected crash at step {tr.global_step} (epoch {tr.epoch} completed)")
            if f["kind"] == "user_error" and self._due(f, tr) and _claim(f):
                from pahcl.data.readers import DataSpecError

                self.event("fault", kind="user_error", step=tr.global_step, epoch=tr.epoch)
                raise DataSpecError(f"injected: data spec folder vanished at step {tr.global_step}")
            if f["kind"] == "stall" and self._due(f, tr) and _claim(f):
                self.event("fault", kind="stall", step=tr.global_step, epoch=tr.epoch)
                time.sleep(float(f.get("seconds", 60)))
            if f["kind"] == "oom" and self._due(f, tr) and _claim(f):
                self.event("fault", kind="oom", step=tr.global_step, epoch=tr.epoch)
                import torch

                if f.get("real") and torch.cuda.is_available():
                    torch.empty(1 << 50, dtype=torch.uint8, device=tr.device)  # 1 PiB: the allocator raises
                raise torch.OutOfMemoryError(f"injected: CUDA out of memory at step {tr.global_step}")

    def on_epoch_end(self, trainer, metrics) -> None:  # the report itself is logged by the trainable
        pass

    def on_step_end(self, trainer, metrics) -> None:
        pass
