"""Confirmation runs (issue 12 items 1 and 4): the pure parts (candidates, table, verdict, baseline) and one
real search with its confirmation (Ray, Optuna, MLflow in a temp sqlite store)."""
from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import yaml

from tune import confirm
from tune.spaces import SpaceError, load_space


def _res(cand, seed, knn, lin=0.5):
    return {"candidate": cand, "seed": seed, "error": False, "test/knn_acc": knn, "test/linear_acc": lin,
            "test/recordings": 8.0}


CANDS = [{"label": "top1", "params": {"a": 1}, "search_mean": 0.6}, {"label": "top2", "params": {"a": 2}, "search_mean": 0.5},
         {"label": "baseline", "params": {"a": 3}, "search_mean": float("nan")}]


def test_table_means_spread_and_paired_difference_to_the_baseline():
    res = [_res("top1", 0, 0.8), _res("top1", 1, 0.9), _res("top2", 0, 0.5), _res("top2", 1, 0.7),
           _res("baseline", 0, 0.6), _res("baseline", 1, 0.6)]
    rows = confirm.table(res, CANDS)
    assert [r["candidate"] for r in rows] == ["top1", "top2", "baseline"]  # best mean test/knn_acc first
    top1 = rows[0]
    assert top1["test/knn_acc mean"] == pytest.approx(0.85) and top1["test/knn_acc std"] == pytest.approx(0.0707, abs=1e-4)
    # paired by seed: (0.8-0.6, 0.9-0.6) -> 0.25 ± 0.0707
    assert top1["test/knn_acc vs baseline"] == pytest.approx(0.25)
    assert top1["test/knn_acc vs baseline std"] == pytest.approx(0.0707, abs=1e-4)
    assert top1["n_seeds"] == 2 and top1["test_recordings"] == 8.0
    winner, text = confirm.verdict(rows)
    assert winner == "top1" and text.startswith("confirmed: top1 beats the runner-up and the baseline")


def test_verdict_within_noise_and_baseline_wins():
    noisy = [_res("top1", 0, 0.9), _res("top1", 1, 0.5), _res("top2", 0, 0.6), _res("top2", 1, 0.7),
             _res("baseline", 0, 0.2), _res("baseline", 1, 0.2)]
    winner, text = confirm.verdict(confirm.table(noisy, CANDS))
    assert winner == "top1" and "within noise of the runner-up" in text and "baseline" not in text.split("within")[1]
    base_best = [_res("top1", 0, 0.3), _res("top1", 1, 0.3), _res("top2", 0, 0.2), _res("top2", 1, 0.2),
                 _res("baseline", 0, 0.8), _res("baseline", 1, 0.8)]
    winner, text = confirm.verdict(confirm.table(base_best, CANDS))
    assert winner == "baseline" and "nothing better than the stage's defaults" in text and "within noise" not in text
    one_seed = [_res("top1", 0, 0.9), _res("top2", 0, 0.1), _res("baseline", 0, 0.1)]
    assert "a single seed" in confirm.verdict(confirm.table(one_seed, CANDS))[1]
    failed = [{**_res(c["label"], 0, float("nan")), "error": True} for c in CANDS]
    rows = confirm.table(failed, CANDS)
    assert confirm.verdict(rows)[0] == "" and all(r["test/knn_acc mean"] is None for r in confirm.json_safe(rows))


def test_points_use_fresh_seeds():
    pts = confirm.points(CANDS[:2], seeds=2)
    assert list(pts) == ["top1/s0", "top1/s1", "top2/s0", "top2/s1"]
    assert {p["seed_index"] for p in pts.values()} == {confirm.FRESH_SEED_OFFSET, confirm.FRESH_SEED_OFFSET + 1}


def test_baseline_is_the_stage_defaults_moved_into_the_space(space_file, tmp_path):
    # moco_stage2's CPU budget: warmup choices [1, 2]; the recommended warmup 20 becomes 2, momentum stays 0.999
    sp = load_space("moco_stage2", results_root=tmp_path, budget="synthetic_cpu", log=lambda m: None)
    base = sp.baseline_params()
    assert base["training.warmup_epochs"] == 2 and base["model.moco_momentum"] == 0.999
    lr = sp.params["training.learning_rate"]
    assert lr.low <= base["training.learning_rate"] <= lr.high
    assert sp.confirm_top == 2 and sp.confirm_seeds == 3 and sp.fixed["data.test_fraction"] == 0.2
    # candidates: the baseline joins the top K, or is marked when it is one of them
    rows = [{"trial_id": "t1", "params": dict(base)}, {"trial_id": "t2", "params": {**base, "model.moco_momentum": 0.99}}]
    df = pd.DataFrame({"trial_id": ["t1", "t2"], "config": [1, 2]})
    agg = pd.DataFrame({"config": [1, 2], "mean": [0.5, 0.4]})
    cands = confirm.candidates(rows, agg, df, sp, top=2)
    assert [c["label"] for c in cands] == ["top1=baseline", "top2"]
    cands = confirm.candidates(rows[1:], agg[1:], df[1:], sp, top=2)
    assert [c["label"] for c in cands] == ["top1", "baseline"]


def test_confirm_settings_are_checked(space_file, tmp_path):
    bad = space_file(confirm={"top": 2, "test_fraction": 0})
    with pytest.raises(SpaceError, match="confirm.test_fraction: 0 leaves no test split"):
        load_space(bad, results_root=tmp_path, log=lambda m: None)
    with pytest.raises(SpaceError, match="--confirm-seeds"):
        load_space(space_file(confirm={"top": 1, "test_fraction": 0.25}), results_root=tmp_path, log=lambda m: None,
                   cli={"confirm_seeds": 0})


@pytest.mark.slow
def test_search_ends_with_a_confirmation_on_the_test_split(ray_session, space_file, tmp_path):
    """2 sampled configurations x 2 epochs, then top 1 + baseline x 2 fresh seeds on a 25 % test split: the
    table in the terminal output, summary.json (confirm / test / baseline keys), best_config.yaml = the
    winner, MLflow: confirmation runs nested and tagged, the verdict on the parent."""
    from tune.mlflow_utils import _client
    from tune.run_search import main

    space = space_file(num_samples=2, max_epochs=2, confirm={"top": 1, "seeds": 2, "test_fraction": 0.25},
                       scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 2})
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    res = main(["--space", str(space), "--results-dir", str(tmp_path / "results"), "--mlflow-uri", uri])
    assert res["exit_code"] == 0
    stage = tmp_path / "results" / "test_stage"
    summary = json.loads((stage / "summary.json").read_text())
    conf = summary["confirmation"]
    assert conf["seeds"] == 2 and conf["test_fraction"] == 0.25 and conf["metric"] == "test/knn_acc"
    labels = {r["candidate"] for r in conf["table"]}
    assert labels in ({"top1", "baseline"}, {"top1=baseline"})
    for r in conf["table"]:
        assert r["n_seeds"] == 2 and r["test_recordings"] > 0
        assert 0.0 <= r["test/knn_acc mean"] <= 1.0 and 0.0 <= r["test/linear_acc mean"] <= 1.0
        assert any("baseline" in k for k in r)
    assert conf["winner"] in labels and conf["verdict"]
    winner = next(r for r in conf["table"] if r["candidate"] == conf["winner"])
    text = (stage / "best_config.yaml").read_text()
    assert text.startswith(f"# confirmation winner {conf['winner']}: {conf['verdict']}\n")
    best = yaml.safe_load(text)
    for k, v in winner["params"].items():
        sect, key = k.split(".")
        assert best[sect][key] == pytest.approx(v)
    assert best["data"]["test_fraction"] == 0.25
    assert summary["selected"]["params"] == winner["params"]

    client = _client(uri)
    exp = client.get_experiment_by_name("pahcl-search")
    runs = client.search_runs([exp.experiment_id], max_results=200)
    parent = next(r for r in runs if r.data.tags.get("pahcl.role") == "search")
    assert parent.info.status == "FINISHED" and parent.data.tags["pahcl.verdict"] == conf["verdict"]
    assert parent.data.tags["pahcl.confirm_winner"] == conf["winner"]
    confirms = [r for r in runs if r.data.tags.get("pahcl.role") == "confirmation"]
    assert len(confirms) == 2 * len(labels)
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.info.status == "FINISHED" for r in confirms)
    assert all(math.isfinite(r.data.metrics["test/knn_acc"]) for r in confirms)
    assert {r.data.tags["pahcl.candidate"].rpartition("/s")[0] for r in confirms} == labels
    # the search's own trials are scored on validation only (no test metric on them)
    trials = [r for r in runs if r.data.tags.get("pahcl.role") == "trial"]
    assert len(trials) == 2 and all("test/knn_acc" not in r.data.metrics for r in trials)


def test_unfinished_counts_runs_stopped_before_max_epochs():
    """Ctrl+C during the confirmation: runs short of max_epochs (and not failed) mean no verdict yet."""
    from types import SimpleNamespace as R

    grid = [R(error=None, metrics={"epoch": 6}), R(error=None, metrics={"epoch": 3}), R(error=ValueError("x"), metrics={}),
            R(error=None, metrics=None)]
    assert confirm.unfinished(grid, 6) == 2
    rows = confirm.scores([R(error=None, metrics={"epoch": 6, "test/knn_acc": 0.5, "test/linear_acc": 0.25,
                                                  "test/recordings": 8}, config={"__confirm__": "top1=baseline/s2"})])
    assert rows == [{"candidate": "top1=baseline", "seed": 2, "error": False, "test/knn_acc": 0.5,
                     "test/linear_acc": 0.25, "test/recordings": 8.0}]
