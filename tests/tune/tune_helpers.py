"""Helpers shared by the tune tests (imported by name; not a conftest so the name cannot clash)."""
from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]

# Small, fast, deterministic setup shared by the Ray tests: tiny preset, synthetic:40 (both classes of
# the validation patients appear in training, so val/knn_acc varies), 2 optimizer steps per epoch.
BASE_SPACE = {
    "stage": "test_stage",
    "base_config": "pahcl/configs/pretrain.yaml",
    "preset": "tiny",
    "data": "synthetic:40",
    "metric": "val/knn_acc",
    "mode": "max",
    "confirm": {"top": 0, "test_fraction": 0},  # no test split, no confirmation (tests/tune/test_tune_confirm.py has them)
    "guard": "warn",  # 3 epochs x 2 steps: far below 1/(1-m); the pre-Ray guard (tune/guard.py) only warns
    "num_samples": 4,
    "max_epochs": 3,
    "search": {"seed": 0, "max_concurrent_trials": 2},
    "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
    "fixed": {"model.use_moco": True, "model.queue_size": 64, "training.max_steps_per_epoch": 2,
              "training.log_interval": 1, "training.warmup_epochs": 1, "training.batch_size": 8,
              "training.gradient_accumulation_steps": 1},
    "params": {
        "training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "model.moco_momentum": {"type": "categorical", "choices": [0.99, 0.999]},
    },
}


def write_space(path: Path, space: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def descendants(roots) -> set[int]:
    """``roots`` and every process below them, from /proc (ppid is field 4 of /proc/PID/stat)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                parent[int(d)] = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found, grew = set(roots), True
    while grew:
        grew = False
        for pid, pp in parent.items():
            if pp in found and pid not in found:
                found.add(pid)
                grew = True
    return found


def wait_for_health(base: str, proc, timeout: float = 240.0) -> None:
    """Poll ``base``/health until it answers 200; RuntimeError if ``proc`` exits or time runs out."""
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError("mlflow server did not start")
        time.sleep(0.5)
