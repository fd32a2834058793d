"""The --smoke-test of bench/encoder_table.py, bench/preprocess_throughput.py and bench/search_efficiency.py run
end to end (real Trainer, real preprocessing, real Ray Tune searches) and write the JSON that bench/run_all.py
renders."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, out: Path) -> dict:
    p = subprocess.run([sys.executable, f"bench/{script}", "--smoke-test", "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True, timeout=900, env={"OMP_NUM_THREADS": "1", **__import__("os").environ})
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())


def test_encoder_table_smoke(tmp_path):
    j = _run("encoder_table.py", tmp_path / "t.json")
    feats = {(c["direction"], c["features"], c["protocol"]) for c in j["summary"]}
    for d in ("0-1:2-9", "2-9:0-1"):
        for f in ("pretrained", "projector", "random_init", "logspec", "pcg"):
            assert {(d, f, "knn"), (d, f, "linear"), (d, f, "linear_unit")} <= feats
    for c in j["summary"]:
        assert 0 <= c["cv"]["mean"] <= 1 and 0 <= c["test"]["mean"] <= 1 and c["cv"]["n"] == 1
    runs = [r for r in j["runs"] if r["seed"] is not None]
    assert len(runs) == 2 and all(len(r["history"]) == 1 and not r["reused"] for r in runs)
    assert "| 0-1 → 2-9 | pretrained encoder | 1 |" in j["markdown"]
    # --combine: runs concatenated, and the seeds recorded are every part's, not the first part's
    other = dict(j, args=dict(j["args"], seeds=[7]), runs=[dict(r, seed=7) for r in runs])
    (tmp_path / "u.json").write_text(json.dumps(other))
    p = subprocess.run([sys.executable, "bench/encoder_table.py", "--combine", str(tmp_path / "t.json"),
                        str(tmp_path / "u.json"), "--out", str(tmp_path / "c.json")], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["args"]["seeds"] == sorted({*j["args"]["seeds"], 7}) and len(c["runs"]) == len(j["runs"]) + 2
    assert "| 0-1 → 2-9 | pretrained encoder | 2 |" in c["markdown"]


@pytest.mark.slow
def test_search_efficiency_smoke(tmp_path):
    """Grid, TPE + ASHA and random + ASHA through run_search.main, then each selected configuration and the
    baseline retrained with seeds 42, 43 and scored on the held-out test split."""
    j = _run("search_efficiency.py", tmp_path / "se.json")
    s = j["summary"]
    assert j["space"]["confirm"] == {"top": 0, "test_fraction": 0.2}  # the service's split, no confirmation
    assert [(r["strategy"], r["seed"]) for r in j["raw"]] == [("grid", 0), ("tpe", 0), ("random", 0)]
    grid = {tuple(c) for c in ([2e-3, 1, 0.999], [6e-3, 1, 0.999])}
    assert {tuple(r["selected"]) for r in s["rows"]} <= grid and tuple(s["baseline"]) == (2e-3, 1, 0.999)
    assert s["grid_trial_epochs"] == 4 and s["per_strategy"]["grid"]["searches"] == 1
    # each distinct configuration (the picks and the baseline) trained once per seed, on the same test split
    assert sorted((tuple(r["config"]), r["seed"]) for r in j["tests"]) == sorted(
        (tuple(c["config"]), sd) for c in s["configs"] for sd in (42, 43))
    assert len({tuple(r["cycles"]) for r in j["tests"]}) == 1 and j["tests"][0]["test/recordings"] > 0
    assert all(0 <= r[k] <= 1 for r in j["tests"] for k in ("test/knn_acc", "test/linear_acc"))
    assert s["reproduced_seed42"] == s["in_grid"] == len(s["configs"])  # bare Trainer seed 42 = the Ray trial
    assert len(s["verdicts"]) == 3 and "| **(d) baseline configuration** (no search) |" in j["markdown"]
    import run_all  # docs/benchmarks.md section 2: this run rendered, the Yaseen run "not run yet"

    text = run_all.sec_search({"search_efficiency": j})
    assert j["markdown"] in text and "Not run yet: `python bench/search_efficiency.py --data yaseen:" in text


def test_preprocess_throughput_smoke(tmp_path):
    j = _run("preprocess_throughput.py", tmp_path / "p.json")
    assert [r["workers"] for r in j["rows"]] == [1, 2]
    assert all(r["recordings"] == 4 and r["recordings_per_s"] > 0 for r in j["rows"])
    assert set(j["full_sets"]) == {"CirCor (5,272)", "PhysioNet 2016 (3,240)"}
    assert "PhysioNet 2016 (3,240): min (extrapolated)" in j["markdown"]


def test_preprocess_extrapolation_uses_the_matching_rate():
    """CirCor at circor_tiny's rate per audio second, PhysioNet 2016 at the auto-segmented (Yaseen) rate, both
    for circor_tiny's mean recording duration."""
    from preprocess_throughput import summarise

    runs = [{"spec": "circor:c", "workers": 1, "wall_s": 1.0, "recordings_per_s": 10.0, "audio_s_per_s": 200.0,
             "recordings": 10, "audio_s": 200.0},
            {"spec": "yaseen:y", "workers": 1, "wall_s": 10.0, "recordings_per_s": 40.0, "audio_s_per_s": 20.0,
             "recordings": 400, "audio_s": 1000.0}]
    rows, md = summarise(runs, ["circor:c", "yaseen:y"], [1])
    assert rows[0]["full_sets_min"] == {"CirCor (5,272)": 5272 * 20.0 / 200.0 / 60}
    assert rows[1]["full_sets_min"] == {"PhysioNet 2016 (3,240)": 3240 * 20.0 / 20.0 / 60}


def test_objective_noise_smoke_and_analysis(tmp_path):
    """One tiny run per setting end to end; the analysis on hand-made runs gives the exact stds and ratio."""
    p = subprocess.run([sys.executable, "bench/objective_noise.py", "--smoke-test", "--data", "synthetic:40",
                        "--out", str(tmp_path / "n.json")], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    j = json.loads((tmp_path / "n.json").read_text())
    run = j["runs"][0]
    assert run["config"] == "baseline" and len(run["history"]) == 2 and 0 <= run["logo"] <= 1
    from objective_noise import analyse

    runs = [{"data": "d", "config": c, "train_seed": s, "split_seed": 0, "last": v, "last3": v, "rec": v, "logo": v,
             "val_cycles": 1, "val_recordings": 1, "val_groups": 1}
            for c, vals in (("lr/3", [0.1, 0.3]), ("baseline", [0.5, 0.7]), ("lrx3", [0.2, 0.4])) for s, v in enumerate(vals)]
    runs.append({**runs[2], "train_seed": 0, "split_seed": 1, "last": 0.9})  # a split resample of the baseline
    row = analyse(runs)[0]["last"]
    assert abs(row["seed_std"] - 0.1414) < 1e-3 and abs(row["split_std"] - 0.2828) < 1e-3
    assert abs(row["range"] - 0.4) < 1e-9 and abs(row["noise_over_range"] - 0.2828 / 0.4) < 1e-3
