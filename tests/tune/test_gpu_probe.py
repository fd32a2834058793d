"""The memory probe of ``--gpus-per-trial auto`` (tune/resources.py), run for real on CPU.

The probe subprocess builds the largest configuration of each SHIPPED space exactly as a trial does
(so the space's warmup, accumulation and queue are validated with the trial's num_epochs: the bug it
had was overriding num_epochs to 1 under a warmup of 10-30 epochs), trains two optimizer steps and runs
the epoch-end validation, and reports host memory on CPU. The spaces are loaded with the tiny preset and
a small synthetic set (the configuration rules and the searched values are the shipped ones).
"""
from __future__ import annotations

import json

import pytest


INHERITED = {
    "simclr_stage1": {"training.learning_rate": 1e-3, "training.warmup_epochs": 10, "training.batch_size": 64,
                      "training.gradient_accumulation_steps": 4},
    "moco_stage2": {"model.moco_momentum": 0.995, "training.learning_rate": 1e-3, "training.warmup_epochs": 15,
                    "training.batch_size": 64, "training.gradient_accumulation_steps": 4},
}


@pytest.fixture(scope="module")
def probe_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("probe_cache")  # the synthetic cycles are generated once


def _results_root(tmp_path, inherit: bool):
    root = tmp_path / "results"
    if inherit:
        for stage, ov in INHERITED.items():
            (root / stage).mkdir(parents=True)
            (root / stage / "summary.json").write_text(json.dumps(
                {"search_id": "x", "metric": "val/knn_acc", "best": {"trial_id": "t0", "metric_value": 0.5,
                                                                    "overrides": ov}}))
    return root


@pytest.mark.parametrize("stage,inherit", [("simclr_stage1", False), ("moco_stage2", False), ("moco_stage2", True),
                                           ("moco_stage3", False), ("moco_stage3", True)])
def test_probe_subprocess_on_cpu_for_each_shipped_space(stage, inherit, tmp_path, probe_cache):
    from tune.resources import largest_overrides, measure_peak_memory
    from tune.spaces import load_space

    sp = load_space(stage, results_root=_results_root(tmp_path, inherit), log=lambda m: None,
                    cli={"preset": "tiny", "data": "synthetic:60"})  # >= 256 training cycles after the test split: 128 x 2 and 64 x 4 fit
    if stage != "simclr_stage1":
        assert (sp.inherited_from != "recommended defaults") == inherit
    largest = largest_overrides(sp)
    p = measure_peak_memory(sp, sp.data, probe_cache, device="cpu", timeout=600)
    assert p["device"] == "cpu"
    assert p["peak_rss"] > p["baseline_rss"] > 0  # building + stepping + validating the trial allocated memory
    assert p["steps"] >= 1 and p["step_s"] > 0  # up to two optimizer steps of the largest batch x accumulation
    assert p["val_cycles"] > 0 and p["train_cycles"] > 0  # validation (kNN bank = training cycles) ran
    assert p["batch_size"] == largest.get("training.batch_size", p["batch_size"])
    if stage == "simclr_stage1":
        assert p["batch_size"] == 128 and p["accumulation"] == 2 and not p["use_moco"]  # largest micro-batch
    else:
        assert p["use_moco"] and p["queue_size"] == largest.get("model.queue_size", p["queue_size"])
    if stage == "moco_stage3":
        assert p["queue_size"] == 16384
    if inherit:  # the inherited batch / accumulation are what the probe ran
        assert (p["batch_size"], p["accumulation"]) == (64, 4)


def test_probe_overrides_keep_the_trial_schedule():
    """The probe never shortens num_epochs below the warmup: only max_steps_per_epoch changes."""
    from tune.resources import probe_overrides

    ov = {"training.num_epochs": 60, "training.warmup_epochs": 30, "model.queue_size": 8192}
    assert probe_overrides(ov) == {**ov, "training.max_steps_per_epoch": 2}


def test_probe_pack_arithmetic_states_the_margin():
    """need = (reserve + context) * 1.1; k = floor(free / need); the cap holds the reserve plus margin."""
    from tune.resources import GIB, MARGIN, pack

    k, frac, need = pack(total=24 * GIB, used_before=2 * GIB, reserved=4 * GIB, context=GIB // 2)
    assert MARGIN == 0.10 and need == int(4.5 * GIB * 1.1)
    assert k == 4  # 22 / 4.95
    assert frac * 24 * GIB >= 4 * GIB * 1.1 and frac == pytest.approx((22 / 4 - 0.5) / 24)
