"""The --smoke-test of bench/encoder_table.py and bench/preprocess_throughput.py run end to end (real Trainer,
real preprocessing) and write the JSON that bench/run_all.py renders."""
import json
import subprocess
import sys
from pathlib import Path

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
            assert {(d, f, "knn"), (d, f, "linear")} <= feats
    for c in j["summary"]:
        assert 0 <= c["cv"]["mean"] <= 1 and 0 <= c["test"]["mean"] <= 1 and c["cv"]["n"] == 1
    runs = [r for r in j["runs"] if r["seed"] is not None]
    assert len(runs) == 2 and all(len(r["history"]) == 1 and not r["reused"] for r in runs)
    assert "| 0-1 → 2-9 | pretrained encoder | 1 |" in j["markdown"]


def test_preprocess_throughput_smoke(tmp_path):
    j = _run("preprocess_throughput.py", tmp_path / "p.json")
    assert [r["workers"] for r in j["rows"]] == [1, 2]
    assert all(r["recordings"] == 4 and r["recordings_per_s"] > 0 for r in j["rows"])
    assert set(j["rows"][0]["full_sets_min"]) == {"CirCor (5,272)", "PhysioNet 2016 (3,240)"}
