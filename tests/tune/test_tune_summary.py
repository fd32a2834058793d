"""tune/summary.py: ranking at the same fidelity, the one-line reason when no trial produced the metric, seed
aggregation and the one "within noise" rule."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from tune.summary import error_line, fair_order, metric_at_epoch, no_result_reason


def test_ranking_never_lets_an_early_value_outrank_a_finished_trial():
    """ASHA-stopped trials are compared at their rung, finished ones at the final epoch (issue 12 item 3)."""
    df = pd.DataFrame({"trial_id": list("abcdef"), "val/knn_acc": [0.9, 0.5, 0.6, 0.95, 0.7, 0.99],
                       "epochs": [2, 6, 6, 4, 4, 1], "status": ["TERMINATED"] * 5 + ["ERROR"]})
    order = df.iloc[fair_order(df, "val/knn_acc", "max")]["trial_id"].tolist()
    # finished (6 epochs) by final value, then stopped at rung 4, then stopped at rung 2, errored last
    assert order == ["c", "b", "d", "e", "a", "f"]
    order_min = df.iloc[fair_order(df, "val/knn_acc", "min")]["trial_id"].tolist()
    assert order_min == ["b", "c", "e", "d", "a", "f"]
    hist = pd.DataFrame({"epoch": [1, 2, 3], "val/knn_acc": [0.1, 0.2, 0.3]})
    assert metric_at_epoch(hist, "val/knn_acc", 2) == 0.2
    assert math.isnan(metric_at_epoch(hist, "val/knn_acc", 5))


def test_error_line_is_the_original_exception_without_the_retry_note():
    wrapped = RuntimeError("ray::ImplicitFunc.train()\n  File x\nRuntimeError: DataSpecError: data spec 'c': folder "
                           "x [not retried: this failure repeats from the same checkpoint]")
    assert error_line(wrapped) == "DataSpecError: data spec 'c': folder x"
    tb = RuntimeError("Traceback\n  File y\npahcl.data.readers.DataSpecError: data spec 'c': no folder")
    assert error_line(tb) == "pahcl.data.readers.DataSpecError: data spec 'c': no folder"


def test_no_result_reason_names_the_first_trials_error():
    ok = {"metric": 0.5, "error": "", "trial_name": "t_1", "trial_id": "a"}
    bad = [{"metric": float("nan"), "error": f"E{i}: x", "trial_name": f"t_{i}", "trial_id": f"id{i}"} for i in (2, 1)]
    assert no_result_reason([ok, *bad]) is None
    assert no_result_reason(bad) == "all 2 trials failed; first error (trial id1): E1: x"
    assert no_result_reason([]) == "no trial ran"


def test_seed_aggregation_and_its_within_noise_verdict():
    from types import SimpleNamespace

    from tune.summary import aggregate_seeds

    space = SimpleNamespace(metric="m", mode="max")
    df = pd.DataFrame({"config": [1, 1, 2, 2, 3, 3, 4], "param:lr": [1, 1, 2, 2, 3, 3, 4],
                       "m": [0.80, 0.90, 0.84, 0.80, 0.50, 0.52, 0.95], "epochs": [6, 6, 6, 6, 6, 6, 6],
                       "status": ["TERMINATED"] * 6 + ["ERROR"]})
    agg = aggregate_seeds(df, space).set_index("config")
    assert agg.loc[1, "vs_best"] == "best" and agg.loc[1, "mean"] == pytest.approx(0.85) and agg.loc[1, "n_seeds"] == 2
    assert agg.loc[2, "vs_best"] == "within noise"  # 0.82 vs 0.85: inside the seed spread (std 0.071)
    assert agg.loc[3, "vs_best"] == "worse (beyond seed spread)"
    assert agg.loc[4, "n_seeds"] == 0 and agg.loc[4, "vs_best"] == "no result"  # errored: not counted


def test_one_within_noise_rule_for_seed_aggregation_and_confirmation():
    """A margin equal to the larger seed std is within noise in both places (they used to disagree there)."""
    from types import SimpleNamespace

    from tune import confirm
    from tune.summary import aggregate_seeds, beyond_noise

    assert beyond_noise(0.25, 0.25, 0.1) is False and beyond_noise(0.26, 0.25, 0.1) is True
    space = SimpleNamespace(metric="m", mode="max")
    df = pd.DataFrame({"config": [1, 1, 2, 2], "param:lr": [1, 1, 2, 2], "m": [0.9, 0.9, 0.5, 0.5],
                       "epochs": [6] * 4, "status": ["TERMINATED"] * 4})
    agg = aggregate_seeds(df, space).set_index("config")  # 0.9 vs 0.5, std 0 and 0: beyond
    assert agg.loc[2, "vs_best"] == "worse (beyond seed spread)"
    df["m"] = [1.0, 0.5, 0.5, 0.5]  # 0.75 ± 0.354 vs 0.5 ± 0: margin 0.25 <= 0.354
    assert aggregate_seeds(df, space).set_index("config").loc[2, "vs_best"] == "within noise"
    k = confirm.CONFIRM_METRIC
    row = lambda c, mean, std: {"candidate": c, f"{k} mean": mean, f"{k} std": std, "n_seeds": 3}  # noqa: E731
    tie = [row("top1", 0.75, 0.25), row("top2", 0.5, 0.0), row(confirm.BASELINE, 0.4, 0.0)]
    assert "within noise of the runner-up" in confirm.verdict(tie)[1]  # margin 0.25 == std 0.25
    tie[0][f"{k} mean"] = 0.76
    assert confirm.verdict(tie)[1].startswith("confirmed: top1")
