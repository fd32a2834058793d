"""Reliability: faults injected INSIDE real trials (real Ray local cluster, Optuna, MLflow sqlite store),
driven by ``tests/support/testkit/faults.py`` (``PAHCL_FAULTS``, plugged in with ``PAHCL_SEARCH_PLUGINS``) with marker/counter files and an event log, as Ray's
own ``test_tuner_restore.py`` does. One shared local Ray (``ray_session``); tiny preset, 2 optimizer
steps per epoch.

    crash once at epoch 2   -> retried from epoch 2's checkpoint, epochs 1,2,[crash],3,4
    NaN loss at step 3      -> trial ERROR (reason names the step), MLflow child FAILED, ranked last
    OOM in a step           -> bounded retries, then a clear failure; the next trial runs
    corrupt newest ckpt     -> falls back to the previous checkpoint / restarts cleanly; search completes
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from testkit.faults import count, env_vars, read_events

pytestmark = pytest.mark.slow


@pytest.fixture
def faults(tmp_path, monkeypatch):
    """set(list of faults) -> event log path; markers go to tmp_path/markers."""
    log = tmp_path / "events.jsonl"

    def set_(fault_list):
        for k, v in env_vars(fault_list, log).items():
            monkeypatch.setenv(k, v)
        return log

    return set_


def _search(space, tmp_path, *extra):
    from tune.run_search import main

    return main(["--space", str(space), "--results-dir", str(tmp_path / "results"), *extra])


def _by_trial(events):
    out: dict[str, list[dict]] = {}
    for e in events:
        out.setdefault(e["trial_id"], []).append(e)
    return out


def _error_text(exp_path: Path, trial_id: str) -> str:
    files = [f for f in exp_path.rglob("error.txt") if trial_id in f.parent.name]
    return files[0].read_text() if files else ""


def _child_runs(res):
    from mlflow.tracking import MlflowClient

    c = MlflowClient(res["tracking_uri"])
    exp = c.get_experiment_by_name("pahcl-search")
    runs = c.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{res['parent_run_id']}'")
    return c, {r.data.tags["pahcl.trial_id"]: r for r in runs}


NO_ASHA = {"type": "asha", "grace_period": 4, "reduction_factor": 2}  # grace == max_epochs: ASHA never stops


def test_crashed_trial_is_retried_from_its_latest_checkpoint(ray_session, space_file, tmp_path, faults):
    marker = tmp_path / "markers" / "crash"
    log = faults([{"kind": "crash", "at_epoch": 2, "marker": str(marker)}])
    space = space_file(num_samples=1, max_epochs=4, scheduler=NO_ASHA)
    res = _search(space, tmp_path, "--max-failures", "1")
    assert res["exit_code"] == 0
    df = res["df"]
    assert len(df) == 1 and df.loc[0, "status"] == "TERMINATED" and df.loc[0, "epochs"] == 4
    assert count(marker) == 1  # fired exactly once; the retry did not fire it again
    ev = read_events(log)
    seq = [(e["event"], e.get("epoch") if e["event"] != "trial_start" else e["resumed_from_epoch"]) for e in ev
           if e["event"] in ("trial_start", "report", "fault")]
    # the counter continues: 1, 2, [crash in epoch 3's first step], resumed from epoch 2's checkpoint, 3, 4
    assert seq == [("trial_start", None), ("report", 1), ("report", 2), ("fault", 2),
                   ("trial_start", 2), ("report", 3), ("report", 4)], seq
    starts = [e for e in ev if e["event"] == "trial_start"]
    assert starts[1]["checkpoint"] == "checkpoint_000001" and starts[1]["skipped"] == 0
    crash = next(e for e in ev if e["event"] == "fault")
    assert crash["step"] == 4  # 2 epochs x 2 optimizer steps done
    # what Ray recorded: epochs 1..4 once each
    trial_dir = next(Path(res["exp_path"]).glob("train_pahcl_*"))
    epochs = [json.loads(x)["epoch"] for x in (trial_dir / "result.json").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4], epochs
    # MLflow: one child run, FINISHED, resumed at epoch 2, every step logged exactly once
    client, runs = _child_runs(res)
    (run,) = runs.values()
    assert run.info.status == "FINISHED"
    assert run.data.tags["pahcl.resumed_from_epoch"] == "2"
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss"))
    assert steps == list(range(1, 9)), steps
    print(f"crash-retry: events {seq}")


def test_nan_loss_fails_the_trial_which_is_never_best(ray_session, space_file, tmp_path, faults):
    marker = tmp_path / "markers" / "nan"
    log = faults([{"kind": "nan", "at_step": 3, "marker": str(marker)}])
    space = space_file(num_samples=3, max_epochs=2, scheduler={"type": "asha", "grace_period": 2,
                                                               "reduction_factor": 2})
    res = _search(space, tmp_path)  # default --max-failures 2: the NaN trial must not be retried into training
    assert res["exit_code"] == 0
    df = res["df"]
    assert len(df) == 3 and count(marker) == 1
    bad = df[df["status"] == "ERROR"]
    assert len(bad) == 1, df[["trial_id", "status", "epochs"]]
    bad_id = bad.iloc[0]["trial_id"]
    good = df[df["status"] == "TERMINATED"]
    assert len(good) == 2 and (good["epochs"] == 2).all()  # the search went on
    # the reason names the step and the loss part
    err = _error_text(Path(res["exp_path"]), bad_id)
    assert "NonFiniteLossError" in err and "non-finite loss_sub" in err and "step 3" in err, err[-2000:]
    ev = _by_trial(read_events(log))[bad_id]
    assert [e["event"] for e in ev if e["event"] in ("fault", "error")] == ["fault", "error"]
    refused = [e for e in ev if e["event"] == "trial_start" and e.get("refused")]
    assert len(refused) == 2  # Ray's 2 retries failed fast, no epoch trained again
    assert [e["epoch"] for e in ev if e["event"] == "report"] == [1]
    # ranked last; best config is from a good trial
    stage = tmp_path / "results" / "test_stage"
    ranked = pd.read_csv(stage / "results.csv")
    assert ranked.iloc[-1]["trial_id"] == bad_id and ranked.iloc[-1]["status"] == "ERROR"
    summary = json.loads((stage / "summary.json").read_text())
    assert summary["best"]["trial_id"] != bad_id
    best_cfg = yaml.safe_load((stage / "best_config.yaml").read_text())
    best_lr = ranked.iloc[0]["param:training.learning_rate"]
    assert best_cfg["training"]["learning_rate"] == pytest.approx(best_lr)
    # MLflow child run FAILED with the reason
    _, runs = _child_runs(res)
    assert runs[bad_id].info.status == "FAILED"
    assert "non-finite loss_sub" in runs[bad_id].data.tags["pahcl.error"]
    assert "step 3" in runs[bad_id].data.tags["pahcl.error"]
    assert all(runs[t].info.status == "FINISHED" for t in good["trial_id"])


def test_oom_bounded_retries_then_clear_failure_and_next_trial_runs(ray_session, space_file, tmp_path, faults):
    once, thrice = tmp_path / "markers" / "oom1", tmp_path / "markers" / "oom3"
    log = faults([{"kind": "oom", "at_step": 1, "times": 1, "marker": str(once)},    # recovered by 1 retry
                  {"kind": "oom", "at_step": 3, "times": 3, "marker": str(thrice)}])  # 1 + 2 retries: gives up
    space = space_file(num_samples=2, max_epochs=2, search={"seed": 0, "max_concurrent_trials": 1},
                       scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 2})
    res = _search(space, tmp_path)
    assert res["exit_code"] == 0
    assert count(once) == 1 and count(thrice) == 3
    df = res["df"].set_index("trial_id")
    ev = _by_trial(read_events(log))
    first = next(t for t, e in ev.items() if any(x["event"] == "fault" for x in e))
    second = next(t for t in ev if t != first)
    assert df.loc[first, "status"] == "ERROR" and df.loc[second, "status"] == "TERMINATED"
    assert df.loc[second, "epochs"] == 2
    # epoch 1 of the first trial survived its OOM: 1 retry, memory released, step 1 completed
    rep = [e for e in ev[first] if e["event"] == "report"]
    assert [(e["epoch"], e["step"], e["oom_retries"]) for e in rep] == [(1, 2, 1)]
    err = _error_text(Path(res["exp_path"]), first)
    assert "StepOutOfMemoryError" in err and "out of memory at optimizer step 3 after 2 retries" in err, err[-1500:]
    assert [e["kind"] for e in ev[first] if e["event"] == "fault"] == ["oom"] * 4
    assert not any(e["event"] == "fault" for e in ev[second])  # faults exhausted; trial 2 ran clean
    _, runs = _child_runs(res)
    assert runs[first].info.status == "FAILED" and "after 2 retries" in runs[first].data.tags["pahcl.error"]


@pytest.mark.parametrize("mode,resumed,reported", [
    ("truncate", 1, [1, 2, 2, 3]),        # newest (epoch 2) truncated -> previous (epoch 1) loads
    ("malicious", 1, [1, 2, 2, 3]),       # newest replaced by a pickle with a payload -> refused, previous loads
    ("truncate_all", 0, [1, 2, 1, 2, 3]),  # every checkpoint truncated -> clean restart from scratch
])
def test_corrupt_newest_checkpoint_falls_back(ray_session, space_file, tmp_path, faults, mode, resumed, reported):
    marker, payload = tmp_path / "markers" / "crash", tmp_path / "PWNED"
    log = faults([{"kind": "crash", "at_epoch": 2, "marker": str(marker), "corrupt_checkpoint": mode,
                   "payload_marker": str(payload)}])
    space = space_file(num_samples=1, max_epochs=3, scheduler={"type": "asha", "grace_period": 3,
                                                               "reduction_factor": 2})
    res = _search(space, tmp_path, "--max-failures", "1")
    assert res["exit_code"] == 0 and len(res["df"]) == 1
    assert res["df"].loc[0, "status"] == "TERMINATED" and res["df"].loc[0, "epochs"] == 3
    assert not payload.exists()  # weights_only=True: the pickle's payload never ran
    ev = read_events(log)
    fault = next(e for e in ev if e["event"] == "fault")
    assert len(fault["damaged"]) == (2 if mode == "truncate_all" else 1)
    assert [e["epoch"] for e in ev if e["event"] == "report"] == reported
    start = [e for e in ev if e["event"] == "trial_start"][1]
    assert start["resumed_from_epoch"] == resumed
    assert start["skipped"] == (2 if mode == "truncate_all" else 1)
    _, runs = _child_runs(res)
    (run,) = runs.values()
    fb = run.data.tags["pahcl.resume_fallback"]
    assert ("restarted from scratch" if mode == "truncate_all" else "resumed from checkpoint_000000") in fb
    assert ("refused by the weights_only loader" if mode == "malicious" else "truncated or corrupt") in fb, fb
    assert run.info.status == "FINISHED"
