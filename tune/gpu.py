"""GPU placement of a trial, the cluster GPU check, and the test-only GPU simulation switch.

In a trial (``tune/trainable.py``): ``place_trial(context)`` reads what Ray assigned (``ray.get_gpu_ids()``
and the trial's GPU share), applies the planned allocator cap (``context.gpu_fraction``) with
``torch.cuda.set_per_process_memory_fraction`` and returns what it did; the trial reports those fields
with every result (``gpu_ids``, ``gpu_share``, ``gpu_cap_fraction``, ``gpu_cap_gib``, ``gpu_simulated``,
``trial_wall_start``) and writes them to ``pahcl_gpu.json`` in its directory.

A GPU assigned by Ray while torch sees no CUDA device is an error (``GpuUnavailableError``): a trial
never silently trains on the CPU in place of the GPU it was given.

Simulation (tests only; never set in real use): ``PAHCL_SIMULATED_GPU='{"total_gib": 24, "peak_gib": 5,
"used_gib": 0}'`` in the DRIVER's environment. The driver then (1) starts its local Ray with ``num_gpus``
(default 1) declared GPUs, (2) treats the machine as having CUDA for ``--gpus-per-trial``, with ``auto``
packing by the given peak and device size instead of running the probe, and (3) passes the switch to the
trials in their context (``TrialContext.gpu_simulation``): a trial then records its assignment and
planned cap and trains on the CPU. Ray accepts declared GPUs without hardware (``ray start --num-gpus 1``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

SIM_ENV = "PAHCL_SIMULATED_GPU"
GIB = 2**30
PLACEMENT_FILE = "pahcl_gpu.json"


class GpuUnavailableError(RuntimeError):
    """Ray assigned this trial a GPU, but torch in the trial process has no CUDA device."""


def simulated_gpu(environ=None) -> dict[str, Any] | None:
    """The simulated device from ``PAHCL_SIMULATED_GPU`` (bytes), or None when the switch is off."""
    raw = (os.environ if environ is None else environ).get(SIM_ENV)
    if not raw:
        return None
    from pahcl.config import ConfigError

    try:
        d = json.loads(raw)
        return {"total": int(float(d.get("total_gib", 24)) * GIB), "peak": int(float(d.get("peak_gib", 1)) * GIB),
                "used_before": int(float(d.get("used_gib", 0)) * GIB), "num_gpus": int(d.get("num_gpus", 1)),
                "step_s": d.get("step_s")}
    except (ValueError, TypeError, AttributeError) as e:
        raise ConfigError(f"{SIM_ENV}: expected JSON like {{\"total_gib\": 24, \"peak_gib\": 5}}, got {raw!r} ({e})")


def local_num_gpus() -> int | None:
    """``num_gpus`` for a local ``ray.init``: the simulated count, else None (Ray detects the GPUs)."""
    sim = simulated_gpu()
    return sim["num_gpus"] if sim else None


def simulation_context() -> dict[str, Any] | None:
    """What the trials need of the simulation switch (``TrialContext.gpu_simulation``), or None."""
    sim = simulated_gpu()
    return None if sim is None else {"total": sim["total"]}


def check_cluster_gpus(gpus_per_trial: float) -> None:
    """After joining a cluster: a GPU request that no node can serve is an error now, not a pending trial."""
    import ray

    from pahcl.config import ConfigError

    have = float(ray.cluster_resources().get("GPU", 0))
    per_node = max((float(n.get("Resources", {}).get("GPU", 0)) for n in ray.nodes() if n.get("Alive")), default=0.0)
    if gpus_per_trial > 0 and (have <= 0 or per_node < min(gpus_per_trial, 1.0)):
        raise ConfigError(f"--gpus-per-trial {gpus_per_trial:g}: the Ray cluster has {have:g} GPU(s) "
                          f"(largest node {per_node:g}); trials would wait forever. Pass --gpus-per-trial 0 or "
                          "join a cluster with GPU nodes")


def _assigned() -> tuple[list[str], float]:
    """(GPU ids Ray gave this trial, the trial's GPU share) from inside a Ray Tune trial."""
    import ray
    from ray import tune as ray_tune

    ids = [str(i) for i in ray.get_gpu_ids()]
    share = 0.0
    try:
        pgf = ray_tune.get_context().get_trial_resources()
        share = float(pgf.required_resources.get("GPU", 0.0))
    except Exception:  # noqa: BLE001 - outside Tune (a direct call): the ids are enough
        share = float(len(ids))
    return ids, share


def place_trial(context, trial_dir: Path | None = None) -> dict[str, Any]:
    """Apply the planned memory cap on the assigned GPU; record what was assigned and applied."""
    import torch

    ids, share = _assigned()
    frac, sim = context.gpu_fraction, context.gpu_simulation  # tune.context.TrialContext
    rec: dict[str, Any] = {"gpu_ids": ",".join(ids), "gpu_share": share, "gpu_cap_fraction": float(frac or 0.0),
                           "gpu_cap_gib": 0.0, "gpu_simulated": bool(sim and ids), "trial_wall_start": time.time()}
    if ids and not torch.cuda.is_available():
        if not sim:
            raise GpuUnavailableError(
                f"Ray assigned GPU(s) {rec['gpu_ids']} ({share:g} per trial) but torch has no CUDA device in this "
                f"trial (torch {torch.__version__}, CUDA build {torch.version.cuda}); install a CUDA build of "
                "torch on the GPU nodes or run with --gpus-per-trial 0")
        rec["gpu_cap_gib"] = float(frac or 1.0) * sim["total"] / GIB  # planned; training runs on the CPU
    elif ids:
        total = torch.cuda.get_device_properties(0).total_memory
        if frac:
            torch.cuda.set_per_process_memory_fraction(float(frac))
        rec["gpu_cap_gib"] = float(frac or 1.0) * total / GIB
    if trial_dir is not None:
        try:
            (Path(trial_dir) / PLACEMENT_FILE).write_text(json.dumps(rec))
        except OSError:
            pass
    return rec
