"""Search efficiency: full grid (no early stopping) vs the service's TPE + ASHA on the same discrete space.

    python bench/search_efficiency.py --out bench/results/search_efficiency.json          # ~25 min on 2 cores (+ ~5 noise)
    python bench/search_efficiency.py --seeds 0 1 2 3 --num-samples 10 --out /tmp/se.json
    python bench/search_efficiency.py --smoke-test --out /tmp/se_smoke.json                 # ~1-2 min
    # only the training-seed noise check, added to a saved result (~3-5 min):
    python bench/search_efficiency.py --noise-from bench/results/search_efficiency.json

Space (moco_stage2's synthetic_cpu budget: tiny preset, synthetic:40, batch 8 x 2, queue 256,
``max_steps_per_epoch`` 6, 2 trials at a time, 1 CPU each), made discrete so a full grid is feasible:
``training.learning_rate`` {6.7e-4, 2e-3, 6e-3} x ``training.warmup_epochs`` {1, 2} x
``model.moco_momentum`` {0.99, 0.995, 0.999} = 18 configurations, ``max_epochs`` 9.

(a) grid: every configuration for ``max_epochs`` (``tune.grid_search`` in ``param_space``, FIFO
    scheduler), 2 concurrent trials.
(b) the service: ``tune/run_search.py``'s own Tuner (OptunaSearch + TPESampler(seed) +
    ConcurrencyLimiter(2) + PersistentASHA, grace period 2 (= the largest warmup), reduction factor 3)
    with ``--num-samples`` configurations, once per search seed.

Both go through ``tune.run_search.main`` (same trainable, MLflow child runs, ranking); only the
Tuner is swapped for (a). All searches run in one process on one local Ray (``num_cpus=2``), started
before the first search, so the wall times exclude Ray start-up. Training is seeded (seed 42 for every
trial) and deterministic on CPU, so the grid's value of a configuration is that configuration's
full-budget result; (b)'s choice is also looked up in the grid. Reported per search: trials,
trial-epochs (sum of epochs run), wall (``main``) and tuning wall (``Tuner.fit``), the best
``val/knn_acc`` at a trial's last epoch, the selected configuration and its full-budget value.
Then (``--noise-seeds``) the grid's best configuration and every configuration (b) selected are
trained again with the bare Trainer under training seeds 42 (the searches' seed: a reproduction
check of the Ray result) and 43-45, to show how large a 1-point difference is against seed noise.
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

from _common import REPO, command, machine, md_table, spread, worker_results, write_json


LR = [6.7e-4, 2.0e-3, 6.0e-3]
WARMUP = [1, 2]
MOMENTUM = [0.99, 0.995, 0.999]


def space_dict(a, num_samples: int, seed: int) -> dict:
    return {
        "stage": "bench_search", "base_config": "pahcl/configs/pretrain.yaml", "preset": "tiny", "data": a.data,
        "metric": "val/knn_acc", "mode": "max", "guard": "warn", "num_samples": num_samples, "max_epochs": a.epochs,
        "confirm": {"top": 0, "test_fraction": 0},  # the search alone, on all data (as measured before issue 12)
        "search": {"seed": seed, "max_concurrent_trials": 2},
        "scheduler": {"type": "asha", "grace_period": a.grace, "reduction_factor": a.rf},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
        "fixed": {"model.use_moco": True, "model.queue_size": 256, "training.max_steps_per_epoch": a.steps,
                  "training.log_interval": 1, "training.batch_size": 8, "training.gradient_accumulation_steps": 2},
        "params": {
            "training.learning_rate": {"type": "categorical", "choices": a.lr},
            "training.warmup_epochs": {"type": "categorical", "choices": a.warmup},
            "model.moco_momentum": {"type": "categorical", "choices": a.momentum},
        },
    }


# ----------------------------------------------------------------------------- worker (one Ray for all)


def _grid_tuner(space, seeds, total, trainable, state_dir, mlflow_ids, ray_dir, search_id, max_failures=0,
                callbacks=(), **_kw):
    """Same trainable, callbacks, checkpointing and concurrency as the service; grid + FIFO instead of TPE + ASHA."""
    from ray import tune as ray_tune
    from ray.tune.schedulers import FIFOScheduler

    from tune.mlflow_utils import EndChildRunsCallback

    callbacks = [EndChildRunsCallback(mlflow_ids["tracking_uri"], mlflow_ids["experiment_id"],
                                      mlflow_ids["parent_run_id"], space.max_epochs), *callbacks]
    return ray_tune.Tuner(
        trainable,
        param_space={k: ray_tune.grid_search(list(d.choices)) for k, d in space.params.items()},
        tune_config=ray_tune.TuneConfig(num_samples=1, scheduler=FIFOScheduler(), metric=space.metric, mode=space.mode,
                                        max_concurrent_trials=space.max_concurrent_trials, reuse_actors=True),
        run_config=ray_tune.RunConfig(name=search_id, storage_path=str(ray_dir), callbacks=callbacks,
                                      checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=2),
                                      failure_config=ray_tune.FailureConfig(max_failures=max_failures), verbose=1),
    )


class TimedTuner:
    """A Tuner whose ``fit()`` is timed into ``out["s"]`` (what run_search.main calls)."""

    def __init__(self, tuner, out: dict):
        self.tuner, self.out = tuner, out

    def fit(self):
        t0 = time.perf_counter()
        try:
            return self.tuner.fit()
        finally:
            self.out["s"] = time.perf_counter() - t0


def run_search_once(space_file: Path, results: Path, grid: bool, cache: Path) -> dict:
    from tune import run_search

    results.mkdir(parents=True, exist_ok=True)
    if not (results / "cache").exists():
        (results / "cache").symlink_to(cache, target_is_directory=True)
    fit_s = {}

    def build(*args, **kw):
        return TimedTuner((_grid_tuner if grid else run_search.build_tuner)(*args, **kw), fit_s)

    t0 = time.perf_counter()
    res = run_search.main(["--space", str(space_file), "--results-dir", str(results)], tuner_factory=build)
    wall = time.perf_counter() - t0
    df = res["df"]
    pcols = [c for c in df.columns if c.startswith("param:")]
    trials = []
    for _, r in df.iterrows():
        trials.append({"params": {c[len("param:"):]: r[c] for c in pcols if c[len("param:"):] in
                                  ("training.learning_rate", "training.warmup_epochs", "model.moco_momentum")},
                       "metric": float(r["val/knn_acc"]), "epochs": int(r["epochs"]), "stopped_early": bool(r["stopped_early"])})
    return {"wall_s": wall, "fit_s": fit_s.get("s"), "trials": trials, "exit_code": res.get("exit_code"),
            "loadavg": os.getloadavg()}


def worker(spec: dict) -> dict:
    import types

    import ray
    import yaml

    from tune import run_search
    from tune.environment import setup_environment

    setup_environment(local_ray=True)  # what run_search.main sets, before this worker starts Ray itself
    started = run_search._init_ray(types.SimpleNamespace(address=None), num_cpus=2)
    tmp, cache = Path(spec["tmp"]), Path(spec["cache"])
    a = types.SimpleNamespace(**spec["args"])
    out = {"grid": None, "tpe": []}
    try:
        sf = tmp / "grid" / "bench_search.yaml"
        sf.parent.mkdir(parents=True, exist_ok=True)
        n_grid = len(a.lr) * len(a.warmup) * len(a.momentum)
        sf.write_text(yaml.safe_dump(space_dict(a, n_grid, 0), sort_keys=False))
        out["grid"] = run_search_once(sf, tmp / "grid" / "results", True, cache)
        print(f"[grid] {len(out['grid']['trials'])} trials, {out['grid']['fit_s']:.0f} s", file=sys.stderr, flush=True)
        for seed in a.seeds:
            sf = tmp / f"tpe{seed}" / "bench_search.yaml"
            sf.parent.mkdir(parents=True, exist_ok=True)
            sf.write_text(yaml.safe_dump(space_dict(a, a.num_samples, seed), sort_keys=False))
            r = run_search_once(sf, tmp / f"tpe{seed}" / "results", False, cache)
            r["seed"] = seed
            out["tpe"].append(r)
            print(f"[tpe seed {seed}] {len(r['trials'])} trials, {r['fit_s']:.0f} s", file=sys.stderr, flush=True)
    finally:
        if started:
            ray.shutdown()
    return out


# ----------------------------------------------------------------------------- training-seed noise


def noise_worker(spec: dict) -> list[dict]:
    """Train (config, seed) pairs with the bare Trainer exactly as the trainable would (split with the base seed)."""
    import dataclasses
    import types

    import torch
    import yaml

    torch.set_num_threads(1)
    from pahcl.config import build_config
    from pahcl.train import Trainer, prepare_data
    from tune.spaces import load_space

    a = types.SimpleNamespace(**spec["args"])
    sf = Path(spec["tmp"]) / f"noise-{os.getpid()}.yaml"
    sf.write_text(yaml.safe_dump(space_dict(a, 1, 0), sort_keys=False))
    sp = load_space(sf, results_root=spec["tmp"], log=lambda m: None)
    tree = sp.base_tree()
    base_seed = int(tree.get("seed", 42))
    out = []
    for (lr, warm, mom), seed in spec["jobs"]:
        ov = sp.trial_overrides({"training.learning_rate": lr, "training.warmup_epochs": warm, "model.moco_momentum": mom})
        ov["seed"] = seed
        cfg = build_config(tree, ov)
        train, val = prepare_data(dataclasses.replace(cfg, seed=base_seed), a.data, cache_dir=spec["cache"],
                                  log=lambda m: None)
        m = Trainer(cfg, train, val, log=lambda m: None).fit()
        out.append({"config": [lr, warm, mom], "seed": seed, "val/knn_acc": float(m["val/knn_acc"]),
                    "val_cycles": len(val)})
        print(f"[noise] {lr, warm, mom} seed {seed}: {m['val/knn_acc']:.3f}", file=sys.stderr, flush=True)
    return out


def run_noise(saved: dict, seeds: list[int], tmp: Path, cache: Path) -> dict:
    """Training-seed spread of the grid's best configuration and of every configuration (b) selected."""
    s = saved["summary"]
    cfgs = [tuple(s["grid"]["best_config"])] + [tuple(r["selected"]) for r in s["tpe"]]
    cfgs = list(dict.fromkeys(cfgs))  # (lr, warmup, momentum)
    jobs = [[list(c), sd] for c in cfgs for sd in seeds]
    halves = [jobs[0::2], jobs[1::2]]  # two processes: one per core
    procs = [subprocess.Popen([sys.executable, __file__, "--noise-worker", json.dumps(
        {"tmp": str(tmp), "cache": str(cache), "args": saved["args"], "jobs": h})], cwd=REPO,
        stdout=subprocess.PIPE, text=True) for h in halves if h]
    rows = worker_results(procs, "noise")
    truth = {_key({"training.learning_rate": t["params"]["training.learning_rate"],
                   "training.warmup_epochs": t["params"]["training.warmup_epochs"],
                   "model.moco_momentum": t["params"]["model.moco_momentum"]}): t["metric"]
             for t in saved["raw"]["grid"]["trials"]}
    per = []
    for c in cfgs:
        vals = [r["val/knn_acc"] for r in rows if tuple(r["config"]) == c]
        per.append({"config": list(c), "grid_value": truth.get((float(c[0]), int(c[1]), float(c[2]))),
                    "seeds": seeds, "values": vals, **{k: v for k, v in spread(vals).items() if k in ("mean", "std", "min", "max")}})
    return {"seeds": seeds, "configs": per, "val_cycles": rows[0]["val_cycles"] if rows else None, "runs": rows}


def noise_markdown(n: dict) -> str:
    rows = []
    for c in n["configs"]:
        rows.append([", ".join(str(v) for v in c["config"]), "—" if c["grid_value"] is None else f"{c['grid_value']:.3f}",
                     ", ".join(f"{v:.3f}" for v in c["values"]), f"{c['mean']:.3f} ± {c['std']:.3f}"])
    return (md_table(["config (lr, warmup, momentum)", "grid value (seed 42, in Ray)",
                      f"bare Trainer, training seeds {', '.join(map(str, n['seeds']))}", "mean ± std"], rows)
            + f"\n\nValidation set: {n['val_cycles']} cycles (one cycle = {100 / max(n['val_cycles'] or 1, 1):.2f} points).")


# ----------------------------------------------------------------------------- analysis


def _key(p: dict) -> tuple:
    return (float(p["training.learning_rate"]), int(p["training.warmup_epochs"]), float(p["model.moco_momentum"]))


def analyse(raw: dict, max_epochs: int) -> dict:
    grid = raw["grid"]
    truth = {_key(t["params"]): t["metric"] for t in grid["trials"]}
    g_epochs = sum(t["epochs"] for t in grid["trials"])
    g_best = max(truth.values())
    g_best_cfg = max(truth, key=truth.get)
    rows = []
    for r in raw["tpe"]:
        tr = r["trials"]
        epochs = sum(t["epochs"] for t in tr)
        best = max(tr, key=lambda t: t["metric"])  # the service's rank 1 (metric at the trial's last epoch)
        done = [t for t in tr if t["epochs"] >= max_epochs]
        best_done = max(done, key=lambda t: t["metric"]) if done else None
        sel = _key(best["params"])
        rows.append({
            "seed": r["seed"], "trials": len(tr), "distinct_configs": len({_key(t["params"]) for t in tr}),
            "completed": len(done), "trial_epochs": epochs, "epoch_fraction": epochs / g_epochs,
            "wall_s": r["wall_s"], "fit_s": r["fit_s"], "best_reported": best["metric"],
            "best_completed": best_done["metric"] if best_done else None,
            "selected": list(sel), "selected_epochs": best["epochs"], "selected_full_budget": truth.get(sel),
            "gap_reported": g_best - best["metric"], "gap_selected_full_budget": g_best - truth.get(sel, float("nan")),
            "found_grid_best": truth.get(sel) == g_best,
        })
    s = {
        "grid": {"trials": len(grid["trials"]), "trial_epochs": g_epochs, "wall_s": grid["wall_s"],
                 "fit_s": grid["fit_s"], "best": g_best, "best_config": list(g_best_cfg),
                 "n_configs_at_best": sum(v == g_best for v in truth.values()),
                 "values": sorted(truth.values(), reverse=True)},
        "tpe": rows,
    }
    for k in ("trial_epochs", "epoch_fraction", "wall_s", "fit_s", "best_reported", "selected_full_budget",
              "gap_reported", "gap_selected_full_budget"):
        vals = [r[k] for r in rows if r[k] is not None]
        s[f"tpe_{k}"] = spread(vals)
    s["tpe_within_one_point"] = sum(r["gap_selected_full_budget"] <= 0.01 + 1e-9 for r in rows)
    return s


def markdown(s: dict, a) -> str:
    g = s["grid"]
    head = ["search", "trials (distinct configs)", "trial-epochs", "fraction of grid epochs", "tuning wall s",
            "best val/knn_acc (last epoch)", "selected config (lr, warmup, momentum)", "its full-budget value",
            "gap to grid best, points"]
    rows = [["(a) grid, FIFO", f"{g['trials']} ({g['trials']})", g["trial_epochs"], "1.00", f"{g['fit_s']:.0f}",
             f"{g['best']:.3f}", ", ".join(str(v) for v in g["best_config"]) + (
                 f" (+{g['n_configs_at_best'] - 1} tied)" if g["n_configs_at_best"] > 1 else ""), f"{g['best']:.3f}",
             "0"]]
    for r in s["tpe"]:
        fb = r["selected_full_budget"]
        rows.append([f"(b) TPE + ASHA, seed {r['seed']}", f"{r['trials']} ({r['distinct_configs']})", r["trial_epochs"],
                     f"{r['epoch_fraction']:.2f}", f"{r['fit_s']:.0f}", f"{r['best_reported']:.3f}"
                     + ("" if r["selected_epochs"] >= a.epochs else f" (at epoch {r['selected_epochs']})"),
                     ", ".join(str(v) for v in r["selected"]), "—" if fb is None else f"{fb:.3f}",
                     f"{100 * r['gap_selected_full_budget']:.1f}"])

    def ms(k, nd=2, scale=1.0):
        v = s[f"tpe_{k}"]
        return f"{scale * v['mean']:.{nd}f} ± {scale * v['std']:.{nd}f} ({scale * v['min']:.{nd}f}–{scale * v['max']:.{nd}f})"

    rows.append([f"(b) mean ± std (min–max) over {len(s['tpe'])} seeds", "", ms("trial_epochs", 1),
                 ms("epoch_fraction"), ms("fit_s", 0), ms("best_reported", 3), "", ms("selected_full_budget", 3),
                 ms("gap_selected_full_budget", 1, 100)])
    n = len(s["tpe"])
    note = (f"\n\nTarget: (b) within 1 point of (a)'s best at <= 0.35 of its trial-epochs. Within 1 point (full-budget "
            f"value of the selected configuration): {s['tpe_within_one_point']}/{n} seeds; trial-epoch fraction "
            f"{s['tpe_epoch_fraction']['mean']:.2f} (max {s['tpe_epoch_fraction']['max']:.2f}). "
            f"Grid values, best first: {', '.join(f'{v:.3f}' for v in g['values'])}.")
    return md_table(head, rows) + note


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="TPE sampler seeds for (b)")
    ap.add_argument("--num-samples", type=int, default=10, help="(b): configurations sampled per search")
    ap.add_argument("--epochs", type=int, default=9, help="max_epochs (grid: every trial; ASHA's max_t)")
    ap.add_argument("--steps", type=int, default=6, help="training.max_steps_per_epoch")
    ap.add_argument("--grace", type=int, default=2)
    ap.add_argument("--rf", type=float, default=3)
    ap.add_argument("--data", default="synthetic:40")
    ap.add_argument("--lr", type=float, nargs="+", default=LR)
    ap.add_argument("--warmup", type=int, nargs="+", default=WARMUP)
    ap.add_argument("--momentum", type=float, nargs="+", default=MOMENTUM)
    ap.add_argument("--timeout", type=float, default=3000)
    ap.add_argument("--smoke-test", action="store_true", help="2-config grid, 1 TPE seed of 2 samples, 2 epochs x 2 steps")
    ap.add_argument("--noise-seeds", type=int, nargs="*", default=[42, 43, 44, 45],
                    help="training seeds for the noise check of the grid best and (b)'s picks (bare Trainer; "
                         "42 = the searches' seed, a reproduction check); none: skip")
    ap.add_argument("--noise-from", default=None, help="only run the noise check on this saved JSON and add it")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--noise-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print("RESULT " + json.dumps(worker(json.loads(a.worker)), default=str), flush=True)
        return 0
    if a.noise_worker:
        print("RESULT " + json.dumps(noise_worker(json.loads(a.noise_worker))), flush=True)
        return 0
    if a.noise_from:
        saved = json.loads(Path(a.noise_from).read_text())
        tmp = Path(tempfile.mkdtemp(prefix="pahcl_search_noise_"))
        from pahcl.config import load_config
        from pahcl.train import prepare_data

        prepare_data(load_config(None, preset="tiny"), saved["args"]["data"], cache_dir=tmp / "cache", log=lambda m: None)
        t0 = time.perf_counter()
        saved["noise"] = run_noise(saved, a.noise_seeds, tmp, tmp / "cache")
        saved["noise"].update(command=command(argv), seconds=time.perf_counter() - t0, date=machine()["date"],
                              loadavg_end=[round(v, 2) for v in os.getloadavg()])
        text = noise_markdown(saved["noise"])
        print(text)
        write_json(a.out or a.noise_from, saved)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return 0
    if a.smoke_test:
        a.seeds, a.num_samples, a.epochs, a.steps, a.grace, a.rf = [0], 2, 2, 2, 1, 2
        a.lr, a.warmup, a.momentum = [2e-3, 6e-3], [1], [0.99]

    import torch

    torch.set_num_threads(1)
    m0 = machine()
    tmp = Path(tempfile.mkdtemp(prefix="pahcl_search_eff_"))
    cache = tmp / "cache"
    from pahcl.config import load_config
    from pahcl.train import prepare_data

    prepare_data(load_config(None, preset="tiny"), a.data, cache_dir=cache, log=lambda m: None)  # fill the cache once
    args = {k: v for k, v in vars(a).items() if k not in ("out", "worker", "noise_worker", "noise_from")}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--worker", json.dumps({"tmp": str(tmp), "cache": str(cache),
                                                                          "args": args})],
                       cwd=REPO, capture_output=True, text=True, timeout=a.timeout)
    total = time.perf_counter() - t0
    line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("RESULT ")), None)
    if line is None:
        print(p.stdout[-3000:], p.stderr[-6000:], file=sys.stderr)
        return 1
    raw = json.loads(line[7:])
    s = analyse(raw, a.epochs)
    table = markdown(s, a)
    print(table)
    saved = {"bench": "search_efficiency", "command": command(argv), "machine": m0, "args": args,
             "space": space_dict(a, a.num_samples, 0), "total_s": total, "summary": s, "raw": raw, "markdown": table}
    if a.noise_seeds and not a.smoke_test:
        t1 = time.perf_counter()
        saved["noise"] = run_noise(saved, a.noise_seeds, tmp, cache)
        saved["noise"].update(command=command(argv), seconds=time.perf_counter() - t1, date=machine()["date"],
                              loadavg_end=[round(v, 2) for v in os.getloadavg()])
        print("\n" + noise_markdown(saved["noise"]))
    m0["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    write_json(a.out, saved)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
