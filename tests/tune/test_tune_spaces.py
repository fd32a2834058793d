"""Search-space validation, stage inheritance, grace-period rule, hashing, resources (no Ray)."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings

import pytest
import yaml

from tune_helpers import BASE_SPACE, REPO_ROOT, write_space
from pahcl.config import ConfigError
from tune.spaces import SpaceError, load_space, recommended_defaults, space_hash


def _space(tmp_path, name="test_stage", **changes):
    sp = yaml.safe_load(yaml.safe_dump(BASE_SPACE))
    sp["stage"] = name
    sp.update(changes)
    return write_space(tmp_path / f"{name}.yaml", sp)


def _params(**extra):
    p = dict(BASE_SPACE["params"])
    p.update(extra)
    return p


@pytest.mark.parametrize("stage", ["simclr_stage1", "moco_stage2", "moco_stage3"])
@pytest.mark.parametrize("budget", [None, "synthetic_cpu", "synthetic_cuda", "smoke"])
def test_shipped_spaces_validate(stage, budget, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sp = load_space(stage, results_root=tmp_path, budget=budget, log=lambda m: None)
    assert sp.metric == "val/logo_knn_acc" and sp.mode == "max"
    assert sp.grace_period >= sp.largest_warmup() and sp.max_epochs >= sp.largest_warmup()


def test_stage_definitions(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        s1 = load_space("simclr_stage1", results_root=tmp_path, log=lambda m: None)
        s2 = load_space("moco_stage2", results_root=tmp_path, log=lambda m: None)
        s3 = load_space("moco_stage3", results_root=tmp_path, log=lambda m: None)
    assert s1.fixed["model.use_moco"] is False
    lr = s1.params["training.learning_rate"]
    assert (lr.type, lr.low, lr.high, lr.log) == ("float", 1e-4, 1e-2, True)
    assert s1.params["training.warmup_epochs"].choices == [5, 10, 20]
    assert s1.params["training.batch_size"].choices == [32, 64, 128]
    for bs in (32, 64, 128):  # derived: effective batch stays 256
        ov = s1.trial_overrides({"training.batch_size": bs})
        assert ov["training.batch_size"] * ov["training.gradient_accumulation_steps"] == 256
    assert s2.fixed["model.use_moco"] is True and s2.fixed["model.queue_size"] == 8192
    assert s2.params["model.moco_momentum"].choices == [0.99, 0.995, 0.999]
    lr2 = s2.params["training.learning_rate"]  # stage 1 never ran -> centred on 2e-3, x/÷3
    assert lr2.low == pytest.approx(2e-3 / 3) and lr2.high == pytest.approx(6e-3)
    assert s3.params["model.queue_size"].choices == [4096, 8192, 16384]
    assert s3.fixed["model.moco_momentum"] == 0.999


BAD = [
    ("unknown top key", {"learning_rate": 0.1}, "learning_rate"),
    ("unknown config key", {"params": _params(**{"training.lr": {"type": "float", "low": 1e-4, "high": 1e-2}})},
     "params.training.lr"),
    ("bad distribution", {"params": _params(**{"training.learning_rate": {"type": "gauss", "low": 1, "high": 2}})},
     "params.training.learning_rate.type"),
    ("empty choices", {"params": _params(**{"model.moco_momentum": {"type": "categorical", "choices": []}})},
     "params.model.moco_momentum.choices"),
    ("lr <= 0", {"params": _params(**{"training.learning_rate": {"type": "float", "low": 0.0, "high": 1e-2}})},
     "params.training.learning_rate"),
    ("log with low <= 0", {"params": _params(**{"training.learning_rate": {"type": "float", "low": 0, "high": 1e-2,
                                                                           "log": True}})},
     "params.training.learning_rate.low"),
    ("low >= high", {"params": _params(**{"training.learning_rate": {"type": "float", "low": 1e-2, "high": 1e-3}})},
     "params.training.learning_rate"),
    ("momentum 1", {"params": _params(**{"model.moco_momentum": {"type": "categorical", "choices": [0.99, 1.0]}})},
     "params.model.moco_momentum"),
    ("momentum 0", {"params": _params(**{"model.moco_momentum": {"type": "categorical", "choices": [0.0]}})},
     "params.model.moco_momentum"),
    ("queue 0", {"params": _params(**{"model.queue_size": {"type": "categorical", "choices": [0, 64]}})},
     "params.model.queue_size"),
    ("wrong type", {"params": _params(**{"training.batch_size": {"type": "categorical", "choices": [8, "big"]}})},
     "params.training.batch_size"),
    ("unknown dist key", {"params": _params(**{"model.moco_momentum": {"type": "categorical", "choices": [0.99],
                                                                       "prior": 1}})},
     "params.model.moco_momentum.prior"),
    ("bad mode", {"mode": "maximise"}, "mode"),
    ("bad metric", {"metric": "accuracy"}, "metric"),
    ("num_samples 0", {"num_samples": 0}, "num_samples"),
    ("bad reduction", {"scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 1}},
     "scheduler.reduction_factor"),
    ("unknown scheduler key", {"scheduler": {"type": "asha", "patience": 3}}, "scheduler.patience"),
    ("fixed and searched", {"fixed": {**BASE_SPACE["fixed"], "model.moco_momentum": 0.99}}, "params.model.moco_momentum"),
    ("raw loss with queue varying",
     {"metric": "train/loss", "params": _params(**{"model.queue_size": {"type": "categorical", "choices": [32, 64]}}),
      "fixed": {k: v for k, v in BASE_SPACE["fixed"].items() if k != "model.queue_size"}}, "metric"),
    ("loss with use_moco varying",
     {"metric": "loss", "params": _params(**{"model.use_moco": {"type": "categorical", "choices": [True, False]}}),
      "fixed": {k: v for k, v in BASE_SPACE["fixed"].items() if k != "model.use_moco"}}, "metric"),
    ("max_epochs below warmup",
     {"max_epochs": 2, "params": _params(**{"training.warmup_epochs": {"type": "categorical", "choices": [1, 3]}}),
      "fixed": {k: v for k, v in BASE_SPACE["fixed"].items() if k != "training.warmup_epochs"}}, "max_epochs"),
    ("derived not a multiple",
     {"derived": {"effective_batch_size": 20}, "params": _params(**{"training.batch_size": {"type": "categorical",
                                                                                            "choices": [8, 16]}}),
      "fixed": {k: v for k, v in BASE_SPACE["fixed"].items() if not k.startswith("training.gradient")
                and k != "training.batch_size"}}, "effective_batch_size"),
    ("empty_params", {"params": {}}, "params: empty"),
    ("data folder missing", {"data": "circor:/no/such/folder"}, "data: data spec"),
]


@pytest.mark.parametrize("case,changes,key", BAD, ids=[b[0] for b in BAD])
def test_bad_space_names_the_key(case, changes, key, tmp_path):
    path = _space(tmp_path, **changes)
    with pytest.raises(ConfigError) as ei:  # SpaceError is a ConfigError
        load_space(path, results_root=tmp_path, log=lambda m: None)
    assert isinstance(ei.value, SpaceError)
    assert key in str(ei.value), str(ei.value)


def test_unsafe_yaml_tag_refused_without_side_effect(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f"stage: evil\nfixed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SpaceError, match="safe_load"):
        load_space(path, results_root=tmp_path, log=lambda m: None)
    assert not marker.exists()


def test_grace_period_raised_to_largest_warmup(tmp_path):
    fixed = {k: v for k, v in BASE_SPACE["fixed"].items() if k != "training.warmup_epochs"}
    path = _space(tmp_path, max_epochs=4, fixed=fixed,
                  params=_params(**{"training.warmup_epochs": {"type": "categorical", "choices": [1, 3]}}))
    logs = []
    with pytest.warns(UserWarning, match="raised to 3"):
        sp = load_space(path, results_root=tmp_path, log=logs.append)
    assert sp.grace_period == 3
    assert any("grace_period 1 is smaller" in m for m in logs)


def _stage2(tmp_path):
    """A stage-2-like space inheriting lr + warmup from 'prev_stage'."""
    fixed = {k: v for k, v in BASE_SPACE["fixed"].items() if k != "training.warmup_epochs"}
    return _space(tmp_path, name="next_stage", max_epochs=30, fixed=fixed,
                  inherit={"from": "prev_stage", "params": ["training.learning_rate", "training.warmup_epochs"]},
                  params={"model.moco_momentum": {"type": "categorical", "choices": [0.99, 0.999]},
                          "training.learning_rate": {"type": "float", "around": "inherited", "factor": 3},
                          "training.warmup_epochs": {"type": "categorical", "around": "inherited",
                                                     "multipliers": [0.5, 1, 1.5]}})


def test_inherits_from_previous_stage_summary(tmp_path):
    results = tmp_path / "results"
    prev = results / "prev_stage"
    prev.mkdir(parents=True)
    (prev / "summary.json").write_text(json.dumps({
        "search_id": "prev_stage-1", "metric": "val/knn_acc",
        "best": {"trial_id": "abc123", "metric_value": 0.8,
                 "overrides": {"training.learning_rate": 1e-3, "training.warmup_epochs": 10,
                               "training.batch_size": 64}}}))
    logs = []
    sp = load_space(_stage2(tmp_path), results_root=results, log=logs.append)
    lr = sp.params["training.learning_rate"]
    assert lr.low == pytest.approx(1e-3 / 3) and lr.high == pytest.approx(3e-3) and lr.log
    assert sp.params["training.warmup_epochs"].choices == [5, 10, 15]
    assert sp.inherited == {"training.learning_rate": 1e-3, "training.warmup_epochs": 10}
    msg = "\n".join(logs)
    assert "[inherit] from" in msg and str(prev / "summary.json") in msg and "abc123" in msg
    assert sp.grace_period == 15  # raised to the largest warmup of the space


def test_inherits_from_results_csv_when_no_summary(tmp_path):
    results = tmp_path / "results"
    prev = results / "prev_stage"
    prev.mkdir(parents=True)
    (prev / "results.csv").write_text("rank,trial_id,param:training.learning_rate,param:training.warmup_epochs,"
                                      "val/knn_acc\n1,t1,0.004,2,0.9\n2,t2,0.001,4,0.5\n")
    logs = []
    sp = load_space(_stage2(tmp_path), results_root=results, log=logs.append)
    assert sp.inherited["training.learning_rate"] == pytest.approx(0.004)
    assert sp.params["training.warmup_epochs"].choices == [1, 2, 3]
    assert any("results.csv" in m for m in logs)


def test_missing_previous_stage_falls_back_to_defaults_with_warning(tmp_path):
    logs = []
    with pytest.warns(UserWarning, match="never ran"):
        sp = load_space(_stage2(tmp_path), results_root=tmp_path / "empty", log=logs.append)
    assert sp.inherited == {"training.learning_rate": 2e-3, "training.warmup_epochs": 20}  # pretrain.yaml's
    assert sp.params["training.warmup_epochs"].choices == [10, 20, 30]
    assert any("recommended defaults" in m for m in logs)


def test_stage3_inherits_fixed_values(tmp_path):
    prev = tmp_path / "moco_stage2"
    prev.mkdir()
    (prev / "summary.json").write_text(json.dumps({"best": {"trial_id": "x", "overrides": {
        "model.moco_momentum": 0.995, "training.learning_rate": 5e-4, "training.warmup_epochs": 10}}}))
    sp = load_space("moco_stage3", results_root=tmp_path, log=lambda m: None)
    assert sp.fixed["model.moco_momentum"] == 0.995
    assert sp.fixed["training.learning_rate"] == 5e-4 and sp.fixed["training.warmup_epochs"] == 10


def test_space_hash_changes_with_the_file(tmp_path):
    path = _space(tmp_path)
    h1 = space_hash(load_space(path, results_root=tmp_path, log=lambda m: None))
    path.write_text(path.read_text().replace("num_samples: 4", "num_samples: 5"))
    h2 = space_hash(load_space(path, results_root=tmp_path, log=lambda m: None))
    assert h1 != h2


def test_gpus_auto_on_cpu_is_zero(tmp_path, capsys):
    import torch

    from tune.resources import plan_resources

    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    sp = load_space(_space(tmp_path), results_root=tmp_path, log=lambda m: None)
    logs = []
    res = plan_resources(sp, "auto", 1, sp.data, tmp_path, log=logs.append)
    assert res.gpus == 0 and res.gpu_fraction is None
    assert "no CUDA" in logs[0]


def test_cli_bad_space_exits_2_before_ray(tmp_path):
    path = _space(tmp_path, mode="sideways")
    out = subprocess.run([sys.executable, str(REPO_ROOT / "tune" / "run_search.py"), "--space", str(path),
                          "--results-dir", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "mode" in out.stderr and "allowed" in out.stderr
    assert not (tmp_path / "r" / "mlflow.db").exists()


def test_gpus_auto_packs_by_measured_peak(tmp_path, monkeypatch):
    """The packing arithmetic with a stubbed probe: k = floor(free / ((reserve + context) * 1.1)) trials per GPU."""
    import torch

    import tune.resources as R

    sp = load_space(_space(tmp_path), results_root=tmp_path, log=lambda m: None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.delenv("PAHCL_SIMULATED_GPU", raising=False)
    seen = {}

    def probe(space, data, cache_dir, device="cuda", timeout=900):
        seen["overrides"] = R.largest_overrides(space)
        return {"peak_reserved": 9 * 2**30, "context": 2**30, "total": 80 * 2**30, "used_before": 10 * 2**30,
                "step_s": 0.5}

    monkeypatch.setattr(R, "measure_peak_memory", probe)
    logs = []
    res = R.plan_resources(sp, "auto", 2, sp.data, tmp_path, log=logs.append)
    assert res.trials_per_gpu == 6 and res.gpus == pytest.approx(1 / 6)  # 70 GiB free / 11 GiB
    assert res.gpu_fraction == pytest.approx((70 / 6 - 1) / 80)
    assert res.gpu_fraction * 80 * 2**30 >= 9 * 2**30 * 1.1  # each trial's cap holds the measured reserve + margin
    assert "6 trial(s) per GPU" in logs[0] and res.step_s == 0.5
    assert seen["overrides"]["model.moco_momentum"] == 0.99  # non-memory keys: first candidate


def _stage1_summary(root, provenance):
    prev = root / "simclr_stage1"
    prev.mkdir(parents=True)
    (prev / "summary.json").write_text(json.dumps({"search_id": "s1", "metric": "val/knn_acc", "provenance": provenance,
        "best": {"trial_id": "t1", "metric_value": 0.5, "overrides": {
            "training.learning_rate": 1e-3, "training.warmup_epochs": 2, "training.batch_size": 8,
            "training.gradient_accumulation_steps": 2}}}))


def test_inheriting_from_another_preset_or_data_is_refused_unless_asked(tmp_path):
    """A tiny-preset CPU stage 1 must not silently set a stage 2 on another preset or data (issue 12)."""
    _stage1_summary(tmp_path, {"budget": "synthetic_cpu", "preset": "tiny", "data": "synthetic:480",
                               "data_fingerprint": "f" * 64})
    with pytest.raises(SpaceError, match=r"inherit\.from simclr_stage1: .*preset 'tiny' there, 'small' here.*"
                                         r"--inherit-anyway"):
        load_space("moco_stage2", results_root=tmp_path, budget="synthetic_cpu", cli={"preset": "small"},
                   log=lambda m: None)
    with pytest.raises(SpaceError, match=r"data 'synthetic:480' there, 'synthetic:64' here"):
        load_space("moco_stage2", results_root=tmp_path, budget="synthetic_cpu", cli={"data": "synthetic:64"},
                   log=lambda m: None)
    msgs = []
    sp = load_space("moco_stage2", results_root=tmp_path, budget="synthetic_cpu", cli={"preset": "small"},
                    log=msgs.append, allow_inherit_mismatch=True)
    assert sp.fixed["training.batch_size"] == 8 and any("inherited anyway" in m for m in msgs)
    same = load_space("moco_stage2", results_root=tmp_path, budget="synthetic_cpu", log=lambda m: None)
    assert same.inherited_provenance["data_fingerprint"] == "f" * 64


def test_summary_without_provenance_is_inherited_with_a_warning(tmp_path):
    _stage1_summary(tmp_path, None)
    msgs = []
    load_space("moco_stage2", results_root=tmp_path, budget="synthetic_cpu", log=msgs.append)
    assert any("records no preset or data" in m for m in msgs)


def test_changed_data_files_under_the_same_spec_are_refused(tmp_path):
    from tune.run_search import SearchSetupError, _check_inherited_data

    _stage1_summary(tmp_path, {"budget": "synthetic_cpu", "preset": "tiny", "data": "synthetic:480",
                               "data_fingerprint": "a" * 64})
    sp = load_space("moco_stage2", results_root=tmp_path, budget="synthetic_cpu", log=lambda m: None)
    _check_inherited_data(sp, {"data_fingerprint": "a" * 64}, allow=False)  # same files: fine
    with pytest.raises(SearchSetupError, match="fingerprint differs.*--inherit-anyway"):
        _check_inherited_data(sp, {"data_fingerprint": "b" * 64}, allow=False)
    _check_inherited_data(sp, {"data_fingerprint": "b" * 64}, allow=True)



def test_one_path_from_sampled_values_to_overrides(tmp_path):
    """The trial (from the search's TrialContext, as the driver builds it) and the driver/summary (from the
    Space) get the same overrides from the one function, spaces.overrides_for (issue 14 item 1)."""
    from tune.resources import TrialResources
    from tune.run_search import build_context
    from tune.spaces import overrides_for
    from tune.trainable import SEED_INDEX_KEY, trial_overrides

    sp = load_space("simclr_stage1", results_root=tmp_path, log=lambda m: None)
    ids = {"tracking_uri": "file:///x", "experiment_id": "1", "parent_run_id": "p"}
    context = build_context(sp, "s-1", tmp_path, ids, TrialResources(1, 0, None))
    params = {"training.learning_rate": 3e-3, "training.warmup_epochs": 10, "training.batch_size": 64}
    for idx in (0, 2):
        assert trial_overrides({**params, SEED_INDEX_KEY: idx}, context) == sp.trial_overrides(params, seed_index=idx)
    ov = sp.trial_overrides(params, seed_index=2)
    assert ov["training.gradient_accumulation_steps"] == sp.effective_batch_size // 64
    assert ov["seed"] == int(sp.base_tree().get("seed", 42)) + 2 and "seed" not in sp.trial_overrides(params)
    assert overrides_for({}, fixed={"seed": 7}, max_epochs=3, base_tree={}, seed_index=1)["seed"] == 8
    with pytest.raises(SpaceError, match="effective_batch_size"):
        overrides_for({"training.batch_size": 48}, fixed={}, max_epochs=1, base_tree={}, effective_batch_size=256)


def test_recommended_defaults_are_the_base_configs_values(tmp_path):
    """One source (issue 14 item 4): the values a stage falls back to are the base config file's, no copy."""
    from pahcl.config import Config, DEFAULT_CONFIG

    assert recommended_defaults() == {k: Config().flat()[k] for k in ("training.learning_rate",
                                      "training.warmup_epochs", "model.moco_momentum", "model.queue_size")}
    mine = tmp_path / "base.yaml"
    mine.write_text(DEFAULT_CONFIG.read_text().replace("warmup_epochs: 20", "warmup_epochs: 7"))
    assert recommended_defaults(mine)["training.warmup_epochs"] == 7
    stage = yaml.safe_load(_stage2(tmp_path).read_text())
    stage["base_config"] = str(mine)
    with pytest.warns(UserWarning, match="never ran"):
        sp = load_space(write_space(tmp_path / "s2.yaml", stage), results_root=tmp_path / "empty", log=lambda m: None)
    assert sp.inherited["training.warmup_epochs"] == 7
