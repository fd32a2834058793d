"""The pre-Ray search guard (tune/guard.py) and the CUDA budget of the shipped spaces."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tune_helpers import REPO_ROOT


def test_guard_refuses_the_degenerate_default_before_anything_starts(tmp_path):
    """The old CUDA default (shipped space, bare `synthetic`): queue 8192 > 967 cycles, 180 steps < 1000."""
    out = subprocess.run([sys.executable, str(REPO_ROOT / "tune" / "run_search.py"), "--space", "moco_stage2",
                          "--data", "synthetic", "--preset", "full", "--gpus-per-trial", "0",
                          "--results-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stdout[-2000:] + out.stderr[-2000:]
    assert "training cycles; 3 optimizer steps per epoch, 180 per 60-epoch trial" in out.stdout
    assert "estimated cost: 24 trials x 60 epochs = 1440 trial-epochs" in out.stdout
    err = out.stderr.strip().splitlines()[-1]
    # ~780 training cycles (the exact count depends on the stratified three-way split of synthetic's recordings)
    assert re.match(r"error: search guard: model\.queue_size 8192 exceeds the [78]\d\d training cycles", err), err
    assert "1/(1-m) = 1000" in err and "--allow-degenerate" in err and "synthetic_cuda" in err
    assert not (tmp_path / "r" / "mlflow.db").exists()


def _plain_res():
    from tune.resources import TrialResources

    return TrialResources(cpus=1, gpus=0.25, gpu_fraction=0.2, trials_per_gpu=4, step_s=0.25)


@pytest.fixture(scope="module")
def cuda_budget_cycles(tmp_path_factory):
    """Training cycles of the synthetic_cuda budget's data, split as the driver splits it."""
    from pahcl.config import build_config
    from pahcl.train import prepare_data
    from tune.spaces import load_space

    sp = load_space("moco_stage3", results_root=tmp_path_factory.mktemp("r"), budget="synthetic_cuda",
                    log=lambda m: None)
    cfg = build_config(sp.base_tree(), sp.trial_overrides({k: d.candidates()[0] for k, d in sp.params.items()}))
    tr, _ = prepare_data(cfg, sp.data, cache_dir=tmp_path_factory.mktemp("cache"), log=lambda m: None)
    return sp.data, len(tr)


@pytest.mark.parametrize("stage", ["simclr_stage1", "moco_stage2", "moco_stage3"])
def test_guard_passes_the_cuda_budget_of_every_shipped_space(stage, cuda_budget_cycles, tmp_path):
    from tune.guard import check_search
    from tune.spaces import load_space

    data, n = cuda_budget_cycles
    sp = load_space(stage, results_root=tmp_path, budget="synthetic_cuda", log=lambda m: None)
    assert sp.data == data and sp.preset == "full"
    logs = []
    plan = check_search(sp, n, _plain_res(), log=logs.append)
    assert plan["queue_max"] <= n
    if plan["moco"]:
        assert plan["steps_per_trial_min"] >= 4 * plan["momentum_steps"]  # well past 1/(1-m) for m = 0.999
    assert any("s/step (probe" in m for m in logs)


def test_guard_override_flag_and_space_key_warn_instead(tmp_path):
    from tune.guard import GuardError, check_search
    from tune.spaces import load_space

    sp = load_space("moco_stage2", results_root=tmp_path, cli={"preset": "full"}, log=lambda m: None)
    with pytest.raises(GuardError, match="search guard"):
        check_search(sp, 967, _plain_res(), log=lambda m: None)
    logs = []
    check_search(sp, 967, _plain_res(), allow=True, log=logs.append)
    assert any(m.startswith("[guard] WARNING (--allow-degenerate)") for m in logs)
    demo = load_space("moco_stage2", results_root=tmp_path, budget="synthetic_cpu", log=lambda m: None)
    logs = []
    check_search(demo, 37, _plain_res(), log=logs.append)  # a 6-epoch x 6-step CPU demo: warned, not refused
    assert any("guard: warn in moco_stage2.yaml" in m for m in logs)


def test_cuda_machine_without_data_gets_the_cuda_budget(monkeypatch):
    import torch

    import tune.run_search as run_search

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert run_search.choose_budget(run_search.parse_args(["--space", "moco_stage2"])) == "?synthetic_cuda"
    assert run_search.choose_budget(run_search.parse_args(["--space", "moco_stage2", "--data", "x:y"])) is None
