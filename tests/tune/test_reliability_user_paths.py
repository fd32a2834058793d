"""What users type, on real data, and what a search does when no trial can produce the metric
(issue 15 items 0 and 2).

    README real-data search, relative ../shared path  -> every trial trains (spec resolved in the driver)
    a deterministic error in every trial              -> not retried into training; exit 1, first error
                                                         printed, no best written, parent run FAILED
    cpus_per_trial above this machine's CPUs          -> lowered to the machine, said, and the search runs
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tune_helpers import REPO_ROOT

from testkit.faults import env_vars, read_events

pytestmark = pytest.mark.slow

SHARED_CIRCOR = REPO_ROOT.parent / "shared" / "data" / "circor_tiny"


def _cli(args: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PAHCL_FAULTS", "PAHCL_SEARCH_PLUGINS"))}
    return subprocess.run([sys.executable, "tune/run_search.py", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_readme_real_data_search_with_relative_path_trains_every_trial(tmp_path):
    """The README's command as typed (relative ``../shared`` path, from the repository root), smoke budget."""
    if not SHARED_CIRCOR.is_dir():
        pytest.fail(f"{SHARED_CIRCOR} is missing: the real-data search cannot be tested")
    out = tmp_path / "results"
    p = _cli(["--space", "moco_stage2", "--data", "circor:../shared/data/circor_tiny", "--budget", "smoke",
              "--results-dir", str(out)], cwd=REPO_ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ranked = pd.read_csv(out / "moco_stage2" / "results.csv")
    assert len(ranked) == 2 and (ranked["status"] == "TERMINATED").all(), ranked
    assert ranked["val/logo_knn_acc"].notna().all() and (ranked["epochs"] >= 1).all()  # ASHA may stop one at epoch 1
    assert ranked["epochs"].max() == 2
    summary = json.loads((out / "moco_stage2" / "summary.json").read_text())
    assert summary["best"]["trial_id"] in set(ranked["trial_id"])
    # the confirmation (smoke budget: top 1 + baseline, 1 fresh seed) on the held-out test patients
    assert summary["confirmation"]["test_fraction"] == 0.2 and summary["confirmation"]["verdict"]
    assert all(r["test_recordings"] for r in summary["confirmation"]["table"])
    assert "verdict: " in p.stdout
    meta = next((out / "moco_stage2" / "searches").glob("*/search_meta.json"))
    data = json.loads(meta.read_text())["context"]["data"]
    assert data == f"circor:{SHARED_CIRCOR.resolve()}"  # absolute: the same files wherever a trial runs
    assert "DataSpecError" not in p.stdout + p.stderr


def test_every_trial_failing_exits_1_with_the_first_error_and_no_best(ray_session, space_file, tmp_path,
                                                                     monkeypatch):
    from mlflow.tracking import MlflowClient

    from tune.run_search import main

    log = tmp_path / "events.jsonl"
    for k, v in env_vars([{"kind": "user_error", "at_step": 0}], log).items():  # every trial
        monkeypatch.setenv(k, v)
    space = space_file(num_samples=2, max_epochs=2)
    res = main(["--space", str(space), "--results-dir", str(tmp_path / "results")])  # --max-failures 2
    assert res["exit_code"] == 1 and res["failed"]
    assert "all 2 trials failed" in res["reason"] and "DataSpecError: injected" in res["reason"], res["reason"]
    stage = tmp_path / "results" / "test_stage"
    assert not (stage / "best_config.yaml").exists() and not (stage / "summary.json").exists()
    events = read_events(log)
    assert sum(e["event"] == "fault" for e in events) == 2  # once per trial: Ray's retries never trained
    refused = [e for e in events if e["event"] == "trial_start" and e.get("refused")]
    assert len(refused) == 4 and all("DataSpecError" in e["refused"] for e in refused)  # 2 retries x 2 trials
    assert not any(e["event"] == "report" for e in events)
    meta = json.loads(next(stage.glob("searches/*/search_meta.json")).read_text())["mlflow"]
    parent = MlflowClient(meta["tracking_uri"]).get_run(meta["parent_run_id"])
    assert parent.info.status == "FAILED" and "DataSpecError" in parent.data.tags["pahcl.error"]


def test_cli_prints_one_line_and_exits_1_when_no_trial_produced_the_metric(tmp_path, space_file):
    space = space_file(num_samples=1, max_epochs=1, scheduler={"type": "asha", "grace_period": 1,
                                                               "reduction_factor": 2})
    env = dict(os.environ, **env_vars([{"kind": "user_error", "at_step": 0}]))
    p = subprocess.run([sys.executable, "tune/run_search.py", "--space", str(space), "--results-dir",
                        str(tmp_path / "r"), "--max-failures", "0"], cwd=REPO_ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    failed = [ln for ln in p.stdout.splitlines() if ln.startswith("[search] FAILED:")]
    assert len(failed) == 1 and "DataSpecError: injected" in failed[0]
    assert "best:" not in p.stdout


def test_cpus_per_trial_above_the_machine_is_lowered_not_pending_forever(tmp_path, space_file):
    """resources.cpus_per_trial 64 on a machine with fewer CPUs: trials run (before: PENDING forever)."""
    space = space_file(num_samples=1, max_epochs=1, resources={"cpus_per_trial": 64, "gpus_per_trial": 0},
                       scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2})
    p = _cli(["--space", str(space), "--results-dir", str(tmp_path / "r")], cwd=REPO_ROOT, timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    n = len(os.sched_getaffinity(0))
    assert f"resources.cpus_per_trial 64 > this machine's {n} CPUs: using {n} per trial" in p.stdout
    meta = json.loads(next((tmp_path / "r" / "test_stage").glob("searches/*/search_meta.json")).read_text())
    assert meta["resources"]["cpus"] == n  # recorded as what ran


def test_sigterm_ends_the_search_like_ctrl_c_and_closes_the_parent_run(tmp_path, space_file):
    """kill (SIGTERM) mid-trial: exit 3 (resumable), the MLflow parent run KILLED, not left RUNNING."""
    import signal
    import time

    from mlflow.tracking import MlflowClient

    log = tmp_path / "events.jsonl"
    space = space_file(num_samples=2, max_epochs=2)
    stall = [{"kind": "stall", "at_step": 1, "seconds": 120, "marker": str(tmp_path / "stall")}]
    env = dict(os.environ, **env_vars(stall, log))
    drv = subprocess.Popen([sys.executable, "tune/run_search.py", "--space", str(space), "--results-dir",
                            str(tmp_path / "r")], cwd=REPO_ROOT, env=env, stdout=open(tmp_path / "drv.log", "w"),
                           stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not any(e["event"] == "fault" for e in read_events(log)):
            assert drv.poll() is None, (tmp_path / "drv.log").read_text()[-3000:]
            time.sleep(1)
        drv.send_signal(signal.SIGTERM)
        rc = drv.wait(timeout=180)
    finally:
        if drv.poll() is None:
            drv.kill()
    out = (tmp_path / "drv.log").read_text()
    assert rc == 3, out[-3000:]
    meta = json.loads(next((tmp_path / "r" / "test_stage").glob("searches/*/search_meta.json")).read_text())["mlflow"]
    client = MlflowClient(meta["tracking_uri"])
    parent = client.get_run(meta["parent_run_id"])
    assert parent.info.status == "KILLED" and parent.data.tags["pahcl.state"] == "interrupted"
    kids = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert kids and all(k.info.status != "RUNNING" for k in kids)
    assert "--resume" in out
