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


def test_null_range_is_what_equal_configurations_spread_by_seed_noise_alone():
    import numpy as np

    from objective_noise import null_range

    assert null_range(0.1, 3, 4) == pytest.approx(3 / np.sqrt(np.pi) * 0.1 / 2)  # E[range of 3 N(0,1)] = 1.693
    assert null_range(0.1, 2, 1) == pytest.approx(2 / np.sqrt(np.pi) * 0.1)
    assert null_range(0.1, 4, 1) == pytest.approx(2.059 * 0.1, rel=0.01)  # Monte Carlo, tabulated d2(4) = 2.059
    row = analyse(_runs({"a": [0.3, 0.5, 0.7], "b": [0.2, 0.4, 0.6], "c": [0.7, 0.5, 0.3]}))[0]["last"]
    assert row["null_range"] == pytest.approx(1.693 * 0.2 / np.sqrt(3), rel=1e-3) and row["range"] == pytest.approx(0.1)


def test_merge_keeps_every_part_and_groups_runs_by_their_overrides(tmp_path):
    import json

    from objective_noise import merge, setting

    a = {"data": "d", "set": {"training.max_steps_per_epoch": 0}}
    assert setting(a) == "d [training.max_steps_per_epoch=0]" and setting({"data": "d"}) == "d"
    parts = []
    for i, (extra, shift) in enumerate([({}, 0.0), ({"set": {"training.max_steps_per_epoch": 0}}, 0.1)]):
        runs = [{**r, **extra, "last": r["last"] + shift} for r in _runs({"a": [0.3, 0.5], "b": [0.2, 0.4]})]
        j = {"command": f"cmd{i}", "machine": {"date": f"day{i}", "loadavg": [1, 1, 1]}, "load_start": [0, 0, 0],
             "seconds": 60.0, "runs": runs}
        (tmp_path / f"{i}.json").write_text(json.dumps(j))
        parts.append(str(tmp_path / f"{i}.json"))
    m = merge(parts)
    assert m["command"] == "cmd0 ; cmd1" and [p["date"] for p in m["parts"]] == ["day0", "day1"]
    assert [r["data"] for r in m["summary"]] == ["d", "d [training.max_steps_per_epoch=0]"]
    assert m["summary"][1]["last"]["config_means"]["a"] == pytest.approx(0.5) and m["seconds"] == 120.0
