"""bench/objective_noise.py's pure analysis: the paired differences a search's ranking depends on."""
from __future__ import annotations

import pytest

from objective_noise import analyse, paired_differences, paired_findings, paired_markdown


def _runs(vals: dict[str, list[float]]) -> list[dict]:
    return [{"data": "d", "config": c, "train_seed": s, "split_seed": 0, "last": v, "val_cycles": 1,
             "val_recordings": 1, "val_groups": 1} for c, vs in vals.items() for s, v in enumerate(vs)]


def test_paired_difference_removes_what_both_share_with_the_seed():
    # b is a shifted by -0.1 on every seed: each spreads 0.2 over seeds, their paired difference not at all
    runs = _runs({"a": [0.3, 0.5, 0.7], "b": [0.2, 0.4, 0.6], "c": [0.7, 0.5, 0.3]})
    p = paired_differences(runs, "last")
    assert p["a - b"]["mean"] == pytest.approx(0.1) and p["a - b"]["std"] == pytest.approx(0.0, abs=1e-12)
    assert p["a - c"]["mean"] == pytest.approx(0.0) and p["a - c"]["std"] == pytest.approx(0.4)
    assert set(p) == {"a - b", "a - c", "b - c"} and p["b - c"]["n"] == 3
    res = {"summary": analyse(runs)}
    assert res["summary"][0]["last"]["paired"] == p
    md = paired_markdown(res)
    assert "| a - b | a - c | b - c |" in md and "+0.000 ± 0.400 (0.0)" in md and "—" in md  # std 0: no ratio


def test_paired_findings_count_pairs_below_one_std_and_name_the_strongest():
    runs = _runs({"a": [0.3, 0.5, 0.7], "b": [0.2, 0.41, 0.6], "c": [0.7, 0.5, 0.3]})
    text = paired_findings({"summary": analyse(runs)})
    # a - b: +0.097 ± 0.006 (strongest); a - c: 0 ± 0.4; b - c: -0.097 ± 0.39: 2 of 3 below 1
    assert text.startswith("`d`: 2 of 3 pairs below 1 (2 of 3 under the search's metric")
    assert "the strongest, a - b under val/knn_acc, last epoch: +0.097 ± 0.006" in text
