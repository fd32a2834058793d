"""MLflow for the search: store set-up in the driver, one parent run per search, one nested child
run per trial (created inside the trial), batched step logging, and a ``tune.Callback`` that ends
child runs from the driver (FINISHED / KILLED for ASHA-stopped / FAILED for errored).

Layout (local store, no server configured)::

    <results>/mlflow.db            sqlite:////ABS/<results>/mlflow.db (created by the driver first)
    <results>/mlartifacts/         artifact root of the experiment
    experiment "pahcl-search"
      parent run  <stage>-<timestamp>   tags: pahcl.stage, pahcl.space_file, pahcl.base_config,
                                          pahcl.git_commit, pahcl.search_id, pahcl.best_*
        child run <trial name>          tags: mlflow.parentRunId, pahcl.stage, pahcl.trial_id, pahcl.search_id
"""
from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# MLflow's HTTP client retries a failed request 7 times with factor-2 back-off (minutes per call). A trial
# must not stall on a tracking server that went away: fail fast (~5 s) and let BatchLogger keep the metrics
# buffered and retry in the background. Override by setting the variables yourself.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

from ray import tune  # noqa: E402

EXPERIMENT_NAME = "pahcl-search"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch

# Step metrics sent to MLflow every log_interval steps (the drift keys only exist on those steps).
STEP_KEYS = (
    "loss", "loss_cycle", "loss_sub", "grad_norm", "lr", "cycle_acc", "cycles_per_s",
    "drift", "drift/cnn", "drift/mamba", "drift/projector", "kq_cos", "queue_fill",
)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def local_tracking_uri(results_dir: Path) -> str:
    return f"sqlite:///{Path(results_dir).resolve() / 'mlflow.db'}"  # -> sqlite:////ABS/...


def resolve_tracking_uri(cli_uri: str | None, results_dir: Path) -> str:
    uri = cli_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri(results_dir)
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        raise ValueError(f"--mlflow-uri {uri!r}: trials do not run in this directory; give an absolute sqlite path "
                         "(sqlite:////abs/path/mlflow.db)")
    if uri.startswith("file:") or (("://" not in uri) and not uri.startswith("databricks")):
        raise ValueError(f"--mlflow-uri {uri!r}: use an http(s):// server or an absolute sqlite:////... store "
                         "(the file store is deprecated and races on experiment creation)")
    return uri


def ensure_experiment(uri: str, results_dir: Path, name: str = EXPERIMENT_NAME) -> str:
    """Create the DB (schema migration) and the experiment ONCE, in the driver, before any trial starts."""
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    kw = {}
    if uri.startswith("sqlite:"):
        art = Path(results_dir).resolve() / "mlartifacts"
        art.mkdir(parents=True, exist_ok=True)
        kw["artifact_location"] = art.as_uri()
    return client.create_experiment(name, **kw)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent.parent,
                             capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def create_parent_run(uri: str, experiment_id: str, search_id: str, tags: Mapping[str, str],
                      params: Mapping[str, Any] | None = None) -> str:
    from mlflow.entities import Param

    client = _client(uri)
    run = client.create_run(experiment_id, run_name=search_id,
                            tags={"pahcl.search_id": search_id, "pahcl.role": "search", **tags})
    if params:
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            client.log_batch(run.info.run_id, params=items[i:i + 100])
    return run.info.run_id


def child_runs(uri: str, experiment_id: str, parent_run_id: str) -> list:
    client = _client(uri)
    return client.search_runs([experiment_id], filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
                              max_results=10000)


def find_child_run(client, experiment_id: str, parent_run_id: str, trial_id: str):
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`pahcl.trial_id` = '{trial_id}'",
        max_results=5)
    return runs[0] if runs else None


def _retry(fn, *args, attempts: int = 5, **kw):
    """sqlite under several writers: retry transient 'database is locked' errors instead of losing metrics."""
    delay = 0.2
    for i in range(attempts):
        try:
            return fn(*args, **kw)
        except Exception as e:  # noqa: BLE001 - MlflowException / OperationalError
            if i == attempts - 1 or "locked" not in str(e).lower() and "busy" not in str(e).lower():
                raise
            time.sleep(delay)
            delay *= 2


class BatchLogger:
    """Buffers metrics and sends them with ``MlflowClient.log_batch``.

    ``add`` only appends to a list (microseconds on the training thread). ``maybe_flush`` sends the
    buffer when ``flush_seconds`` have passed; ``flush`` sends it now (the trainable calls it at every
    epoch end BEFORE ``tune.report``, because an ASHA-stopped trial never runs code after its last
    report: nothing reported to Tune is ever missing from MLflow).
    """

    def __init__(self, uri: str, run_id: str | None, flush_seconds: float = 5.0, background: bool = True,
                 on_warning=None, warned: bool = False):
        self.client = _client(uri)
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self._buf: list = []
        self._last = time.monotonic()
        self._lock = threading.Lock()      # one flush at a time
        self._buf_lock = threading.Lock()  # buffer swap vs append
        self.sent = 0
        self.flush_time = 0.0
        self.errors: list[str] = []
        self.degraded = False        # the store is unreachable: metrics stay buffered, retried in the background
        self.warned = warned         # the outage is reported once per logger (= once per trial)
        self.on_warning = on_warning or print
        self.background = background
        self._stop = threading.Event()
        if background:  # periodic flushes off the training thread; epoch-end flushes stay synchronous
            self._thread = threading.Thread(target=self._loop, name="mlflow-batch-flush", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self.flush_safe(block=True)  # failures re-queue the metrics (see flush) and are reported once

    def close(self) -> None:
        self._stop.set()
        self.flush()

    def add(self, metrics: Mapping[str, float], step: int, keys: Iterable[str] | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        for k in (keys if keys is not None else metrics.keys()):
            v = metrics.get(k)
            if v is None:
                continue
            v = float(v)
            if v != v or v in (float("inf"), float("-inf")):
                continue
            with self._buf_lock:
                self._buf.append(Metric(k, v, ts, int(step)))

    def flush_safe(self, block: bool = True) -> bool:
        """``flush`` that never raises (the tracking store going away must not kill training). On failure
        the metrics stay in the buffer, ``degraded`` is set and ONE warning is emitted per logger; while
        degraded, non-blocking calls (the epoch-end flush on the training thread) return at once and the
        background thread keeps retrying every ``flush_seconds``. Returns True when the buffer was sent."""
        if self.degraded and not block and self.background:
            return False
        try:
            if self.run_id is None:
                raise RuntimeError("no MLflow run (the tracking store was unreachable when the trial started)")
            self.flush()
        except Exception as e:  # noqa: BLE001 - MlflowException, ConnectionError, ...
            self.errors.append(f"{type(e).__name__}: {e}"[:500])
            self.degraded = True
            if not self.warned:
                self.warned = True
                self.on_warning(f"[mlflow] WARNING: tracking store unreachable ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:200] if str(e) else ''}); training continues, "
                                f"{len(self._buf)} metrics buffered and retried every {self.flush_seconds:g} s")
            return False
        if self.degraded:
            self.degraded = False
            print(f"[mlflow] tracking store reachable again; buffered metrics sent ({self.sent} in total)")
        return True

    def close_safe(self, spill_path=None) -> int:
        """Stop the background thread, send what is buffered; if the store is still unreachable, write the
        buffer to ``spill_path`` (JSON lines: key, value, timestamp, step) so nothing is lost. Returns the
        number of metrics spilled."""
        self._stop.set()
        if self.flush_safe(block=True) or not self._buf:
            return 0
        return self.spill(spill_path)

    def spill(self, spill_path) -> int:
        """Move the buffer to ``spill_path`` (JSON lines, appended; fsynced). The trainable does this before
        every ``tune.report`` while the store is unreachable: a trial stopped at that report (ASHA, max_t)
        never runs another line, and what it had buffered must not die with it."""
        if spill_path is None or not self._buf:
            return 0
        import json

        with self._buf_lock:
            buf, self._buf = self._buf, []

        Path(spill_path).parent.mkdir(parents=True, exist_ok=True)
        with open(spill_path, "a") as f:
            for m in buf:
                f.write(json.dumps({"run_id": self.run_id, "key": m.key, "value": m.value, "timestamp": m.timestamp,
                                    "step": m.step}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        print(f"[mlflow] {len(buf)} metrics could not be sent; kept in {spill_path}")
        return len(buf)

    def maybe_flush(self) -> None:
        if not self.background and self._buf and time.monotonic() - self._last >= self.flush_seconds:
            self.flush_safe()

    def flush(self) -> None:
        with self._lock:
            with self._buf_lock:
                buf, self._buf = self._buf, []
            t0 = time.perf_counter()
            try:
                for i in range(0, len(buf), MAX_BATCH):
                    _retry(self.client.log_batch, self.run_id, metrics=buf[i:i + MAX_BATCH], synchronous=True)
                    self.sent += len(buf[i:i + MAX_BATCH])
            except Exception:
                with self._buf_lock:  # put back what was not sent: the next flush retries, nothing is lost
                    self._buf = buf[i:] + self._buf
                raise
            finally:
                self.flush_time += time.perf_counter() - t0
                self._last = time.monotonic()


class MLflowStepCallback:
    """A ``pahcl.train`` callback: step metrics every ``log_interval`` optimizer steps and on the last
    step of each epoch (``last_in_epoch``, SimCLR and MoCo alike), per-epoch metrics at epoch end."""

    def __init__(self, logger: BatchLogger, log_interval: int):
        self.logger = logger
        self.log_interval = max(1, int(log_interval))
        self.step_time = 0.0  # seconds spent in this callback (overhead accounting)

    def on_step_end(self, trainer, metrics):
        t0 = time.perf_counter()
        step = int(trainer.global_step)
        if step % self.log_interval == 0 or "last_in_epoch" in metrics or "drift" in metrics:
            self.logger.add(metrics, step, STEP_KEYS)
            self.logger.maybe_flush()
        self.step_time += time.perf_counter() - t0

    def on_epoch_end(self, trainer, metrics):
        self.logger.add(metrics, int(metrics.get("epoch", trainer.epoch)),
                        [k for k in metrics if k != "step"])
        self.logger.flush_safe(block=False)


def end_run(uri: str, run_id: str, status: str) -> None:
    _retry(_client(uri).set_terminated, run_id, status=status)


class EndChildRunsCallback(tune.Callback):
    """Ends each trial's child run from the driver (the trial itself may never get the chance).

    FINISHED: the trial reached max_epochs. KILLED: ASHA (or a stopper) stopped it early.
    FAILED: the trial raised. Lives in an importable module because Ray unpickles it on restore;
    it only holds the ids it needs (which are also persisted in search_meta.json).
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_epochs: int,
                 time_attr: str = "epoch"):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = int(max_epochs)
        self.time_attr = time_attr
        self.ended: dict[str, str] = {}

    def _end(self, trial, status: str) -> None:
        try:
            client = _client(self.tracking_uri)
            run = find_child_run(client, self.experiment_id, self.parent_run_id, trial.trial_id)
            if run is None:
                return
            _retry(client.set_terminated, run.info.run_id, status=status)
            client.set_tag(run.info.run_id, "pahcl.end_reason", status)
            self.ended[trial.trial_id] = status
        except Exception as e:  # noqa: BLE001 - never break the search for bookkeeping
            print(f"[mlflow] could not end the run of trial {trial.trial_id}: {e}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        done = float(last.get(self.time_attr, 0) or 0) >= self.max_epochs
        self._end(trial, "FINISHED" if done else "KILLED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED")


class InterruptAfterTrials(tune.Callback):
    """Test/ops hook: when ``PAHCL_TUNE_INTERRUPT_AFTER`` is set to N, send this driver SIGUSR1 (Tune's
    graceful-stop signal, like Ctrl+C) once N trials have completed. The variable is read at call
    time, so a restored search (which unpickles this callback) runs to the end when it is unset."""

    def __init__(self):
        self.completed = 0
        self.sent = False

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.completed += 1
        n = os.environ.get("PAHCL_TUNE_INTERRUPT_AFTER")
        if n and not self.sent and self.completed >= int(n):
            import signal

            self.sent = True
            print(f"[search] PAHCL_TUNE_INTERRUPT_AFTER={n}: interrupting the driver (SIGUSR1) to simulate Ctrl+C")
            os.kill(os.getpid(), signal.SIGUSR1)
