"""Per-trial resources: ``--gpus-per-trial F|auto`` and ``--cpus-per-trial F``.

``auto`` on a CUDA machine: run ONE training step of the largest configuration in the space in a
subprocess (so the driver never holds a CUDA context), read ``torch.cuda.max_memory_allocated``,
pack ``floor(0.9 * free / peak)`` trials per GPU, give each trial ``1 / k`` GPU and have it cap itself
with ``torch.cuda.set_per_process_memory_fraction(0.9 / k)``. On a CPU-only machine ``auto`` -> 0 GPUs.
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

# Which candidate of each searched key makes a step most expensive in memory.
_MEMORY_HEAVY = ("training.batch_size", "model.queue_size", "model.mamba_d_model", "model.mamba_n_layers",
                 "model.cnn_channels", "model.proj_hidden_dim", "model.mamba_d_state")


@dataclass
class TrialResources:
    cpus: float
    gpus: float
    gpu_fraction: float | None  # per-process CUDA memory cap inside the trial (None: no cap)
    trials_per_gpu: int = 0
    peak_bytes: int = 0
    message: str = ""

    def as_ray(self) -> dict[str, float]:
        return {"cpu": self.cpus, "gpu": self.gpus}


def largest_overrides(space) -> dict[str, Any]:
    """The sampled values that maximise memory: max batch size / queue size / widths."""
    params = {}
    for k, d in space.params.items():
        cands = d.candidates()
        if k in _MEMORY_HEAVY:
            params[k] = max(cands)
        else:
            params[k] = cands[0]
    return space.trial_overrides(params)


_PROBE = r"""
import json, sys, torch
from pahcl.config import build_config
from pahcl.train import Trainer, prepare_data
a = json.loads(sys.argv[1])
ov = dict(a["overrides"]); ov["training.num_epochs"] = 1; ov["training.max_steps_per_epoch"] = 1
ov["training.device"] = "cuda"
cfg = build_config(a["tree"], ov)
train, val = prepare_data(cfg, a["data"], cache_dir=a["cache_dir"], log=lambda m: None)
torch.cuda.reset_peak_memory_stats()
tr = Trainer(cfg, train, None, log=lambda m: None)
tr.train_epoch(0)
torch.cuda.synchronize()
free, total = torch.cuda.mem_get_info()
print("PROBE " + json.dumps({"peak": int(torch.cuda.max_memory_allocated()), "free": int(free), "total": int(total)}))
"""


def measure_peak_gpu_memory(space, data: str, cache_dir: Path, timeout: int = 600) -> dict:
    args = json.dumps({"tree": space.base_tree(), "overrides": largest_overrides(space), "data": data,
                       "cache_dir": str(cache_dir)})
    env = dict(os.environ, PYTHONPATH=f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-c", _PROBE, args], capture_output=True, text=True, timeout=timeout,
                         env=env, cwd=str(REPO_ROOT))
    for line in out.stdout.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    raise RuntimeError(f"--gpus-per-trial auto: the memory probe failed:\n{out.stderr[-3000:]}")


def plan_resources(space, gpus_arg, cpus_arg, data: str, cache_dir: Path,
                   log: Callable[[str], None] = print) -> TrialResources:
    cpus = float(cpus_arg if cpus_arg is not None else space.cpus_per_trial)
    want = gpus_arg if gpus_arg is not None else space.gpus_per_trial
    import torch

    has_cuda = torch.cuda.is_available()
    if want == "auto":
        if not has_cuda:
            log("[resources] --gpus-per-trial auto: no CUDA device on this machine -> 0 GPUs per trial (CPU training)")
            return TrialResources(cpus, 0.0, None, message="cpu-only")
        probe = measure_peak_gpu_memory(space, data, cache_dir)
        peak = max(int(probe["peak"]), 1)
        k = max(1, math.floor(0.9 * probe["free"] / peak))
        gpus = 1.0 / k
        # the cap is a fraction of TOTAL memory: each trial may use its share of 90 % of what was free
        frac = min(0.9 * probe["free"] / max(int(probe["total"]), 1) / k, 1.0)
        msg = (f"[resources] --gpus-per-trial auto: one step of the largest configuration peaks at "
               f"{peak / 2**30:.2f} GiB; {probe['free'] / 2**30:.1f} GiB free of {probe['total'] / 2**30:.1f} GiB "
               f"-> {k} trial(s) per GPU ({gpus:.3f} GPU each, memory cap {frac:.3f} per process)")
        log(msg)
        return TrialResources(cpus, gpus, frac, trials_per_gpu=k, peak_bytes=peak, message=msg)
    gpus = float(want)
    if gpus < 0:
        raise ValueError(f"--gpus-per-trial: {gpus} must be >= 0 or 'auto'")
    if gpus > 0 and not has_cuda:
        log(f"[resources] --gpus-per-trial {gpus}: no CUDA device here; trials will wait for GPU nodes of the cluster")
    frac = min(gpus * 0.9, 0.9) if 0 < gpus < 1 else None
    return TrialResources(cpus, gpus, frac, trials_per_gpu=int(1 / gpus) if 0 < gpus <= 1 else 0)
