"""Driver killed mid-search (SIGKILL, no chance to clean up) -> ``--resume`` finishes exactly num_samples
trials; none duplicated, finished ones not re-run; a changed space file is refused loudly (exit 2).

The first driver is the real CLI (``tune/run_search.py``, its own local Ray) started with Popen; the kill
is timed from files (the trial event log of ``tune/faults.py`` and Ray's experiment-state file), not sleeps.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tune_helpers import REPO_ROOT, descendants

from tune.faults import read_events

pytestmark = pytest.mark.slow

MAX_EPOCHS = 2


def _terminated_in_state(exp_dir: Path) -> set[str]:
    """Trial ids Ray's last experiment snapshot records as TERMINATED."""
    out: set[str] = set()
    for f in exp_dir.glob("experiment_state-*.json"):
        try:
            text = f.read_text()
        except OSError:
            continue
        # trial states are JSON strings inside the JSON file: match the escaped form too
        for m in re.finditer(r'trial_id\\*"\s*:\s*\\*"([0-9a-f_]+)\\*".{0,4000}?status\\*"\s*:\s*\\*"(\w+)', text):
            if m.group(2) == "TERMINATED":
                out.add(m.group(1))
    return out


def test_sigkilled_driver_resumes_to_exactly_num_samples(ray_session, space_file, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from tune.run_search import main

    log = tmp_path / "events.jsonl"
    results = tmp_path / "results"
    space = space_file(num_samples=4, max_epochs=MAX_EPOCHS,
                       scheduler={"type": "asha", "grace_period": MAX_EPOCHS, "reduction_factor": 2})
    # the first trial to finish an epoch stalls (once, marker) so that it is surely unfinished at the kill
    stall = [{"kind": "stall", "at_epoch": 1, "seconds": 240, "marker": str(tmp_path / "stall")}]
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PAHCL_FAULTS=json.dumps(stall), PAHCL_FAULTS_LOG=str(log),
               MLFLOW_DISABLE_TELEMETRY="true")
    t0 = time.time()
    drv = subprocess.Popen([sys.executable, str(REPO_ROOT / "tune" / "run_search.py"), "--space", str(space),
                            "--results-dir", str(results)], env=env, cwd=str(tmp_path), start_new_session=True,
                           stdout=open(tmp_path / "driver1.log", "w"), stderr=subprocess.STDOUT)
    try:
        # wait (on files) until 2 trials finished AND Ray's experiment snapshot records them as TERMINATED
        finished: set[str] = set()
        deadline = time.time() + 400
        while True:
            assert drv.poll() is None, (tmp_path / "driver1.log").read_text()[-3000:]
            assert time.time() < deadline, "no 2 finished trials in time"
            ev = read_events(log)
            done = {e["trial_id"] for e in ev if e["event"] == "report" and e["epoch"] == MAX_EPOCHS}
            latest = results / "test_stage" / "latest"
            if len(done) >= 2 and latest.exists():
                exp_dir = results / "test_stage" / "ray" / latest.read_text().strip()
                finished = done & _terminated_in_state(exp_dir)
                if len(finished) >= 2:
                    break
            time.sleep(0.3)
    finally:
        procs = descendants({drv.pid})
        os.kill(drv.pid, signal.SIGKILL)  # the driver dies with no chance to save anything
        drv.wait()
        for pid in procs - {drv.pid}:  # and with it the Ray it started (a crashed machine takes everything)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    t_kill = time.time()
    assert drv.returncode == -signal.SIGKILL
    starts_before = {e["trial_id"] for e in read_events(log) if e["event"] == "trial_start"}
    reports_before = len([e for e in read_events(log) if e["event"] == "report"])

    # resuming with a changed space file fails loudly: exit 2, a clear message, nothing started
    original = space.read_text()
    space.write_text(original.replace("num_samples: 4", "num_samples: 5"))
    out = subprocess.run([sys.executable, str(REPO_ROOT / "tune" / "run_search.py"), "--space", str(space),
                          "--results-dir", str(results), "--resume"], env=env, cwd=str(tmp_path),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, (out.stdout[-2000:], out.stderr[-2000:])
    assert "changed since" in out.stderr and "--resume" in out.stderr
    space.write_text(original)

    monkeypatch.setenv("PAHCL_FAULTS", json.dumps(stall))  # exhausted (marker): nothing fires again
    monkeypatch.setenv("PAHCL_FAULTS_LOG", str(log))
    res = main(["--space", str(space), "--results-dir", str(results), "--resume"])
    assert res["exit_code"] == 0 and not res["interrupted"]
    df = res["df"]
    assert len(df) == 4 and df["trial_id"].is_unique
    assert (df["status"] == "TERMINATED").all() and (df["epochs"] == MAX_EPOCHS).all()
    exp_path = Path(res["exp_path"])
    assert len([p for p in exp_path.iterdir() if p.is_dir() and p.name.startswith("train_pahcl_")]) == 4
    ev = read_events(log)
    after = [e for e in ev if e["t"] >= t_kill]
    # finished trials were not re-run: no start, no epoch after the kill
    assert not [e for e in after if e["trial_id"] in finished], [e for e in after if e["trial_id"] in finished]
    # every trial reached MAX_EPOCHS once; trials started after the kill are the unfinished/new ones only
    all_ids = {e["trial_id"] for e in ev if e["event"] == "trial_start"}
    assert all_ids == set(df["trial_id"])
    resumed = {e["trial_id"]: e["resumed_from_epoch"] for e in after if e["event"] == "trial_start"}
    assert set(resumed) == set(df["trial_id"]) - finished
    stalled = next(e["trial_id"] for e in ev if e["event"] == "fault" and e["kind"] == "stall")
    assert stalled not in finished and resumed[stalled] == 1  # continued from its epoch-1 checkpoint
    assert [e["epoch"] for e in ev if e["trial_id"] == stalled and e["event"] == "report"] == [1, 2]
    # MLflow: one child run per trial (a resumed trial logs to its existing run), none left RUNNING
    client = MlflowClient(res["tracking_uri"])
    exp = client.get_experiment_by_name("pahcl-search")
    kids = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{res['parent_run_id']}'")
    ids = [k.data.tags["pahcl.trial_id"] for k in kids]
    assert sorted(ids) == sorted(df["trial_id"]) and all(k.info.status == "FINISHED" for k in kids)
    print(f"sigkill: killed {t_kill - t0:.0f} s after start with {len(finished)} finished, "
          f"{len(starts_before)} started, {reports_before} epoch reports; resumed {resumed}; "
          f"total {time.time() - t0:.0f} s")
