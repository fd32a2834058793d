"""The Ray Tune function trainable: one trial = one ``pahcl.train.Trainer`` run.

    trainable = tune.with_parameters(train_pahcl, consts=consts)   # constants, not param_space

``config`` (from the searcher) holds only the sampled dotted keys (plus ``__trial_index__`` when
``--seeds`` > 1: the seed index of this repeat). ``consts`` (a plain dict, see
``run_search.build_consts``) holds the base config tree, fixed overrides, derived rule, data spec,
the ABSOLUTE data cache dir, and the MLflow ids.

Per epoch: per-step metrics buffered to MLflow, epoch metrics logged, buffer flushed, then
``tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))``. On restart the trial resumes
from ``tune.get_checkpoint()`` with ``Trainer.load_checkpoint`` (epoch and step counters continue)
and keeps logging to the same child run.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from ray import tune  # noqa: E402

SEED_INDEX_KEY = "__trial_index__"  # ray.tune.search.repeater.TRIAL_INDEX
CKPT_NAME = "checkpoint.pt"


def trial_overrides(config: dict, consts: dict) -> dict[str, Any]:
    """Dotted overrides for this trial: fixed + sampled + derived + seed + budget caps."""
    ov: dict[str, Any] = {"training.num_epochs": int(consts["max_epochs"])}
    ov.update(consts.get("fixed") or {})
    params = {k: (v.item() if hasattr(v, "item") else v) for k, v in config.items() if k != SEED_INDEX_KEY}
    ov.update(params)
    eff = consts.get("effective_batch_size")
    if eff:
        bs = int(ov.get("training.batch_size", consts["base_tree"].get("training", {}).get("batch_size", 64)))
        ov["training.gradient_accumulation_steps"] = max(1, int(eff) // bs)
    idx = int(config.get(SEED_INDEX_KEY, 0) or 0)
    base_seed = int(ov.get("seed", consts["base_tree"].get("seed", 42)))
    ov["seed"] = base_seed + idx
    return ov


def _apply_gpu_cap(fraction: float | None) -> None:
    if not fraction:
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(float(fraction))


def train_pahcl(config: dict, consts: dict) -> None:
    from pahcl.config import build_config
    from pahcl.train import Callback, Trainer, prepare_data

    from tune.mlflow_utils import (
        PARENT_TAG, BatchLogger, MLflowStepCallback, _client, find_child_run,
    )

    import torch

    torch.set_num_threads(max(1, int(consts.get("threads_per_trial") or 1)))
    _apply_gpu_cap(consts.get("gpu_fraction"))

    ctx = tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()
    ov = trial_overrides(config, consts)
    cfg = build_config(consts["base_tree"], ov)

    # Data: loaded once per trial, cached under the run directory (absolute path; trials do not run in cwd).
    # The split uses the search's base seed so --seeds repeats differ in training only, not in the val set.
    split_cfg = dataclasses.replace(cfg, seed=int(consts.get("split_seed", cfg.seed)))
    train, val = prepare_data(split_cfg, consts["data"], cache_dir=consts["cache_dir"], log=lambda m: None)

    # MLflow child run: created here (nested under the search's parent run), reused on restore.
    uri, exp_id, parent = consts["tracking_uri"], consts["experiment_id"], consts["parent_run_id"]
    client = _client(uri)
    run = find_child_run(client, exp_id, parent, trial_id)
    if run is None:
        from mlflow.entities import Param

        run = client.create_run(exp_id, run_name=trial_name, tags={
            PARENT_TAG: parent, "pahcl.stage": consts["stage"], "pahcl.search_id": consts["search_id"],
            "pahcl.trial_id": trial_id, "pahcl.trial_name": trial_name, "pahcl.role": "trial",
            "pahcl.seed_index": str(config.get(SEED_INDEX_KEY, 0)),
        })
        flat = {f"cfg.{k}": v for k, v in cfg.flat().items()}
        flat.update({k: v for k, v in ov.items()})
        items = [Param(k, str(v)[:6000]) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=items[i:i + 100])
    else:
        client.update_run(run.info.run_id, status="RUNNING")
    run_id = run.info.run_id
    logger = BatchLogger(uri, run_id, flush_seconds=float(consts.get("flush_seconds", 5.0)))
    step_cb = MLflowStepCallback(logger, cfg.training.log_interval)

    class _Report(Callback):
        """After validation: flush MLflow, then checkpoint + tune.report (the trial may be stopped there)."""

        def on_epoch_end(self, trainer, metrics):
            # step_cb (called first: it precedes this callback in the list) already logged the epoch
            # metrics and flushed the step buffer, so everything reported below is in MLflow.
            out = {k: float(v) for k, v in metrics.items()}
            out["epoch"] = int(trainer.epoch)
            out["mlflow_run_id"] = run_id
            with tempfile.TemporaryDirectory(prefix="pahcl_ckpt_") as d:
                trainer.save_checkpoint(Path(d) / CKPT_NAME)
                tune.report(out, checkpoint=tune.Checkpoint.from_directory(d))

    trainer = Trainer(cfg, train, val, callbacks=[step_cb, _Report()], out_dir=None, log=lambda m: None)
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            trainer.load_checkpoint(Path(d) / CKPT_NAME)
        client.set_tag(run_id, "pahcl.resumed_from_epoch", str(trainer.epoch))
    t0 = time.perf_counter()
    trainer.fit()
    logger.flush()
    client.set_tag(run_id, "pahcl.train_seconds", f"{time.perf_counter() - t0:.1f}")
