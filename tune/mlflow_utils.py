"""MLflow for the search: store set-up in the driver, one parent run per search, one nested child
run per trial (created inside the trial), batched step logging, a ``tune.Callback`` that ends child
runs from the driver (FINISHED, also for a trial ASHA stopped early, with the reason in the tag
``pahcl.end_reason``; KILLED when stopped otherwise; FAILED for errored), and what the MLflow UI shows:
readable trial run names, the parent's markdown description, a saved "trials" view and its URLs.

Layout (local store, no server configured)::

    <results>/mlflow.db            sqlite:////ABS/<results>/mlflow.db (created by the driver first)
    <results>/mlartifacts/         artifact root of the experiment
    experiment "pahcl-search"
      parent run  <stage>-<timestamp>   tags: pahcl.stage, pahcl.space_file, pahcl.base_config,
                                          pahcl.git_commit, pahcl.search_id, pahcl.best_*
        child run <trial name>          tags: mlflow.parentRunId, pahcl.stage, pahcl.trial_id, pahcl.search_id
"""
from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

# The MLflow client's environment (telemetry off, fast-failing HTTP retries) is set at run time by
# tune.environment.setup_environment (the driver and every trial call it first).
from ray import tune as ray_tune

from pahcl.metrics import STEP_LOGGED

EXPERIMENT_NAME = "pahcl-search"
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
NOTE_TAG = "mlflow.note.content"  # a run's description, rendered as markdown by the MLflow UI
END_REASON_TAG = "pahcl.end_reason"
# The MLflow UI (3.17) opens an experiment in GenAI mode unless the URL says otherwise; the experiment's
# kind is tagged as well (alone it does not change the landing page).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
UI_QUERY = "workflowType=machine_learning"
UI_LOCAL = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch

# Step metrics sent to MLflow every log_interval steps (the drift keys only exist on those steps).
STEP_KEYS = STEP_LOGGED  # pahcl/metrics.py


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
    """Create the DB (schema migration) and the experiment ONCE, in the driver, before any trial starts.
    A local sqlite store is created under an exclusive file lock beside the DB: two searches started together
    on a fresh folder otherwise both run MLflow's schema migration (alembic "CommandError: Online migration
    expected to match one row") or both create the experiment."""
    if not uri.startswith("sqlite:"):
        return _ensure_experiment(uri, results_dir, name)
    import fcntl

    db = Path(uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed (also if this process dies)
        return _ensure_experiment(uri, results_dir, name)


def _ensure_experiment(uri: str, results_dir: Path, name: str) -> str:
    client = _client(uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        if exp.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return exp.experiment_id
    kw = {}
    if uri.startswith("sqlite:"):
        art = Path(results_dir).resolve() / "mlartifacts"
        art.mkdir(parents=True, exist_ok=True)
        kw["artifact_location"] = art.as_uri()
    return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}, **kw)


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
                 on_warning=None, warned: bool = False, logged: Mapping[str, set[int]] | None = None):
        self.client = _client(uri)
        self.run_id = run_id
        self.logged = logged or {}   # key -> steps the run already has (a resumed trial): not sent again
        self.skipped = 0
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
            if int(step) in self.logged.get(k, ()):
                self.skipped += 1
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


def logged_points(client, run_id: str) -> dict[str, set[int]]:
    """Steps the run already holds, per metric key. A trial resumed from its epoch-e checkpoint re-runs the
    steps after it; points the interrupted attempt had already sent (mid-epoch background flushes, or the
    epoch metrics flushed just before a report that never persisted) are then skipped by ``BatchLogger``,
    so every step and epoch is logged once. The re-run computes the same values (resume restores the RNG)."""
    keys = list(client.get_run(run_id).data.metrics)
    return {k: {int(m.step) for m in client.get_metric_history(run_id, k)} for k in keys}


def end_run(uri: str, run_id: str, status: str) -> None:
    _retry(_client(uri).set_terminated, run_id, status=status)


class EndChildRunsCallback(ray_tune.Callback):
    """Ends each trial's child run from the driver (the trial itself may never get the chance).

    FINISHED: the trial reached max_epochs, or ASHA stopped it early (an early stop is the scheduler
    doing its job, not a failure): the tag ``pahcl.end_reason`` says which, e.g. ``stopped early by ASHA
    at epoch 2``. KILLED: stopped before max_epochs by something else (an interrupted search; such a
    run is set RUNNING again on --resume). FAILED: the trial raised. ``asha_state`` is the scheduler's
    stop record (asha_state.json); without it every early completion counts as an ASHA stop. Lives in an
    importable module because Ray unpickles it on restore; it only holds the ids it needs (which are
    also persisted in search_meta.json).
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, max_epochs: int,
                 time_attr: str = "epoch", asha_state: str | None = None):
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.max_epochs = int(max_epochs)
        self.time_attr = time_attr
        self.asha_state = asha_state
        self.ended: dict[str, str] = {}

    def _end(self, trial, status: str, reason: str) -> None:
        try:
            client = _client(self.tracking_uri)
            run = find_child_run(client, self.experiment_id, self.parent_run_id, trial.trial_id)
            if run is None:
                return
            _retry(client.set_terminated, run.info.run_id, status=status)
            client.set_tag(run.info.run_id, END_REASON_TAG, reason)
            self.ended[trial.trial_id] = status
        except Exception as e:  # noqa: BLE001 - never break the search for bookkeeping
            print(f"[mlflow] could not end the run of trial {trial.trial_id}: {e}")

    def on_trial_complete(self, iteration, trials, trial, **info):
        epoch = int(float((trial.last_result or {}).get(self.time_attr, 0) or 0))
        if epoch >= self.max_epochs:
            self._end(trial, "FINISHED", f"completed {epoch} of {self.max_epochs} epochs")
            return
        state = getattr(self, "asha_state", None)  # absent in callbacks pickled before it existed
        if state is None or trial.trial_id in _asha_stopped(state):
            self._end(trial, "FINISHED", early_stop_reason(epoch))
        else:
            self._end(trial, "KILLED", f"stopped at epoch {epoch} of {self.max_epochs}, not by ASHA")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED", "failed (the error is in the tag pahcl.error)")


def early_stop_reason(epoch: int) -> str:
    return f"stopped early by ASHA at epoch {int(epoch)}"


def _asha_stopped(state_file: str) -> set[str]:
    from tune.schedulers import stopped_trial_ids

    return set(stopped_trial_ids(Path(state_file)))


# ---- what the MLflow UI shows: run names, descriptions, links ------------------------------------------

# Short names of the searched keys in trial run names; other keys use their last dotted part.
PARAM_ABBREV = {"model.moco_momentum": "m", "training.learning_rate": "lr", "training.warmup_epochs": "wu",
                "model.queue_size": "q", "training.batch_size": "bs"}


def short_value(v: Any) -> str:
    """A parameter value at a glance: 0.995 -> '0.995', 0.00215 -> '2.2e-3', 20 -> '20', 8192 -> '8192'."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int) or (math.isfinite(v) and v == int(v) and abs(v) < 1e6):
        return str(int(v))
    if v != 0 and (abs(v) < 0.01 or abs(v) >= 1e4):
        mant, exp = f"{v:.1e}".split("e")
        return f"{mant}e{int(exp)}"
    return f"{v:.4g}"


def trial_number(trial_dir: str | os.PathLike | None, trial_name: str) -> int | None:
    """Ray's 1-based trial counter, from the trial directory ``<trial name>_<N>_<params>_<date>``."""
    if not trial_dir:
        return None
    m = re.match(re.escape(trial_name) + r"_(\d+)(_|$)", Path(trial_dir).name)
    return int(m.group(1)) if m else None


def trial_run_name(params: Mapping[str, Any], number: int | str | None, seed_key: str = "__trial_index__") -> str:
    """The child run's name: the sampled values of the searched keys, the seed index with --seeds, the trial
    number: ``m=0.995 lr=2.2e-3 wu=2 #4`` (``... s1 #4`` for seed index 1). ``params`` is the trial's
    Tune config (only the searched keys, plus Ray's seed index)."""
    parts = [f"{PARAM_ABBREV.get(k, k.rsplit('.', 1)[-1])}={short_value(v)}"
             for k, v in params.items() if not k.startswith("__")]
    if seed_key in params:
        parts.append(f"s{params[seed_key]}")
    if number is not None:
        parts.append(f"#{number}")
    return " ".join(parts) or "trial"


def ui_base(tracking_uri: str) -> str:
    """Where users open the UI of this store: ``PAHCL_MLFLOW_UI_URL`` when set (compose: the server as the
    host publishes it, not its compose name), else the server itself, else a local `mlflow ui`."""
    if os.environ.get("PAHCL_MLFLOW_UI_URL"):
        return os.environ["PAHCL_MLFLOW_UI_URL"].rstrip("/")
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else UI_LOCAL


def experiment_url(tracking_uri: str, experiment_id: str, share_key: str | None = None) -> str:
    """The experiment's runs, in the UI's model-training view."""
    q = UI_QUERY + (f"&viewStateShareKey={share_key}" if share_key else "")
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}?{q}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{UI_QUERY}"


def ui_command(tracking_uri: str, mlflow_bin: str | os.PathLike = "mlflow") -> str | None:
    """The shell-quoted command that serves a local store's UI (None for a server: open its URL)."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    return shlex.join([str(mlflow_bin), "ui", "--backend-store-uri", tracking_uri])


def start_ui(tracking_uri: str, port: int, mlflow_bin: str | os.PathLike = "mlflow", log=None, workers: int = 1):
    """Start ``mlflow ui`` on 127.0.0.1:PORT in its own process group (its uvicorn workers and job consumers
    are children: ``stop_ui`` ends the whole group). Returns the Popen."""
    cmd = [str(mlflow_bin), "ui", "--backend-store-uri", tracking_uri, "--host", "127.0.0.1", "--port", str(port),
           "--workers", str(workers)]
    return subprocess.Popen(cmd, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
                            env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"), start_new_session=True)


def stop_ui(proc, timeout: float = 20.0) -> None:
    """End ``mlflow ui`` and every process of its group: SIGTERM to the group, SIGKILL after ``timeout``."""
    import signal

    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; workers of the group may still be shutting down
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                os.killpg(proc.pid, 0)
                time.sleep(0.2)
        except ProcessLookupError:
            break


# A saved view of the experiment (MLflow's "Views" menu; experiment tag mlflow.sharedViewState.<id>, the
# format the UI writes when a user saves a view): runs grouped by search (the parent and its trials,
# expanded), ranked by the metric, with the metric, the searched parameters and the end reason as
# columns; the chart view compares the step curves of loss, grad_norm and drift across trials.
TRIALS_VIEW_ID = "pahcl-trials"
TRIALS_VIEW_NAME = "PA-HCL trials"
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
CHART_KEYS = ("loss", "grad_norm", "drift")


def _col(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's column / sort key


def trials_view_state(metric: str, mode: str, param_keys: Iterable[str], columns: Iterable[str] = ()) -> dict:
    """The UI state of the trials view (``columns``: extra columns kept from an earlier version)."""
    cols = [_col("metrics", metric), *(_col("params", k) for k in param_keys), _col("tags", END_REASON_TAG)]
    cols += [c for c in columns if c not in cols]
    return {
        "orderByKey": _col("metrics", metric), "orderByAsc": mode == "min", "searchFilter": "",
        "selectedColumns": cols,
        "groupBy": {"aggregateFunction": "max" if mode == "max" else "min",
                    "groupByKeys": [{"mode": "tag", "groupByData": "pahcl.search_id"}]},
        "useGroupedValuesInCharts": False, "runsHiddenMode": "SHOW_ALL",
        # the chart view: only these metrics' charts (a case-insensitive regular expression on metric keys)
        "chartsSearchFilter": "^(" + "|".join(re.escape(k) for k in CHART_KEYS) + ")$",
    }


def save_trials_view(uri: str, experiment_id: str, metric: str, mode: str, param_keys: Iterable[str]) -> str:
    """Write (or update) the experiment's trials view; returns its id (the URL's ``viewStateShareKey``).
    Columns of earlier searches (other stages' parameters) are kept."""
    client = _client(uri)
    key = SHARED_VIEW_PREFIX + TRIALS_VIEW_ID
    old, created = [], int(time.time() * 1000)
    raw = client.get_experiment(experiment_id).tags.get(key)
    if raw:
        try:
            env = json.loads(raw)
            old, created = json.loads(env["state"]).get("selectedColumns", []), int(env["createdAt"])
        except (ValueError, KeyError, TypeError):
            pass
    state = trials_view_state(metric, mode, param_keys, old)
    envelope = {"name": TRIALS_VIEW_NAME, "createdAt": created, "updatedAt": int(time.time() * 1000),
                "state": json.dumps(state)}
    client.set_experiment_tag(experiment_id, key, json.dumps(envelope))
    return TRIALS_VIEW_ID


def trials_url(tracking_uri: str, experiment_id: str, charts: bool = False) -> str:
    """The experiment's runs in the model-training view, opened on the trials view (table or charts)."""
    q = f"{UI_QUERY}&viewStateShareKey={TRIALS_VIEW_ID}" + ("&compareRunsMode=CHART" if charts else "")
    return f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{q}"


def _md(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


MAX_NOTE = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH


def search_description(search_id: str, metric: str, mode: str, experiment_id: str, parent_run_id: str,
                       rows: list[Mapping[str, Any]], plots: Iterable[str] = (), verdict: str | None = None) -> str:
    """The parent run's description (markdown): what ran, the verdict, the ranked table with links to the
    trials' runs, links to the plots. ``rows`` (ranked): name, run_id, value (None: no result), epochs, end.
    Links are relative (``#/experiments/...``) so they work on any host and port."""
    stopped = sum(1 for r in rows if str(r.get("end", "")).startswith("stopped early"))
    lines = [f"**Search `{search_id}`**: {len(rows)} trials, {stopped} stopped early by ASHA; ranked by "
             f"`{metric}` ({mode}) at each trial's last epoch.", ""]
    best = next((r for r in rows if r.get("value") is not None), None)
    if best is not None:
        lines.append(f"**Verdict:** best trial **{_md(best['name'])}**, `{metric}` = {best['value']:.4f} "
                     f"after {best['epochs']} epochs.")
    else:
        lines.append(f"**Verdict:** no trial produced `{metric}`.")
    if verdict:
        lines.append(f"**Confirmation:** {_md(verdict)}")
    art = f"#/experiments/{experiment_id}/runs/{parent_run_id}/artifacts"
    tail = ["", "Files (artifacts of this run): `results.csv`, `configs.csv`, `best_config.yaml`, `summary.json`."]
    plots = list(plots)
    if plots:
        tail[1:1] = ["Plots: " + " · ".join(f"[{Path(p).stem.replace('_', ' ')}]({art}/plots/{Path(p).name})"
                                          for p in plots), ""]
    lines += ["", f"| rank | trial | {metric} | epochs | end |", "|---:|---|---:|---:|---|"]
    size = sum(len(x) + 1 for x in lines + tail) + 200
    for i, r in enumerate(rows, 1):
        name = _md(r["name"])
        link = f"[{name}](#/experiments/{experiment_id}/runs/{r['run_id']})" if r.get("run_id") else name
        val = "–" if r.get("value") is None else f"{r['value']:.4f}"
        row = f"| {i} | {link} | {val} | {r.get('epochs', '')} | {_md(r.get('end', ''))} |"
        if size + len(row) > MAX_NOTE:  # MLflow keeps at most 8000 characters in a tag
            lines.append(f"| … | {len(rows) - i + 1} more in `results.csv` | | | |")
            break
        lines.append(row)
        size += len(row) + 1
    return "\n".join(lines + tail)


def describe_search(uri: str, parent_run_id: str, metric: str, mode: str, ranked, plots: Iterable[str] = (),
                    verdict: str | None = None) -> str:
    """At the end of a search: the parent's description (``search_description``) and its name with the
    verdict (``<search id>: best <metric> 0.4123``). ``ranked``: the ranked DataFrame of results.csv
    (trial_id, metric, epochs, stopped_early, status). Returns the description."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    exp_id, search_id = parent.info.experiment_id, parent.data.tags.get("pahcl.search_id", parent.info.run_name)
    runs = {r.data.tags.get("pahcl.trial_id"): r for r in child_runs(uri, exp_id, parent_run_id)}
    rows = []
    for _, r in ranked.iterrows():
        run = runs.get(r["trial_id"])
        value = r.get(metric)
        end = ("failed" if r["status"] == "ERROR" else early_stop_reason(r["epochs"]) if r["stopped_early"]
               else f"completed {int(r['epochs'])} epochs")
        rows.append({"name": run.info.run_name if run else r["trial_id"], "run_id": run.info.run_id if run else None,
                     "value": None if value is None or value != value else float(value),
                     "epochs": int(r["epochs"]), "end": end})
    text = search_description(search_id, metric, mode, exp_id, parent_run_id, rows, plots, verdict)
    client.set_tag(parent_run_id, NOTE_TAG, text)
    best = next((r for r in rows if r["value"] is not None), None)
    name = f"{search_id}: best {metric} {best['value']:.4f}" if best else f"{search_id}: no {metric}"
    client.set_tag(parent_run_id, RUN_NAME_TAG, name)
    return text


def compare_trials_message(uri: str, experiment_id: str, parent_run_id: str,
                           mlflow_bin: str | os.PathLike = "mlflow") -> str:
    """The end-of-search lines: how to open the UI (a local store: the `mlflow ui` command) and the URLs of
    the trials (table and charts) and of the parent run, each shell-quoted."""
    q = shlex.quote
    cmd = ui_command(uri, mlflow_bin)
    head = (f"[search] compare trials: {cmd}   (stop it with Ctrl+C), then open" if cmd
            else f"[search] compare trials on the MLflow server {ui_base(uri)}:")
    return "\n".join([head,
                      f"    trials:     {q(trials_url(uri, experiment_id))}",
                      f"    charts:     {q(trials_url(uri, experiment_id, charts=True))}",
                      f"    parent run: {q(run_url(uri, experiment_id, parent_run_id))}"])


def parse_compare_trials_message(text: str) -> dict[str, str]:
    """The inverse of ``compare_trials_message`` on a search's output: ``command`` (when a local store),
    ``trials``, ``charts``, ``parent run`` (unquoted URLs). Used by the browser test and the screenshots."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        m = re.match(r"\[search\] compare trials: (.*?)\s{3}\(stop it", line)
        if m:
            found["command"] = m.group(1)
        m = re.match(r"\s+(trials|charts|parent run):\s+(\S.*)$", line)
        if m:
            found[m.group(1)] = shlex.split(m.group(2))[0]
    return found
