"""GPU acceptance check: the figures the CPU tests cannot give, in one command, under 9 minutes on one GPU.

    make gpu-check                                   # = python bench/gpu_check.py --out bench/results/gpu_check.json
    python bench/gpu_check.py --smoke-test --out /tmp/gpu_check_smoke.json   # CPU dry run (tiny sizes, stage 2 only)

Needs torch, numpy and what pahcl's data and training code import (pyyaml, scipy, pandas); NOT ray, optuna
or mlflow: the Ray packing itself is tested on CPU with declared GPUs (tests/tune/test_gpu_packing.py).
A missing package is reported in the JSON and the script exits 2 before measuring anything. Parts, each
bounded by what is left of ``--budget-s`` (a part that does not fit is recorded as skipped):

1. ``cuda_tests``: ``pytest -m gpu tests/pahcl`` (real CUDA OOM retries, Mamba CUDA parity), when pytest is there.
2. ``probe``: for each shipped space (its ``synthetic_cuda`` budget, no inherited stage), the memory probe
   (``tune.resources.measure_peak_memory``: 2 steps + validation of the largest configuration) vs a longer
   run of the same configuration (``--trial-steps`` steps + validation) in its own process: predicted need
   per trial vs measured, trials per GPU here and on a 24 GB card (RTX 4090D).
3. ``packing``: k processes of stage 2's largest configuration, each under its planned allocator cap,
   started together vs one alone: aggregate optimizer steps/s.
4. ``amp``: bf16 autocast vs fp32 step time, full preset, batch 64, Mamba torch scan (and mamba-ssm when
   importable).

Memory is given in GiB and as "trials per 24 GB card" (24e9 bytes, 3 % reserved by the driver).
``bench/run_all.py`` renders the JSON into docs/benchmarks.md ("not run" when it is absent).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, command, machine, write_json

NEEDED = ("torch", "numpy", "yaml", "scipy", "pandas")
SPACES = ("simclr_stage1", "moco_stage2", "moco_stage3")
CARD_24GB = 24e9 * 0.97
GIB = 2**30


class Clock:
    def __init__(self, budget_s: float):
        self.t0, self.budget = time.perf_counter(), budget_s

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.t0)


def missing_packages() -> list[str]:
    out = []
    for m in NEEDED:
        try:
            importlib.import_module(m)
        except ImportError:
            out.append(m)
    return out


def _worker(tree, overrides, data, cache, device, timeout, **opts) -> dict:
    """``python -m tune.resources`` (the probe's process) with options: one measurement, own process."""
    args = json.dumps({"tree": tree, "overrides": overrides, "data": data, "cache_dir": str(cache), "device": device,
                       **opts})
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    p = subprocess.Popen([sys.executable, "-m", "tune.resources", args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
    return {"proc": p, "timeout": timeout}


def _collect(w: dict) -> dict:
    try:
        out, err = w["proc"].communicate(timeout=max(1, w["timeout"]))
    except subprocess.TimeoutExpired:
        w["proc"].kill()
        return {"error": "timeout"}
    for line in out.splitlines():
        if line.startswith("PROBE "):
            return json.loads(line[6:])
    return {"error": f"exit {w['proc'].returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}"[:400]}


def run_cuda_tests(clock: Clock, smoke: bool) -> dict:
    if importlib.util.find_spec("pytest") is None:
        return {"skipped": "pytest not installed"}
    t = min(120.0, clock.left() - 300)
    if t < 30:
        return {"skipped": "time"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/pahcl", "-p", "no:cacheprovider"]
    try:
        p = subprocess.run(cmd, cwd=str(REPO), capture_output=True, text=True, timeout=t)
    except subprocess.TimeoutExpired:
        return {"command": " ".join(cmd[1:]), "error": f"timeout after {t:.0f} s"}
    tail = [x for x in p.stdout.strip().splitlines() if x.strip()][-1:] or [""]
    return {"command": "python " + " ".join(cmd[1:]), "rc": p.returncode, "summary": tail[0][:300]}


def _space_config(name: str, smoke: bool, tmp: Path):
    from tune.resources import largest_overrides
    from tune.spaces import load_space

    cli = {"preset": "tiny", "data": "synthetic:16"} if smoke else {}
    sp = load_space(name, results_root=tmp / "no-results", budget=None if smoke else "synthetic_cuda", cli=cli,
                    log=lambda m: None)
    return sp, sp.base_tree(), largest_overrides(sp)


def _need(r: dict, device: str) -> int:
    if device == "cuda":
        return int(r["peak_reserved"]) + int(r["context"])
    return int(r["peak_rss"])


def run_probe_vs_trial(clock: Clock, device: str, smoke: bool, trial_steps: int, cache: Path, tmp: Path) -> list:
    from tune.resources import MARGIN, pack

    rows = []
    for name in SPACES[1:2] if smoke else SPACES:  # the dry run: stage 2 only (the CPU probe tests cover all)
        if clock.left() < 200:
            rows.append({"space": name, "skipped": "time"})
            continue
        sp, tree, ov = _space_config(name, smoke, tmp)
        probe = _collect(_worker(tree, ov, sp.data, cache, device, clock.left() - 120, steps=2))
        real = _collect(_worker(tree, ov, sp.data, cache, device, clock.left() - 120, steps=trial_steps))
        row = {"space": name, "data": sp.data, "probe": probe, "trial": real}
        if "error" not in probe and "error" not in real:
            pred, meas = int(_need(probe, device) * (1 + MARGIN)), _need(real, device)
            row.update(predicted_need_gib=pred / GIB, measured_gib=meas / GIB, ratio=pred / max(meas, 1),
                       per_24gb_card=max(0, math.floor(CARD_24GB / pred)))
            if device == "cuda":
                k, frac, _ = pack(probe["total"], int(probe.get("used_before") or 0), probe["peak_reserved"],
                                  probe["context"])
                row.update(k_here=k, cap_fraction=frac, total_gib=probe["total"] / GIB)
        rows.append(row)
    return rows


def _rate(r: dict, warm: int = 2) -> float | None:
    t = r.get("step_times") or []
    t = t[warm:] if len(t) > warm else t
    return len(t) / sum(t) if t and sum(t) > 0 else None


def run_packing(clock: Clock, device: str, smoke: bool, steps: int, probe_rows: list, cache: Path, tmp: Path) -> dict:
    row = next((r for r in probe_rows if r.get("space") == "moco_stage2" and "ratio" in r), None)
    if row is None:
        return {"skipped": "no probe result for moco_stage2"}
    k = min(int(row.get("k_here", 2)), 2 if smoke else 6)
    cap = row.get("cap_fraction") if device == "cuda" else None
    if k < 2 or clock.left() < 150:
        return {"skipped": f"k={k}" if k < 2 else "time"}
    sp, tree, ov = _space_config("moco_stage2", smoke, tmp)
    alone = _collect(_worker(tree, ov, sp.data, cache, device, clock.left() - 60, steps=steps, validate=False, cap=cap))
    ws = [_worker(tree, ov, sp.data, cache, device, clock.left() - 30, steps=steps, validate=False, cap=cap)
          for _ in range(k)]
    packed = [_collect(w) for w in ws]
    rates = [_rate(r) for r in packed]
    out = {"k": k, "cap_fraction": cap, "steps": steps, "alone_steps_per_s": _rate(alone),
           "packed_steps_per_s": rates, "errors": [r["error"] for r in [alone, *packed] if "error" in r]}
    if out["alone_steps_per_s"] and all(rates):
        out["aggregate_steps_per_s"] = sum(rates)
        out["speedup_vs_alone"] = sum(rates) / out["alone_steps_per_s"]
    if device == "cuda":
        out["peak_reserved_gib"] = [r.get("peak_reserved", 0) / GIB for r in packed]
    return out


def run_amp(clock: Clock, device: str, smoke: bool, steps: int, cache: Path) -> list:
    from pahcl.config import config_tree

    tree = config_tree(None, "tiny" if smoke else "full")
    data = "synthetic:16" if smoke else "synthetic:120"
    backends = ["torch"] + ([] if smoke or importlib.util.find_spec("mamba_ssm") is None else ["mamba_ssm"])
    rows = []
    for backend in backends:
        for amp in ("fp32", "bf16"):
            if clock.left() < 60:
                rows.append({"backend": backend, "amp": amp, "skipped": "time"})
                continue
            ov = {"training.batch_size": 8 if smoke else 64, "training.gradient_accumulation_steps": 1,
                  "model.mamba_backend": backend, "model.queue_size": 64 if smoke else 512}
            r = _collect(_worker(tree, ov, data, cache, device, clock.left() - 30, steps=steps, validate=False,
                                 amp=amp))
            t = (r.get("step_times") or [])[2:]
            rows.append({"backend": backend, "amp": amp, "batch_size": ov["training.batch_size"],
                         "median_step_s": statistics.median(t) if t else None, "amp_used": r.get("amp"),
                         "peak_reserved_gib": r.get("peak_reserved", 0) / GIB, "error": r.get("error")})
    if importlib.util.find_spec("mamba_ssm") is None:
        rows.append({"backend": "mamba_ssm", "skipped": "not importable here (no prebuilt wheel for this "
                     "Python/torch/CUDA within the 64 MiB carry limit; building needs nvcc and time)"})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "gpu_check.json"))
    ap.add_argument("--smoke-test", action="store_true", help="CPU dry run: tiny preset, small data, k = 2")
    ap.add_argument("--budget-s", type=float, default=510.0, help="wall-clock budget for all parts (default 8.5 min)")
    ap.add_argument("--trial-steps", type=int, default=12, help="steps of the 'real trial' run per space")
    ap.add_argument("--skip-tests", action="store_true", help="skip the pytest -m gpu part")
    a = ap.parse_args(argv)
    clock = Clock(a.budget_s)
    res: dict = {"command": command(argv), "missing": missing_packages(), "smoke": a.smoke_test}
    if res["missing"]:
        res["error"] = f"missing packages: {', '.join(res['missing'])} (carry their wheels; see docs/search.md)"
        write_json(a.out, res)
        print(res["error"], file=sys.stderr)
        return 2
    import torch

    device = "cuda" if torch.cuda.is_available() and not a.smoke_test else "cpu"
    res.update(machine=machine(), device=device, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if device == "cpu" and not a.smoke_test:
        res["error"] = "no CUDA device: run with --smoke-test for the CPU dry run"
        write_json(a.out, res)
        print(res["error"], file=sys.stderr)
        return 2
    steps = 4 if a.smoke_test else 20
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        cache = Path(tmp) / "cache"
        res["cuda_tests"] = {"skipped": "--skip-tests"} if a.skip_tests else run_cuda_tests(clock, a.smoke_test)
        res["probe"] = run_probe_vs_trial(clock, device, a.smoke_test, 3 if a.smoke_test else a.trial_steps, cache,
                                          Path(tmp))
        res["packing"] = run_packing(clock, device, a.smoke_test, steps, res["probe"], cache, Path(tmp))
        res["amp"] = run_amp(clock, device, a.smoke_test, steps if a.smoke_test else 12, cache)
    res["wall_s"] = a.budget_s - clock.left()
    write_json(a.out, res)
    print(json.dumps({k: res[k] for k in ("device", "wall_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
