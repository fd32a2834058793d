"""MLflow helpers without Ray: run ending by the driver callback, batched logging loses nothing, what the
UI shows (trial run names, URLs, the trials view, the parent's description)."""
from __future__ import annotations

import json
import multiprocessing as mp
import shlex
from types import SimpleNamespace

import pytest

from tune.mlflow_utils import (
    EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, PARENT_TAG, BatchLogger, EndChildRunsCallback, _client, child_runs,
    compare_trials_message, create_parent_run, parse_compare_trials_message, ensure_experiment, experiment_url, local_tracking_uri,
    resolve_tracking_uri, run_url, save_trials_view, search_description, short_value, trial_number,
    trial_run_name, trials_url, ui_command,
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
    # an ASHA stop is no failure: FINISHED, the reason on the run
    assert c.get_run(ids["stopped"]).info.status == "FINISHED"
    assert c.get_run(ids["stopped"]).data.tags["pahcl.end_reason"] == "stopped early by ASHA at epoch 1"
    assert c.get_run(ids["done"]).data.tags["pahcl.end_reason"] == "completed 3 of 3 epochs"
    assert c.get_run(ids["broken"]).info.status == "FAILED"
    assert len(child_runs(uri, exp, parent)) == 3
    # unknown trial: no exception, nothing changes
    cb.on_trial_error(0, [], SimpleNamespace(trial_id="nope", last_result={}))


def test_early_completion_not_in_the_asha_record_is_killed(store, tmp_path):
    """With the scheduler's stop record, only the trials ASHA stopped count as early stops."""
    uri, exp, parent = store
    ids = {t: _child(uri, exp, parent, t) for t in ("asha", "cut")}
    state = tmp_path / "asha_state.json"
    state.write_text(json.dumps({"brackets": [], "stopped": ["asha"]}))
    cb = EndChildRunsCallback(uri, exp, parent, max_epochs=3, asha_state=str(state))
    for t in ids:
        cb.on_trial_complete(0, [], SimpleNamespace(trial_id=t, last_result={"epoch": 2}))
    c = _client(uri)
    assert c.get_run(ids["asha"]).info.status == "FINISHED"
    assert c.get_run(ids["asha"]).data.tags["pahcl.end_reason"] == "stopped early by ASHA at epoch 2"
    assert c.get_run(ids["cut"]).info.status == "KILLED"
    assert "not by ASHA" in c.get_run(ids["cut"]).data.tags["pahcl.end_reason"]


@pytest.mark.parametrize("value, text", [(0.995, "0.995"), (0.99, "0.99"), (0.0022, "2.2e-3"), (0.00234, "2.3e-3"),
                                         (1e-4, "1.0e-4"), (20, "20"), (8192, "8192"), (1.5, "1.5"), (2.0, "2"),
                                         (True, "True"), ("adamw", "adamw")])
def test_short_value(value, text):
    assert short_value(value) == text


def test_trial_run_name_from_the_sampled_values():
    cfg = {"model.moco_momentum": 0.995, "training.learning_rate": 0.0022, "training.warmup_epochs": 2}
    assert trial_run_name(cfg, 4) == "m=0.995 lr=2.2e-3 wu=2 #4"
    assert trial_run_name({"model.queue_size": 4096, "__trial_index__": 1}, 7) == "q=4096 s1 #7"
    assert trial_run_name({"model.mamba_n_layers": 3}, None) == "mamba_n_layers=3"
    assert trial_run_name({}, None) == "trial"
    d = "/r/ray/s-1/train_pahcl_3b37146c_12_model_moco_momentum=0.9900,training_learning_rate=0.0013_2026-11-29_06-44-59"
    assert trial_number(d, "train_pahcl_3b37146c") == 12
    assert trial_number(d, "train_pahcl_ffffffff") is None and trial_number(None, "x") is None


def test_urls_open_the_model_training_view(monkeypatch):
    monkeypatch.delenv("PAHCL_MLFLOW_UI_URL", raising=False)
    local, server = "sqlite:////tmp/a b/mlflow.db", "http://10.0.0.5:5000/"
    assert experiment_url(local, "3") == "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    assert experiment_url(server, "3").startswith("http://10.0.0.5:5000/#/experiments/3?workflowType=machine_learning")
    assert run_url(local, "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert trials_url(local, "3") == ("http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
                                      "&viewStateShareKey=pahcl-trials")
    assert trials_url(server, "3", charts=True).endswith("&compareRunsMode=CHART")
    assert shlex.split(ui_command(local, "/v env/bin/mlflow")) == ["/v env/bin/mlflow", "ui", "--backend-store-uri", local]
    assert ui_command(server) is None
    monkeypatch.setenv("PAHCL_MLFLOW_UI_URL", "http://127.0.0.1:5000/")  # compose: the server as published
    assert run_url("http://mlflow:5000", "3", "abc") == run_url(local, "3", "abc")


def test_end_message_is_shell_quoted(monkeypatch):
    monkeypatch.delenv("PAHCL_MLFLOW_UI_URL", raising=False)
    msg = compare_trials_message("sqlite:////tmp/a b/mlflow.db", "1", "abc", "/v/bin/mlflow")
    lines = msg.splitlines()
    cmd = shlex.split(lines[0].split("compare trials: ", 1)[1].split("   (")[0])
    assert cmd == ["/v/bin/mlflow", "ui", "--backend-store-uri", "sqlite:////tmp/a b/mlflow.db"]
    urls = {ln.split(":", 1)[0].strip(): shlex.split(ln.split(":", 1)[1])[0] for ln in lines[1:]}
    assert urls["trials"] == trials_url("sqlite:////x", "1") and urls["parent run"] == run_url("sqlite:////x", "1", "abc")
    assert all("workflowType=machine_learning" in u for u in urls.values())
    parsed = parse_compare_trials_message("noise\n" + msg + "\nmore")
    assert shlex.split(parsed["command"])[-1] == "sqlite:////tmp/a b/mlflow.db"
    assert parsed["trials"] == urls["trials"] and parsed["charts"] == urls["charts"]
    server = compare_trials_message("http://h:5000", "1", "abc")
    assert "mlflow ui" not in server and "'http://h:5000/#/experiments/1/runs/abc?workflowType=machine_learning'" in server


def test_experiment_kind_tag_and_trials_view(tmp_path):
    uri = local_tracking_uri(tmp_path)
    exp = ensure_experiment(uri, tmp_path)
    c = _client(uri)
    assert c.get_experiment(exp).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    c.delete_experiment_tag(exp, EXPERIMENT_KIND_TAG)  # a store created before the tag existed
    assert ensure_experiment(uri, tmp_path) == exp
    assert c.get_experiment(exp).tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    save_trials_view(uri, exp, "val/knn_acc", "max", ["training.learning_rate"])
    save_trials_view(uri, exp, "val/knn_acc", "max", ["model.queue_size"])  # a later stage keeps earlier columns
    env = json.loads(c.get_experiment(exp).tags["mlflow.sharedViewState.pahcl-trials"])
    assert env["name"] and isinstance(env["createdAt"], int)
    state = json.loads(env["state"])
    assert state["selectedColumns"][:3] == ["metrics.`val/knn_acc`", "params.`model.queue_size`", "tags.`pahcl.end_reason`"]
    assert "params.`training.learning_rate`" in state["selectedColumns"]
    assert state["orderByKey"] == "metrics.`val/knn_acc`" and state["orderByAsc"] is False
    assert state["groupBy"]["groupByKeys"] == [{"mode": "tag", "groupByData": "pahcl.search_id"}]


def test_search_description_markdown():
    rows = [{"name": "m=0.99 lr=1.3e-3 #1", "run_id": "r1", "value": 0.41234, "epochs": 3, "end": "completed 3 epochs"},
            {"name": "m=0.999 lr=9.4e-3 #2", "run_id": "r2", "value": 0.2, "epochs": 1,
             "end": "stopped early by ASHA at epoch 1"},
            {"name": "m|x #3", "run_id": None, "value": None, "epochs": 0, "end": "failed"}]
    text = search_description("s-1", "val/knn_acc", "max", "7", "P", rows, ["optimization_history.png"],
                              verdict="confirmed on 3 seeds")
    assert "3 trials, 1 stopped early by ASHA" in text
    assert "**Verdict:** best trial **m=0.99 lr=1.3e-3 #1**, `val/knn_acc` = 0.4123 after 3 epochs." in text
    assert "**Confirmation:** confirmed on 3 seeds" in text
    assert "| 1 | [m=0.99 lr=1.3e-3 #1](#/experiments/7/runs/r1) | 0.4123 | 3 | completed 3 epochs |" in text
    assert "| 3 | m\\|x #3 | – | 0 | failed |" in text
    assert "[optimization history](#/experiments/7/runs/P/artifacts/plots/optimization_history.png)" in text
    many = [dict(rows[0], name=f"lr=1.0e-3 #{i}", run_id="r" * 32) for i in range(200)]
    long = search_description("s-1", "val/knn_acc", "max", "7", "P", many, ["optimization_history.png"])
    assert len(long) <= 8000 and "more in `results.csv`" in long and "Plots:" in long  # fits a tag


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
