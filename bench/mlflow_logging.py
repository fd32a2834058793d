"""Measure what MLflow step logging costs the training loop.

    .venv/bin/python bench/mlflow_logging.py [--preset tiny] [--steps 60] [--log-interval 1] [--flush-seconds 5]
    .venv/bin/python bench/mlflow_logging.py --smoke-test      # 6 steps, 1 A/B pair (seconds): it runs

Runs one epoch of ``--steps`` optimizer steps of the real Trainer on synthetic:40 twice: without any
logging callback, then with the search's ``MLflowStepCallback`` + ``BatchLogger`` writing to a fresh
local sqlite store (created first, as the driver does). Reports

* overhead_pct_direct: time the TRAINING THREAD spends inside the callback (buffer appends, plus the
  synchronous epoch-end flush) as a fraction of the logged run's training time;
* flush_cpu_pct: all time spent writing to MLflow (background flushes included) in the same ratio;
* overhead_pct_ab: the median A/B wall-time difference (noisy on a shared machine; for reference).

The tiny preset with ``--log-interval 1`` is the worst case: the shortest steps and a log call on
every one of them.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv=None) -> dict:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--log-interval", type=int, default=1)
    p.add_argument("--flush-seconds", type=float, default=5.0)
    p.add_argument("--data", default="synthetic:40")
    p.add_argument("--sync", action="store_true", help="flush on the training thread (no background flusher)")
    p.add_argument("--repeats", type=int, default=2, help="A/B pairs (the A/B number is the median)")
    p.add_argument("--smoke-test", action="store_true", help="6 steps, 1 pair: checks that it runs")
    a = p.parse_args(argv)
    if a.smoke_test:
        a.steps, a.repeats = 6, 1

    import torch

    from pahcl.config import load_config
    from pahcl.train import Trainer, prepare_data
    from tune.environment import setup_environment
    from tune.mlflow_utils import BatchLogger, MLflowStepCallback, _client, ensure_experiment, local_tracking_uri

    setup_environment()

    torch.set_num_threads(1)
    ov = {"training.num_epochs": 1, "training.max_steps_per_epoch": a.steps, "training.warmup_epochs": 0,
          "training.log_interval": a.log_interval, "model.use_moco": True, "training.gradient_accumulation_steps": 1}
    if a.preset == "tiny":
        ov["model.queue_size"] = 64
    cfg = load_config(None, preset=a.preset, overrides=ov)
    tmp = Path(tempfile.mkdtemp(prefix="pahcl_bench_"))
    train, val = prepare_data(cfg, a.data, cache_dir=tmp / "cache", log=lambda m: None)
    n_steps = min(a.steps, len(train) // cfg.training.batch_size)

    def run(callbacks):
        tr = Trainer(cfg, train, None, callbacks=callbacks, log=lambda m: None)
        t0 = time.perf_counter()
        tr.train_epoch(0)
        for cb in callbacks:  # the epoch-end flush belongs to the cost
            cb.on_epoch_end(tr, {"epoch": 1.0, "train/loss": 0.0})
        return time.perf_counter() - t0

    run([])  # warm-up (allocator, threads)
    uri = local_tracking_uri(tmp)
    exp = ensure_experiment(uri, tmp)
    bases, loggeds = [], []
    for _ in range(a.repeats):
        bases.append(run([]))
        run_id = _client(uri).create_run(exp).info.run_id
        logger = BatchLogger(uri, run_id, flush_seconds=a.flush_seconds, background=not a.sync)
        cb = MLflowStepCallback(logger, a.log_interval)
        loggeds.append(_logged_run(run, cb))
    import statistics

    base, logged = statistics.median(bases), statistics.median(loggeds)

    inside = cb.step_time
    n_metrics = len(_client(uri).get_metric_history(run_id, "grad_norm"))
    res = {"preset": a.preset, "steps": n_steps, "log_interval": a.log_interval, "flush_seconds": a.flush_seconds,
           "step_s_without": base / n_steps, "step_s_with": logged / n_steps,
           "callback_s_total": inside, "flush_s_total": logger.flush_time, "metrics_sent": logger.sent,
           "background_flusher": not a.sync, "flush_cpu_pct": 100.0 * logger.flush_time / loggeds[-1],
           "overhead_pct_direct": 100.0 * inside / loggeds[-1], "overhead_pct_ab": 100.0 * (logged - base) / base,
           "ab_pairs_s": [(round(b, 2), round(l, 2)) for b, l in zip(bases, loggeds)],
           "grad_norm_points_in_mlflow": n_metrics}
    for k, v in res.items():
        print(f"{k:28s} {v:.4f}" if isinstance(v, float) else f"{k:28s} {v}")
    return res


def _logged_run(run, cb):
    class Timed:  # the epoch-end flush counts as the callback's own time
        def on_step_end(self, t, m):
            cb.on_step_end(t, m)

        def on_epoch_end(self, t, m):
            t0 = time.perf_counter()
            cb.on_epoch_end(t, m)
            cb.step_time += time.perf_counter() - t0

    out = run([Timed()])
    cb.logger.close()
    return out


if __name__ == "__main__":
    main()
