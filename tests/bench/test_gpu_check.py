"""bench/gpu_check.py (`make gpu-check`) runs end to end as a CPU dry run, and bench/run_all.py renders its
JSON: "not run" for anything but a CUDA run, the figures' tables for a CUDA-shaped result."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    p = subprocess.run([sys.executable, "bench/gpu_check.py", "--smoke-test", "--skip-tests", "--budget-s", "1500",
                        "--out", str(out)],
                       cwd=str(REPO), capture_output=True, text=True, timeout=1800,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_gpu_check_cpu_dry_run_measures_every_part(smoke):
    assert smoke["device"] == "cpu" and smoke["smoke"] and not smoke["missing"]
    assert [r["space"] for r in smoke["probe"]] == ["moco_stage2"]  # the dry run measures stage 2 only
    for r in smoke["probe"]:
        assert r["predicted_need_gib"] > 0 and r["measured_gib"] > 0, r
        assert r["trial"]["steps"] >= 1 and r["probe"]["val_cycles"] > 0
    p = smoke["packing"]
    assert p["k"] == 2 and len(p["packed_steps_per_s"]) == 2 and p["aggregate_steps_per_s"] > 0, p
    amp = {r["amp"]: r for r in smoke["amp"] if r.get("backend") == "torch"}
    assert amp["bf16"]["amp_used"] == "torch.bfloat16" and amp["fp32"]["amp_used"] == "None"
    assert amp["bf16"]["median_step_s"] > 0 and amp["fp32"]["median_step_s"] > 0


def test_run_all_renders_gpu_check(smoke):
    import run_all

    assert "**Not run**" in run_all.sec_gpu(None)
    dry = run_all.sec_gpu(smoke)
    assert "**Not run**" in dry and "CPU dry run" in dry and "make gpu-check" in dry
    cuda = copy.deepcopy(smoke)  # the same JSON shaped as a CUDA run: the figures' tables render
    cuda.update(device="cuda", cuda_tests={"command": "python -m pytest -q -m gpu tests/pahcl", "summary": "2 passed"})
    cuda["machine"]["gpu"] = "a CUDA device"
    for r in cuda["probe"]:
        r.update(k_here=3)
    text = run_all.sec_gpu(cuda)
    assert "| moco_stage2 |" in text and "2 passed" in text and "packed" in text and "| torch | bf16 |" in text
