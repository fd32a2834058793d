"""Harness overhead: the same optimizer steps run by the bare ``pahcl`` Trainer and inside a Ray Tune
trial (the service's real trainable, through ``tune.run_search.main`` with one trial: Optuna searcher,
ASHA, MLflow child run with step logging at the preset's default ``log_interval``, checkpoint +
``tune.report`` every epoch).

    python bench/harness_overhead.py --out bench/results/harness_overhead.json            # 3 pairs, ~4 min
    python bench/harness_overhead.py --pairs 5 --epochs 3 --steps 40 --out /tmp/ho.json
    python bench/harness_overhead.py --smoke-test --out /tmp/ho_smoke.json                # 1 pair, ~1 min

Runs are interleaved (bare, ray, bare, ray, ...), each in a fresh Python process. Both use the same
config (built from one space file exactly as the trainable builds it), the same data cache (filled
before the first run), ``torch.set_num_threads(1)`` (the trial's ``cpus_per_trial: 1``), and the same
timing callback: ``StepClock.on_step_end`` stores ``time.perf_counter()`` after every optimizer step
(in the trial it is inserted right after the MLflow step callback, so an interval contains the data
loading of the next step, the step, and the MLflow callback). Timed region = the intervals between
consecutive steps of the same epoch (epoch boundaries hold validation, and in the trial the MLflow
flush, checkpoint and ``tune.report``; they are reported separately as "epoch-boundary" time).
End-to-end wall = the whole subprocess (Python start, imports, Ray start-up, data from cache, MLflow
set-up, training, Ray shut-down).

The step losses of both paths are compared (same seed, one thread: they must match), so the two
paths run the same optimizer steps.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, command, fmt_spread, machine, md_table, spread, write_json


PARAMS = {"model.moco_momentum": 0.99}  # the one "searched" value (a single choice)


def space_dict(a) -> dict:
    return {
        "stage": "bench_overhead", "base_config": "pahcl/configs/pretrain.yaml", "preset": a.preset,
        "data": a.data, "metric": "val/knn_acc", "mode": "max", "guard": "warn", "num_samples": 1, "max_epochs": a.epochs,
        "confirm": {"top": 0, "test_fraction": 0},  # the search alone, on all data (as measured before issue 12)
        "search": {"seed": 0, "max_concurrent_trials": 1},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpus_per_trial": a.threads, "gpus_per_trial": 0},
        # the synthetic_cpu budget's fixed values (moco_stage2), with more steps per epoch
        "fixed": {"model.use_moco": True, "model.queue_size": 256, "training.max_steps_per_epoch": a.steps,
                  "training.warmup_epochs": 1, "training.batch_size": 8, "training.gradient_accumulation_steps": 2},
        "params": {k: {"type": "categorical", "choices": [v]} for k, v in PARAMS.items()},
    }


# ----------------------------------------------------------------------------- the timing callback


class StepClock:
    """Wall time (perf_counter) and loss of every optimizer step; written to ``path`` at each epoch end."""

    def __init__(self, path: str | None = None):
        self.path = path
        self.rows: list[list[float]] = []  # [epoch, step, t, loss, thread CPU s, process CPU s]

    def on_step_end(self, trainer, metrics):
        self.rows.append([float(metrics["epoch"]), float(metrics["step"]), time.perf_counter(), float(metrics["loss"]),
                          time.thread_time(), time.process_time()])

    def on_epoch_end(self, trainer, metrics):
        if self.path:
            Path(self.path).write_text(json.dumps({"rows": self.rows, "pid": os.getpid(),
                                                   "threads": __import__("torch").get_num_threads()}))


class StepClockPlugin:
    """A search plug-in (tune/plugins.py): every trial of the service's own trainable gets a StepClock, which
    the trainable inserts right after its MLflow step callback (before the report)."""

    def __init__(self, path: str):
        self.path = path

    def trial_hooks(self, trial_id, trial_dir):
        return StepClock(self.path)


# ----------------------------------------------------------------------------- workers


def _cfg_like_trainable(space_file: str, results: str):
    """The trial's Config, built the way tune.trainable builds it (fixed + sampled + seed)."""
    from pahcl.config import build_config
    from tune.spaces import load_space

    sp = load_space(space_file, results_root=results, log=lambda m: None)
    ov = sp.trial_overrides(PARAMS)
    tree = sp.base_tree()
    ov["seed"] = int(ov.get("seed", tree.get("seed", 42)))
    return build_config(tree, ov)


def worker_bare(spec: dict) -> dict:
    import torch

    torch.set_num_threads(spec["threads"])
    from pahcl.train import Trainer, prepare_data

    cfg = _cfg_like_trainable(spec["space"], spec["results"])
    train, val = prepare_data(cfg, spec["data"], cache_dir=spec["cache"], log=lambda m: None)
    clock = StepClock()
    Trainer(cfg, train, val, callbacks=[clock], log=lambda m: None).fit()
    return {"rows": clock.rows, "threads": torch.get_num_threads()}


def _proc_cpu_tree(root: int) -> dict[int, tuple[str, float]]:
    """{pid: (name, user+system CPU seconds)} of ``root`` and all its descendants (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    info, children = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        name = raw[raw.index("(") + 1:raw.rindex(")")]
        f = raw[raw.rindex(")") + 2:].split()
        pid, ppid = int(d), int(f[1])
        info[pid] = (name, (int(f[11]) + int(f[12])) / tick)
        children.setdefault(ppid, []).append(pid)
    out, stack = {}, [root]
    while stack:
        p = stack.pop()
        if p in info:
            out[p] = info[p]
        stack += children.get(p, [])
    return out


class CpuSampler:
    """Samples the CPU time of this process tree (driver, Ray's processes, the trial worker) every second; its own
    CPU (reading /proc, in the driver process) is subtracted from the driver's."""

    def __init__(self, period: float = 1.0):
        import threading

        self.samples: list[tuple[float, dict]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(period,), daemon=True)
        self._t.start()

    def _run(self, period):
        while not self._stop.is_set():
            tree = _proc_cpu_tree(os.getpid())
            me = os.getpid()
            if me in tree:  # the sampler's own CPU so far is not the harness's
                tree[me] = (tree[me][0], tree[me][1] - time.thread_time())
            self.samples.append((time.perf_counter(), tree))
            self._stop.wait(period)

    def stop(self):
        self._stop.set()
        self._t.join()

    def window(self, t0: float, t1: float, trial_pid: int) -> dict:
        """CPU used in [t0, t1] (CLOCK_MONOTONIC, as perf_counter in every process), trial vs everything else."""
        def at(t):
            return min(self.samples, key=lambda s: abs(s[0] - t))

        (a_t, a), (b_t, b) = at(t0), at(t1)
        per = {}
        for pid, (name, cpu) in b.items():
            per[pid] = (name, cpu - a.get(pid, (name, cpu))[1])  # processes started inside: counted from their start
        trial = per.get(trial_pid, ("?", 0.0))[1]
        others = {f"{n}[{p}]": round(c, 3) for p, (n, c) in per.items() if p != trial_pid and c > 0.005}
        span = max(b_t - a_t, 1e-9)
        return {"window_s": span, "trial_cpu_s": trial, "other_cpu_s": sum(others.values()),
                "other_cores": sum(others.values()) / span, "trial_cores": trial / span, "others": others}


def worker_ray(spec: dict) -> dict:
    results = Path(spec["results"])
    results.mkdir(parents=True, exist_ok=True)
    link = results / "cache"
    if not link.exists():
        link.symlink_to(spec["cache"], target_is_directory=True)  # same data cache as the bare runs
    from tune import run_search

    f = Path(spec["cache"]).parent / "bench_steps.json"
    sampler = CpuSampler()
    try:
        out = run_search.main(["--space", spec["space"], "--results-dir", str(results)],
                              plugins=[StepClockPlugin(str(f))])
    finally:
        sampler.stop()
    steps = json.loads(f.read_text())
    f.unlink()
    rows = steps["rows"]
    cpu = sampler.window(rows[0][2], rows[-1][2], int(steps["pid"])) if rows else {}
    return {"rows": rows, "threads": steps["threads"], "exit_code": out.get("exit_code"), "harness_cpu": cpu}


# ----------------------------------------------------------------------------- analysis


def analyse(rows: list[list[float]]) -> dict:
    by_epoch: dict[int, list[list[float]]] = {}
    for r in rows:
        by_epoch.setdefault(int(r[0]), []).append(r)
    inner, boundary, thread_cpu, proc_cpu = [], [], [], []
    eps = sorted(by_epoch)
    for e in eps:
        rs = by_epoch[e]
        inner += [b[2] - a[2] for a, b in zip(rs, rs[1:])]
        thread_cpu += [b[4] - a[4] for a, b in zip(rs, rs[1:])]
        proc_cpu += [b[5] - a[5] for a, b in zip(rs, rs[1:])]
    by_epoch = {e: [r[2] for r in rs] for e, rs in by_epoch.items()}
    med = sorted(inner)[len(inner) // 2] if inner else 0.0
    for e0, e1 in zip(eps, eps[1:]):
        boundary.append(by_epoch[e1][0] - by_epoch[e0][-1] - med)  # validation (+ report) beyond one step
    srt = sorted(inner)
    p90 = srt[int(0.9 * (len(srt) - 1))] if srt else 0.0
    slow = [x for x in inner if x > 1.5 * med]
    return {"intervals_ms": [round(1000 * x, 2) for x in inner], "steps": len(rows), "timed_intervals": len(inner),
            "step_s_p90": p90, "step_s_max": srt[-1] if srt else 0.0,
            "slow_intervals": len(slow), "slow_excess_s": sum(x - med for x in slow), "step_s_mean": sum(inner) / max(len(inner), 1),
            "step_s_median": med, "steps_s_total": sum(inner), "epoch_boundary_s": boundary,
            "train_wall_s": rows[-1][2] - rows[0][2] if rows else 0.0, "losses": [r[3] for r in rows],
            "thread_cpu_ms_mean": 1000 * sum(thread_cpu) / max(len(thread_cpu), 1),
            "process_cpu_ms_mean": 1000 * sum(proc_cpu) / max(len(proc_cpu), 1)}


def run_one(kind: str, spec: dict, timeout: float) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--worker", kind, "--spec", json.dumps(spec)], cwd=REPO,
                       capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"{kind} run failed (rc {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}")
    res = json.loads(line[7:])
    res.update(analyse(res.pop("rows")), e2e_wall_s=wall, kind=kind, loadavg=os.getloadavg())
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3, help="interleaved (bare, ray) pairs")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40, help="training.max_steps_per_epoch")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--threads", type=int, default=1, help="cpus_per_trial = torch threads in both paths")
    ap.add_argument("--warmup-pair", action="store_true", help="run one untimed pair first")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--smoke-test", action="store_true", help="1 pair, 2 epochs x 4 steps, synthetic:40")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        spec = json.loads(a.spec)
        res = worker_bare(spec) if a.worker == "bare" else worker_ray(spec)
        print("RESULT " + json.dumps(res), flush=True)
        return 0
    if a.smoke_test:
        a.pairs, a.epochs, a.steps, a.data = 1, 2, 4, "synthetic:40"

    import torch

    torch.set_num_threads(a.threads)
    m0 = machine()
    tmp = Path(tempfile.mkdtemp(prefix="pahcl_overhead_"))
    import yaml

    space_file = tmp / "bench_overhead.yaml"
    space_file.write_text(yaml.safe_dump(space_dict(a), sort_keys=False))
    cache = tmp / "cache"
    # fill the data cache once (excluded from everything timed)
    from pahcl.train import prepare_data

    prepare_data(_cfg_like_trainable(str(space_file), str(tmp / "r0")), a.data, cache_dir=cache, log=lambda m: None)

    runs = []
    order = (["bare", "ray"] if a.warmup_pair else []) + ["bare", "ray"] * a.pairs
    for i, kind in enumerate(order):
        spec = {"space": str(space_file), "results": str(tmp / f"r{i}"), "cache": str(cache), "data": a.data,
                "threads": a.threads}
        r = run_one(kind, spec, a.timeout)
        r["warmup"] = a.warmup_pair and i < 2
        runs.append(r)
        hc = r.get("harness_cpu") or {}
        if hc:
            top = sorted(hc["others"].items(), key=lambda kv: -kv[1])[:5]
            print(f"[ray ] other harness processes {hc['other_cores']:.2f} cores, trial {hc['trial_cores']:.2f}: {top}",
                  file=sys.stderr, flush=True)
        print(f"[{kind:4s}] step {r['step_s_mean'] * 1000:7.1f} ms (median {r['step_s_median'] * 1000:.1f}, "
              f"thread CPU {r['thread_cpu_ms_mean']:.1f}, process CPU {r['process_cpu_ms_mean']:.1f}), "
              f"{r['timed_intervals']} intervals, e2e {r['e2e_wall_s']:.1f} s, load {os.getloadavg()[0]:.2f}",
              file=sys.stderr, flush=True)
    timed = [r for r in runs if not r["warmup"]]
    bare = [r for r in timed if r["kind"] == "bare"]
    ray = [r for r in timed if r["kind"] == "ray"]
    pairs = list(zip(bare, ray))
    ratio_step = [y["step_s_mean"] / x["step_s_mean"] for x, y in pairs]
    ratio_med = [y["step_s_median"] / x["step_s_median"] for x, y in pairs]
    ratio_e2e = [y["e2e_wall_s"] / x["e2e_wall_s"] for x, y in pairs]
    ratio_tcpu = [y["thread_cpu_ms_mean"] / x["thread_cpu_ms_mean"] for x, y in pairs]
    ratio_pcpu = [y["process_cpu_ms_mean"] / x["process_cpu_ms_mean"] for x, y in pairs]
    loss_diff = max((max(abs(u - v) for u, v in zip(x["losses"], y["losses"])) for x, y in pairs), default=None)
    same_steps = all(len(x["losses"]) == len(y["losses"]) for x, y in pairs)
    summary = {
        "ratio_step_mean": spread(ratio_step), "ratio_step_median": spread(ratio_med), "ratio_e2e": spread(ratio_e2e),
        "ratio_thread_cpu": spread(ratio_tcpu), "ratio_process_cpu": spread(ratio_pcpu),
        "bare_step_ms": spread([r["step_s_mean"] * 1000 for r in bare]),
        "ray_step_ms": spread([r["step_s_mean"] * 1000 for r in ray]),
        "bare_e2e_s": spread([r["e2e_wall_s"] for r in bare]), "ray_e2e_s": spread([r["e2e_wall_s"] for r in ray]),
        "bare_boundary_s": spread([b for r in bare for b in r["epoch_boundary_s"]]),
        "ray_boundary_s": spread([b for r in ray for b in r["epoch_boundary_s"]]),
        "bare_train_wall_s": spread([r["train_wall_s"] for r in bare]),
        "ray_train_wall_s": spread([r["train_wall_s"] for r in ray]),
        "bare_thread_cpu_ms": spread([r["thread_cpu_ms_mean"] for r in bare]),
        "ray_thread_cpu_ms": spread([r["thread_cpu_ms_mean"] for r in ray]),
        "bare_process_cpu_ms": spread([r["process_cpu_ms_mean"] for r in bare]),
        "ray_process_cpu_ms": spread([r["process_cpu_ms_mean"] for r in ray]),
        "bare_slow_intervals": spread([r["slow_intervals"] for r in bare]),
        "ray_slow_intervals": spread([r["slow_intervals"] for r in ray]),
        "bare_slow_excess_ms_per_step": spread([1000 * r["slow_excess_s"] / max(r["timed_intervals"], 1) for r in bare]),
        "ray_slow_excess_ms_per_step": spread([1000 * r["slow_excess_s"] / max(r["timed_intervals"], 1) for r in ray]),
        "ray_other_cores": spread([r["harness_cpu"].get("other_cores", 0.0) for r in ray if r.get("harness_cpu")]),
        "ray_trial_cores": spread([r["harness_cpu"].get("trial_cores", 0.0) for r in ray if r.get("harness_cpu")]),
        "max_abs_loss_diff": loss_diff, "same_number_of_steps": same_steps,
        "optimizer_steps_per_run": bare[0]["steps"] if bare else 0,
    }
    write_json(a.out, {"bench": "harness_overhead", "partial": True, "summary": summary, "runs": runs})  # safety copy
    table = markdown(summary, a)
    print(table)
    for r in runs:
        r.pop("losses", None)
    m0["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    write_json(a.out, {"bench": "harness_overhead", "command": command(argv), "machine": m0, "args": vars(a),
                       "space": space_dict(a), "summary": summary, "runs": runs, "markdown": table})
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def markdown(s: dict, a) -> str:
    rows = [
        ["optimizer step (mean of within-epoch intervals), ms", fmt_spread(s["bare_step_ms"], 1),
         fmt_spread(s["ray_step_ms"], 1), f"**{fmt_spread(s['ratio_step_mean'])}**"],
        ["optimizer step (median interval), ratio", "", "", fmt_spread(s["ratio_step_median"])],
        ["CPU time of the training thread per step, ms", fmt_spread(s["bare_thread_cpu_ms"], 1),
         fmt_spread(s["ray_thread_cpu_ms"], 1), fmt_spread(s["ratio_thread_cpu"])],
        ["CPU time of the whole trial process per step (all its threads), ms", fmt_spread(s["bare_process_cpu_ms"], 1),
         fmt_spread(s["ray_process_cpu_ms"], 1), fmt_spread(s["ratio_process_cpu"])],
        ["intervals > 1.5 x the run's median step (count per run)", fmt_spread(s["bare_slow_intervals"], 0),
         fmt_spread(s["ray_slow_intervals"], 0), ""],
        ["time those slow intervals add, per step, ms", fmt_spread(s["bare_slow_excess_ms_per_step"], 1),
         fmt_spread(s["ray_slow_excess_ms_per_step"], 1), ""],
        ["CPU of the other harness processes (driver, raylet, GCS, ...) while the trial trains, cores", "",
         fmt_spread(s["ray_other_cores"], 2), ""],
        ["epoch boundary beyond one step (validation; trial: + flush, checkpoint, report), s",
         fmt_spread(s["bare_boundary_s"], 2), fmt_spread(s["ray_boundary_s"], 2), ""],
        ["training wall (first to last step), s", fmt_spread(s["bare_train_wall_s"], 1),
         fmt_spread(s["ray_train_wall_s"], 1), ""],
        ["end-to-end wall incl. start-up, s", fmt_spread(s["bare_e2e_s"], 1), fmt_spread(s["ray_e2e_s"], 1),
         fmt_spread(s["ratio_e2e"], 2)],
    ]
    head = ["quantity (median (min–max) over pairs)", "bare Trainer", "Ray trial + MLflow", "ratio trial / bare"]
    note = (f"\n\n{s['ratio_step_mean']['n']} interleaved pairs; {s['optimizer_steps_per_run']} optimizer steps per run "
            f"({a.epochs} epochs x {a.steps} steps, preset {a.preset}, {a.data}, batch 8 x 2, {a.threads} thread); "
            f"same steps in both: {s['same_number_of_steps']}, max |loss difference| {s['max_abs_loss_diff']:.2e}")
    return md_table(head, rows) + note


if __name__ == "__main__":
    sys.exit(main())
