"""How noisy is the search's objective, against the differences it must rank? (issue 12 item 2)

    python bench/objective_noise.py --out bench/results/objective_noise.json     # ~15 min on 2 cores (idle)
    python bench/objective_noise.py --smoke-test                                  # one tiny run per setting
    # another budget, e.g. full epochs instead of 6 capped steps (overrides on top of the trial's config):
    python bench/objective_noise.py --data synthetic:120 --set training.max_steps_per_epoch=0 --out X.json
    python bench/objective_noise.py --analyse bench/results/objective_noise.json   # re-analyse saved runs
    python bench/objective_noise.py --merge A.json B.json --out C.json             # join saved runs

For each data setting under moco_stage2's ``synthetic_cpu`` budget (the shipped CPU search), three
configurations (the stage's baseline, and its learning rate at the two ends of the space's range, /3 and x3)
are trained with training seeds 0-4 (the split fixed at the search's base seed), and the baseline also with
two more split seeds (the validation groups resampled, training seed fixed): the bare Trainer on exactly the
trial's config (``Space.trial_overrides``), so the values are what a search trial reports.
Objectives computed from the same runs: ``last`` = val/knn_acc at the last epoch (the search's metric before
issue 12), ``last3`` = its mean over the last 3 epochs, ``rec`` = recording-level kNN at the last epoch,
``logo`` = val/logo_knn_acc at the last epoch (leave-one-group-out kNN over training + validation cycles: the
shipped spaces' metric), ``logo3`` = its mean over the last 3 epochs.
Reported per setting and objective: the std over training seeds (mean over the 3 configurations), the std
over split resamples, the range of the 3 configuration means (the differences a search must rank), the range
that training-seed noise alone would give three equal configurations (``null_range``: a measured range near
it is no evidence of a difference) and the ratio noise / range (below 1 the ranking is signal). Every trial
of a search trains with the same seed and split (common random numbers), so what decides a pair's order is
their paired difference: also reported, per pair of configurations, the mean and the std over training seeds
of the difference.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import REPO, command, machine, worker_results, write_json

SETTINGS = ["synthetic:40", "synthetic:120", "synthetic:480", "yaseen:../shared/data/yaseen2018"]
TRAIN_SEEDS = [0, 1, 2, 3, 4]
OBJECTIVES = {"last": "val/knn_acc, last epoch", "last3": "val/knn_acc, mean of last 3 epochs",
              "rec": "recording-level kNN, last epoch",
              "logo": "val/logo_knn_acc (leave-one-group-out kNN, train + val), last epoch",
              "logo3": "val/logo_knn_acc, mean of last 3 epochs"}
SEARCH_OBJECTIVE = "logo"  # the shipped spaces' metric (results without it: "last", the metric before issue 12)
EXTRA_SPLIT_SEEDS = [1, 2]  # added to the search's base seed


def configs(sp) -> dict[str, dict]:
    base = sp.baseline_params()
    lr = sp.params["training.learning_rate"]
    return {"lr/3": {**base, "training.learning_rate": lr.low}, "baseline": base,
            "lrx3": {**base, "training.learning_rate": lr.high}}


def jobs_for(data: str, smoke: bool) -> list[dict]:
    if smoke:
        return [{"data": data, "config": "baseline", "train_seed": 0, "split_seed": 0}]
    jobs = [{"data": data, "config": c, "train_seed": s, "split_seed": 0}
            for c in ("lr/3", "baseline", "lrx3") for s in TRAIN_SEEDS]
    return jobs + [{"data": data, "config": "baseline", "train_seed": 0, "split_seed": s} for s in EXTRA_SPLIT_SEEDS]


def parse_sets(items: list[str]) -> dict[str, object]:
    """``--set KEY=VALUE`` items, parsed as the Trainer's overrides are (``pahcl.config.parse_override``)."""
    from pahcl.config import ConfigError, parse_override

    try:
        return dict(parse_override(kv) for kv in items)
    except ConfigError as e:
        raise SystemExit(f"--set: {e}") from None


def run_job(job: dict, cache: str, smoke: bool) -> dict:
    """One bare-Trainer run with the trial's config; the three objectives."""
    import dataclasses

    import torch

    from pahcl.config import build_config
    from pahcl.evaluate import evaluate_features, extract_features
    from pahcl.train import Trainer, prepare_data
    from tune.spaces import load_space

    torch.set_num_threads(1)
    sp = load_space("moco_stage2", results_root=Path(cache) / "none", budget="smoke" if smoke else "synthetic_cpu",
                    cli={"data": job["data"], "max_epochs": job.get("max_epochs")}, log=lambda m: None)
    tree = sp.base_tree()
    base_seed = int(tree.get("seed", 42))
    cfg = build_config(tree, {**sp.trial_overrides(configs(sp)[job["config"]], seed_index=job["train_seed"]),
                              **job.get("set", {})})
    train, val = prepare_data(dataclasses.replace(cfg, seed=base_seed + job["split_seed"]), sp.data, cache_dir=cache,
                              log=lambda m: None)
    t0 = time.perf_counter()
    tr = Trainer(cfg, train, val, log=lambda m: None)
    tr.fit()
    hist = [float(h["val/knn_acc"]) for h in tr.history]
    logo = [float(h["val/logo_knn_acc"]) for h in tr.history]  # the search's objective (pahcl.evaluate)
    bs = cfg.evaluation.batch_size
    rec = evaluate_features(extract_features(tr.model, train, bs), train.table["label"].tolist(),
                            extract_features(tr.model, val, bs), val.table["label"].tolist(), "knn", "recording",
                            rec_test=val.table["recording_id"].tolist(), k=cfg.evaluation.knn_k,
                            temperature=cfg.evaluation.knn_temperature)
    return {**job, "history": hist, "last": hist[-1], "last3": float(np.mean(hist[-3:])), "rec": float(rec["accuracy"]),
            "logo_history": logo, "logo": logo[-1], "logo3": float(np.mean(logo[-3:])),
            "val_cycles": len(val), "val_recordings": int(val.table["recording_id"].nunique()),
            "val_groups": int(val.table["group"].nunique()), "seconds": time.perf_counter() - t0}


def setting(run: dict) -> str:
    """A run's data spec, with the ``--set`` / ``--max-epochs`` overrides it ran under (one table row group each)."""
    extra = [f"{k}={v}" for k, v in (run.get("set") or {}).items()]
    extra += [f"max_epochs={run['max_epochs']}"] if run.get("max_epochs") else []
    return run["data"] + (f" [{', '.join(extra)}]" if extra else "")


def merge(paths: list[str], merge_command: str = "") -> dict:
    """Runs of several saved results in one (e.g. a data setting measured by a later command); every part's
    command, date and load are kept under ``parts``."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    runs = [r for j in parts for r in j["runs"]]
    first = parts[0]
    return {"command": " ; ".join([j["command"] for j in parts] + ([merge_command] if merge_command else [])),
            "machine": first["machine"],
            "load_start": first["load_start"], "seconds": sum(j["seconds"] for j in parts), "runs": runs,
            "parts": [{"command": j["command"], "date": j["machine"]["date"], "load_start": j["load_start"],
                       "load_end": j["machine"]["loadavg"], "seconds": j["seconds"]} for j in parts],
            "summary": analyse(runs)}


def analyse(runs: list[dict]) -> list[dict]:
    out = []
    for data in dict.fromkeys(setting(r) for r in runs):
        rs = [r for r in runs if setting(r) == data]
        row = {"data": data, "val_cycles": rs[0]["val_cycles"], "val_recordings": rs[0]["val_recordings"],
               "val_groups": rs[0]["val_groups"]}
        for obj in [o for o in OBJECTIVES if o in rs[0]]:
            split0 = [r for r in rs if r["split_seed"] == 0]
            by_cfg = {c: [r[obj] for r in split0 if r["config"] == c] for c in dict.fromkeys(r["config"] for r in split0)}
            seed_std = float(np.mean([np.std(v, ddof=1) for v in by_cfg.values() if len(v) > 1])) if any(
                len(v) > 1 for v in by_cfg.values()) else float("nan")
            split_vals = [r[obj] for r in rs if r["config"] == "baseline" and r["train_seed"] == 0]
            split_std = float(np.std(split_vals, ddof=1)) if len(split_vals) > 1 else float("nan")
            means = [float(np.mean(v)) for v in by_cfg.values()]
            rng = float(max(means) - min(means)) if means else float("nan")
            n = min(len(v) for v in by_cfg.values())
            row[obj] = {"seed_std": seed_std, "split_std": split_std, "config_means": dict(zip(by_cfg, means)),
                        "range": rng, "null_range": null_range(seed_std, len(means), n), "noise_over_range": max(seed_std, split_std) / rng if rng > 0 else float("inf"),
                        "paired": paired_differences(split0, obj)}
        out.append(row)
    return out


def null_range(seed_std: float, n_configs: int, n_seeds: int) -> float:
    """The range of ``n_configs`` means of ``n_seeds`` runs each that training-seed noise alone gives, in
    expectation, when the configurations do not differ at all: E[range of k standard normals] x std / sqrt(n)
    (k = 3: 3 / sqrt(pi) = 1.693). A measured range near it is no evidence of any difference to rank."""
    if n_configs < 2 or n_seeds < 1 or not np.isfinite(seed_std):
        return float("nan")
    expected = {2: 2 / np.sqrt(np.pi), 3: 3 / np.sqrt(np.pi)}.get(n_configs)
    if expected is None:  # Monte Carlo for other k (fixed seed: deterministic)
        z = np.random.default_rng(0).standard_normal((200_000, n_configs))
        expected = float(np.mean(z.max(1) - z.min(1)))
    return float(expected * seed_std / np.sqrt(n_seeds))


def paired_differences(runs: list[dict], obj: str) -> dict[str, dict[str, float]]:
    """Per pair of configurations ("a - b"): mean and std over the training seeds both ran of a's value minus
    b's (same seed, same split: the comparison a search makes)."""
    val = {(r["config"], r["train_seed"]): r[obj] for r in runs}
    cfgs = list(dict.fromkeys(r["config"] for r in runs))
    out = {}
    for i, a in enumerate(cfgs):
        for b in cfgs[i + 1:]:
            d = [val[(a, s)] - val[(b, s)] for s in sorted({s for c, s in val if c == a}) if (b, s) in val]
            if len(d) > 1:
                out[f"{a} - {b}"] = {"mean": float(np.mean(d)), "std": float(np.std(d, ddof=1)), "n": len(d)}
    return out


def paired_markdown(res: dict) -> str:
    lines = ["| data | objective | " + " | ".join(_pair_names(res)) + " |",
             "|---|---|" + "---|" * len(_pair_names(res))]
    for r in res["summary"]:
        for obj, name in OBJECTIVES.items():
            if obj in r and r[obj].get("paired"):
                cells = [r[obj]["paired"].get(p) for p in _pair_names(res)]
                lines.append(f"| {r['data']} | {name} | " + " | ".join(
                    f"{c['mean']:+.3f} ± {c['std']:.3f} ({abs(c['mean']) / c['std']:.1f})" if c and c["std"] > 0
                    else "—" for c in cells) + " |")
    return "\n".join(lines)


def paired_findings(res: dict) -> str:
    """Per data setting, from the paired differences: how many pairs stay below 1 std (all objectives, and the
    search's metric), and the strongest pair."""
    out = []
    for r in res["summary"]:
        cells = [(o, p, c) for o in OBJECTIVES if o in r for p, c in r[o].get("paired", {}).items() if c["std"] > 0]
        if not cells:
            continue
        ratio = {(o, p): abs(c["mean"]) / c["std"] for o, p, c in cells}
        key = SEARCH_OBJECTIVE if any(k[0] == SEARCH_OBJECTIVE for k in ratio) else "last"
        mine = [k for k in ratio if k[0] == key]
        o, p, c = max(cells, key=lambda t: ratio[(t[0], t[1])])
        out.append(f"`{r['data']}`: {sum(v < 1 for v in ratio.values())} of {len(ratio)} pairs below 1 "
                   f"({sum(ratio[k] < 1 for k in mine)} of {len(mine)} under the search's metric, "
                   f"{OBJECTIVES[key]}); the strongest, {p} under {OBJECTIVES[o]}: {c['mean']:+.3f} ± {c['std']:.3f} "
                   f"({ratio[(o, p)]:.1f})")
    return "; ".join(out)


def _pair_names(res: dict) -> list[str]:
    return list(dict.fromkeys(p for r in res["summary"] for o in OBJECTIVES if o in r for p in r[o].get("paired", {})))


def markdown(res: dict) -> str:
    when = [f"{p['date']}; load average at start {p['load_start']}, at end {p['load_end']}; {p['seconds'] / 60:.1f} min"
            for p in res.get("parts") or [{"date": res["machine"]["date"], "load_start": res["load_start"],
                                            "load_end": res["machine"]["loadavg"], "seconds": res["seconds"]}]]
    lines = ["; ".join(when) + ".", "",
             "| data (synthetic_cpu budget) | validation cycles / recordings / groups | objective | std over training "
             "seeds | std over split resamples | config means (lr/3, baseline, lrx3) | range of means | range that "
             "seed noise alone gives | noise / range |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["summary"]:
        for obj, name in OBJECTIVES.items():
            if obj not in r:
                continue
            o = r[obj]
            lines.append(f"| {r['data']} | {r['val_cycles']} / {r['val_recordings']} / {r['val_groups']} | {name} | "
                         f"{o['seed_std']:.3f} | {o['split_std']:.3f} | "
                         f"{', '.join(f'{v:.3f}' for v in o['config_means'].values())} | {o['range']:.3f} | "
                         f"{o.get('null_range', float('nan')):.3f} | {o['noise_over_range']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--data", nargs="*", default=SETTINGS)
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (one torch thread each)")
    ap.add_argument("--smoke-test", action="store_true", help="one run per setting, the smoke budget")
    ap.add_argument("--analyse", default=None, metavar="JSON", help="re-analyse the runs of a saved result (no training)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override on top of the budget's trial config (e.g. training.max_steps_per_epoch=0)")
    ap.add_argument("--max-epochs", type=int, default=None, help="override the budget's max_epochs")
    ap.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                    help="join the runs of saved results into --out (no training)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.analyse:
        res = json.loads(Path(a.analyse).read_text())
        res["summary"] = analyse(res["runs"])
        print(markdown(res) + "\n\n" + paired_markdown(res))
        if a.out:
            write_json(Path(a.out), res)
        return 0
    if a.merge:
        res = merge(a.merge, command(argv))
        print(markdown(res) + "\n\n" + paired_markdown(res))
        if a.out:
            write_json(Path(a.out), res)
        return 0
    if a.worker:
        spec = json.loads(a.worker)
        print("RESULT " + json.dumps([run_job(j, spec["cache"], spec["smoke"]) for j in spec["jobs"]]), flush=True)
        return 0
    t0, load0 = time.perf_counter(), machine()["loadavg"]
    sets = parse_sets(a.set)
    jobs = [{**j, "set": sets, "max_epochs": a.max_epochs} for d in a.data for j in jobs_for(d, a.smoke_test)]
    cache = tempfile.mkdtemp(prefix="pahcl_noise_")
    parts = [jobs[i::a.jobs] for i in range(a.jobs)]
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(
        {"cache": cache, "smoke": a.smoke_test, "jobs": p})], cwd=REPO, stdout=subprocess.PIPE, text=True)
        for p in parts if p]
    runs = worker_results(procs, "objective_noise")
    res = {"command": command(argv), "machine": machine(), "load_start": load0, "seconds": time.perf_counter() - t0,
           "runs": runs, "summary": analyse(runs)}
    print(markdown(res) + "\n\n" + paired_markdown(res))
    if a.out:
        write_json(Path(a.out), res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
