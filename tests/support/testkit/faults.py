"""Test-only fault injection for the search service, plugged in without patching anything.

The reliability tests (``tests/tune/test_reliability_*.py``) inject faults INSIDE the real training
loop of real Ray trials and count what happened through files, not mocks. They turn it on with
:func:`env_vars` (or ``monkeypatch.setenv`` of what it returns):

    PAHCL_SEARCH_PLUGINS=testkit.faults:plugin     # the service's generic plug-in point (tune/plugins.py)
    PYTHONPATH=<repo>/tests/support:...             # drivers and Ray workers import this module
    PAHCL_FAULTS='[{"kind": "crash", "at_epoch": 2, "marker": "/abs/crash.marker"},
                   {"kind": "nan", "at_step": 3, "marker": "/abs/nan.marker"},
                   {"kind": "oom", "at_step": 2, "times": 3, "marker": "/abs/oom.count"}]'
    PAHCL_FAULTS_LOG=/abs/events.jsonl      # optional: one JSON line per trial start / epoch / fault

The driver (``tune/run_search.py``) calls :func:`plugin` once, which reads both variables and returns a
:class:`FaultPlan`; the driver passes it to every trial with ``tune.with_parameters`` (Ray trial workers do
NOT see variables set in the driver after ``ray.init``: the raylet forks them with the environment it was
started with). In each trial the plan's ``trial_hooks`` builds a :class:`FaultInjector`: a
``pahcl.train.Callback`` whose ``on_micro_batch_start`` / ``on_loss`` hooks fire the faults inside an
optimizer step, and whose ``event`` receives the trainable's trial events (start, report, error, ...).

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

from testkit import pythonpath

ENV = "PAHCL_FAULTS"
LOG_ENV = "PAHCL_FAULTS_LOG"
PLUGINS_ENV = "PAHCL_SEARCH_PLUGINS"  # tune.plugins.ENV (not imported: tests/pahcl imports nothing from tune)
PLUGIN_SPEC = "testkit.faults:plugin"
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
    """A ``pahcl.train`` callback that fires the configured faults inside the optimizer step
    (``on_micro_batch_start``: crash / user_error / stall / oom; ``on_loss``: nan) and logs the trial's
    events (``event``, called by the trainable)."""

    def __init__(self, spec: dict | None, trial_id: str = "?", trial_dir: str | None = None):
        spec = spec or {}
        self.faults = list(spec.get("faults") or [])
        self.log = spec.get("log")
        self.trial_id = trial_id
        self.trial_dir = trial_dir

    def event(self, event: str, **info) -> None:
        record(self.log, event, trial_id=self.trial_id, **info)

    @staticmethod
    def _due(f: dict, tr) -> bool:
        if "at_step" in f:
            return tr.global_step == int(f["at_step"])
        return tr.epoch >= int(f["at_epoch"])

    def on_micro_batch_start(self, tr, index: int) -> None:
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

    def on_loss(self, tr, losses: dict) -> dict:
        for f in self.faults:
            if f["kind"] == "nan" and self._due(f, tr) and _claim(f):
                self.event("fault", kind="nan", step=tr.global_step, epoch=tr.epoch)
                losses = dict(losses)
                losses["loss_sub"] = losses["loss_sub"] * float("nan")
                losses["loss"] = losses["loss"] + losses["loss_sub"]
        return losses


class FaultPlan:
    """The search plug-in (``tune/plugins.py``): picklable, built in the driver, sent to every trial; each
    trial gets its own :class:`FaultInjector` (Trainer callback + event log)."""

    def __init__(self, spec: dict):
        self.spec = spec

    def trial_hooks(self, trial_id: str, trial_dir: str | None):
        return FaultInjector(self.spec, trial_id, trial_dir)


def plugin() -> FaultPlan | None:
    """``PAHCL_SEARCH_PLUGINS=testkit.faults:plugin``: the faults of ``PAHCL_FAULTS`` / ``PAHCL_FAULTS_LOG``
    (read in the driver), or None when neither is set."""
    spec = from_env()
    return FaultPlan(spec) if spec else None


def env_vars(faults: list | None = None, log=None, environ=None) -> dict[str, str]:
    """The environment that turns fault injection on in a search (in-process or a driver subprocess)."""
    out = {PLUGINS_ENV: PLUGIN_SPEC, "PYTHONPATH": pythonpath(environ)}
    if faults is not None:
        out[ENV] = json.dumps(faults)
    if log is not None:
        out[LOG_ENV] = str(log)
    return out
