"""Driver killed mid-search (SIGKILL, no chance to clean up) -> ``--resume`` finishes exactly num_samples
trials; none duplicated, finished ones not re-run; a changed space file is refused loudly (exit 2), and so
are options ``--resume`` would ignore; the trial resumed mid-epoch logs every step and epoch to MLflow once.

The first driver is the real CLI (``tune/run_search.py``, its own local Ray) started with Popen; the kill
is timed from files (the trial event log of ``tests/support/testkit/faults.py`` and Ray's experiment-state file), not sleeps.
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

from testkit.faults import env_vars, read_events

pytestmark = pytest.mark.slow

MAX_EPOCHS = 2
STEPS_PER_EPOCH = 2  # BASE_SPACE: training.max_steps_per_epoch, log_interval 1 (every step logged)


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


def _stalled_step_in_mlflow(results: Path, ev: list[dict]) -> bool:
    """The stalled trial's last step before the stall (step 3) has reached MLflow."""
    from mlflow.tracking import MlflowClient

    stalled = [e["trial_id"] for e in ev if e["event"] == "fault" and e["kind"] == "stall"]
    if not stalled:
        return False
    client = MlflowClient(f"sqlite:///{results / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("pahcl-search").experiment_id],
                              f"tags.`pahcl.trial_id` = '{stalled[0]}'")
    if not runs:
        return False
    return STEPS_PER_EPOCH + 1 in {m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")}


def test_sigkilled_driver_resumes_to_exactly_num_samples(ray_session, space_file, tmp_path, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    from tune.run_search import main

    log = tmp_path / "events.jsonl"
    results = tmp_path / "results"
    space = space_file(num_samples=4, max_epochs=MAX_EPOCHS,
                       scheduler={"type": "asha", "grace_period": MAX_EPOCHS, "reduction_factor": 2})
    # the first trial to start its 4th step (the 2nd of epoch 2) stalls (once, marker) so that it is surely
    # unfinished at the kill, mid-epoch: its step-3 point is already in MLflow (background flush), and the
    # resumed trial re-runs step 3 from its epoch-1 checkpoint (before the fix: logged twice)
    stall = [{"kind": "stall", "at_step": STEPS_PER_EPOCH + 1, "seconds": 240, "marker": str(tmp_path / "stall")}]
    env = dict(os.environ, **env_vars(stall, log), MLFLOW_DISABLE_TELEMETRY="true")
    t0 = time.time()
    drv = subprocess.Popen([sys.executable, str(REPO_ROOT / "tune" / "run_search.py"), "--space", str(space),
                            "--results-dir", str(results)], env=env, cwd=str(tmp_path), start_new_session=True,
                           stdout=open(tmp_path / "driver1.log", "w"), stderr=subprocess.STDOUT)
    try:
        # wait (on files) until the stalled trial's step 3 is in MLflow, 2 trials finished AND Ray's experiment
        # snapshot records them as TERMINATED
        finished: set[str] = set()
        point_sent = False
        deadline = time.time() + 400
        while True:
            assert drv.poll() is None, (tmp_path / "driver1.log").read_text()[-3000:]
            assert time.time() < deadline, "no 2 finished trials in time"
            ev = read_events(log)
            point_sent = point_sent or _stalled_step_in_mlflow(results, ev)
            done = {e["trial_id"] for e in ev if e["event"] == "report" and e["epoch"] == MAX_EPOCHS}
            latest = results / "test_stage" / "latest"
            if len(done) >= 2 and latest.exists():
                exp_dir = results / "test_stage" / "ray" / latest.read_text().strip()
                finished = done & _terminated_in_state(exp_dir)
                if len(finished) >= 2 and point_sent:
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
    # what Ray resumes from: the snapshot on disk at the kill (a trial may have finished since the loop's check)
    done = {e["trial_id"] for e in read_events(log) if e["event"] == "report" and e["epoch"] == MAX_EPOCHS}
    finished = done & _terminated_in_state(exp_dir)
    assert len(finished) >= 2, (done, finished)
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

    # --resume with options it would ignore (issue 15 item 8): refused, one line naming them, their original
    # values and the fix; nothing started. Repeating the original values (below) is accepted.
    from tune.run_search import cli

    rc = cli(["--space", str(space), "--results-dir", str(results), "--resume", "--seeds", "3", "--data",
              "synthetic:12", "--max-failures", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert ("--data synthetic:12, --max-failures 0, --seeds 3 would be ignored (it started with data=synthetic:40, "
            "max-failures=2, seeds=1). Drop them to resume, or start a new search without --resume") in err, err
    assert not [e for e in read_events(log) if e["t"] >= t_kill], "nothing may start"

    for k, v in env_vars(stall, log).items():  # exhausted (marker): nothing fires again
        monkeypatch.setenv(k, v)
    res = main(["--space", str(space), "--results-dir", str(results), "--resume", "--data", "synthetic:40",
                "--max-epochs", str(MAX_EPOCHS)])  # the values it started with: accepted
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
    # every step and epoch logged exactly once, the stalled trial's re-run step 3 included (issue 15 item 5)
    for k in kids:
        for key, n in (("loss", MAX_EPOCHS * STEPS_PER_EPOCH), ("lr", MAX_EPOCHS * STEPS_PER_EPOCH),
                       ("val/knn_acc", MAX_EPOCHS), ("train/loss", MAX_EPOCHS)):
            steps = sorted(m.step for m in client.get_metric_history(k.info.run_id, key))
            assert steps == list(range(1, n + 1)), (k.data.tags["pahcl.trial_id"], key, steps)
    stalled_run = next(k for k in kids if k.data.tags["pahcl.trial_id"] == stalled)
    assert int(stalled_run.data.tags["pahcl.points_already_logged"]) > 0
    print(f"sigkill: killed {t_kill - t0:.0f} s after start with {len(finished)} finished, "
          f"{len(starts_before)} started, {reports_before} epoch reports; resumed {resumed}; "
          f"total {time.time() - t0:.0f} s")
