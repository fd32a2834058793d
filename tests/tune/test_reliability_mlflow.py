"""Reliability of the MLflow path: many writers on one sqlite store, and a tracking server that goes away
mid-search. Real MLflow (sqlite store / `mlflow server` subprocess), the service's own logging path
(``tune.mlflow_utils.BatchLogger``), real Ray for the outage search."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tune_helpers import wait_for_health

from testkit.faults import env_vars, read_events

pytestmark = pytest.mark.slow

N_PROC, N_STEPS, KEYS = 8, 1000, ("loss", "grad_norm", "lr")

def _writer(uri: str, exp_id: str, name: str, out) -> None:
    """One writer process: a run created like a trial's, N_STEPS steps through the service's BatchLogger."""
    from tune.mlflow_utils import BatchLogger, _client

    client = _client(uri)
    run = client.create_run(exp_id, run_name=name, tags={"pahcl.role": "load-test"})
    log = BatchLogger(uri, run.info.run_id, flush_seconds=0.2)  # background flusher on, as in trials
    t0 = time.perf_counter()
    for step in range(1, N_STEPS + 1):
        log.add({"loss": 1.0 / step, "grad_norm": float(step), "lr": 1e-3}, step)
        if step % 100 == 0:
            log.flush_safe(block=False)  # like an epoch end
    log.close()
    out.put((run.info.run_id, log.sent, len(log.errors), round(time.perf_counter() - t0, 2), os.getpid()))


def test_eight_concurrent_writers_lose_no_metric(tmp_path):
    """8 writer processes x 1000 steps x 3 keys into ONE sqlite store the driver created first: every
    metric is there afterwards (8000 per key, each step once per run). The writers are forked from a
    forkserver that imported tune.mlflow_utils once (8 cold `import ray` would dominate the test)."""
    import multiprocessing as mp

    from tune.mlflow_utils import _client, ensure_experiment, local_tracking_uri

    uri = local_tracking_uri(tmp_path)  # sqlite:////ABS/mlflow.db
    exp_id = ensure_experiment(uri, tmp_path)  # the driver creates DB + experiment first
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["tune.mlflow_utils"])
    q = ctx.Queue()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_writer, args=(uri, exp_id, f"w{i}", q)) for i in range(N_PROC)]
    for p in procs:
        p.start()
    results = [q.get(timeout=400) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    wall = time.perf_counter() - t0
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert len({r[4] for r in results}) == N_PROC  # 8 distinct processes
    assert all(r[1] == N_STEPS * len(KEYS) and r[2] == 0 for r in results), results  # all acknowledged
    client = _client(uri)
    totals = {}
    for key in KEYS:
        per_run = [client.get_metric_history(r[0], key) for r in results]
        totals[key] = sum(len(h) for h in per_run)
        for h in per_run:
            assert sorted(m.step for m in h) == list(range(1, N_STEPS + 1)), key  # each step exactly once
    assert totals == {k: N_PROC * N_STEPS for k in KEYS}, totals
    print(f"mlflow load: {N_PROC} writers x {N_STEPS} steps x {len(KEYS)} keys -> {totals} in {wall:.1f} s wall; "
          f"per-writer logging s {[r[3] for r in results]}")


@pytest.fixture
def mlflow_server_proc(tmp_path, free_port):
    db = tmp_path / "server" / "mlflow.db"
    db.parent.mkdir()
    cmd = [str(Path(sys.executable).with_name("mlflow")), "server", "--port", str(free_port),  # default host
           "--backend-store-uri", f"sqlite:///{db}", "--artifacts-destination", str(tmp_path / "server" / "art"),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=str(db.parent),
                            env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"), start_new_session=True)
    base = f"http://127.0.0.1:{free_port}"
    try:
        wait_for_health(base, proc)
    except RuntimeError:
        proc.kill()
        raise
    yield proc, base
    if proc.poll() is None:
        os.killpg(proc.pid, 9)  # the server and its uvicorn/gunicorn worker (its own session)
        proc.wait()


def test_tracking_server_outage_does_not_stop_the_search(ray_session, space_file, tmp_path, mlflow_server_proc,
                                                         monkeypatch, capsys):
    """The server is killed after the first epoch report: trials keep training, each reports the outage
    exactly once, unsent metrics are kept in the trial dir, and results.csv + best_config.yaml are written."""
    import threading

    from tune.run_search import main

    proc, base = mlflow_server_proc
    log = tmp_path / "events.jsonl"
    for k, v in env_vars([], log).items():  # no fault: the event log only
        monkeypatch.setenv(k, v)
    killed = {}

    def killer():  # kill the server once the first epoch was reported (result file, no fixed sleep)
        while not any(e["event"] == "reported" for e in read_events(log)):
            time.sleep(0.2)
        os.killpg(proc.pid, 9)
        proc.wait()
        killed["t"] = time.time()

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    space = space_file(num_samples=3, max_epochs=3, scheduler={"type": "asha", "grace_period": 3,
                                                               "reduction_factor": 2})
    t0 = time.time()
    res = main(["--space", str(space), "--results-dir", str(tmp_path / "results"), "--mlflow-uri", base])
    th.join(timeout=5)
    assert killed, "the server was never killed"
    assert res["exit_code"] == 0 and not res["mlflow_ok"]
    df = res["df"]
    assert len(df) == 3 and (df["status"] == "TERMINATED").all() and (df["epochs"] == 3).all()
    stage = tmp_path / "results" / "test_stage"
    assert len(pd.read_csv(stage / "results.csv")) == 3 and (stage / "best_config.yaml").exists()
    ev = read_events(log)
    warnings = {}
    for e in ev:
        if e["event"] == "mlflow_warning":
            warnings[e["trial_id"]] = warnings.get(e["trial_id"], 0) + 1
    assert set(warnings) == set(df["trial_id"]) and set(warnings.values()) == {1}, warnings  # once per trial
    spilled: dict[str, int] = {}
    for e in ev:
        if e["event"] == "mlflow_spilled":
            spilled[e["trial_id"]] = spilled.get(e["trial_id"], 0) + e["metrics"]
    assert set(spilled) == set(df["trial_id"]), spilled  # nothing silently dropped: kept beside the trial
    for tid, n in spilled.items():
        (f,) = [p for p in Path(res["exp_path"]).glob(f"*{tid}*/mlflow_unsent.jsonl")]
        lines = [json.loads(x) for x in f.read_text().splitlines()]
        assert len(lines) == n and {"loss", "val/knn_acc"} <= {x["key"] for x in lines}
    out = capsys.readouterr().out
    assert out.count("tracking store unreachable at the end of the search") == 1
    print(f"outage: server killed {killed['t'] - t0:.0f} s into the search; warnings per trial {warnings}; "
          f"metrics spilled {spilled}; search wall {time.time() - t0:.0f} s")
