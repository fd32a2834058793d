"""End of a search: ranked table (CSV), seed aggregation (mean ± std, "within noise"), best config
YAML, summary.json (what the next stage inherits), plots for the MLflow parent run."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from tune.spaces import _plain  # one definition: numpy scalars -> Python scalars
from tune.trainable import SEED_INDEX_KEY


def collect_trials(result_grid, space) -> list[dict]:
    """One dict per trial: params, seed index, last/best metric, epochs, stopped early, status, history."""
    rows = []
    for r in result_grid:
        cfg = dict(r.config or {})
        seed_idx = int(cfg.pop(SEED_INDEX_KEY, 0) or 0)
        params = {k: _plain(v) for k, v in cfg.items()}
        last = r.metrics or {}
        hist = r.metrics_dataframe if r.metrics_dataframe is not None else pd.DataFrame()
        metric_vals = hist[space.metric].dropna().tolist() if space.metric in hist else []
        epochs = int(last.get("epoch", len(metric_vals)) or 0)
        err = r.error is not None
        value = last.get(space.metric)
        if value is None and metric_vals:
            value = metric_vals[-1]
        best = (max if space.mode == "max" else min)(metric_vals) if metric_vals else None
        trial_id = last.get("trial_id") or _id_from_dirname(Path(r.path).name if r.path else "")
        rows.append({
            "trial_id": last.get("trial_id", trial_id),
            "trial_name": Path(r.path).name if r.path else "",
            "params": params,
            "seed_index": seed_idx,
            "metric": float(value) if value is not None else float("nan"),
            "best_metric": float(best) if best is not None else float("nan"),
            "epochs": epochs,
            "stopped_early": (not err) and epochs < space.max_epochs,
            "status": "ERROR" if err else "TERMINATED",
            "mlflow_run_id": last.get("mlflow_run_id", ""),
            "error": error_line(r.error) if err else "",
            "history": hist,
            "path": r.path,
        })
    return rows


def _id_from_dirname(name: str) -> str:
    """``train_pahcl_ca241559_1_model...`` -> ``ca241559`` (a trial that failed before its first report)."""
    m = re.match(r"^[A-Za-z_]+?_([0-9a-f]{5,})_\d+", name)
    return m.group(1) if m else "?"


def error_line(error: BaseException | None) -> str:
    """The one line that says why a trial failed: the last ``SomeError: message`` line of Ray's wrapped
    traceback (the original exception), without the retry note."""
    if error is None:
        return ""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    hits = [ln for ln in lines if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt)\b.*?: ", ln)]
    line = hits[-1] if hits else (lines[-1] if lines else type(error).__name__)
    line = re.sub(r"^RuntimeError: (?=\w+(Error|Exception)\b)", "", line)
    return line.replace(" [not retried: this failure repeats from the same checkpoint]", "")


def no_result_reason(rows: list[dict]) -> str | None:
    """None when at least one trial produced a finite metric, else why none did (the first trial's error)."""
    if any(math.isfinite(r["metric"]) for r in rows):
        return None
    if not rows:
        return "no trial ran"
    errs = [r for r in rows if r.get("error")]
    if errs:
        first = sorted(errs, key=lambda r: r["trial_name"])[0]
        return f"all {len(rows)} trials failed; first error (trial {first['trial_id']}): {first['error']}"
    return f"none of the {len(rows)} trials reported the metric"


def first_rung_column(space) -> str:
    """The column that compares every trial at one epoch: ASHA's first rung (``grace_period``)."""
    return f"{space.metric}@{space.grace_period}"


def metric_at_epoch(hist: pd.DataFrame, metric: str, epoch: int) -> float:
    """The trial's ``metric`` reported at ``epoch`` (NaN when it never got there)."""
    if hist is None or hist.empty or metric not in hist or "epoch" not in hist:
        return float("nan")
    at = hist.loc[hist["epoch"] == epoch, metric].dropna()
    return float(at.iloc[-1]) if len(at) else float("nan")


def fair_order(df: pd.DataFrame, metric: str, mode: str) -> list[int]:
    """Row order of the ranking: trials are compared at the same fidelity. Trials that ran longest come
    first (those that finished, by their final value), then trials ASHA stopped at a later rung before those
    it stopped earlier (each by its value at the rung where it was judged); so an early value never
    outranks a finished trial's final value. Errored trials (NaN loss, OOM, a crash beyond max_failures)
    come last whatever they reported before failing: they can never be the best."""
    sign = -1.0 if mode == "max" else 1.0
    keys = [(r["status"] == "ERROR", -float(r["epochs"]), (sign * r[metric]) if math.isfinite(r[metric]) else math.inf, i)
            for i, r in df.reset_index(drop=True).iterrows()]
    return [k[-1] for k in sorted(keys)]


def _key(params: dict) -> str:
    return json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True, default=str)


def rank_trials(rows: list[dict], space) -> pd.DataFrame:
    keys = sorted(space.params)
    recs = []
    for r in rows:
        rec = {"trial_id": r["trial_id"]}
        for k in keys:
            rec[f"param:{k}"] = r["params"].get(k)
        ov = space.trial_overrides(r["params"])
        for k in ("training.gradient_accumulation_steps",):
            if space.effective_batch_size:
                rec[f"param:{k}"] = ov.get(k)
        for k, v in space.fixed.items():
            if f"param:{k}" not in rec:
                rec[f"param:{k}"] = v
        rec.update({"seed_index": r["seed_index"], space.metric: r["metric"], "best_" + space.metric: r["best_metric"],
                    first_rung_column(space): metric_at_epoch(r["history"], space.metric, space.grace_period),
                    "epochs": r["epochs"], "stopped_early": r["stopped_early"], "status": r["status"],
                    "config_id": _key(r["params"]), "mlflow_run_id": r["mlflow_run_id"]})
        recs.append(rec)
    df = pd.DataFrame(recs)
    if df.empty:
        return df
    df = df.iloc[fair_order(df, space.metric, space.mode)].reset_index(drop=True)
    df.insert(0, "rank", range(1, len(df) + 1))
    # config_id -> short group number in order of first appearance in the ranking
    gid = {c: i + 1 for i, c in enumerate(dict.fromkeys(df["config_id"]))}
    df["config"] = df["config_id"].map(gid)
    return df


def beyond_noise(margin: float, std_a: float, std_b: float) -> bool:
    """The one "within noise" rule (seed aggregation here, the confirmation's verdict in tune/confirm.py): a
    difference counts only when it exceeds the larger seed std of the pair (equal is within noise)."""
    return margin > max(std_a, std_b)


def aggregate_seeds(df: pd.DataFrame, space) -> pd.DataFrame:
    """Per configuration: mean ± std over seeds; differences to the best smaller than the seed spread
    are marked 'within noise'."""
    if df.empty:
        return df
    m = space.metric
    pcols = [c for c in df.columns if c.startswith("param:")]
    if "status" in df.columns:  # errored trials do not count towards a configuration's mean
        df = df.assign(**{m: df[m].where(df["status"] != "ERROR")})
    g = df.groupby("config", sort=False)
    agg = g.agg(n_seeds=(m, "count"), mean=(m, "mean"), std=(m, "std"), epochs=("epochs", "max")).reset_index()
    agg["std"] = agg["std"].fillna(0.0)
    first = g[pcols].first().reset_index()
    agg = agg.merge(first, on="config")
    asc = space.mode == "min"
    # like the trials: configurations that ran to the end rank before those ASHA stopped earlier
    agg = agg.sort_values(["epochs", "mean"], ascending=[False, asc], na_position="last",
                          kind="mergesort").reset_index(drop=True)
    best_mean, best_std = agg.loc[0, "mean"], agg.loc[0, "std"]
    verdict = []
    for i, row in agg.iterrows():
        if i == 0:
            verdict.append("best")
            continue
        diff = abs(best_mean - row["mean"])
        if not math.isfinite(diff):
            verdict.append("no result")
        elif row["n_seeds"] > 1 and not beyond_noise(diff, best_std, row["std"]):
            verdict.append("within noise")
        elif row["n_seeds"] > 1:
            verdict.append("worse (beyond seed spread)")
        else:
            verdict.append("worse (1 seed: spread unknown)")
    agg["vs_best"] = verdict
    agg[f"{m} (mean ± std)"] = [f"{a:.4f} ± {s:.4f}" for a, s in zip(agg["mean"], agg["std"])]
    return agg


def print_table(df: pd.DataFrame, space, log: Callable[[str], None] = print, title: str = "") -> str:
    if df.empty:
        text = "(no trials)"
    else:
        searched = [f"param:{k}" for k in sorted(space.params)]
        if space.effective_batch_size and "param:training.batch_size" in searched:
            searched.append("param:training.gradient_accumulation_steps")
        cols = ["rank", "trial_id"] + [c for c in searched if c in df.columns] + \
               (["seed_index"] if df["seed_index"].nunique() > 1 else []) + \
               [space.metric, first_rung_column(space), "epochs", "stopped_early", "status"]
        show = df[cols].rename(columns={c: c[len("param:"):].split(".")[-1] for c in cols if c.startswith("param:")})
        with pd.option_context("display.width", 200, "display.max_columns", 50, "display.float_format", "{:.4g}".format):
            text = show.to_string(index=False)
    log((title + "\n" if title else "") + text)
    return text


def best_row(df: pd.DataFrame, agg: pd.DataFrame) -> pd.Series:
    """Best configuration (by seed mean); its seed-0 trial (or the best of its trials)."""
    cfg_id = agg.loc[0, "config"]
    sub = df[df["config"] == cfg_id]
    s0 = sub[sub["seed_index"] == 0]
    return (s0 if len(s0) else sub).iloc[0]


def write_outputs(rows, space, out_dirs: list[Path], search_id: str, base_tree: dict,
                  log: Callable[[str], None] = print, provenance: dict | None = None) -> dict[str, Any]:
    """Ranked CSV, groups CSV, best config YAML, summary.json in every dir of ``out_dirs``."""
    from pahcl.config import build_config, dump_config

    df = rank_trials(rows, space)
    agg = aggregate_seeds(df, space)
    out: dict[str, Any] = {"df": df, "agg": agg}
    if df.empty:
        return out
    best = best_row(df, agg)
    row = next(r for r in rows if r["trial_id"] == best["trial_id"])
    overrides = space.trial_overrides(row["params"])
    cfg = build_config(base_tree, overrides)
    summary = {
        "search_id": search_id, "stage": space.name, "space_file": str(space.path), "metric": space.metric,
        "mode": space.mode, "max_epochs": space.max_epochs, "num_trials": len(df),
        "inherited": space.inherited, "inherited_from": space.inherited_from,
        "provenance": provenance,  # budget, preset, data, data_fingerprint: checked by the stages that inherit
        "best": {"trial_id": best["trial_id"], "config": int(best["config"]),
                 "metric_value": float(best[space.metric]),
                 "seed_mean": float(agg.loc[0, "mean"]), "seed_std": float(agg.loc[0, "std"]),
                 "n_seeds": int(agg.loc[0, "n_seeds"]),
                 "params": row["params"], "overrides": {k: _plain(v) for k, v in overrides.items()}},
    }
    csv_df = df.drop(columns=["config_id"])
    for d in out_dirs:
        d.mkdir(parents=True, exist_ok=True)
        csv_df.to_csv(d / "results.csv", index=False)
        agg.to_csv(d / "configs.csv", index=False)
        dump_config(cfg, d / "best_config.yaml")
        (d / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    out.update(summary=summary, best=best, best_overrides=overrides)
    return out


def write_confirmation(out_dirs: list[Path], space, base_tree: dict, summary: dict, confirmation: dict,
                       winner_params: dict | None) -> dict:
    """The confirmation's result into summary.json (``confirmation`` and ``selected``: what the next stage
    inherits) and its winner into best_config.yaml, in every dir of ``out_dirs``. Returns the new summary."""
    from pahcl.config import build_config, dump_config

    summary = {**summary, "confirmation": confirmation}
    if winner_params is not None:
        overrides = space.trial_overrides(winner_params)
        summary["selected"] = {"source": "confirmation", "candidate": confirmation["winner"],
                               "params": winner_params, "overrides": {k: _plain(v) for k, v in overrides.items()}}
        cfg = build_config(base_tree, overrides)
    for d in out_dirs:
        if winner_params is not None:
            dump_config(cfg, d / "best_config.yaml")
            text = (d / "best_config.yaml").read_text()  # the verdict on top: "within noise" travels with the file
            head = f"# confirmation winner {confirmation['winner']}: {confirmation['verdict']}\n"
            (d / "best_config.yaml").write_text(head + text)
        (d / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


# ----------------------------------------------------------------------------- plots


def make_plots(rows, df: pd.DataFrame, space, plot_dir: Path, tracking_uri: str | None = None,
               top: int = 3, log: Callable[[str], None] = print) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    m = space.metric
    if df.empty:
        return made
    # 1) optimisation history (trial order = trial id order of creation)
    order = sorted(rows, key=lambda r: r["trial_name"])
    vals = [r["metric"] for r in order]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(range(1, len(vals) + 1), vals, "o", label=m)
    run = (np.fmax if space.mode == "max" else np.fmin).accumulate(np.array(vals, dtype=float))
    ax.plot(range(1, len(vals) + 1), run, "-", label="best so far")
    ax.set_xlabel("trial"); ax.set_ylabel(m); ax.set_title(f"{space.name}: optimisation history"); ax.legend()
    p = plot_dir / "optimization_history.png"; fig.tight_layout(); fig.savefig(p, dpi=100); plt.close(fig)
    made.append(p)
    # 2) parameter importances (Optuna fANOVA on a study rebuilt from the results)
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize" if space.mode == "max" else "minimize")
        dists = {k: d.to_optuna() for k, d in space.params.items()}
        for r in rows:
            if not math.isfinite(r["metric"]) or set(r["params"]) != set(dists):
                continue
            study.add_trial(optuna.trial.create_trial(params=r["params"], distributions=dists, value=r["metric"]))
        imp = optuna.importance.get_param_importances(study)
        fig, ax = plt.subplots(figsize=(6, 0.6 * max(len(imp), 2) + 1.5))
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names])
        ax.set_xlabel("importance (fANOVA)"); ax.set_title(f"{space.name}: parameter importances")
        p = plot_dir / "param_importances.png"; fig.tight_layout(); fig.savefig(p, dpi=100); plt.close(fig)
        made.append(p)
    except Exception as e:  # noqa: BLE001 - too few trials / one parameter constant
        log(f"[summary] parameter importances skipped: {e}")
    # 3) loss and drift curves of the best trials (step metrics from the MLflow child runs)
    if tracking_uri:
        try:
            from mlflow.tracking import MlflowClient

            client = MlflowClient(tracking_uri)
            best_ids = [rid for rid in df["mlflow_run_id"].tolist() if rid][:top]
            fig, axes = plt.subplots(1, 2, figsize=(11, 4))
            for rid, tid in zip(best_ids, df["trial_id"].tolist()):
                for ax, key in zip(axes, ("loss", "drift")):
                    h = sorted(client.get_metric_history(rid, key), key=lambda x: x.step)
                    if h:
                        ax.plot([x.step for x in h], [x.value for x in h], label=tid)
            for ax, key in zip(axes, ("loss", "drift")):
                ax.set_xlabel("optimizer step"); ax.set_ylabel(key); ax.set_title(f"{key}: best {top} trials")
                ax.legend(fontsize=8)
            p = plot_dir / "best_trials_loss_drift.png"; fig.tight_layout(); fig.savefig(p, dpi=100); plt.close(fig)
            made.append(p)
        except Exception as e:  # noqa: BLE001
            log(f"[summary] loss/drift curves skipped: {e}")
    return made
