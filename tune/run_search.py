#!/usr/bin/env python
"""PA-HCL hyper-parameter search: Ray Tune (ASHA) + Optuna (TPE) + MLflow (parent + nested runs).

Exact commands (from the repository root):

    # the three stages, in order (each inherits the previous stage's best from results/<stage>/summary.json)
    .venv/bin/python tune/run_search.py --space simclr_stage1
    .venv/bin/python tune/run_search.py --space moco_stage2
    .venv/bin/python tune/run_search.py --space moco_stage3 --seeds 3

    # real data on a GPU box: full preset, trials packed by measured peak memory
    .venv/bin/python tune/run_search.py --space moco_stage2 --data circor:/data/circor --gpus-per-trial auto

    # a minimal end-to-end check (tiny preset, 2 trials x 2 epochs, results/smoke/)
    .venv/bin/python tune/run_search.py --space moco_stage2 --smoke-test

    # continue an interrupted search (Ctrl+C, killed driver); refuses if the space/base config changed
    .venv/bin/python tune/run_search.py --space moco_stage2 --resume

    # join an existing Ray cluster / log to an MLflow server
    .venv/bin/python tune/run_search.py --space moco_stage2 --address 10.0.0.5:6379 --mlflow-uri http://127.0.0.1:5000

Without --data on a CPU-only machine the space's ``synthetic_cpu`` budget is used (tiny preset,
synthetic:40, a few epochs of a few capped steps): the search finishes in minutes on 2 cores.

Outputs (results/<stage>/): results.csv (ranked trials), configs.csv (per configuration: mean ± std
over seeds), best_config.yaml, summary.json (what the next stage inherits), plots/, ray/<search id>/
(the Ray experiment), searches/<search id>/ (beside it: search_meta.json with the MLflow ids, the
trial constants and the space hash used by --resume; asha_state.json; this search's result files).
Files are kept outside the Ray experiment dir because Ray re-syncs that dir on restore.
MLflow: results/mlflow.db (sqlite:////ABS/...) + results/mlartifacts unless --mlflow-uri /
MLFLOW_TRACKING_URI name a server. Exit status: 0 done, 2 bad arguments/space, 3 interrupted (resumable).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # run as a script: make `import tune.xxx` and `import pahcl` work
    sys.path.insert(0, str(REPO_ROOT))
# trial workers import tune.trainable by module path: make the repo importable for them too
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")  # nothing leaves the machine
# short epochs + num_to_keep make Ray warn about experiment-checkpoint sync time on every save; the
# syncing is local and cheap here (stack-notes), so the warning is silenced.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
# Snapshot the experiment state (trials + searcher) on every controller step instead of Ray's "auto"
# (>= 10 s): a driver killed between snapshots otherwise forgets trials it already started, whose
# work is then lost and re-sampled on --resume. A snapshot here takes ~10 ms.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
# A local (single-node) Ray binds its gRPC servers (GCS, raylet, workers) and the runtime-env agent to the
# node's IP on all interfaces by default; with Ray's single-node mode they listen on 127.0.0.1 only. Read
# by Ray when it is imported, so set here (before any `import ray`), unless joining a cluster (--address).
if not any(a == "--address" or a.startswith("--address=") for a in sys.argv[1:]):
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from pahcl.config import ConfigError  # noqa: E402

META_NAME = "search_meta.json"
ASHA_STATE = "asha_state.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tune/run_search.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--space", required=True, help="search_spaces/NAME.yaml name (simclr_stage1, moco_stage2, "
                   "moco_stage3) or a path to a space file")
    p.add_argument("--data", default=None, help="data spec KIND:PATH (synthetic, synthetic:N, wav:DIR, circor:DIR, "
                   "yaseen:DIR, physionet2016:DIR); default: the space's synthetic default")
    p.add_argument("--num-samples", type=int, default=None, help="configurations to sample (x --seeds trials)")
    p.add_argument("--max-epochs", type=int, default=None, help="epochs per trial (ASHA's max_t)")
    p.add_argument("--seeds", type=int, default=1, help="run every sampled configuration with N seeds")
    p.add_argument("--gpus-per-trial", default=None, help="F or auto (default: the space's setting)")
    p.add_argument("--cpus-per-trial", type=float, default=None)
    p.add_argument("--address", default=None, help="join an existing Ray cluster instead of starting one")
    p.add_argument("--mlflow-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
                   "sqlite:////ABS/<results>/mlflow.db)")
    p.add_argument("--results-dir", default=None, help="results root (default results/, results/smoke with "
                   "--smoke-test)")
    p.add_argument("--resume", action="store_true", help="continue the stage's latest interrupted search")
    p.add_argument("--smoke-test", action="store_true", help="minimal search: tiny preset, 2 trials x 2 epochs")
    p.add_argument("--preset", default=None, help="override the space's preset (auto, full, small, tiny)")
    p.add_argument("--budget", default=None, help="apply a named budget of the space file (e.g. synthetic_cpu)")
    p.add_argument("--allow-degenerate", action="store_true", help="run even when the pre-Ray guard finds the "
                   "queue larger than the training set or trials shorter than 1/(1-m) steps (tune/guard.py)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial from its latest "
                   "checkpoint (Ray FailureConfig.max_failures; NaN loss / repeated OOM are never retried)")
    a = p.parse_args(argv)
    if a.seeds < 1:
        p.error("--seeds must be >= 1")
    if a.num_samples is not None and a.num_samples < 1:
        p.error("--num-samples must be >= 1")
    if a.gpus_per_trial not in (None, "auto"):
        try:
            a.gpus_per_trial = float(a.gpus_per_trial)
        except ValueError:
            p.error(f"--gpus-per-trial: expected a number or 'auto', got {a.gpus_per_trial!r}")
    return a


def _log(msg: str) -> None:
    print(msg, flush=True)


def choose_budget(args) -> str | None:
    if args.budget:
        return args.budget
    if args.smoke_test:
        return "smoke"  # required: the space file must define budgets.smoke
    if args.data is None:
        import torch

        if not torch.cuda.is_available():
            return "?synthetic_cpu"  # "?": used when the space file defines it, else the file as is
        return "?synthetic_cuda"  # sized so the guard (tune/guard.py) passes with the full preset
    return None


def build_consts(space, args, search_id: str, cache_dir: Path, mlflow_ids: dict, res) -> dict[str, Any]:
    """Constants for every trial (passed with tune.with_parameters, never in param_space). JSON-safe."""
    base_tree = space.base_tree()
    return {
        "stage": space.name, "search_id": search_id, "base_tree": base_tree, "fixed": dict(space.fixed),
        "effective_batch_size": space.effective_batch_size, "max_epochs": space.max_epochs,
        "data": space.data, "cache_dir": str(cache_dir.resolve()),
        "split_seed": int(space.fixed.get("seed", base_tree.get("seed", 42))),
        "tracking_uri": mlflow_ids["tracking_uri"], "experiment_id": mlflow_ids["experiment_id"],
        "parent_run_id": mlflow_ids["parent_run_id"], "flush_seconds": 5.0,
        "gpu_fraction": res.gpu_fraction, "threads_per_trial": max(1, int(res.cpus)),
        "gpu_simulation": _gpu_simulation(),
    }


def _gpu_simulation():
    from tune.gpu import sim_consts

    return sim_consts()


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _init_ray(args, num_cpus: int | None = None) -> bool:
    """Start (or join) Ray. Returns True when this call started/joined it (so we shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    env = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"], "MLFLOW_DISABLE_TELEMETRY": "true"}}
    if args.address:
        ray.init(address=args.address, runtime_env=env, log_to_driver=True)
    else:
        # Local, private: no dashboard (nothing listens beyond Ray's own ports). Ray's token auth stays on.
        from tune.gpu import local_num_gpus

        ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=local_num_gpus(), include_dashboard=False,
                 runtime_env=env)
    return True


def _guard_and_gpus(space, n_train: int, res, seeds: int, args) -> None:
    """Before any MLflow run: the search guard (tune/guard.py); with --address and GPUs requested, join
    the cluster now and check it has GPUs (a clear error instead of trials pending forever)."""
    from tune.guard import check_search

    check_search(space, n_train, res, seeds, allow=args.allow_degenerate, log=_log)
    if args.address and res.gpus > 0:
        from tune.gpu import check_cluster_gpus

        _init_ray(args)
        check_cluster_gpus(res.gpus)


def _end_leftover_child_runs(uri: str, exp_id: str, parent: str, statuses: dict[str, str]) -> int:
    """Safety net after fit(): a child run still RUNNING gets the status of its trial."""
    from tune.mlflow_utils import _client, child_runs, end_run

    n = 0
    for run in child_runs(uri, exp_id, parent):
        if run.info.status != "RUNNING":
            continue
        tid = run.data.tags.get("pahcl.trial_id")
        status = statuses.get(tid, "KILLED")
        end_run(uri, run.info.run_id, status)
        _client(uri).set_tag(run.info.run_id, "pahcl.end_reason", f"{status} (driver safety net)")
        n += 1
    return n


def _auth_for_address(args) -> None:
    """A cluster started by ray.init()/ray start uses token auth by default, but a joining driver only
    sends its token with RAY_AUTH_MODE=token, which Ray reads when it is imported: set it before that,
    using the token Ray itself keeps (RAY_AUTH_TOKEN or ~/.ray/auth_token) when one exists."""
    if not args.address or "RAY_AUTH_MODE" in os.environ:
        return
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if os.environ.get("RAY_AUTH_TOKEN") or token_file.exists():
        if "ray" in sys.modules:
            _log("[ray] note: ray already imported; RAY_AUTH_MODE=token may not take effect")
        os.environ["RAY_AUTH_MODE"] = "token"
        _log(f"[ray] joining {args.address} with token authentication "
             f"({'RAY_AUTH_TOKEN' if os.environ.get('RAY_AUTH_TOKEN') else token_file}); set RAY_AUTH_MODE to override")


def main(argv=None) -> dict[str, Any]:
    args = parse_args(argv)
    _auth_for_address(args)
    t_start = time.time()
    from tune.spaces import SpaceError, load_space, space_hash, space_path

    if args.results_dir is None:
        args.results_dir = "results/smoke" if args.smoke_test else "results"
    results_dir = Path(args.results_dir).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)

    stage_name = space_path(args.space).stem
    meta = None
    if args.resume:
        stage_dir0 = results_dir / stage_name
        latest = stage_dir0 / "latest"
        if not latest.exists():
            raise SpaceError(f"--resume: no search of {stage_name} under {stage_dir0} to resume (no 'latest' file)")
        search_id = latest.read_text().strip()
        exp_path = stage_dir0 / "ray" / search_id
        state_dir = stage_dir0 / "searches" / search_id
        meta_path = state_dir / META_NAME
        if not meta_path.exists():
            raise SpaceError(f"--resume: {meta_path} is missing; cannot resume {search_id}")
        meta = json.loads(meta_path.read_text())
        budget = meta["budget"]
        cli = meta["cli"]
        _log(f"[resume] search {search_id} ({exp_path}); original options: {cli}, budget {budget}")
    else:
        budget = choose_budget(args)
        cli = {"num_samples": args.num_samples, "max_epochs": args.max_epochs, "data": args.data,
               "preset": args.preset, "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
               "seeds": args.seeds}
    space = load_space(args.space, results_root=results_dir, budget=budget,
                       cli={k: v for k, v in cli.items() if k != "seeds"}, log=_log)
    seeds = int(cli.get("seeds") or 1)
    budget = space.budget
    h = space_hash(space)
    if meta is not None:
        if meta["space_hash"] != h:
            raise SpaceError(
                f"--resume: the space file or base config changed since search {meta['search_id']} started "
                f"(hash {meta['space_hash'][:12]} -> {h[:12]}; files: {space.path}, {space.base_config}). "
                "Restore the original files or start a new search without --resume.")
        # use exactly what the original run resolved (inheritance may have changed since)
        space.fixed = meta["consts"]["fixed"]
    if budget == "synthetic_cpu" and not args.resume:
        f = space.fixed
        _log(f"[search] No --data and no CUDA device: synthetic default data ({space.data}) with the space's "
             f"'synthetic_cpu' budget - preset {space.preset}, {space.num_samples} configurations x {seeds} seed(s), "
             f"{space.max_epochs} epochs, training.max_steps_per_epoch={f.get('training.max_steps_per_epoch')}. "
             "Sized to finish in about 10 minutes on a 2-core CPU; pass --data KIND:PATH for a real search.")
    if args.smoke_test and not args.resume:
        _log(f"[search] --smoke-test: {space.num_samples} trials x {space.max_epochs} epochs, preset {space.preset}, "
             f"{space.data}, results in {results_dir}")
    for n in space.notes:
        _log(f"[space] note: {n}")

    stage_dir = results_dir / space.name
    ray_dir = stage_dir / "ray"
    ray_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = results_dir / "cache"
    cache_dir.mkdir(parents=True, exist_ok=True)

    from tune.mlflow_utils import (
        create_parent_run, ensure_experiment, git_commit, resolve_tracking_uri,
    )
    from tune.resources import TrialResources, plan_resources

    if meta is None:
        search_id = f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        exp_path = ray_dir / search_id
        if exp_path.exists():
            search_id += f"-{os.getpid()}"
            exp_path = ray_dir / search_id
        # Data once in the driver: validates the spec and fills the shared cache before trials race for it.
        from pahcl.config import build_config
        from pahcl.train import prepare_data

        cfg0 = build_config(space.base_tree(), space.trial_overrides({k: d.candidates()[0] for k, d in space.params.items()}))
        tr, va = prepare_data(cfg0, space.data, cache_dir=cache_dir, log=lambda m: None)
        _log(f"[data] {space.data}: {len(tr)} training / {len(va)} validation cycles (cache {cache_dir})")
        res = plan_resources(space, cli.get("gpus_per_trial"), cli.get("cpus_per_trial"), space.data, cache_dir, log=_log,
                             address=args.address)
        _guard_and_gpus(space, len(tr), res, seeds, args)
        uri = resolve_tracking_uri(args.mlflow_uri, results_dir)
        exp_id = ensure_experiment(uri, results_dir)
        tags = {"pahcl.stage": space.name, "pahcl.space_file": str(space.path.relative_to(REPO_ROOT))
                if space.path.is_relative_to(REPO_ROOT) else str(space.path),
                "pahcl.base_config": str(space.base_config), "pahcl.preset": space.preset,
                "pahcl.git_commit": git_commit(), "pahcl.data": space.data, "pahcl.budget": str(budget),
                "pahcl.seeds": str(seeds), "pahcl.metric": space.metric,
                "pahcl.inherited_from": str(space.inherited_from), "pahcl.space_hash": h}
        params = {"num_samples": space.num_samples, "seeds": seeds, "max_epochs": space.max_epochs,
                  "grace_period": space.grace_period, "reduction_factor": space.reduction_factor,
                  "metric": space.metric, "mode": space.mode, "sampler_seed": space.seed,
                  **{f"space.{k}": d.describe() for k, d in space.params.items()},
                  **{f"fixed.{k}": v for k, v in space.fixed.items()}}
        parent = create_parent_run(uri, exp_id, search_id, tags, params)
        mlflow_ids = {"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent}
        consts = build_consts(space, args, search_id, cache_dir, mlflow_ids, res)
        state_dir = stage_dir / "searches" / search_id
        state_dir.mkdir(parents=True, exist_ok=True)
        meta = {"search_id": search_id, "space": str(space.path), "space_hash": h, "budget": budget, "cli": cli,
                "resources": {"cpus": res.cpus, "gpus": res.gpus, "gpu_fraction": res.gpu_fraction},
                "mlflow": mlflow_ids, "consts": consts, "total_trials": space.num_samples * seeds,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_json(state_dir / META_NAME, meta)
        (stage_dir / "latest").write_text(search_id + "\n")
        _log(f"[mlflow] {uri} experiment {exp_id}, parent run {parent} ({search_id})")
        resuming = False
    else:
        consts = meta["consts"]
        mlflow_ids = meta["mlflow"]
        r = meta["resources"]
        res = TrialResources(r["cpus"], r["gpus"], r["gpu_fraction"])
        uri, exp_id, parent = mlflow_ids["tracking_uri"], mlflow_ids["experiment_id"], mlflow_ids["parent_run_id"]
        from tune.mlflow_utils import _client

        _client(uri).update_run(parent, status="RUNNING")
        _client(uri).set_tag(parent, "pahcl.state", "resumed")
        resuming = True

    import ray
    from ray import tune

    from tune.trainable import train_pahcl

    from tune.faults import from_env as faults_from_env

    # test-only fault hook (PAHCL_FAULTS): passed explicitly, trial workers do not see the driver's later env
    faults = faults_from_env()
    trainable = tune.with_resources(tune.with_parameters(train_pahcl, consts=consts, faults=faults), res.as_ray())
    total = int(meta["total_trials"])
    started_ray = _init_ray(args) or bool(args.address)  # joined early by _guard_and_gpus: leave it after
    try:
        if resuming:
            from ray.tune import Tuner

            if not Tuner.can_restore(str(exp_path)):
                raise SpaceError(f"--resume: {exp_path} holds no restorable Ray Tune experiment")
            tuner = Tuner.restore(str(exp_path), trainable=trainable, resume_unfinished=True, resume_errored=True)
            _log(f"[resume] restored {exp_path}: finished trials are kept, unfinished ones continue from their "
                 "last checkpoint, ASHA rungs reloaded from asha_state.json")
        else:
            tuner = _build_tuner(space, seeds, total, trainable, state_dir, mlflow_ids, ray_dir, search_id,
                                 max_failures=args.max_failures)
        t_fit = time.time()
        grid = tuner.fit()
        fit_s = time.time() - t_fit
        return _finish(grid, space, seeds, total, meta, exp_path, state_dir, stage_dir, results_dir, args, t_start,
                       fit_s)
    finally:
        if started_ray:
            ray.shutdown()


def _build_tuner(space, seeds, total, trainable, state_dir, mlflow_ids, ray_dir, search_id, max_failures=2):
    import optuna
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter, Repeater
    from ray.tune.search.optuna import OptunaSearch

    from tune.mlflow_utils import EndChildRunsCallback, InterruptAfterTrials
    from tune.schedulers import PersistentASHA

    sampler = optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=max(2, min(10, space.num_samples // 2)))
    searcher = OptunaSearch(space=space.optuna_space(), metric=space.metric, mode=space.mode, sampler=sampler)
    if seeds > 1:
        searcher = Repeater(searcher, repeat=seeds, set_index=True)  # config["__trial_index__"] = seed index
    searcher = ConcurrencyLimiter(searcher, max_concurrent=space.max_concurrent_trials)
    scheduler = PersistentASHA(time_attr="epoch", max_t=space.max_epochs, grace_period=space.grace_period,
                               reduction_factor=space.reduction_factor, state_file=str(state_dir / ASHA_STATE),
                               metric=space.metric, mode=space.mode)
    callbacks = [EndChildRunsCallback(mlflow_ids["tracking_uri"], mlflow_ids["experiment_id"],
                                      mlflow_ids["parent_run_id"], space.max_epochs),
                 InterruptAfterTrials()]
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=total,
                                    reuse_actors=True),
        run_config=tune.RunConfig(
            name=search_id, storage_path=str(ray_dir), callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            failure_config=tune.FailureConfig(max_failures=max_failures), verbose=1),
    )


def _finish(grid, space, seeds, total, meta, exp_path, state_dir, stage_dir, results_dir, args, t_start, fit_s):
    from tune.mlflow_utils import _client, end_run
    from tune.summary import collect_trials, make_plots, print_table, write_outputs

    uri = meta["mlflow"]["tracking_uri"]
    exp_id, parent = meta["mlflow"]["experiment_id"], meta["mlflow"]["parent_run_id"]
    client = _client(uri)
    trials = list(getattr(grid, "_experiment_analysis").trials)
    # After Ctrl+C, Ray shows the trials it had to stop as TERMINATED too: a trial is complete when it
    # errored, reached max_epochs, or was stopped by ASHA (recorded in asha_state.json).
    from tune.schedulers import stopped_trial_ids

    stopped = stopped_trial_ids(state_dir / ASHA_STATE)

    def _complete(t) -> bool:
        epochs = float((t.last_result or {}).get("epoch", 0) or 0)
        return t.status == "ERROR" or t.trial_id in stopped or (t.status == "TERMINATED" and epochs >= space.max_epochs)

    unfinished = [t for t in trials if not _complete(t)]
    statuses = {t.trial_id: ("COMPLETE" if _complete(t) else "UNFINISHED") for t in trials}
    if len(trials) < total or unfinished:
        for t in unfinished:
            _log(f"[search]   unfinished: trial {t.trial_id} status {t.status}, "
                 f"epoch {(t.last_result or {}).get('epoch')}")
        client.set_tag(parent, "pahcl.state", "interrupted")
        end_run(uri, parent, "KILLED")
        _log(f"[search] interrupted: {len(trials) - len(unfinished)} of {total} trials finished "
             f"({len(trials)} created). Continue with:\n"
             f"    {sys.executable} tune/run_search.py --space {args.space} --results-dir {results_dir} --resume")
        return {"interrupted": True, "exp_path": exp_path, "state_dir": state_dir, "trials": len(trials), "statuses": statuses,
                "exit_code": 3}

    rows = collect_trials(grid, space)
    run_status = {}
    for r in rows:
        run_status[r["trial_id"]] = "FAILED" if r["status"] == "ERROR" else ("KILLED" if r["stopped_early"] else "FINISHED")
    mlflow_down = None  # the tracking store going away must not cost the search its result files
    try:
        n_fixed = _end_leftover_child_runs(uri, exp_id, parent, run_status)
        if n_fixed:
            _log(f"[mlflow] safety net ended {n_fixed} child run(s) still RUNNING")
    except Exception as e:  # noqa: BLE001
        mlflow_down = e
    out = write_outputs(rows, space, [stage_dir, state_dir], meta["search_id"], meta["consts"]["base_tree"], log=_log)
    df, agg = out["df"], out["agg"]
    plots = make_plots(rows, df, space, stage_dir / "plots", tracking_uri=None if mlflow_down else uri, log=_log)
    wall = time.time() - t_start
    _log("")
    print_table(df, space, log=_log, title=f"== {space.name}: {len(df)} trials, ranked by {space.metric} ({space.mode}) "
                f"at each trial's last epoch; {int(df['stopped_early'].sum()) if len(df) else 0} stopped early by ASHA ==")
    if seeds > 1 and len(agg):
        import pandas as pd

        cols = ["config", "n_seeds", f"{space.metric} (mean ± std)", "vs_best"] + \
               [f"param:{k}" for k in sorted(space.params) if f"param:{k}" in agg.columns]
        show = agg[cols].rename(columns={c: c[len('param:'):].split('.')[-1] for c in cols if c.startswith('param:')})
        with pd.option_context("display.width", 200, "display.max_columns", 50):
            _log(f"\n== per configuration over {seeds} seeds ==\n" + show.to_string(index=False))
    if "summary" in out:
        s = out["summary"]
        _log(f"\nbest: trial {s['best']['trial_id']} {space.metric}={s['best']['metric_value']:.4f} "
             f"params {s['best']['params']}")
        _log(f"wrote {stage_dir / 'results.csv'}, {stage_dir / 'configs.csv'}, {stage_dir / 'best_config.yaml'}, "
             f"{stage_dir / 'summary.json'}, plots: {', '.join(p.name for p in plots)}")
    try:
        if mlflow_down is not None:
            raise mlflow_down
        _log_parent_results(client, uri, parent, out, space, df, wall, stage_dir, plots)
    except Exception as e:  # noqa: BLE001
        _log(f"[mlflow] WARNING: tracking store unreachable at the end of the search ({type(e).__name__}: "
             f"{str(e).splitlines()[0][:200] if str(e) else ''}); the parent run was not updated. Results are in "
             f"{stage_dir} (results.csv, best_config.yaml, summary.json)")
    _log(f"[search] done in {wall:.0f} s (tuning {fit_s:.0f} s). MLflow: {uri} (parent run {parent})")
    if uri.startswith("sqlite:"):
        _log(f"[search] compare trials: {Path(sys.executable).parent / 'mlflow'} ui --backend-store-uri {uri}"
             "   (then open http://127.0.0.1:5000)")
    return {"interrupted": False, "exp_path": exp_path, "state_dir": state_dir, "df": df, "agg": agg, "summary": out.get("summary"),
            "wall_s": wall, "exit_code": 0, "parent_run_id": parent, "tracking_uri": uri, "stage_dir": stage_dir,
            "mlflow_ok": mlflow_down is None}


def _log_parent_results(client, uri, parent, out, space, df, wall, stage_dir, plots) -> None:
    from tune.mlflow_utils import end_run

    if "summary" in out:
        s = out["summary"]
        client.set_tag(parent, "pahcl.best_trial", str(s["best"]["trial_id"]))
        client.set_tag(parent, "pahcl.best_metric", f"{s['best']['metric_value']:.6g}")
        client.set_tag(parent, "pahcl.best_params", json.dumps(s["best"]["params"], default=str)[:5000])
        client.log_metric(parent, "best/" + space.metric, float(s["best"]["metric_value"]))
    client.log_metric(parent, "search/wall_seconds", float(wall))
    client.log_metric(parent, "search/trials", float(len(df)))
    client.log_metric(parent, "search/stopped_early", float(df["stopped_early"].sum()) if len(df) else 0.0)
    for name in ("results.csv", "configs.csv", "best_config.yaml", "summary.json"):
        if (stage_dir / name).exists():
            client.log_artifact(parent, str(stage_dir / name))
    for p in plots:
        client.log_artifact(parent, str(p), artifact_path="plots")
    client.set_tag(parent, "pahcl.state", "finished")
    end_run(uri, parent, "FINISHED")


def cli(argv=None) -> int:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    try:
        res = main(argv)
    except ConfigError as e:  # SpaceError included
        print(f"error: {e}", file=sys.stderr)
        return 2
    return int(res.get("exit_code", 0))


if __name__ == "__main__":
    sys.exit(cli())
