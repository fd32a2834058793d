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
synthetic:480, a few epochs of a few capped steps): the search finishes in minutes on 2 cores.

Outputs (results/<stage>/): results.csv (ranked trials), configs.csv (per configuration: mean ± std
over seeds), best_config.yaml, summary.json (what the next stage inherits), plots/, ray/<search id>/
(the Ray experiment), searches/<search id>/ (beside it: search_meta.json with the MLflow ids, the
trial constants and the space hash used by --resume; asha_state.json; this search's result files).
Files are kept outside the Ray experiment dir because Ray re-syncs that dir on restore.
MLflow: results/mlflow.db (sqlite:////ABS/...) + results/mlartifacts unless --mlflow-uri /
MLFLOW_TRACKING_URI name a server. Exit status: 0 done, 1 no trial produced the metric (the first trial's
error is printed; no best is written), 2 bad arguments/space/data, 3 interrupted (resumable).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from pahcl.config import ConfigError
from pahcl.data.readers import DataSpecError, NoUsableRecordingsError
from tune.context import TrialContext

REPO_ROOT = Path(__file__).resolve().parent.parent

META_NAME = "search_meta.json"
ASHA_STATE = "asha_state.json"


class _GivenOnly(argparse.Namespace):
    """argparse fills in a default only for attributes the namespace lacks: this one 'has' them all, so
    after parsing its ``vars()`` hold exactly the options given on the command line."""

    def __getattr__(self, name):
        if name.startswith("_"):  # argparse's own bookkeeping attributes
            raise AttributeError(name)
        return _GivenOnly


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
    p.add_argument("--inherit-anyway", action="store_true", help="inherit from the previous stage even when its "
                   "search ran on another preset or data (refused otherwise)")
    p.add_argument("--budget", default=None, help="apply a named budget of the space file (e.g. synthetic_cpu)")
    p.add_argument("--allow-degenerate", action="store_true", help="run even when the pre-Ray guard finds the "
                   "queue larger than the training set or trials shorter than 1/(1-m) steps (tune/guard.py)")
    p.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial from its latest "
                   "checkpoint (Ray FailureConfig.max_failures; NaN loss / repeated OOM are never retried)")
    p.add_argument("--confirm-top", type=int, default=None, metavar="K", help="after the search, retrain the top K "
                   "configurations and the baseline with fresh seeds and score them on the test split (default: "
                   "the space's confirm.top; docs/search.md)")
    p.add_argument("--confirm-seeds", type=int, default=None, metavar="S", help="fresh seeds per confirmed "
                   "configuration (default: the space's confirm.seeds)")
    p.add_argument("--no-confirm", dest="confirm_top", action="store_const", const=0, help="no confirmation runs "
                   "(the test split is still held out, so the search itself is the same)")
    a = p.parse_args(argv)
    a.given = set(vars(p.parse_args(argv, namespace=_GivenOnly())))  # the options the command line gave
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


# measured: `python tune/run_search.py --space moco_stage2` (docs/reliability.md, "Operating notes")
SYNTHETIC_CPU_TIME = ("Takes about 6 minutes on a shared 2-core CPU with the confirmation runs (362 s measured at load "
                      "average 2: search 145 s, then 9 confirmation runs)")

# --resume continues with what the search started with; these options would be ignored, so they are refused
RESUME_FIXED = ("data", "num_samples", "max_epochs", "seeds", "preset", "cpus_per_trial", "gpus_per_trial",
                "confirm_top", "confirm_seeds")


def _comparable(opt: str, value):
    """A data spec compares by the files it names (relative or absolute path alike)."""
    if opt == "data" and isinstance(value, str):
        from pahcl.data.readers import absolute_spec

        try:
            return absolute_spec(value)
        except DataSpecError:
            return value
    return value


def check_resume_options(args, meta: dict) -> None:
    """--resume with an option that differs from the one the search started with: ConfigError (exit 2) naming
    the options, their original values and the fix. Repeating the original value is fine."""
    cli, context, bad = meta.get("cli") or {}, meta["context"], []  # context: a TrialContext
    original = {**{opt: cli.get(opt) for opt in RESUME_FIXED}, "budget": meta.get("budget"),
                "mlflow_uri": (meta.get("mlflow") or {}).get("tracking_uri"), "max_failures": meta.get("max_failures")}
    seeds = original["seeds"] = original["seeds"] or 1
    for opt, used in (("data", context.data), ("max_epochs", context.max_epochs),
                      ("num_samples", int(meta.get("total_trials", 0)) // seeds or None)):
        original[opt] = original[opt] if original[opt] is not None else used  # the space's value, as run
    for opt in sorted(args.given & set(original)):
        if _comparable(opt, getattr(args, opt)) != _comparable(opt, original[opt]):
            bad.append(opt)
    if bad:
        flags = ", ".join(f"--{o.replace('_', '-')} {getattr(args, o)}" for o in bad)
        was = ", ".join(f"{o.replace('_', '-')}={original[o]}" for o in bad)
        raise ConfigError(f"--resume continues search {meta.get('search_id')} with the options it started with; "
                          f"{flags} would be ignored (it started with {was}). Drop them to resume, or start a "
                          "new search without --resume")


def build_context(space, search_id: str, cache_dir: Path, mlflow_ids: dict, res) -> TrialContext:
    """What every trial of this search shares (``tune.context.TrialContext``; passed with tune.with_parameters,
    never in param_space; recorded in search_meta.json for --resume)."""
    base_tree = space.base_tree()
    from tune.gpu import simulation_context

    return TrialContext(
        stage=space.name, search_id=search_id, base_tree=base_tree, fixed=dict(space.fixed),
        max_epochs=space.max_epochs, data=space.data, cache_dir=str(cache_dir.resolve()),
        split_seed=int(space.fixed.get("seed", base_tree.get("seed", 42))),
        tracking_uri=mlflow_ids["tracking_uri"], experiment_id=mlflow_ids["experiment_id"],
        parent_run_id=mlflow_ids["parent_run_id"], effective_batch_size=space.effective_batch_size,
        threads_per_trial=max(1, int(res.cpus)), gpu_fraction=res.gpu_fraction, gpu_simulation=simulation_context(),
    )


def _trial_resources(meta: dict):
    """The per-trial resources the search planned (``search_meta.json``), as ``TrialResources``."""
    from tune.resources import TrialResources

    r = meta["resources"]
    return TrialResources(r["cpus"], r["gpus"], r["gpu_fraction"])


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


class SearchSetupError(ConfigError):
    """A problem the user can fix before any trial runs (exit 2, one line)."""


_FORWARD_SIGTERM = False  # set by the CLI: SIGTERM ends the search like Ctrl+C
_OPEN_PARENT: dict[str, str] = {}  # the MLflow parent run this process opened or reopened (ended on any exit)
_MADE_DIRS: list[Path] = []  # folders this process created (removed again if empty when it fails)


def _ensure_writable(results_dir: Path) -> None:
    try:
        _make_dirs(results_dir)
        probe = results_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise SearchSetupError(f"--results-dir: cannot write to {results_dir} ({type(e).__name__}: {e.strerror}); "
                               "choose a writable folder with --results-dir DIR") from None


def _make_dirs(*dirs: Path) -> None:
    for d in dirs:
        missing = [p for p in (d, *d.parents) if not p.exists()]
        d.mkdir(parents=True, exist_ok=True)
        _MADE_DIRS.extend(reversed(missing))


def _remove_empty_made_dirs() -> None:
    """After a failed start: no empty output folders left behind (folders that hold anything are kept)."""
    for d in sorted(set(_MADE_DIRS), key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass
    _MADE_DIRS.clear()


def _local_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _fit_cpus_to_machine(space, args) -> None:
    """A local Ray has this machine's CPUs: a trial asking for more would stay PENDING forever. Lower
    cpus_per_trial to what exists, and say so (recorded as what ran)."""
    if args.address:
        return
    n = _local_cpus()
    if space.cpus_per_trial > n:
        _log(f"[resources] resources.cpus_per_trial {space.cpus_per_trial:g} > this machine's {n} CPUs: "
             f"using {n} per trial (set --cpus-per-trial to choose)")
        space.cpus_per_trial = float(n)


def _check_cluster_fits(space, args) -> None:
    """On a cluster (--address): some node must hold one trial's CPUs, else every trial pends forever."""
    if not args.address:
        return
    import ray

    node_cpus = [float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    if not node_cpus or max(node_cpus) < space.cpus_per_trial:
        raise SearchSetupError(
            f"--cpus-per-trial / resources.cpus_per_trial: {space.cpus_per_trial:g} CPUs per trial, but the largest "
            f"node of the cluster at {args.address} has {max(node_cpus, default=0):g}; every trial would stay "
            f"PENDING. Pass --cpus-per-trial {max(node_cpus, default=1):g} or less")


def _check_trials_can_run(space, cfg0, n_train: int, local: bool) -> None:
    """Before Ray: every batch size x accumulation the space can sample fits the training cycles (a trial
    would fail on it), and on a local run the device/backend the config asks for exists here."""
    import itertools

    from pahcl.config import build_config
    from pahcl.train import check_runtime, plan_batches

    if local:
        check_runtime(cfg0)
    keys = [k for k in ("training.batch_size", "training.gradient_accumulation_steps") if k in space.params]
    for combo in itertools.product(*(space.params[k].candidates() for k in keys)):
        t = build_config(space.base_tree(), space.trial_overrides(dict(zip(keys, combo)))).training
        try:
            plan_batches(n_train, t.batch_size, t.gradient_accumulation_steps)
        except ConfigError as e:
            where = f" (sampled {dict(zip(keys, combo))})" if keys else ""
            raise SearchSetupError(f"{e}{where}; data {space.data}") from None


def _provenance(space, budget, fingerprint: str) -> dict[str, str]:
    """What a search ran on: recorded in summary.json so the next stage can check what it inherits."""
    from pahcl.config import resolve_preset

    return {"budget": str(budget), "preset": resolve_preset(space.preset), "data": space.data,
            "data_fingerprint": fingerprint}


def _check_inherited_data(space, provenance: dict, allow: bool) -> None:
    """Same data spec, but the files or data settings changed since the inherited search: refused."""
    prov = space.inherited_provenance or {}
    theirs = prov.get("data_fingerprint")
    if not theirs or theirs == provenance["data_fingerprint"]:
        return
    msg = (f"inherit.from: {space.inherited_from} ran on {prov.get('data')} with other files or data.* settings "
           "(fingerprint differs)")
    if not allow:
        raise SearchSetupError(f"{msg}; re-run that stage on this data, or pass --inherit-anyway")
    _log(f"[inherit] WARNING: {msg}; inherited anyway (--inherit-anyway)")


def _check_tracking(args, results_dir: Path) -> str:
    """The tracking URI, checked and (for a server) reachable: before Ray and any data preparation. Nothing
    is created yet (the local store is made once the search has passed every check)."""
    from tune.mlflow_utils import resolve_tracking_uri

    try:
        uri = resolve_tracking_uri(args.mlflow_uri, results_dir)
    except ValueError as e:
        raise SearchSetupError(f"{e} (set by --mlflow-uri or MLFLOW_TRACKING_URI)") from None
    _check_reachable(uri)
    return uri


def _open_experiment(uri: str, results_dir: Path) -> str:
    """The experiment id (store and experiment created once, in the driver, before any trial)."""
    from tune.mlflow_utils import ensure_experiment

    try:
        return ensure_experiment(uri, results_dir)
    except Exception as e:  # noqa: BLE001 - any store error is the user's URI or server
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise SearchSetupError(f"--mlflow-uri / MLFLOW_TRACKING_URI {uri!r}: the tracking store refused the "
                               f"experiment ({type(e).__name__}: {first}); check the URI and the server") from None


def _check_reachable(uri: str, timeout: float = 3.0) -> None:
    """An http(s) server that does not answer is reported in seconds, not after MLflow's retries."""
    import socket
    import urllib.parse

    u = urllib.parse.urlsplit(uri)
    if u.scheme not in ("http", "https"):
        return
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        with socket.create_connection((u.hostname or "127.0.0.1", port), timeout=timeout):
            pass
    except OSError as e:
        raise SearchSetupError(f"--mlflow-uri / MLFLOW_TRACKING_URI {uri!r}: no MLflow server answers at "
                               f"{u.hostname}:{port} ({e.strerror or type(e).__name__}); start it (mlflow server) "
                               "or unset the variable to use the local sqlite store") from None


def _end_open_parent(status: str, reason: str) -> None:
    """Whatever ends this process: the parent run it opened is not left RUNNING."""
    if not _OPEN_PARENT:
        return
    try:
        from tune.mlflow_utils import _client, end_run

        client = _client(_OPEN_PARENT["uri"])
        run = client.get_run(_OPEN_PARENT["run_id"])
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "pahcl.state", "interrupted" if status == "KILLED" else "failed")
            client.set_tag(run.info.run_id, "pahcl.end_reason", reason[:4900])
            end_run(_OPEN_PARENT["uri"], run.info.run_id, status)
    except Exception as e:  # noqa: BLE001 - the store is down: nothing more can be recorded
        print(f"[mlflow] could not end the parent run ({type(e).__name__})", file=sys.stderr)


def synthetic_cpu_message(args, space, seeds: int) -> str:
    """What the 'synthetic_cpu' budget runs, and why it was chosen (no --data and no CUDA, or --budget)."""
    why = ("No --data and no CUDA device: synthetic default data" if args.data is None and not args.budget
           else f"--budget synthetic_cpu{' with --data' if args.data else ''}: data")
    return (f"[search] {why} ({space.data}) with the space's 'synthetic_cpu' budget - preset {space.preset}, "
            f"{space.num_samples} configurations x {seeds} seed(s), {space.max_epochs} epochs, "
            f"training.max_steps_per_epoch={space.fixed.get('training.max_steps_per_epoch')}."
            + (f" {SYNTHETIC_CPU_TIME}; pass --data KIND:PATH for a real search." if args.data is None else ""))


def resume_hint(args, results_dir: Path) -> str:
    """The command that continues this search, shell-quoted (paths with spaces or quotes)."""
    return shlex.join([sys.executable, "tune/run_search.py", "--space", str(args.space), "--results-dir",
                       str(results_dir), "--resume"])


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # per process: concurrent writers never share it
    tmp.write_text(text)
    os.replace(tmp, path)


def claim_search_id(stage_dir: Path, name: str) -> str:
    """A new search id ``<stage>-<YYYYmmdd-HHMMSS>`` (``-2``, ``-3``... when taken), claimed by creating
    ``searches/<id>/`` with an atomic mkdir: two searches started in the same second, on one results folder,
    get different ids, Ray folders and state files."""
    searches = stage_dir / "searches"
    searches.mkdir(parents=True, exist_ok=True)
    stamp = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for n in range(1, 10_000):
        search_id = stamp if n == 1 else f"{stamp}-{n}"
        if (stage_dir / "ray" / search_id).exists():
            continue
        try:
            (searches / search_id).mkdir()  # exist_ok=False: exactly one process gets each id
            return search_id
        except FileExistsError:
            continue
    raise RuntimeError(f"no free search id under {searches}")


def _init_ray(args, num_cpus: int | None = None) -> bool:
    """Start (or join) Ray. Returns True when this call started/joined it (so we shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    from tune.environment import worker_env

    env = {"env_vars": worker_env()}
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


def _end_leftover_child_runs(uri: str, exp_id: str, parent: str, statuses: dict[str, str],
                             reasons: dict[str, str] | None = None) -> int:
    """Safety net after fit(): a child run still RUNNING gets the status (and end reason) of its trial."""
    from tune.mlflow_utils import _client, child_runs, end_run

    n = 0
    for run in child_runs(uri, exp_id, parent):
        if run.info.status != "RUNNING":
            continue
        tid = run.data.tags.get("pahcl.trial_id")
        status = statuses.get(tid, "KILLED")
        end_run(uri, run.info.run_id, status)
        reason = (reasons or {}).get(tid, status)
        _client(uri).set_tag(run.info.run_id, "pahcl.end_reason", f"{reason} (driver safety net)")
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


def main(argv=None, plugins: Sequence[Any] = (), tuner_factory: Callable | None = None) -> dict[str, Any]:
    """One search (the CLI's work). ``plugins`` (tune/plugins.py) are added to those ``PAHCL_SEARCH_PLUGINS``
    names; ``tuner_factory`` replaces ``build_tuner`` (same arguments) to run another Tuner on the same
    trainable, checks and outputs."""
    args = parse_args(argv)
    from tune.environment import setup_environment

    setup_environment(local_ray=not args.address)  # before anything imports Ray
    from tune.plugins import from_env as plugins_from_env

    plugins = [*plugins, *plugins_from_env()]  # a bad PAHCL_SEARCH_PLUGINS fails here, before anything starts
    _auth_for_address(args)
    t_start = time.time()
    from tune.spaces import space_path

    if args.results_dir is None:
        args.results_dir = "results/smoke" if args.smoke_test else "results"
    results_dir = Path(args.results_dir).resolve()
    _ensure_writable(results_dir)
    meta = _resume_meta(args, results_dir, space_path(args.space).stem) if args.resume else None
    budget, cli = (meta["budget"], meta["cli"]) if meta else (choose_budget(args), _cli_options(args))
    space, seeds, budget, h = _load_checked_space(args, results_dir, meta, budget, cli)
    if meta is None:
        uri = _check_tracking(args, results_dir)  # a bad or unreachable store fails before Ray and data
    _fit_cpus_to_machine(space, args)
    started_ray = _init_ray(args)  # before any output: a cluster that cannot run a trial is refused first
    if _FORWARD_SIGTERM:
        _sigterm_as_ctrl_c()  # again: ray.init() replaced the handler with sys.exit
    _check_cluster_fits(space, args)

    stage_dir = results_dir / space.name
    _make_dirs(stage_dir / "ray", results_dir / "cache")
    resuming = meta is not None
    if resuming:
        _reopen_search(meta)
    else:
        meta = _start_search(space, args, results_dir, stage_dir, cli, budget, seeds, h, uri)
    try:
        return _fit(space, seeds, meta, stage_dir, results_dir, args, plugins, tuner_factory, resuming, t_start)
    finally:
        if started_ray:
            import ray

            ray.shutdown()


def _cli_options(args) -> dict[str, Any]:
    """What the command line chose for the space (recorded in search_meta.json; --resume reuses it)."""
    return {"num_samples": args.num_samples, "max_epochs": args.max_epochs, "data": args.data,
            "preset": args.preset, "cpus_per_trial": args.cpus_per_trial, "gpus_per_trial": args.gpus_per_trial,
            "seeds": args.seeds, "confirm_top": args.confirm_top, "confirm_seeds": args.confirm_seeds}


def _resume_meta(args, results_dir: Path, stage_name: str) -> dict:
    """--resume: the search_meta.json of the stage's latest search (its options checked against argv), with
    ``meta["context"]`` read into a ``TrialContext``."""
    from tune.spaces import SpaceError

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
    meta["context"] = TrialContext.from_dict(meta.get("context"), source=str(meta_path))  # an older record: refused
    check_resume_options(args, meta)
    _log(f"[resume] search {search_id} ({exp_path}); original options: {meta['cli']}, budget {meta['budget']}")
    return meta


def _load_checked_space(args, results_dir: Path, meta: dict | None, budget, cli: dict):
    """(space, seeds, budget, space hash): the space file loaded with the options; on --resume, checked
    unchanged and given exactly what the original run resolved."""
    from tune.spaces import SpaceError, load_space, space_hash

    said: list[str] = []  # what load_space logged: its notes repeat its warnings
    space = load_space(args.space, results_root=results_dir, budget=budget,
                       cli={k: v for k, v in cli.items() if k != "seeds"}, log=lambda m: (said.append(m), _log(m)),
                       allow_inherit_mismatch=args.inherit_anyway or args.resume)
    seeds = int(cli.get("seeds") or 1)
    budget = space.budget
    if cli.get("data"):
        cli["data"] = space.data  # recorded absolute: --resume from another directory reads the same data
    h = space_hash(space)
    if meta is not None:
        if meta["space_hash"] != h:
            raise SpaceError(
                f"--resume: the space file or base config changed since search {meta['search_id']} started "
                f"(hash {meta['space_hash'][:12]} -> {h[:12]}; files: {space.path}, {space.base_config}). "
                "Restore the original files or start a new search without --resume.")
        # use exactly what the original run resolved (inheritance may have changed since)
        space.fixed = meta["context"].fixed
    if budget == "synthetic_cpu" and not args.resume:
        _log(synthetic_cpu_message(args, space, seeds))
    if args.smoke_test and not args.resume:
        _log(f"[search] --smoke-test: {space.num_samples} trials x {space.max_epochs} epochs, preset {space.preset}, "
             f"{space.data}, results in {results_dir}")
    for n in space.notes:
        if not any(n in m for m in said):
            _log(f"[space] note: {n}")
    return space, seeds, budget, h


def _start_search(space, args, results_dir: Path, stage_dir: Path, cli: dict, budget, seeds: int, h: str,
                  uri: str) -> dict:
    """A new search: data prepared and checked, resources planned, guard, MLflow parent run, search_meta.json.
    Returns the meta (what --resume continues from; ``meta["context"]`` a ``TrialContext``)."""
    from tune.mlflow_utils import create_parent_run, git_commit, save_trials_view, trials_url
    from tune.resources import plan_resources

    cache_dir = results_dir / "cache"
    search_id = claim_search_id(stage_dir, space.name)  # unique even for searches started in the same second
    _MADE_DIRS.extend([stage_dir / "searches", stage_dir / "searches" / search_id])  # removed if left empty
    # Data once in the driver: validates the spec and fills the shared cache before trials race for it.
    from pahcl.config import build_config
    from pahcl.train import prepare_data

    cfg0 = build_config(space.base_tree(), space.trial_overrides({k: d.candidates()[0] for k, d in space.params.items()}))
    tr, va, te = prepare_data(cfg0, space.data, cache_dir=cache_dir, log=lambda m: None, with_test=True)
    _log(f"[data] {space.data}: {len(tr)} training / {len(va)} validation cycles"
         + (f" / {len(te)} test cycles held out for the confirmation" if len(te) else "") + f" (cache {cache_dir})")
    _check_trials_can_run(space, cfg0, len(tr), local=not args.address)
    provenance = _provenance(space, budget, tr.info.get("fingerprint", ""))
    _check_inherited_data(space, provenance, args.inherit_anyway)
    res = plan_resources(space, cli.get("gpus_per_trial"), cli.get("cpus_per_trial"), space.data, cache_dir, log=_log,
                         address=args.address)
    _guard_and_gpus(space, len(tr), res, seeds, args)
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
    exp_id = _open_experiment(uri, results_dir)  # every check passed: now the store may be created
    parent = create_parent_run(uri, exp_id, search_id, tags, params)
    _OPEN_PARENT.update(uri=uri, run_id=parent)
    save_trials_view(uri, exp_id, space.metric, space.mode, list(space.params))
    mlflow_ids = {"tracking_uri": uri, "experiment_id": exp_id, "parent_run_id": parent}
    context = build_context(space, search_id, cache_dir, mlflow_ids, res)
    state_dir = stage_dir / "searches" / search_id
    state_dir.mkdir(parents=True, exist_ok=True)
    meta = {"search_id": search_id, "space": str(space.path), "space_hash": h, "budget": budget, "cli": cli,
            "provenance": provenance,
            "resources": {"cpus": res.cpus, "gpus": res.gpus, "gpu_fraction": res.gpu_fraction},
            "mlflow": mlflow_ids, "context": context, "total_trials": space.num_samples * seeds,
            "max_failures": args.max_failures,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_json(state_dir / META_NAME, {**meta, "context": context.to_dict()})
    _write_text_atomic(stage_dir / "latest", search_id + "\n")  # two searches: the last one wins, never a mix
    from shlex import quote

    _log(f"[mlflow] {uri} experiment {exp_id}, parent run {parent} ({search_id}); trials: {quote(trials_url(uri, exp_id))}")
    return meta


def _reopen_search(meta: dict) -> None:
    """--resume: the parent run RUNNING again (ended on any exit), tagged resumed."""
    from tune.mlflow_utils import _client

    ids = meta["mlflow"]
    uri, parent = ids["tracking_uri"], ids["parent_run_id"]
    _client(uri).update_run(parent, status="RUNNING")
    _OPEN_PARENT.update(uri=uri, run_id=parent)
    _client(uri).set_tag(parent, "pahcl.state", "resumed")


def _fit(space, seeds: int, meta: dict, stage_dir: Path, results_dir: Path, args, plugins, tuner_factory,
         resuming: bool, t_start: float) -> dict[str, Any]:
    """Build (or restore) the Tuner on the trainable, fit, then summarise (and confirm) in ``_finish``."""
    from ray import tune as ray_tune

    from tune.plugins import tune_callbacks
    from tune.spaces import SpaceError
    from tune.trainable import train_pahcl

    search_id = meta["search_id"]
    exp_path, state_dir = stage_dir / "ray" / search_id, stage_dir / "searches" / search_id
    # plug-ins: passed explicitly, trial workers do not see the driver's later environment
    trainable = ray_tune.with_resources(ray_tune.with_parameters(train_pahcl, context=meta["context"], plugins=plugins),
                                        _trial_resources(meta).as_ray())
    total = int(meta["total_trials"])
    if resuming:
        from ray.tune import Tuner

        if not Tuner.can_restore(str(exp_path)):
            raise SpaceError(f"--resume: {exp_path} holds no restorable Ray Tune experiment")
        tuner = Tuner.restore(str(exp_path), trainable=trainable, resume_unfinished=True, resume_errored=True)
        _log(f"[resume] restored {exp_path}: finished trials are kept, unfinished ones continue from their "
             "last checkpoint, ASHA rungs reloaded from asha_state.json")
    else:
        tuner = (tuner_factory or build_tuner)(space, seeds, total, trainable, state_dir, meta["mlflow"],
                                               stage_dir / "ray", search_id, max_failures=args.max_failures,
                                               callbacks=tune_callbacks(plugins))
    t_fit = time.time()
    grid = tuner.fit()
    fit_s = time.time() - t_fit
    return _finish(grid, space, seeds, total, meta, exp_path, state_dir, stage_dir, results_dir, args, t_start, fit_s)


def build_tuner(space, seeds, total, trainable, state_dir, mlflow_ids, ray_dir, search_id, max_failures=2,
                callbacks=(), sampler=None):
    """The service's Tuner: Optuna TPE (no repeats, seeds, concurrency limit) + PersistentASHA + the MLflow
    end-of-trial callback, then ``callbacks`` (from plug-ins). ``sampler``: an Optuna sampler in place of the
    TPESampler (``bench/search_efficiency.py`` compares random search through it)."""
    import optuna
    from ray import tune as ray_tune
    from ray.tune.search import ConcurrencyLimiter, Repeater
    from ray.tune.search.optuna import OptunaSearch

    from tune.mlflow_utils import EndChildRunsCallback
    from tune.schedulers import PersistentASHA
    from tune.searchers import NoRepeatSearcher

    if sampler is None:
        sampler = optuna.samplers.TPESampler(seed=space.seed, n_startup_trials=max(2, min(10, space.num_samples // 2)))
    searcher = OptunaSearch(space=space.optuna_space(), metric=space.metric, mode=space.mode, sampler=sampler)
    searcher = NoRepeatSearcher(searcher, grid=space.grid(), seed=space.seed)  # a repeat trains nothing new
    if seeds > 1:
        searcher = Repeater(searcher, repeat=seeds, set_index=True)  # config["__trial_index__"] = seed index
    searcher = ConcurrencyLimiter(searcher, max_concurrent=space.max_concurrent_trials)
    scheduler = PersistentASHA(time_attr="epoch", max_t=space.max_epochs, grace_period=space.grace_period,
                               reduction_factor=space.reduction_factor, state_file=str(state_dir / ASHA_STATE),
                               metric=space.metric, mode=space.mode)
    callbacks = [EndChildRunsCallback(mlflow_ids["tracking_uri"], mlflow_ids["experiment_id"],
                                      mlflow_ids["parent_run_id"], space.max_epochs,
                                      asha_state=str(state_dir / ASHA_STATE)), *callbacks]
    return ray_tune.Tuner(
        trainable,
        tune_config=ray_tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=total,
                                        reuse_actors=True),
        run_config=ray_tune.RunConfig(
            name=search_id, storage_path=str(ray_dir), callbacks=callbacks,
            checkpoint_config=ray_tune.CheckpointConfig(num_to_keep=2),
            failure_config=ray_tune.FailureConfig(max_failures=max_failures), verbose=1),
    )


def _finish(grid, space, seeds, total, meta, exp_path, state_dir, stage_dir, results_dir, args, t_start, fit_s):
    from tune.mlflow_utils import _client, end_run
    from tune.summary import collect_trials, make_plots, no_result_reason, write_outputs

    uri = meta["mlflow"]["tracking_uri"]
    exp_id, parent = meta["mlflow"]["experiment_id"], meta["mlflow"]["parent_run_id"]
    client = _client(uri)
    from tune.ray_compat import experiment_trials

    trials = experiment_trials(grid)
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
        _end_leftover_child_runs(uri, exp_id, parent, {t.trial_id: "KILLED" for t in unfinished})
        end_run(uri, parent, "KILLED")
        _log(f"[search] interrupted: {len(trials) - len(unfinished)} of {total} trials finished "
             f"({len(trials)} created). Continue with:\n    {resume_hint(args, results_dir)}")
        return {"interrupted": True, "exp_path": exp_path, "state_dir": state_dir, "trials": len(trials), "statuses": statuses,
                "exit_code": 3}

    rows = collect_trials(grid, space)
    failed = no_result_reason(rows)
    if failed is not None:
        return _fail_search(client, uri, exp_id, parent, rows, failed, stage_dir, state_dir, exp_path)
    from tune.mlflow_utils import early_stop_reason

    run_status = {r["trial_id"]: "FAILED" if r["status"] == "ERROR" else "FINISHED" for r in rows}
    reasons = {r["trial_id"]: early_stop_reason(r["epochs"]) for r in rows if r["stopped_early"]}
    mlflow_down = None  # the tracking store going away must not cost the search its result files
    try:
        n_fixed = _end_leftover_child_runs(uri, exp_id, parent, run_status, reasons)
        if n_fixed:
            _log(f"[mlflow] safety net ended {n_fixed} child run(s) still RUNNING")
    except Exception as e:  # noqa: BLE001
        mlflow_down = e
    out = write_outputs(rows, space, [stage_dir, state_dir], meta["search_id"], meta["context"].base_tree, log=_log,
                        provenance=meta.get("provenance"))
    df, agg = out["df"], out["agg"]
    plots = make_plots(rows, df, space, stage_dir / "plots", tracking_uri=None if mlflow_down else uri, log=_log)
    wall = time.time() - t_start
    _print_results(df, agg, out, space, seeds, stage_dir, plots)
    verdict = None
    if space.confirm_top > 0 and "summary" in out:
        out, verdict = _confirm(rows, out, space, meta, stage_dir, state_dir, args)
        wall = time.time() - t_start
    try:
        if mlflow_down is not None:
            raise mlflow_down
        _log_parent_results(client, uri, parent, out, space, df, wall, stage_dir, plots, verdict)
    except Exception as e:  # noqa: BLE001
        _log(f"[mlflow] WARNING: tracking store unreachable at the end of the search ({type(e).__name__}: "
             f"{str(e).splitlines()[0][:200] if str(e) else ''}); the parent run was not updated. Results are in "
             f"{stage_dir} (results.csv, best_config.yaml, summary.json)")
    _log(f"[search] done in {wall:.0f} s (tuning {fit_s:.0f} s). MLflow: {uri} (parent run {parent})")
    from tune.mlflow_utils import compare_trials_message

    _log(compare_trials_message(uri, exp_id, parent, Path(sys.executable).parent / "mlflow"))
    return {"interrupted": False, "exp_path": exp_path, "state_dir": state_dir, "df": df, "agg": agg, "summary": out.get("summary"),
            "wall_s": wall, "exit_code": 0, "parent_run_id": parent, "tracking_uri": uri, "stage_dir": stage_dir,
            "mlflow_ok": mlflow_down is None}


def _print_results(df, agg, out: dict, space, seeds: int, stage_dir: Path, plots) -> None:
    """The ranked table, the per-configuration table (--seeds > 1), the best trial and the files written."""
    from tune.summary import print_table

    _log("")
    print_table(df, space, log=_log, title=f"== {space.name}: {len(df)} trials, ranked by {space.metric} ({space.mode}): "
                f"finished trials by their final value, then the {int(df['stopped_early'].sum()) if len(df) else 0} "
                f"stopped early by ASHA by the rung they reached; column @{space.grace_period}: every trial at "
                f"ASHA's first rung ==")
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


def _fail_search(client, uri, exp_id, parent, rows, reason, stage_dir, state_dir, exp_path) -> dict[str, Any]:
    """No trial produced the metric: no best, no best_config.yaml/summary.json (the stage before stays
    inheritable), the parent run FAILED with the reason, exit status 1."""
    from tune.mlflow_utils import end_run

    statuses = {r["trial_id"]: "FAILED" if r["status"] == "ERROR" else "FINISHED" for r in rows}
    try:
        _end_leftover_child_runs(uri, exp_id, parent, statuses)
        client.set_tag(parent, "pahcl.state", "failed")
        client.set_tag(parent, "pahcl.error", reason[:4900])
        end_run(uri, parent, "FAILED")
    except Exception as e:  # noqa: BLE001 - the store being down must not hide the trials' error
        _log(f"[mlflow] WARNING: could not mark the parent run failed ({type(e).__name__})")
    _log(f"[search] FAILED: {reason}")
    _log(f"[search] no best configuration written; full tracebacks: {exp_path}/*/error.txt")
    return {"interrupted": False, "failed": True, "reason": reason, "exp_path": exp_path, "state_dir": state_dir,
            "stage_dir": stage_dir, "exit_code": 1}


def _confirm(rows, out, space, meta, stage_dir, state_dir, args) -> tuple[dict, str]:
    """The confirmation runs (tune/confirm.py): table in the terminal, summary.json and best_config.yaml."""
    from tune import confirm
    from tune.summary import write_confirmation

    cands = confirm.candidates(rows, out["agg"], out["df"], space, space.confirm_top)
    grid = confirm.run(space, meta["context"], _trial_resources(meta), meta["mlflow"], stage_dir / "ray",
                       meta["search_id"], cands, space.confirm_seeds, _log, max_failures=args.max_failures)
    left = confirm.unfinished(grid, space.max_epochs)
    if left:  # interrupted: no verdict from part of the runs; --resume continues them
        _log(f"[confirm] interrupted: {left} of {len(grid)} confirmation runs unfinished. Continue with:\n    "
             f"{resume_hint(args, stage_dir.parent)}")
        raise KeyboardInterrupt
    table = confirm.table(confirm.scores(grid), cands)
    winner, verdict = confirm.verdict(table)
    _log(f"\n== confirmation: {len(cands)} configurations x {space.confirm_seeds} fresh seeds, {space.max_epochs} epochs, "
         f"test split ({space.test_fraction:g} of the groups, never seen by the search); recording level, "
         f"mean ± std; * = winner ==\n" + confirm.format_table(table, winner) + f"\nverdict: {verdict}")
    params = next((c["params"] for c in cands if c["label"] == winner), None)
    conf = {"metric": confirm.CONFIRM_METRIC, "seeds": space.confirm_seeds, "top": space.confirm_top,
            "test_fraction": space.test_fraction, "baseline": space.baseline_params(), "winner": winner,
            "verdict": verdict, "table": confirm.json_safe(table)}
    summary = write_confirmation([stage_dir, state_dir], space, meta["context"].base_tree, out["summary"], conf,
                                 params)
    if params is not None:
        _log(f"best_config.yaml: the confirmation winner {winner} {params}")
    return {**out, "summary": summary}, verdict


def _log_parent_results(client, uri, parent, out, space, df, wall, stage_dir, plots, verdict=None) -> None:
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
    from tune.mlflow_utils import describe_search

    conf = out.get("summary", {}).get("confirmation")
    if conf:
        client.set_tag(parent, "pahcl.verdict", conf["verdict"][:4900])
        client.set_tag(parent, "pahcl.confirm_winner", conf["winner"])
        for row in conf["table"]:
            name = row["candidate"].replace("=", "_")
            for k in ("test/knn_acc", "test/linear_acc"):
                if row[f"{k} mean"] is not None:
                    client.log_metric(parent, f"confirm/{name}/{k.split('/')[-1]}_mean", float(row[f"{k} mean"]))
    describe_search(uri, parent, space.metric, space.mode, df, [p.name for p in plots], verdict=verdict)
    client.set_tag(parent, "pahcl.state", "finished")
    end_run(uri, parent, "FINISHED")


def _sigterm_as_ctrl_c() -> None:
    """SIGTERM (kill, docker stop, a job scheduler) ends the search like Ctrl+C: Ray Tune stops the trials
    and saves the experiment, the MLflow runs are ended, and --resume continues."""
    import signal

    def forward(signum, frame):
        os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGTERM, forward)


def cli(argv=None) -> int:
    global _FORWARD_SIGTERM
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # tune.spaces logs every warning it raises ("[space] WARNING: ...", "[inherit] WARNING: ..."): once is enough
    warnings.filterwarnings("ignore", category=UserWarning, module=r"tune\.spaces")
    _FORWARD_SIGTERM = True
    _sigterm_as_ctrl_c()
    # per-invocation state: a previous cli() call in this process (tests, notebooks) must not leak into this one
    _OPEN_PARENT.clear()
    _MADE_DIRS.clear()
    try:
        res = main(argv)
    except (ConfigError, DataSpecError, NoUsableRecordingsError) as e:  # SpaceError included
        _end_open_parent("FAILED", f"{type(e).__name__}: {e}")
        _remove_empty_made_dirs()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _end_open_parent("KILLED", "interrupted (Ctrl+C or SIGTERM) before the search finished")
        _remove_empty_made_dirs()
        print("interrupted", file=sys.stderr)
        return 3
    except BaseException as e:
        _end_open_parent("FAILED", f"{type(e).__name__}: {e}")
        raise
    finally:
        _OPEN_PARENT.clear()
    return int(res.get("exit_code", 0))


if __name__ == "__main__":
    sys.exit(cli())
