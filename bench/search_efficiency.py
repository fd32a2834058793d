"""Search strategies judged on TEST accuracy: grid, TPE + ASHA, random + ASHA and the baseline configuration.

    python bench/search_efficiency.py --seeds 0 1 2 --train-seeds 42 43 44 \\
        --out bench/results/search_efficiency.json                                     # synthetic:480, 64 min*
    python bench/search_efficiency.py --data yaseen:../shared/data/yaseen2018 \\
        --out bench/results/search_efficiency_yaseen.json                               # 36 min*
    python bench/search_efficiency.py --smoke-test --out /tmp/se_smoke.json            # ~2-4 min*
    # only the test retraining again, on the searches a saved JSON holds (e.g. other training seeds):
    python bench/search_efficiency.py --tests-from bench/results/search_efficiency.json --train-seeds 42 43 44
    python bench/search_efficiency.py --reanalyse bench/results/search_efficiency.json     # tables again, no training

* measured 2026-11-29 20:13-21:18 UTC on the shared 2-core machine, both at once beside the test suite (load
  average 2-12): synthetic:480 searches 45.8 min + test retraining (12 configurations x 3 seeds) 18.6 min;
  Yaseen 26.9 + 8.7 min (12 x 5). Alone on an idle machine expect well under half. Smoke test 2-4 min.

Space: moco_stage2's ``synthetic_cpu`` budget (read from search_spaces/moco_stage2.yaml: its metric, tiny preset,
its data ``synthetic:480`` unless ``--data``, batch 8 x 2, queue 256, ``max_steps_per_epoch`` 6, ``max_epochs`` 6, ASHA
grace 2 / reduction factor 2, 2 trials at a time, 1 CPU each) with the searched keys made discrete so a full
grid is feasible: ``training.learning_rate`` {6.7e-4, 2e-3, 6e-3} x ``training.warmup_epochs`` {1, 2} x
``model.moco_momentum`` {0.99, 0.999} = 12 configurations. The split is the service's: the budget's
``confirm.test_fraction`` (0.2 of the groups) is held out as the test split, so every search sees train +
validation only; ``confirm.top`` is 0 (this bench scores the test split itself).

Strategies, each through ``tune.run_search.main`` (same trainable, MLflow child runs, fair ranking) on one
local Ray (``num_cpus=2``) started before the first search (walls exclude Ray start-up):
(a) grid: every configuration for ``max_epochs`` (``tune.grid_search``, FIFO); one run (training is seeded and
    deterministic, so a grid is deterministic).
(b) TPE + ASHA: the service's own Tuner (``run_search.build_tuner``), ``--num-samples`` (6) configurations,
    once per search seed (0-4).
(c) random + ASHA: ``build_tuner(..., sampler=RandomSampler(seed))``: Optuna's RandomSampler in place of the
    TPESampler (same no-repeat wrapper, concurrency limit, PersistentASHA and callbacks), same search seeds.
(d) the baseline configuration (``Space.baseline_params``: the recommended defaults snapped into the space;
    what the service's confirmation compares with): no search.
"The configuration a strategy selects" = the top row of its ranked table (results.csv: finished trials first).
Each distinct selected configuration, the baseline and (``--test-all-configs``, default) every other grid
configuration are then retrained once per training seed (42-46) with the bare Trainer at the full budget on
the same split (42 = the searches' own seed: a reproduction check of the Ray value), and the test split is
scored by ``pahcl.evaluate.test_metrics`` (recording-level kNN, the headline, and linear probe; bank = train +
validation, as the service's confirmation does). Reported per strategy: mean ± std over search seeds of the
selected configuration's test/knn_acc at seed 42 and averaged over the training seeds; distinct
configurations picked; trial-epochs and tuning wall. The noise floor is the std over training seeds of a
configuration's test/knn_acc (mean over the configurations trained); a strategy beats the baseline beyond
noise when its seed-averaged difference exceeds the std of a difference of two such averages.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, command, cycles_note, machine, md_table, spread, worker_results, write_json

LR = [6.7e-4, 2.0e-3, 6.0e-3]
WARMUP = [1, 2]
MOMENTUM = [0.99, 0.999]
KEYS = ("training.learning_rate", "training.warmup_epochs", "model.moco_momentum")
BUDGET = ("moco_stage2", "synthetic_cpu")
TRAIN_SEEDS = [42, 43, 44, 45, 46]
STRATEGIES = {"grid": "(a) grid, FIFO", "tpe": "(b) TPE + ASHA", "random": "(c) random + ASHA"}
LEGACY_METRIC = "val/knn_acc"  # what results saved before the search's objective was recorded were ranked by


def with_metric(args: dict) -> dict:
    """Saved ``args`` with their search objective (``LEGACY_METRIC`` for results that predate recording it)."""
    args.setdefault("metric", LEGACY_METRIC)
    return args


def budget_raw() -> dict:
    """moco_stage2's synthetic_cpu budget, merged (the bench's defaults)."""
    from tune.spaces import load_space_raw

    return load_space_raw(*BUDGET)[1]


def fill_defaults(a) -> None:
    """Unset CLI values (None) from the budget: data, epochs, steps, grace, rf, test fraction."""
    raw = budget_raw()
    sched = raw.get("scheduler") or {}
    for k, v in {"data": raw["data"], "epochs": raw["max_epochs"], "grace": sched["grace_period"],
                 "rf": sched["reduction_factor"], "steps": raw["fixed"]["training.max_steps_per_epoch"],
                 "test_fraction": (raw.get("confirm") or {})["test_fraction"]}.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if getattr(a, "metric", None) is None:  # the search's objective
        a.metric = raw["metric"]


def space_dict(a, num_samples: int, seed: int) -> dict:
    raw = budget_raw()
    return {
        "stage": "bench_search", "base_config": raw["base_config"], "preset": raw["preset"], "data": a.data,
        "metric": raw["metric"], "mode": raw["mode"], "guard": "warn", "num_samples": num_samples,
        "max_epochs": a.epochs, "confirm": {"top": 0, "test_fraction": a.test_fraction},
        "search": {"seed": seed, "max_concurrent_trials": raw["search"]["max_concurrent_trials"]},
        "scheduler": {"type": "asha", "grace_period": a.grace, "reduction_factor": a.rf},
        "resources": raw["resources"],
        "fixed": {**raw["fixed"], "training.max_steps_per_epoch": a.steps},
        "params": {k: {"type": "categorical", "choices": list(v)} for k, v in zip(KEYS, (a.lr, a.warmup, a.momentum))},
    }


def write_space(a, path: Path, num_samples: int, seed: int) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(space_dict(a, num_samples, seed), sort_keys=False))
    return path


def _key(p: dict) -> tuple:
    return (float(p["training.learning_rate"]), int(p["training.warmup_epochs"]), float(p["model.moco_momentum"]))


# ----------------------------------------------------------------------------- tuners


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


def _random_tuner(space, *args, **kw):
    """``run_search.build_tuner`` with Optuna's RandomSampler(seed) in place of its TPESampler: the same no-repeat
    wrapper, concurrency limit, PersistentASHA and end-of-trial callback."""
    import optuna

    from tune.run_search import build_tuner

    return build_tuner(space, *args, sampler=optuna.samplers.RandomSampler(seed=space.seed), **kw)


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


def run_search_once(space_file: Path, results: Path, strategy: str, cache: Path, metric: str) -> dict:
    """One search through ``run_search.main``; its trials (``metric``: the search's objective, a column of its
    ranked table) and the top row of that table."""
    from tune import run_search

    results.mkdir(parents=True, exist_ok=True)
    if not (results / "cache").exists():
        (results / "cache").symlink_to(cache, target_is_directory=True)
    fit_s = {}
    factory = {"grid": _grid_tuner, "tpe": run_search.build_tuner, "random": _random_tuner}[strategy]

    def build(*args, **kw):
        return TimedTuner(factory(*args, **kw), fit_s)

    t0 = time.perf_counter()
    res = run_search.main(["--space", str(space_file), "--results-dir", str(results)], tuner_factory=build)
    wall = time.perf_counter() - t0
    df = res["df"]  # fair-ranked: rank 1 is the search's choice
    trials = [{"params": {k: r[f"param:{k}"] for k in KEYS}, "metric": float(r[metric]), "epochs": int(r["epochs"]),
               "stopped_early": bool(r["stopped_early"])} for _, r in df.iterrows()]
    return {"strategy": strategy, "wall_s": wall, "fit_s": fit_s.get("s"), "trials": trials,
            "selected": list(_key(trials[0]["params"])), "exit_code": res.get("exit_code"),
            "loadavg": os.getloadavg()}


def worker(spec: dict) -> dict:
    """Every search in one process on one local Ray: the grid once, then TPE and random per search seed."""
    import types

    import ray

    from tune import run_search
    from tune.environment import setup_environment

    setup_environment(local_ray=True)  # what run_search.main sets, before this worker starts Ray itself
    started = run_search._init_ray(types.SimpleNamespace(address=None), num_cpus=2)
    tmp, cache = Path(spec["tmp"]), Path(spec["cache"])
    a = types.SimpleNamespace(**spec["args"])
    out = []
    n_grid = len(a.lr) * len(a.warmup) * len(a.momentum)
    runs = [("grid", 0, n_grid)] + [(s, seed, a.num_samples) for seed in a.seeds for s in ("tpe", "random")]
    try:
        for strategy, seed, n in runs:
            d = tmp / f"{strategy}{seed}"
            r = run_search_once(write_space(a, d / "bench_search.yaml", n, seed), d / "results", strategy, cache,
                                a.metric)
            r["seed"] = seed
            out.append(r)
            print(f"[{strategy} seed {seed}] {len(r['trials'])} trials, {r['fit_s']:.0f} s, selected {r['selected']}",
                  file=sys.stderr, flush=True)
    finally:
        if started:
            ray.shutdown()
    return out


# ----------------------------------------------------------------------------- test accuracy (bare Trainer)


def test_worker(spec: dict) -> list[dict]:
    """Train (config, seed) pairs with the bare Trainer exactly as a trial would (split at the base seed,
    ``Space.trial_overrides``), then score the test split with ``pahcl.evaluate.test_metrics``."""
    import dataclasses
    import types

    import torch

    torch.set_num_threads(1)
    from pahcl.config import build_config
    from pahcl.evaluate import test_metrics
    from pahcl.train import Trainer, prepare_data
    from tune.spaces import load_space

    a = types.SimpleNamespace(**spec["args"])
    sf = write_space(a, Path(spec["tmp"]) / f"test-{os.getpid()}.yaml", 1, 0)
    sp = load_space(sf, results_root=spec["tmp"], log=lambda m: None)
    tree = sp.base_tree()
    base_seed = int(tree.get("seed", 42))
    out = []
    for cfg_vals, seed in spec["jobs"]:
        t0 = time.perf_counter()
        cfg = build_config(tree, sp.trial_overrides(dict(zip(KEYS, cfg_vals)), seed_index=seed - base_seed))
        train, val, test = prepare_data(dataclasses.replace(cfg, seed=base_seed), sp.data, cache_dir=spec["cache"],
                                        log=lambda m: None, with_test=True)
        tr = Trainer(cfg, train, val, log=lambda m: None)
        m = tr.fit()
        t = test_metrics(tr.model, [train, val], test, cfg, seed=cfg.seed)
        out.append({"config": list(cfg_vals), "seed": seed, "val/knn_acc": float(m["val/knn_acc"]),
                    "val_search_metric": float(m[a.metric]), **t,
                    "cycles": [len(train), len(val), len(test)], "seconds": time.perf_counter() - t0})
        print(f"[test] {cfg_vals} seed {seed}: test/knn_acc {t['test/knn_acc']:.3f}, "
              f"test/linear_acc {t['test/linear_acc']:.3f}", file=sys.stderr, flush=True)
    return out


def run_tests(configs: list[tuple], seeds: list[int], args: dict, tmp: Path, cache: Path) -> list[dict]:
    """Each distinct configuration once per training seed, in two processes (one per core)."""
    jobs = [[list(c), sd] for c in configs for sd in seeds]
    halves = [jobs[0::2], jobs[1::2]]
    procs = [subprocess.Popen([sys.executable, __file__, "--test-worker", json.dumps(
        {"tmp": str(tmp), "cache": str(cache), "args": args, "jobs": h})], cwd=REPO,
        stdout=subprocess.PIPE, text=True) for h in halves if h]
    return worker_results(procs, "test")


def baseline_config(a, tmp: Path) -> tuple:
    """``Space.baseline_params`` of the bench's space (what the service's confirmation compares with)."""
    from tune.spaces import load_space

    sp = load_space(write_space(a, tmp / "baseline.yaml", 1, 0), results_root=tmp, log=lambda m: None)
    return _key(sp.baseline_params())


# ----------------------------------------------------------------------------- analysis


def per_config(tests: list[dict], grid_values: dict) -> dict[tuple, dict]:
    """Per configuration: test accuracy at seed 42, mean ± std over the training seeds, the reproduction check."""
    out = {}
    for c in dict.fromkeys(tuple(r["config"]) for r in tests):
        rs = sorted((r for r in tests if tuple(r["config"]) == c), key=lambda r: r["seed"])
        first = rs[0]
        knn, lin = [r["test/knn_acc"] for r in rs], [r["test/linear_acc"] for r in rs]
        out[c] = {"config": list(c), "seeds": [r["seed"] for r in rs], "test_knn": knn, "test_linear": lin,
                  "test_knn_first": first["test/knn_acc"], "test_linear_first": first["test/linear_acc"],
                  "test_knn_mean": spread(knn)["mean"], "test_knn_std": spread(knn)["std"],
                  "test_linear_mean": spread(lin)["mean"], "test_linear_std": spread(lin)["std"],
                  "val_first_bare": first.get("val_search_metric", first[LEGACY_METRIC]), "val_grid": grid_values.get(c),
                  "test_recordings": first["test/recordings"], "cycles": first["cycles"]}
    return out


def strategy_rows(searches: list[dict], pc: dict, grid_values: dict, grid_epochs: int) -> list[dict]:
    rows = []
    for r in searches:
        sel = tuple(r["selected"])
        tr = r["trials"]
        epochs = sum(t["epochs"] for t in tr)
        rows.append({"strategy": r["strategy"], "seed": r["seed"], "trials": len(tr),
                     "distinct_configs": len({_key(t["params"]) for t in tr}), "trial_epochs": epochs,
                     "epoch_fraction": epochs / grid_epochs, "fit_s": r["fit_s"], "wall_s": r["wall_s"],
                     "selected": list(sel), "selected_val": tr[0]["metric"], "selected_epochs": tr[0]["epochs"],
                     "selected_val_full_budget": grid_values.get(sel),
                     **{k: pc[sel][k] for k in ("test_knn_first", "test_linear_first", "test_knn_mean",
                                                "test_linear_mean")}})
    return rows


def _verdict(name: str, diff_mean: float, threshold: float, diff_first: float) -> str:
    """Plain words: the strategy's selected test/knn_acc (mean over training seeds) minus the baseline's, against
    the noise of such a difference."""
    both = f"{100 * diff_mean:+.1f} points on the mean over training seeds; {100 * diff_first:+.1f} at seed 42 alone"
    if diff_mean > threshold:
        return f"{name} beats the baseline beyond noise ({both})"
    if diff_mean < -threshold:
        return f"{name} is worse than the baseline beyond noise ({both})"
    return f"{name} is within noise of the baseline ({both})"


def paired_diff(rs: list[dict], pc: dict, b: dict) -> list[float]:
    """Per training seed: the selected configuration's test/knn_acc minus the baseline's at the same seed,
    averaged over the searches (as the service's confirmation pairs its candidates with the baseline)."""
    n = len(b["test_knn"])
    return [sum(pc[tuple(r["selected"])]["test_knn"][i] - b["test_knn"][i] for r in rs) / len(rs) for i in range(n)]


def analyse(raw: list[dict], tests: list[dict], base: tuple, max_epochs: int) -> dict:
    grid = next(r for r in raw if r["strategy"] == "grid")
    grid_values = {_key(t["params"]): t["metric"] for t in grid["trials"]}
    grid_epochs = sum(t["epochs"] for t in grid["trials"])
    pc = per_config(tests, grid_values)
    rows = strategy_rows(raw, pc, grid_values, grid_epochs)
    noise = spread([c["test_knn_std"] for c in pc.values()])
    noise_lin = spread([c["test_linear_std"] for c in pc.values()])
    b = pc[base]
    n_seeds = len(b["seeds"])
    threshold = noise["mean"] * (2 / n_seeds) ** 0.5  # std of a difference of two n-seed means
    per_strategy, verdicts = {}, []
    for s in STRATEGIES:
        rs = [r for r in rows if r["strategy"] == s]
        agg = {k: spread([r[k] for r in rs]) for k in ("test_knn_first", "test_linear_first", "test_knn_mean",
                                                       "test_linear_mean", "trial_epochs", "epoch_fraction", "fit_s")}
        agg["searches"], agg["distinct_picks"] = len(rs), len({tuple(r["selected"]) for r in rs})
        agg["paired_vs_baseline"] = spread(paired_diff(rs, pc, b))
        per_strategy[s] = agg
        verdicts.append(_verdict(STRATEGIES[s], agg["test_knn_mean"]["mean"] - b["test_knn_mean"], threshold,
                                 agg["test_knn_first"]["mean"] - b["test_knn_first"]))
    return {"rows": rows, "per_strategy": per_strategy, "configs": list(pc.values()), "baseline": list(base),
            "baseline_test": b, "noise_floor": noise, "verdict_threshold": threshold, "noise_floor_linear": noise_lin,
            "verdicts": verdicts,
            "grid_values": sorted(grid_values.values(), reverse=True), "grid_trial_epochs": grid_epochs,
            "reproduced_seed42": sum(c["val_grid"] is not None and abs(c["val_first_bare"] - c["val_grid"]) < 1e-9
                                     for c in pc.values()),
            "in_grid": sum(c["val_grid"] is not None for c in pc.values()), "test_oracle": test_oracle(pc)}


def test_oracle(pc: dict) -> dict:
    """Over every configuration retrained: the best by mean test/knn_acc over the training seeds, and the range of
    those means (what a perfect search could gain, against the noise floor)."""
    means = {c: v["test_knn_mean"] for c, v in pc.items()}
    best = max(means, key=means.get)
    pairs = [(v["val_grid"], v["test_knn_mean"]) for v in pc.values() if v["val_grid"] is not None]
    rho = None
    if len(pairs) >= 3:
        from scipy.stats import spearmanr

        rho = float(spearmanr(*zip(*pairs)).statistic)
    return {"n": len(means), "best": list(best), "best_mean": means[best], "min_mean": min(means.values()),
            "range": means[best] - min(means.values()), "spearman_val_test": rho, "n_pairs": len(pairs)}


def _c(c) -> str:
    return ", ".join(f"{v:g}" for v in c)


def _seeds(seeds) -> str:
    return ", ".join(map(str, seeds))


def _ms(s: dict, nd: int = 3, scale: float = 1.0) -> str:
    return "—" if not s.get("n") else f"{scale * s['mean']:.{nd}f} ± {scale * s['std']:.{nd}f}"


def _oracle_note(s: dict, m: str) -> str:
    o = s.get("test_oracle")
    if not o or o["n"] < 2:
        return ""
    return (f"Over the {o['n']} configurations retrained, mean test/knn_acc (seeds {_seeds(s['configs'][0]['seeds'])}) "
            f"ranges {o['min_mean']:.3f}–{o['best_mean']:.3f} ({100 * o['range']:.1f} points; best {_c(o['best'])}): what a "
            f"perfect search could gain over the worst configuration, against a noise floor of "
            f"{100 * s['noise_floor']['mean']:.1f} points."
            + ("" if o.get("spearman_val_test") is None else
               f" Rank correlation (Spearman) between a configuration's grid {m} and its mean test/knn_acc, over "
               f"{o['n_pairs']} configurations: {o['spearman_val_test']:+.2f}."))


def markdown(s: dict, a) -> str:
    """Per search, per strategy (mean ± std over search seeds), the baseline; per configuration; verdicts."""
    m = a.metric  # the search's objective
    head = ["strategy", "search seed", "trials (distinct)", "trial-epochs (fraction of grid)", "tuning wall s",
            "selected (lr, warmup, momentum)", f"its {m} in the search", "test/knn_acc (seed 42)",
            f"test/knn_acc, mean of seeds {_seeds(a.train_seeds)}", "test/linear_acc, same mean",
            "paired Δ test/knn_acc vs baseline, points (same seed; mean ± std over seeds)"]
    rows = []
    for r in s["rows"]:
        at = "" if r["selected_epochs"] >= a.epochs else f" (epoch {r['selected_epochs']})"
        rows.append([STRATEGIES[r["strategy"]], "—" if r["strategy"] == "grid" else r["seed"],
                     f"{r['trials']} ({r['distinct_configs']})", f"{r['trial_epochs']} ({r['epoch_fraction']:.2f})",
                     f"{r['fit_s']:.0f}", _c(r["selected"]), f"{r['selected_val']:.3f}{at}",
                     f"{r['test_knn_first']:.3f}", f"{r['test_knn_mean']:.3f}", f"{r['test_linear_mean']:.3f}", ""])
    for k, name in STRATEGIES.items():
        p = s["per_strategy"][k]
        rows.append([f"**{name}**, mean ± std over {p['searches']} search(es)", "", f"{p['distinct_picks']} distinct pick(s)",
                     _ms(p["trial_epochs"], 1), _ms(p["fit_s"], 0), "", "", _ms(p["test_knn_first"]),
                     f"**{_ms(p['test_knn_mean'])}**", _ms(p["test_linear_mean"]),
                     f"{100 * p['paired_vs_baseline']['mean']:+.1f} ± {100 * p['paired_vs_baseline']['std']:.1f}"])
    b = s["baseline_test"]
    rows.append(["**(d) baseline configuration** (no search)", "", "", "0", "0", _c(s["baseline"]), "",
                 f"{b['test_knn_first']:.3f}", f"**{b['test_knn_mean']:.3f}**", f"{b['test_linear_mean']:.3f}", "0"])
    picks = {}
    for r in s["rows"]:
        picks.setdefault(tuple(r["selected"]), []).append(r["strategy"] + ("" if r["strategy"] == "grid" else str(r["seed"])))
    crow = []
    for c in sorted(s["configs"], key=lambda c: -(c["val_grid"] if c["val_grid"] is not None else -1)):
        who = picks.get(tuple(c["config"]), [])
        if tuple(c["config"]) == tuple(s["baseline"]):
            who = who + ["baseline"]
        crow.append([_c(c["config"]), ", ".join(who), "—" if c["val_grid"] is None else f"{c['val_grid']:.3f}",
                     f"{c['val_first_bare']:.3f}", ", ".join(f"{v:.3f}" for v in c["test_knn"]),
                     f"{c['test_knn_mean']:.3f} ± {c['test_knn_std']:.3f}",
                     f"{c['test_linear_mean']:.3f} ± {c['test_linear_std']:.3f}"])
    cfg_table = md_table(["configuration", "picked by", f"{m}, grid (Ray, seed 42)", f"{m}, bare Trainer seed 42",
                          f"test/knn_acc, seeds {_seeds(a.train_seeds)}", "test/knn_acc mean ± std",
                          "test/linear_acc mean ± std"], crow)
    n, c0 = s["noise_floor"], s["configs"][0]
    note = (f"Test split: {c0['test_recordings']:.0f} recordings ({c0['cycles'][2]} cycles; train {c0['cycles'][0]}, "
            f"validation {c0['cycles'][1]} cycles). Noise floor (std of test/knn_acc over training seeds, mean over the "
            f"{n['n']} configurations trained): **{100 * n['mean']:.1f} points** (min–max {100 * n['min']:.1f}–"
            f"{100 * n['max']:.1f}); test/linear_acc {100 * s['noise_floor_linear']['mean']:.1f} points. Seed 42 "
            f"reproduced the search's {m} for {s['reproduced_seed42']}/{s['in_grid']} configurations. "
            f"Grid {m} values, best first: {', '.join(f'{v:.3f}' for v in s['grid_values'])}. "
            + _oracle_note(s, m) + "\n\n"
            f"Verdict (the selected configuration's test/knn_acc averaged over the training seeds, mean over search "
            f"seeds, minus the baseline's; beyond noise = more than the noise floor x sqrt(2/{len(a.train_seeds)}) = "
            f"{100 * s['verdict_threshold']:.1f} points, the std of a difference of two {len(a.train_seeds)}-seed means): "
            + "; ".join(s["verdicts"]) + ".")
    return md_table(head, rows) + "\n\n" + cfg_table + "\n\n" + note


# ----------------------------------------------------------------------------- docs/benchmarks.md (bench/run_all.py)

SECTION = "## 2. Search strategies judged on test accuracy: grid, TPE + ASHA, random + ASHA, baseline"
RUNS = {"search_efficiency": "python bench/search_efficiency.py --seeds 0 1 2 --train-seeds 42 43 44 "
                             "--out bench/results/search_efficiency.json",
        "search_efficiency_yaseen": "python bench/search_efficiency.py --data yaseen:../shared/data/yaseen2018 "
                                    "--out bench/results/search_efficiency_yaseen.json"}


def _when(j: dict) -> str:
    m = j["machine"]
    la, le = m.get("loadavg") or [], m.get("loadavg_end") or []
    return (f"{m['date']} – {m.get('date_end', '?')}; load average (1/5/15 min) at start {'/'.join(f'{v:.2f}' for v in la)}, at end "
            f"{'/'.join(f'{v:.2f}' for v in le)}; searches {j['search_s'] / 60:.1f} min, test retraining "
            f"{j['test_s'] / 60:.1f} min")


def _setup(j: dict) -> str:
    a, sp = j["args"], j["space"]
    n_grid = len(a["lr"]) * len(a["warmup"]) * len(a["momentum"])
    return (f"`{a['data']}`, objective `{sp['metric']}`, tiny preset, batch 8 x 2, queue {sp['fixed']['model.queue_size']}, `max_steps_per_epoch` "
            f"{a['steps']}, `max_epochs` {a['epochs']}, ASHA grace {a['grace']} / reduction factor {a['rf']:g}, 2 trials "
            f"at a time; learning rate {a['lr']} x warmup {a['warmup']} x momentum {a['momentum']} = {n_grid} "
            f"configurations; (b) and (c) sample {a['num_samples']} each, search seeds {a['seeds']}; test split "
            f"{a['test_fraction']:g} of the groups; retraining seeds {a['train_seeds']}.")


def section(runs: dict) -> str:
    """The section of docs/benchmarks.md from the JSON of each run ({name: JSON or None})."""
    out = [SECTION, "",
           "Which configuration does each strategy select, and how good is it on the held-out **test** split that no "
           "search saw? moco_stage2's `synthetic_cpu` budget with the searched keys made discrete. (a) every "
           "configuration for `max_epochs` (`tune.grid_search`, FIFO; deterministic, so one run); (b) the service's own "
           "Tuner (`run_search.build_tuner`: OptunaSearch + TPESampler(seed), no-repeat wrapper, ConcurrencyLimiter, "
           "PersistentASHA); (c) the same Tuner with Optuna's RandomSampler(seed) in place of the TPESampler; (d) the "
           "baseline configuration (`Space.baseline_params`, what the service's confirmation compares with), no "
           "search. All searches go through `tune.run_search.main` on one local Ray with the service's split (test "
           "groups held out, `confirm.top` 0). The configuration a strategy selects is the top row of its fair-ranked "
           "table; each distinct selected configuration, the baseline and every other grid configuration are "
           "retrained with the bare Trainer at the full budget with each training seed (42, the searches' seed, "
           "must reproduce the search's value), and the test split is scored by `pahcl.evaluate.test_metrics` "
           "(recording level; kNN is the headline, linear probe beside it). The noise floor is the std of a "
           "configuration's test/knn_acc over the training seeds; a strategy is judged by its pick's test/knn_acc "
           "averaged over the training seeds (mean over search seeds) minus the baseline's, beyond noise when that "
           "exceeds the std of a difference of two such averages. The paired column pairs each seed's run with the "
           "baseline's run at the same seed, as the service's confirmation table does."]
    for name, cmd in RUNS.items():
        j = runs.get(name)
        data = j["args"]["data"] if j else cmd.split("--data ")[1].split()[0] if "--data" in cmd else "synthetic"
        out += ["", f"### {'Yaseen' if 'yaseen' in name else 'Synthetic'} (`{data}`)", ""]
        if not j or "summary" not in j:
            out.append(f"Not run yet: `{cmd}`.")
            continue
        cmds = [j["command"]] + [j[k] for k in ("tests_command", "reanalyse_command") if j.get(k)]
        out += ["```", *cmds, "```", "", _when(j) + ". " + cycles_note(j), "", _setup(j), "", j["markdown"]]
    return "\n".join(out) + "\n"


def headline(runs: dict) -> list[str]:
    """One headline line per run: each strategy's test/knn_acc against the baseline's and the noise floor."""
    out = []
    for name, j in runs.items():
        if not j or "summary" not in j:
            continue
        s = j["summary"]
        per = ", ".join(f"{STRATEGIES[k].split(' ', 1)[1]} {_ms(s['per_strategy'][k]['test_knn_mean'])}" for k in STRATEGIES)
        out.append(f"Search strategies on test/knn_acc (`{j['args']['data']}`, {len(j['args']['seeds'])} search seeds): "
                   f"{per}; baseline **{s['baseline_test']['test_knn_mean']:.3f}** (means over training seeds "
                   f"{_seeds(j['args']['train_seeds'])}); noise floor {100 * s['noise_floor']['mean']:.1f} points.")
    return out


def finding(runs: dict) -> str:
    """The Findings paragraph: the verdicts of each run, and how much a perfect search could gain, in plain words."""
    parts = []
    for j in runs.values():
        if not j or "summary" not in j:
            continue
        s, o = j["summary"], j["summary"].get("test_oracle") or {}
        rho = o.get("spearman_val_test")
        parts.append(f"`{j['args']['data']}`: " + "; ".join(s["verdicts"]) + (
            f". All {o['n']} configurations' test means span {100 * o['range']:.1f} points against a noise floor of "
            f"{100 * s['noise_floor']['mean']:.1f}" + ("" if rho is None else
                                                        f"; the grid's validation ranking vs test: Spearman {rho:+.2f}")
            if o.get("n", 0) > 1 else ""))
    beats = [v for j in runs.values() if j and "summary" in j for v in j["summary"]["verdicts"] if "beats" in v]
    plain = ("No strategy beats the baseline configuration beyond noise on any data set here. " if not beats else "")
    return ("**Search strategy.** " + plain + "Judged by the test accuracy of the configuration each selects "
            "(section 2), against the baseline configuration and the training-seed noise: " + ". ".join(parts) + ".") \
        if parts else ""


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="search seeds of (b) and (c)")
    ap.add_argument("--num-samples", type=int, default=6, help="(b), (c): configurations sampled per search")
    ap.add_argument("--epochs", type=int, default=None, help="max_epochs (default: the budget's)")
    ap.add_argument("--steps", type=int, default=None, help="training.max_steps_per_epoch (default: the budget's)")
    ap.add_argument("--grace", type=int, default=None, help="ASHA grace period (default: the budget's)")
    ap.add_argument("--rf", type=float, default=None, help="ASHA reduction factor (default: the budget's)")
    ap.add_argument("--data", default=None, help="data spec (default: the budget's, synthetic:480)")
    ap.add_argument("--test-fraction", type=float, default=None, help="held-out test groups (default: the budget's)")
    ap.add_argument("--lr", type=float, nargs="+", default=LR)
    ap.add_argument("--warmup", type=int, nargs="+", default=WARMUP)
    ap.add_argument("--momentum", type=float, nargs="+", default=MOMENTUM)
    ap.add_argument("--train-seeds", type=int, nargs="+", default=TRAIN_SEEDS,
                    help="training seeds of the test retraining (the first = the searches' seed)")
    ap.add_argument("--test-all-configs", action=argparse.BooleanOptionalAction, default=True,
                    help="also retrain every grid configuration (not only the picks and the baseline): the best "
                         "configuration on test data and the spread of the configurations' test means")
    ap.add_argument("--timeout", type=float, default=5400, help="seconds for all searches together")
    ap.add_argument("--smoke-test", action="store_true",
                    help="synthetic:40, 2-config grid, 1 search seed of 2 samples, 2 epochs x 2 steps, seeds 42 43")
    ap.add_argument("--tests-from", default=None, help="only (re)run the test retraining of this saved JSON's searches")
    ap.add_argument("--reanalyse", default=None, help="recompute the summary and tables of this saved JSON (no training)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--test-worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.smoke_test:
        a.seeds, a.num_samples, a.epochs, a.steps, a.grace, a.rf = [0], 2, 2, 2, 1, 2
        a.data, a.lr, a.warmup, a.momentum, a.train_seeds = "synthetic:40", [2e-3, 6e-3], [1], [0.999], [42, 43]
    return a


def run_searches(a, args: dict, tmp: Path, cache: Path) -> dict:
    """The searches in a worker process (one Ray); -> {"raw": [...], "total_s"}."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, __file__, "--worker", json.dumps({"tmp": str(tmp), "cache": str(cache),
                                                                          "args": args})],
                       cwd=REPO, capture_output=True, text=True, timeout=a.timeout)
    line = next((ln for ln in reversed(p.stdout.splitlines()) if ln.startswith("RESULT ")), None)
    if line is None:
        print(p.stdout[-3000:], p.stderr[-6000:], file=sys.stderr)
        raise RuntimeError(f"search worker failed (rc {p.returncode})")
    return {"raw": json.loads(line[7:]), "search_s": time.perf_counter() - t0}


def reanalyse(path: Path, out: str | None) -> int:
    """Summary and tables again from a saved JSON's searches and retraining (after a change to the analysis)."""
    saved = json.loads(path.read_text())
    a = argparse.Namespace(**with_metric(saved["args"]))
    s = analyse(saved["raw"], saved["tests"], tuple(saved["summary"]["baseline"]), a.epochs)
    saved["summary"], saved["markdown"] = s, markdown(s, a)
    saved["reanalyse_command"] = command()
    print(saved["markdown"])
    write_json(out or path, saved)
    return 0


def main(argv=None) -> int:
    a = parse(argv)
    if a.worker:
        print("RESULT " + json.dumps(worker(json.loads(a.worker)), default=str), flush=True)
        return 0
    if a.test_worker:
        print("RESULT " + json.dumps(test_worker(json.loads(a.test_worker))), flush=True)
        return 0
    if a.reanalyse:
        return reanalyse(Path(a.reanalyse), a.out)
    import torch

    torch.set_num_threads(1)
    saved = json.loads(Path(a.tests_from).read_text()) if a.tests_from else None
    if saved:  # the searches' settings from the file; the retraining's from this command line
        test_opts = {k: getattr(a, k) for k in ("train_seeds", "test_all_configs")}
        with_metric(saved["args"]).update(test_opts)
        a = argparse.Namespace(**{**vars(a), **saved["args"]})
    fill_defaults(a)
    tmp = Path(tempfile.mkdtemp(prefix="pahcl_search_eff_"))
    cache = tmp / "cache"
    from pahcl.config import load_config
    from pahcl.train import prepare_data

    prepare_data(load_config(None, preset="tiny"), a.data, cache_dir=cache, log=lambda m: None)  # fill the cache once
    if not saved:
        args = {k: v for k, v in vars(a).items() if k not in ("out", "worker", "test_worker", "tests_from")}
        saved = {"bench": "search_efficiency", "command": command(argv), "machine": machine(), "args": args,
                 "space": space_dict(a, a.num_samples, 0), **run_searches(a, args, tmp, cache)}
        write_json(a.out, saved)  # the searches are kept even if the retraining below fails
    base = baseline_config(a, tmp)
    picked = [tuple(r["selected"]) for r in saved["raw"]]
    grid = [_key(t["params"]) for r in saved["raw"] if r["strategy"] == "grid" for t in r["trials"]]
    configs = list(dict.fromkeys(picked + [base] + (grid if a.test_all_configs else [])))
    if a.tests_from:
        saved["tests_command"] = command(argv)
    t1 = time.perf_counter()
    saved["tests"] = run_tests(configs, a.train_seeds, saved["args"], tmp, cache)
    saved["test_s"] = time.perf_counter() - t1
    s = analyse(saved["raw"], saved["tests"], base, a.epochs)
    saved["summary"], saved["markdown"] = s, markdown(s, a)
    saved["machine"]["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    saved["machine"]["date_end"] = machine()["date"]
    print(saved["markdown"])
    write_json(a.out or a.tests_from, saved)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
