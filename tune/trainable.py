"""The Ray Tune function trainable: one trial = one ``pahcl.train.Trainer`` run.

    trainable = ray_tune.with_parameters(train_pahcl, context=context, plugins=plugins)   # not param_space

``config`` (from the searcher) holds only the sampled dotted keys (plus ``__trial_index__`` when
``--seeds`` > 1: the seed index of this repeat; a confirmation run: ``__confirm__``, its candidate label).
``context`` (``tune.context.TrialContext``, built once by ``run_search.build_context``) holds the base
config tree, fixed overrides, derived rule, data spec, the ABSOLUTE data cache dir, and the MLflow ids.

Per epoch: per-step metrics buffered to MLflow, epoch metrics logged, buffer flushed, then
``tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))``. On restart the trial resumes
from ``tune.get_checkpoint()`` with ``Trainer.load_checkpoint`` (epoch and step counters continue)
and keeps logging to the same child run.

GPU (``tune/gpu.py``): ``place_trial`` applies the planned allocator cap on the GPU Ray assigned and the
trial reports ``gpu_ids``, ``gpu_share``, ``gpu_cap_fraction``, ``gpu_cap_gib``, ``trial_wall_start`` and
``trial_wall_report`` with every result; an assigned GPU without CUDA in the trial is an error.

Reliability (docs/reliability.md): a corrupt/truncated/refused newest checkpoint falls back to the trial's
older ``checkpoint_*`` dirs, else a clean restart (``restore_latest_good``, tag ``pahcl.resume_fallback``);
a failure is recorded on the child run (tag ``pahcl.error``, FAILED); NaN loss and OOM after the step
retries are marked non-retryable (``pahcl_nonretryable.json``) so Ray's retries fail at once; an
unreachable MLflow store never stops training (one warning per trial, metrics buffered, spilled to
``mlflow_unsent.jsonl`` in the trial dir before each report while it is down).

Plug-ins (``tune/plugins.py``, passed by the driver as ``plugins``): each may add a ``pahcl.train`` callback
to the trial (after the MLflow step logger, before the report) and observe the trial's events
(``trial_start``, ``report``, ``reported``, ``error``, ``mlflow_warning``, ``mlflow_spilled``); the tests'
fault injection (``tests/support/testkit/faults.py``) is one.
"""
from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from ray import tune as ray_tune

from pahcl.train import Callback
from tune.context import TrialContext

SEED_INDEX_KEY = "__trial_index__"  # ray.tune.search.repeater.TRIAL_INDEX
CONFIRM_KEY = "__confirm__"  # a confirmation run: its candidate label (a key of context.confirm_points)
CKPT_NAME = "checkpoint.pt"


def trial_config(config: dict, context: TrialContext) -> dict:
    """The trial's sampled values: the searcher's, or a confirmation candidate's with its fresh seed index."""
    label = config.get(CONFIRM_KEY)
    if label is None:
        return config
    point = context.confirm_points[label]
    return {**point["params"], SEED_INDEX_KEY: int(point["seed_index"])}


def trial_overrides(config: dict, context: TrialContext) -> dict[str, Any]:
    """Dotted overrides for this trial: ``tune.spaces.overrides_for`` with the search's context."""
    from tune.spaces import overrides_for

    params = {k: v for k, v in config.items() if k != SEED_INDEX_KEY}
    return overrides_for(params, fixed=context.fixed, max_epochs=context.max_epochs,
                         base_tree=context.base_tree, effective_batch_size=context.effective_batch_size,
                         seed_index=int(config.get(SEED_INDEX_KEY, 0) or 0))


SPILL_NAME = "mlflow_unsent.jsonl"  # metrics MLflow could not take (store down at the end of the trial)
NONRETRYABLE = "pahcl_nonretryable.json"  # in the trial's storage dir: a deterministic failure, do not retry


def _mark_nonretryable(marker: Path | None, reason: str, step: int) -> None:
    """Record a failure that repeats from the same checkpoint: Ray's retry of this trial fails at once."""
    if marker is not None:
        marker.write_text(json.dumps({"reason": reason, "step": int(step)}))


def _deterministic_errors() -> tuple[type[BaseException], ...]:
    from pahcl.config import ConfigError
    from pahcl.data.readers import DataSpecError, NoUsableRecordingsError

    from tune.gpu import GpuUnavailableError

    return (ConfigError, DataSpecError, NoUsableRecordingsError, GpuUnavailableError)


DETERMINISTIC_ERRORS = _deterministic_errors()  # user errors: retrying cannot fix them


def _storage_trial_dir() -> Path | None:
    """The trial's directory under the experiment (where Ray persists its checkpoints), or None."""
    from tune.ray_compat import trial_storage_dir

    return trial_storage_dir()


def restore_latest_good(trainer_factory, ckpt, log) -> tuple[Any, str | None, list[str]]:
    """Load ``tune.get_checkpoint()``; if it is corrupt, truncated or refused (``weights_only``), fall back to
    the trial's older ``checkpoint_*`` dirs (newest first), else start fresh. Returns (trainer, dir used or
    None, reasons for every checkpoint skipped)."""
    from pahcl.checkpoint import CheckpointError

    trainer = trainer_factory()
    if ckpt is None:
        return trainer, None, []
    first = Path(ckpt.path) if getattr(ckpt, "path", None) else None
    cands: list[Path] = []
    if first is not None and first.is_dir():
        older = sorted((p for p in first.parent.glob("checkpoint_*") if p.is_dir() and p.name < first.name),
                       reverse=True)
        cands = [first] + older
    skipped: list[str] = []
    if not cands:  # not on a local filesystem: only the checkpoint Ray gave us
        try:
            with ckpt.as_directory() as d:
                trainer.load_checkpoint(Path(d) / CKPT_NAME)
            return trainer, str(first), []
        except CheckpointError as e:
            skipped.append(str(e))
            log(f"[trial] checkpoint unusable, starting this trial from scratch: {e}")
            return trainer_factory(), None, skipped
    for d in cands:
        try:
            trainer.load_checkpoint(d / CKPT_NAME)
            if skipped:
                log(f"[trial] resumed from an older checkpoint {d.name} (epoch {trainer.epoch}); skipped: {skipped}")
            return trainer, str(d), skipped
        except CheckpointError as e:
            skipped.append(str(e))
            trainer = trainer_factory()  # a half-applied load must not leak into the next attempt
    log(f"[trial] no usable checkpoint ({len(skipped)} refused), starting this trial from scratch: {skipped}")
    return trainer, None, skipped


def _open_child_run(client, context: TrialContext, trial_id, trial_name, config, cfg, ov, candidate=None) -> str:
    """The trial's nested child run: created on first start, reused (set RUNNING) on a retry/restore. Params:
    the full config as it ran (``cfg.flat()``), each key once under its dotted name; tag ``pahcl.overrides``:
    the keys this trial set (fixed, sampled, derived), in the order they were applied."""
    from tune.mlflow_utils import PARENT_TAG, find_child_run, trial_number, trial_run_name

    exp_id, parent = context.experiment_id, context.parent_run_id
    run = find_child_run(client, exp_id, parent, trial_id)
    if run is None:
        from mlflow.entities import Param

        name = trial_run_name(config, trial_number(_storage_trial_dir(), trial_name))  # m=0.995 lr=2.2e-3 #4
        run = client.create_run(exp_id, run_name=name, tags={
            PARENT_TAG: parent, "pahcl.stage": context.stage, "pahcl.search_id": context.search_id,
            "pahcl.trial_id": trial_id, "pahcl.trial_name": trial_name,
            "pahcl.role": "confirmation" if candidate else "trial",
            "pahcl.seed_index": str(config.get(SEED_INDEX_KEY, 0)),
            "pahcl.overrides": ",".join(ov)[:4900],
            **({"pahcl.candidate": candidate} if candidate else {}),
        })
        items = [Param(k, str(v)[:6000]) for k, v in cfg.flat().items()]
        for i in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=items[i:i + 100])
    else:
        client.update_run(run.info.run_id, status="RUNNING")
    return run.info.run_id


def _score_test(trainer, train, val, test, cfg, logger) -> dict[str, float]:
    """``pahcl.evaluate.test_metrics`` of the trained model (bank: train + validation), also logged to the child
    run through the trial's ``BatchLogger`` (x = epoch; buffered and spilled like every metric if MLflow is down)."""
    from pahcl.evaluate import test_metrics

    m = test_metrics(trainer.model, [train, val], test, cfg, trainer.device, seed=cfg.seed)
    logger.add(m, int(trainer.epoch))
    logger.flush_safe(block=False)
    return m


def _logged_points(client, run_id: str | None, warn) -> dict[str, set[int]]:
    """``mlflow_utils.logged_points`` of the trial's run ({} for a new run, or when the store is down)."""
    if run_id is None:
        return {}
    from tune.mlflow_utils import logged_points

    try:
        return logged_points(client, run_id)
    except Exception as e:  # noqa: BLE001 - cannot read the run: log everything (duplicates beat losses)
        warn(f"[mlflow] could not read the points already logged ({type(e).__name__}); a resumed epoch may be "
             "logged twice")
        return {}


def _setup_trial(context: TrialContext, ov: dict, trial_dir, nonretry, with_test: bool):
    """(GPU placement, Config, (train, val, test or None)). No GPU where one was assigned, a bad config or data
    spec: the same on every retry, so the trial is marked non-retryable and fails once."""
    from pahcl.config import build_config
    from pahcl.train import prepare_data

    from tune.gpu import place_trial

    try:
        placement = place_trial(context, trial_dir)  # the GPU share Ray gave, the memory cap applied (tune/gpu.py)
        cfg = build_config(context.base_tree, ov)
        # Data: loaded once per trial, cached under the run directory (absolute paths: trials do not run in
        # cwd). The split uses the search's base seed so --seeds repeats differ in training only.
        split_cfg = dataclasses.replace(cfg, seed=context.split_seed)
        sides = prepare_data(split_cfg, context.data, cache_dir=context.cache_dir, log=lambda m: None,
                             with_test=with_test)  # the test side: read by confirmation runs only
    except DETERMINISTIC_ERRORS as e:
        _mark_nonretryable(nonretry, f"{type(e).__name__}: {e}", step=0)
        raise
    return placement, cfg, (sides if with_test else (*sides, None))


class ReportCallback(Callback):
    """After validation: flush MLflow, then checkpoint + ``ray_tune.report`` (the trial may be stopped there).
    A confirmation run (``sides[2]``, the test split, not None) adds ``test/*`` at its last epoch."""

    def __init__(self, run_id, placement: dict, cfg, sides, logger, trial_dir, events):
        self.run_id, self.placement, self.cfg, self.sides = run_id, placement, cfg, sides
        self.logger, self.trial_dir, self.events = logger, trial_dir, events

    def on_epoch_end(self, trainer, metrics):
        # the MLflow step callback (called first: it precedes this callback in the list) already logged the
        # epoch metrics and flushed the step buffer, so everything reported below is in MLflow.
        out = {k: float(v) for k, v in metrics.items()}
        out["epoch"] = int(trainer.epoch)
        out["mlflow_run_id"] = self.run_id
        out.update(self.placement, trial_wall_report=time.time())
        train, val, test = self.sides
        if test is not None and trainer.epoch >= self.cfg.training.num_epochs:  # a confirmation run's last epoch
            out.update(_score_test(trainer, train, val, test, self.cfg, self.logger))
        if self.logger.degraded and self.trial_dir is not None:  # store down: make the buffer durable first
            n = self.logger.spill(self.trial_dir / SPILL_NAME)
            if self.events and n:
                self.events("mlflow_spilled", metrics=n)
        if self.events:  # the last report of a trial stopped there (ASHA, max_t) never returns
            self.events("report", epoch=int(trainer.epoch), step=int(trainer.global_step),
                        oom_retries=int(trainer.oom_retries))
        with tempfile.TemporaryDirectory(prefix="pahcl_ckpt_") as d:
            trainer.save_checkpoint(Path(d) / CKPT_NAME)
            ray_tune.report(out, checkpoint=ray_tune.Checkpoint.from_directory(d))
        if self.events:  # after report returned: the checkpoint of this epoch is persisted
            self.events("reported", epoch=int(trainer.epoch), step=int(trainer.global_step))


def _refuse_repeated_failure(nonretry: Path | None, events) -> None:
    """Ray retried a trial whose failure is deterministic (marker file): fail at once with the same reason."""
    if nonretry is not None and nonretry.exists():
        reason = json.loads(nonretry.read_text()).get("reason", "?")
        if events:
            events("trial_start", resumed_from_epoch=None, refused=reason)
        raise RuntimeError(f"{reason} [not retried: this failure repeats from the same checkpoint]")


def _record_failure(e: Exception, trainer, events, nonretry, logger, trial_dir, client, run_id, trial_id) -> None:
    """A trial that raised: the event, the non-retryable marker (NaN loss, OOM, user errors), the metrics kept
    (spilled when MLflow is down) and the reason on the child run (FAILED)."""
    from pahcl.train import NonFiniteLossError, StepOutOfMemoryError

    reason = f"{type(e).__name__}: {e}"
    if events:
        events("error", type=type(e).__name__, message=str(e)[:500], step=trainer.global_step)
    if isinstance(e, (NonFiniteLossError, StepOutOfMemoryError) + DETERMINISTIC_ERRORS):
        _mark_nonretryable(nonretry, reason, step=trainer.global_step)
    spilled = logger.close_safe(trial_dir / SPILL_NAME if trial_dir else None)
    if run_id is not None and not logger.degraded:
        try:
            client.set_tag(run_id, "pahcl.error", reason[:4900])
            client.set_terminated(run_id, status="FAILED")
        except Exception as me:  # noqa: BLE001 - MLflow down: the error still reaches Ray
            print(f"[mlflow] could not record the failure of trial {trial_id}: {me}")
    if events and spilled:
        events("mlflow_spilled", metrics=spilled)


def _tag_resume(tag, ckpt, trainer, logged: dict, used, skipped: list) -> None:
    """Tags of a restored trial: the epoch it resumed from, points already logged, checkpoints refused."""
    if ckpt is not None:
        tag("pahcl.resumed_from_epoch", str(trainer.epoch))
    if logged:  # the steps re-run after the checkpoint keep the points the interrupted attempt sent
        tag("pahcl.points_already_logged", str(sum(len(v) for v in logged.values())))
        if skipped:
            tag("pahcl.resume_fallback", (f"resumed from {Path(used).name}" if used else "restarted from scratch")
                + f"; refused: {' | '.join(skipped)}"[:4900])


def train_pahcl(config: dict, context: TrialContext, plugins: Sequence[Any] = ()) -> None:
    from tune.environment import setup_environment

    setup_environment()
    from pahcl.train import Trainer

    from tune.mlflow_utils import (
        BatchLogger, MLflowStepCallback, _client,
    )
    from tune.plugins import TrialEvents, trial_hooks

    import torch

    torch.set_num_threads(context.threads_per_trial)  # >= 1: run_search.build_context

    ctx = ray_tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()
    trial_dir = _storage_trial_dir()
    hooks = trial_hooks(plugins, trial_id, str(trial_dir) if trial_dir else None)
    events = TrialEvents(hooks)  # the plug-ins' trial-event observers (falsy when there are none)
    nonretry = trial_dir / NONRETRYABLE if trial_dir else None
    _refuse_repeated_failure(nonretry, events)
    candidate = config.get(CONFIRM_KEY)
    config = trial_config(config, context)
    ov = trial_overrides(config, context)
    placement, cfg, (train, val, test) = _setup_trial(context, ov, trial_dir, nonretry, with_test=bool(candidate))

    # MLflow child run: created here (nested under the search's parent run), reused on restore.
    uri = context.tracking_uri
    client = _client(uri)

    def warn(msg: str) -> None:  # the logger calls this once per trial when the store is unreachable
        print(msg, flush=True)
        if events:
            events("mlflow_warning", message=msg[:300])

    try:
        run_id = _open_child_run(client, context, trial_id, trial_name, config, cfg, ov, candidate)
        warned = False
    except Exception as e:  # noqa: BLE001 - the tracking store is down: train anyway, metrics spilled to a file
        run_id, warned = None, True
        warn(f"[mlflow] WARNING: tracking store unreachable at trial start ({type(e).__name__}: "
             f"{str(e).splitlines()[0][:200] if str(e) else ''}); training continues, metrics kept in the trial dir")
    logged = _logged_points(client, run_id, warn)  # a retried/restored trial: points already in its run
    logger = BatchLogger(uri, run_id, flush_seconds=context.flush_seconds, on_warning=warn,
                         warned=warned, logged=logged)
    step_cb = MLflowStepCallback(logger, cfg.training.log_interval)

    def tag(key: str, value: str) -> None:
        if run_id is None:
            return
        try:
            client.set_tag(run_id, key, value)
        except Exception as e:  # noqa: BLE001
            logger.errors.append(f"set_tag {key}: {e}"[:300])

    report = ReportCallback(run_id, placement, cfg, (train, val, test), logger, trial_dir, events)
    callbacks = [step_cb, *hooks, report]

    def make_trainer():
        return Trainer(cfg, train, val, callbacks=callbacks, out_dir=None, log=print)

    ckpt = ray_tune.get_checkpoint()
    trainer, used, skipped = restore_latest_good(make_trainer, ckpt, print)
    _tag_resume(tag, ckpt, trainer, logged, used, skipped)
    if events:
        events("trial_start", resumed_from_epoch=trainer.epoch if ckpt is not None else None,
                       checkpoint=Path(used).name if used else None, skipped=len(skipped))
    t0 = time.perf_counter()
    try:
        trainer.fit()
    except Exception as e:  # NOT BaseException: a trial stopped by ASHA/Ray gets SystemExit(0) from
        # tune.report (ray.train._internal.session, stop_event -> sys.exit(0)); that is no failure
        _record_failure(e, trainer, events, nonretry, logger, trial_dir, client, run_id, trial_id)
        raise
    spilled = logger.close_safe(trial_dir / SPILL_NAME if trial_dir else None)
    if events and spilled:
        events("mlflow_spilled", metrics=spilled)
    if not logger.degraded:
        tag("pahcl.train_seconds", f"{time.perf_counter() - t0:.1f}")
