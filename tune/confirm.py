"""Confirmation runs (issue 12): is the search's winner really better, on data the search never saw?

After the search, the top K configurations (by the fair ranking of ``tune.summary``) and the stage's
baseline configuration (``Space.baseline_params``: the inherited values, else the recommended defaults) are
retrained with S fresh seeds at ``max_epochs`` (no ASHA) and scored on the test split
(``confirm.test_fraction`` of the groups, held out from the search and ASHA) by recording-level kNN and
linear probe (``pahcl.evaluate.test_metrics``). The winner is the candidate with the best mean
``test/knn_acc``; it is "within noise" when its margin over the runner-up or over the baseline is not larger
than the seed spread (the same rule as ``summary.aggregate_seeds``). Each confirmation run is a nested
MLflow child run tagged ``pahcl.role=confirmation`` and ``pahcl.candidate``; the parent carries the verdict.

    python tune/run_search.py --space moco_stage2 --data yaseen:../shared/data/yaseen2018 --budget synthetic_cpu
    python tune/run_search.py --space moco_stage2 --confirm-top 3 --confirm-seeds 5
    python tune/run_search.py --space moco_stage2 --no-confirm      # the test split is held out all the same
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from tune.summary import beyond_noise
from tune.trainable import CONFIRM_KEY

CONFIRM_METRIC = "test/knn_acc"  # the verdict's metric: the search's protocol (kNN), on the test split
OTHER_METRICS = ("test/linear_acc",)
FRESH_SEED_OFFSET = 1000  # confirmation seed i = the search's base seed + 1000 + i: never a seed the search used
BASELINE = "baseline"


def candidates(rows: list[dict], agg, df, space, top: int) -> list[dict]:
    """[{label, params}]: the top ``top`` configurations in ranked order (errored ones never), then the
    baseline (labelled ``top1=baseline`` instead when it is one of them: one configuration is trained once)."""
    by_id = {r["trial_id"]: r for r in rows}
    out: list[dict] = []
    for _, a in agg.iterrows():
        if len(out) >= top or not math.isfinite(float(a["mean"])):
            break
        tid = df[df["config"] == a["config"]].iloc[0]["trial_id"]
        out.append({"label": f"top{len(out) + 1}", "params": dict(by_id[tid]["params"]), "search_mean": float(a["mean"])})
    base = space.baseline_params()
    same = next((c for c in out if c["params"] == base), None)
    if same is not None:
        same["label"] += f"={BASELINE}"
    else:
        out.append({"label": BASELINE, "params": base, "search_mean": float("nan")})
    return out


def points(cands: list[dict], seeds: int) -> dict[str, dict]:
    """The confirmation trials: label ``<candidate>/s<i>`` -> its params and fresh seed index."""
    return {f"{c['label']}/s{i}": {"params": c["params"], "seed_index": FRESH_SEED_OFFSET + i}
            for c in cands for i in range(seeds)}


def run(space, context, resources, mlflow_ids: dict, ray_dir, search_id: str, cands: list[dict], seeds: int,
        log: Callable[[str], None], max_failures: int = 2):
    """Train every (candidate, seed) to max_epochs with the search's trainable; returns Ray's ResultGrid.
    A search resumed after the confirmation started continues the same Ray experiment."""
    from ray import tune as ray_tune
    from ray.tune import Tuner

    from tune.mlflow_utils import EndChildRunsCallback
    from tune.trainable import train_pahcl

    ctx = context.with_confirm_points(points(cands, seeds))  # tune.context.TrialContext
    trainable = ray_tune.with_resources(ray_tune.with_parameters(train_pahcl, context=ctx), resources.as_ray())
    name = f"{search_id}-confirm"
    path = ray_dir / name
    if Tuner.can_restore(str(path)):
        log(f"[confirm] continuing {path}")
        tuner = Tuner.restore(str(path), trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        cb = EndChildRunsCallback(mlflow_ids["tracking_uri"], mlflow_ids["experiment_id"], mlflow_ids["parent_run_id"],
                                  space.max_epochs)
        tuner = ray_tune.Tuner(
            trainable, param_space={CONFIRM_KEY: ray_tune.grid_search(list(ctx.confirm_points))},
            tune_config=ray_tune.TuneConfig(num_samples=1, max_concurrent_trials=space.max_concurrent_trials,
                                        reuse_actors=True),
            run_config=ray_tune.RunConfig(name=name, storage_path=str(ray_dir), callbacks=[cb],
                                          checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=1),
                                          failure_config=ray_tune.FailureConfig(max_failures=max_failures), verbose=1))
    log(f"[confirm] {len(cands)} configurations ({', '.join(c['label'] for c in cands)}) x {seeds} fresh seed(s), "
        f"{space.max_epochs} epochs each, scored on the test split ({space.test_fraction:g} of the groups)")
    return tuner.fit()


def unfinished(grid, max_epochs: int) -> int:
    """Confirmation runs that neither failed nor reached ``max_epochs`` (Ctrl+C / SIGTERM stopped them)."""
    return sum(1 for r in grid if r.error is None and int((r.metrics or {}).get("epoch", 0) or 0) < max_epochs)


def scores(grid) -> list[dict]:
    """One dict per confirmation trial: candidate, seed index, test metrics (NaN when it failed), error."""
    out = []
    for r in grid:
        label = (r.config or {}).get(CONFIRM_KEY, "?")
        cand, _, s = label.rpartition("/s")
        m = r.metrics or {}
        rec = {"candidate": cand, "seed": int(s) if s.isdigit() else -1, "error": r.error is not None}
        for k in (CONFIRM_METRIC, *OTHER_METRICS, "test/recordings"):
            v = m.get(k)
            rec[k] = float(v) if v is not None and not r.error else float("nan")
        out.append(rec)
    return out


def _mean_std(v: np.ndarray) -> tuple[float, float]:
    v = v[np.isfinite(v)]
    if not len(v):
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def table(results: list[dict], cands: list[dict]) -> list[dict]:
    """Per candidate (best mean ``test/knn_acc`` first): n, mean ± std of each test metric, and the paired
    difference to the baseline (same seed index, mean ± std over seeds)."""
    base = next(c["label"] for c in cands if c["label"].endswith(BASELINE))
    per = {c["label"]: {r["seed"]: r for r in results if r["candidate"] == c["label"]} for c in cands}
    rows = []
    for c in cands:
        runs = per[c["label"]]
        sm = c.get("search_mean")
        row: dict[str, Any] = {"candidate": c["label"], "params": c["params"],
                               "search_mean": sm if sm is not None and math.isfinite(sm) else None,
                               "n_seeds": int(sum(math.isfinite(r[CONFIRM_METRIC]) for r in runs.values())),
                               "test_recordings": max((r["test/recordings"] for r in runs.values()
                                                       if math.isfinite(r["test/recordings"])), default=None)}
        for k in (CONFIRM_METRIC, *OTHER_METRICS):
            vals = np.array([runs[s][k] for s in sorted(runs)], dtype=float)
            row[f"{k} mean"], row[f"{k} std"] = _mean_std(vals)
            common = sorted(set(runs) & set(per[base]))
            d = np.array([runs[s][k] - per[base][s][k] for s in common], dtype=float)
            row[f"{k} vs baseline"], row[f"{k} vs baseline std"] = _mean_std(d)
        rows.append(row)
    key = f"{CONFIRM_METRIC} mean"
    rows = sorted(rows, key=lambda r: -r[key] if math.isfinite(r[key]) else math.inf)
    return rows


def json_safe(rows: list[dict]) -> list[dict]:
    """NaN (a candidate without results) -> None, so summary.json stays strict JSON."""
    return [{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in r.items()} for r in rows]


def verdict(rows: list[dict]) -> tuple[str, str]:
    """(winner label, one-line verdict). Beyond noise = the margin exceeds the larger seed std of the pair."""
    k = CONFIRM_METRIC
    ok = [r for r in rows if math.isfinite(r[f"{k} mean"])]
    if not ok:
        return "", f"no result: every confirmation run failed ({k} missing)"
    win = ok[0]

    def beyond(other) -> bool:
        margin = win[f"{k} mean"] - other[f"{k} mean"]
        return beyond_noise(margin, win[f"{k} std"], other[f"{k} std"]) and min(win["n_seeds"], other["n_seeds"]) > 1

    base = next(r for r in rows if r["candidate"].endswith(BASELINE))
    rival = [r for r in ok[1:] if not r["candidate"].endswith(BASELINE)]
    if win is base:
        noisy = not all(beyond(r) for r in ok[1:])
        name = "the baseline" if win["candidate"] == BASELINE else f"the baseline ({win['candidate']})"
        return win["candidate"], (f"{name} scores best on the test split: the search found "
                                  f"nothing better than the stage's defaults{' (within noise)' if noisy else ''}")
    checks = {"the runner-up": rival[0] if rival else None, "the baseline": base if base in ok else None}
    noisy = [name for name, r in checks.items() if r is not None and not beyond(r)]
    if noisy:
        why = "a single seed: spread unknown" if win["n_seeds"] < 2 else "margin <= seed std"
        return win["candidate"], (f"{win['candidate']} is best on the test split but within noise of "
                                  f"{' and '.join(noisy)} ({why}); treat the choice as a tie")
    return win["candidate"], (f"confirmed: {win['candidate']} beats the runner-up and the baseline on the test split "
                              "beyond the seed spread")


def format_table(rows: list[dict], winner: str) -> str:
    """The terminal table: candidate, searched values, mean ± std per test metric, paired diff vs baseline."""
    import pandas as pd

    show = []
    for r in rows:
        rec = {"candidate": r["candidate"] + (" *" if r["candidate"] == winner else ""), "n": r["n_seeds"]}
        rec.update({k.split(".")[-1]: v for k, v in r["params"].items()})
        for k in (CONFIRM_METRIC, *OTHER_METRICS):
            rec[k] = f"{r[f'{k} mean']:.3f} ± {r[f'{k} std']:.3f}"
            rec[f"Δ{k.split('/')[-1]} vs baseline"] = f"{r[f'{k} vs baseline']:+.3f} ± {r[f'{k} vs baseline std']:.3f}"
        show.append(rec)
    with pd.option_context("display.width", 220, "display.max_columns", 50, "display.float_format", "{:.4g}".format):
        return pd.DataFrame(show).to_string(index=False)
