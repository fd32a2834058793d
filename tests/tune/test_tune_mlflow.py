"""MLflow helpers without Ray: run ending by the driver callback, batched logging loses nothing."""
from __future__ import annotations

import multiprocessing as mp
from types import SimpleNamespace

import pytest

from tune.mlflow_utils import (
    PARENT_TAG, BatchLogger, EndChildRunsCallback, _client, child_runs, create_parent_run, ensure_experiment,
    local_tracking_uri, resolve_tracking_uri,
)


@pytest.fixture
def store(tmp_path):
    uri = local_tracking_uri(tmp_path)
    exp = ensure_experiment(uri, tmp_path)  # the driver creates DB + experiment first
    parent = create_parent_run(uri, exp, "s-1", {"pahcl.stage": "x"})
    return uri, exp, parent


def _child(uri, exp, parent, trial_id):
    return _client(uri).create_run(exp, tags={PARENT_TAG: parent, "pahcl.trial_id": trial_id}).info.run_id


def test_callback_ends_child_runs_with_the_right_status(store):
    uri, exp, parent = store
    ids = {t: _child(uri, exp, parent, t) for t in ("done", "stopped", "broken")}
    cb = EndChildRunsCallback(uri, exp, parent, max_epochs=3)
    cb.on_trial_complete(0, [], SimpleNamespace(trial_id="done", last_result={"epoch": 3}))
    cb.on_trial_complete(0, [], SimpleNamespace(trial_id="stopped", last_result={"epoch": 1}))
    cb.on_trial_error(0, [], SimpleNamespace(trial_id="broken", last_result={"epoch": 2}))
    c = _client(uri)
    assert c.get_run(ids["done"]).info.status == "FINISHED"
    assert c.get_run(ids["stopped"]).info.status == "KILLED"
    assert c.get_run(ids["broken"]).info.status == "FAILED"
    assert len(child_runs(uri, exp, parent)) == 3
    # unknown trial: no exception, nothing changes
    cb.on_trial_error(0, [], SimpleNamespace(trial_id="nope", last_result={}))


def _writer(uri, run_id, n, k):
    lg = BatchLogger(uri, run_id, flush_seconds=0.05)
    for s in range(n):
        lg.add({"loss": float(s), "grad_norm": float(k), "drift": 0.1}, step=s)
    lg.close()


def test_concurrent_writers_lose_no_metric(store):
    """4 processes (like 4 trials) x 300 steps x 3 metrics into one sqlite created by the driver."""
    uri, exp, parent = store
    runs = [_child(uri, exp, parent, f"t{i}") for i in range(4)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(uri, r, 300, i)) for i, r in enumerate(runs)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    c = _client(uri)
    for r in runs:
        for key in ("loss", "grad_norm", "drift"):
            assert len(c.get_metric_history(r, key)) == 300


def test_relative_sqlite_and_file_store_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ValueError, match="absolute"):
        resolve_tracking_uri("sqlite:///mlflow.db", tmp_path)
    with pytest.raises(ValueError):
        resolve_tracking_uri("file:./mlruns", tmp_path)
    assert resolve_tracking_uri(None, tmp_path).startswith("sqlite:////")
