"""Per-trial resources: ``--gpus-per-trial F|auto`` and ``--cpus-per-trial F``; the memory probe.

The probe (run in a subprocess so the driver never holds a CUDA context):

    python -m tune.resources '{"tree": {...}, "overrides": {...}, "data": "synthetic:8", "cache_dir": "/abs",
                               "device": "cpu"}'

builds the configuration it is given (the space's largest: ``largest_overrides``) exactly as a trial
does, with ``training.max_steps_per_epoch = 2``, and holds what a trial holds: both encoders (MoCo),
the queue, the AdamW state, two optimizer steps with the configuration's gradient accumulation and
the epoch-end validation pass with its kNN bank (features of every training cycle). It prints one
line ``PROBE {json}``. On CUDA: ``peak_allocated`` / ``peak_reserved`` (``torch.cuda.max_memory_*``),
``context`` (device memory the process holds beyond the allocator's reserve: ``nvidia-smi`` used
memory before CUDA init vs ``mem_get_info`` after it), ``total`` and ``used_before`` (by others).
On CPU (what CI runs end to end): the process's peak RSS and its RSS before the trainer was built.
Both report ``step_s``, the wall time of the second optimizer step (the first one allocates).

``auto`` on a CUDA machine: each trial needs ``need = (peak_reserved + context) * (1 + MARGIN)``;
``k = floor((total - used_before) / need)`` trials share a GPU, each gets ``1/k`` GPU and caps its
allocator with ``torch.cuda.set_per_process_memory_fraction(((total - used_before) / k - context) /
total)`` (which is >= its measured reserve plus the margin). On a CPU-only machine ``auto`` -> 0 GPUs.
Tests simulate a GPU with ``PAHCL_SIMULATED_GPU`` (``tune/gpu.py``): the probe is then replaced by
the given peak and device size.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
MARGIN = 0.10  # head-room on the measured need (fragmentation, validation batches of other sizes)
GIB = 2**30

# Which candidate of each searched key makes a step most expensive in memory.
_MEMORY_HEAVY = ("training.batch_size", "model.queue_size", "model.mamba_d_model", "model.mamba_n_layers",
                 "model.cnn_channels", "model.proj_hidden_dim", "model.mamba_d_state", "evaluation.batch_size")


@dataclass
class TrialResources:
    cpus: float
    gpus: float
    gpu_fraction: float | None  # per-process CUDA memory cap inside the trial (None: no cap)
    trials_per_gpu: int = 0
    peak_bytes: int = 0  # the probe's need per trial (reserve + context + margin)
    message: str = ""
    step_s: float | None = None  # the probe's optimizer-step time (None: no probe ran)
    total_bytes: int = 0  # device memory of the GPU the plan was made for (0: unknown)

    def as_ray(self) -> dict[str, float]:
        return {"cpu": self.cpus, "gpu": self.gpus}


def largest_overrides(space) -> dict[str, Any]:
    """The sampled values that maximise memory: max batch size / queue size / widths."""
    params = {}
    for k, d in space.params.items():
        cands = d.candidates()
        params[k] = max(cands) if k in _MEMORY_HEAVY else cands[0]
    return space.trial_overrides(params)


def probe_overrides(overrides: dict[str, Any], steps: int = 2) -> dict[str, Any]:
    """A trial's overrides as the probe runs them: everything kept (so the config validates exactly as the
    trial's does: warmup <= num_epochs, queue, accumulation), only ``steps`` optimizer steps per epoch."""
    return {**overrides, "training.max_steps_per_epoch": int(steps)}


def _nvidia_smi_used() -> int | None:
    """Device 0's used memory in bytes from nvidia-smi (before this process creates a CUDA context)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=30)
        return int(float(out.stdout.strip().splitlines()[0])) * 2**20 if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def _rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_probe(tree: dict, overrides: dict, data: str, cache_dir: str, device: str, steps: int = 2,
              validate: bool = True, cap: float | None = None, amp: str = "auto") -> dict[str, Any]:
    """Build the trial's Trainer on ``device``, run ``steps`` optimizer steps and (``validate``) one validation
    pass; measure memory and step times. ``cap``: a per-process CUDA allocator cap applied first (as a packed
    trial does); ``amp``: ``auto`` (the config's rule), ``fp32`` or ``bf16`` (bench/gpu_check.py)."""
    import resource
    import time

    import torch

    from pahcl.config import build_config
    from pahcl.train import Callback, Trainer, prepare_data

    out: dict[str, Any] = {"device": device}
    if device == "cuda":
        out.update(_cuda_start(cap))
    cfg = build_config(tree, {**overrides, "training.max_steps_per_epoch": int(steps), "training.device": device})
    train, val = prepare_data(cfg, data, cache_dir=cache_dir, log=lambda m: None)
    out["baseline_rss"] = _rss_bytes()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times: list[float] = []

    class _Clock(Callback):
        def on_step_end(self, trainer, metrics):
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())

    amp_dtype = {"auto": "auto", "fp32": None, "bf16": torch.bfloat16}[amp]
    tr = Trainer(cfg, train, val, callbacks=[_Clock()], log=lambda m: None, amp_dtype=amp_dtype)
    t0 = time.perf_counter()
    tr.train_epoch(0)
    if validate:
        tr.validate()
    if device == "cuda":
        torch.cuda.synchronize()
        out.update(peak_allocated=int(torch.cuda.max_memory_allocated()),
                   peak_reserved=int(torch.cuda.max_memory_reserved()))
    out["peak_rss"] = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
    gaps = [b - a for a, b in zip([t0] + times[:-1], times)]
    out["step_times"] = gaps
    out["step_s"] = gaps[1] if len(gaps) > 1 else (gaps[0] if gaps else None)  # the first step allocates
    out.update(steps=len(times), batch_size=cfg.training.batch_size, amp=str(tr.amp_dtype),
               accumulation=cfg.training.gradient_accumulation_steps, queue_size=cfg.model.queue_size,
               use_moco=cfg.model.use_moco, train_cycles=len(train), val_cycles=len(val),
               mamba_backend=_backend(cfg.model.mamba_backend))
    return out


def _backend(name: str) -> str:
    from pahcl.models.mamba import resolve_backend

    return str(resolve_backend(name))


def _cuda_start(cap: float | None) -> dict[str, Any]:
    """Before anything is allocated: who uses the device, the context this process adds, the cap."""
    import torch

    used_before = _nvidia_smi_used()
    torch.cuda.init()
    free0, total = torch.cuda.mem_get_info()
    if cap:
        torch.cuda.set_per_process_memory_fraction(float(cap))
    return {"total": int(total), "used_before": used_before, "context_includes_others": used_before is None,
            "context": int(total - free0 - (used_before or 0)), "cap": cap,
            "gpu_name": torch.cuda.get_device_name(0)}


def measure_peak_memory(space, data: str, cache_dir: Path, device: str = "cuda", timeout: int = 900) -> dict:
    """Run the probe for the space's largest configuration in a subprocess; the ``PROBE`` dict."""
    args = json.dumps({"tree": space.base_tree(), "overrides": probe_overrides(largest_overrides(space)),
                       "data": data, "cache_dir": str(Path(cache_dir).resolve()), "device": device})
    env = dict(os.environ, PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-m", "tune.resources", args], capture_output=True, text=True,
                         timeout=timeout, env=env, cwd=str(REPO_ROOT))
    for line in out.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    raise RuntimeError(f"--gpus-per-trial auto: the memory probe failed (exit {out.returncode}):\n"
                       f"{out.stderr[-3000:]}")


def pack(total: int, used_before: int, reserved: int, context: int) -> tuple[int, float, int]:
    """-> (trials per GPU k, per-process allocator cap as a fraction of ``total``, need per trial in bytes)."""
    need = int((reserved + context) * (1 + MARGIN))
    budget = total - used_before
    k = max(1, math.floor(budget / max(need, 1)))
    frac = min(max(budget / k - context, reserved) / total, 1.0)
    return k, frac, need


def _plan_auto(space, cpus: float, data: str, cache_dir: Path, sim: dict | None, log) -> TrialResources:
    if sim is not None:  # tests: a declared GPU of known size and a known peak (tune/gpu.py)
        probe = {"total": sim["total"], "used_before": sim["used_before"], "peak_reserved": sim["peak"],
                 "context": 0, "step_s": sim.get("step_s")}
        how = "simulated GPU (PAHCL_SIMULATED_GPU): given peak"
    else:
        probe = measure_peak_memory(space, data, cache_dir, device="cuda")
        how = "one trial step + validation of the largest configuration: peak reserve"
    total, used = int(probe["total"]), int(probe.get("used_before") or 0)
    k, frac, need = pack(total, used, int(probe["peak_reserved"]), int(probe["context"]))
    others = " (includes other processes: no nvidia-smi)" if probe.get("context_includes_others") else ""
    msg = (f"[resources] --gpus-per-trial auto: {how} {probe['peak_reserved'] / GIB:.2f} GiB + CUDA context "
           f"{probe['context'] / GIB:.2f} GiB{others} + {MARGIN:.0%} margin = {need / GIB:.2f} GiB per trial; "
           f"{(total - used) / GIB:.1f} GiB free of {total / GIB:.1f} GiB -> {k} trial(s) per GPU "
           f"({1 / k:.3f} GPU each, allocator cap {frac:.3f} x {total / GIB:.1f} GiB = {frac * total / GIB:.2f} GiB"
           f"; on a 24 GB card: {max(1, math.floor(24e9 * 0.97 / need))} trial(s))")
    log(msg)
    return TrialResources(cpus, 1.0 / k, frac, trials_per_gpu=k, peak_bytes=need, message=msg,
                          step_s=probe.get("step_s"), total_bytes=total)


def plan_resources(space, gpus_arg, cpus_arg, data: str, cache_dir: Path,
                   log: Callable[[str], None] = print, address: str | None = None) -> TrialResources:
    """Resources per trial. A GPU request on a machine without CUDA (and no simulation) is an error
    unless ``address`` names a cluster, whose GPUs ``tune.gpu.check_cluster_gpus`` checks after joining."""
    from pahcl.config import ConfigError
    from tune.gpu import simulated_gpu

    cpus = float(cpus_arg if cpus_arg is not None else space.cpus_per_trial)
    want = gpus_arg if gpus_arg is not None else space.gpus_per_trial
    import torch

    sim = simulated_gpu()
    has_cuda = torch.cuda.is_available() or sim is not None
    if want == "auto":
        if not has_cuda:
            log("[resources] --gpus-per-trial auto: no CUDA device on this machine -> 0 GPUs per trial (CPU training)")
            return TrialResources(cpus, 0.0, None, message="cpu-only")
        return _plan_auto(space, cpus, data, cache_dir, sim, log)
    gpus = float(want)
    if gpus < 0:
        raise ValueError(f"--gpus-per-trial: {gpus} must be >= 0 or 'auto'")
    if gpus > 0 and not has_cuda and not address:
        raise ConfigError(f"--gpus-per-trial {gpus:g}: this machine has no CUDA device and no cluster was given; "
                          "pass --gpus-per-trial 0 (CPU training) or --address HOST:PORT of a Ray cluster with GPUs")
    frac = min(gpus * 0.9, 0.9) if 0 < gpus < 1 else None
    total = int(sim["total"]) if sim else 0
    return TrialResources(cpus, gpus, frac, trials_per_gpu=int(1 / gpus) if 0 < gpus <= 1 else 0, total_bytes=total)


if __name__ == "__main__":  # the probe subprocess (see the module docstring)
    a = json.loads(sys.argv[1])
    opts = {k: a[k] for k in ("steps", "validate", "cap", "amp") if k in a}
    res = run_probe(a["tree"], a["overrides"], a["data"], a["cache_dir"], a.get("device", "cuda"), **opts)
    print("PROBE " + json.dumps(res), flush=True)
