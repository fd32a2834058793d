"""`python -m pahcl.pretrain --config FILE` with a complete config (a search's best_config.yaml) runs it
exactly as written: no preset is merged over it (on CPU, preset auto would swap in `small`'s widths,
warmup, queue and batch). The search-level check against a real trial is
tests/tune/test_gpu_packing.py::test_best_config_yaml_reproduces_the_winning_trial."""
import json

import yaml

from pahcl.config import dump_config, is_complete_config, load_config


def _complete(tmp_path):
    cfg = load_config(preset="tiny", overrides={
        "training.device": "cpu", "training.num_epochs": 1, "training.max_steps_per_epoch": 1,
        "training.warmup_epochs": 1, "data.sample_rate": 2000, "model.queue_size": 24, "training.batch_size": 4})
    path = tmp_path / "best_config.yaml"
    dump_config(cfg, path)
    return cfg, path


def test_is_complete_config(tmp_path):
    cfg, path = _complete(tmp_path)
    tree = yaml.safe_load(path.read_text())
    assert is_complete_config(tree)
    del tree["training"]["warmup_epochs"]
    assert not is_complete_config(tree) and not is_complete_config({"model": {"use_moco": False}})


def test_pretrain_runs_a_complete_config_without_a_preset(tmp_path, capsys):
    from pahcl.pretrain import main

    cfg, path = _complete(tmp_path)
    assert main(["--config", str(path), "--data", "synthetic:8", "--out", str(tmp_path / "a"), "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "preset: none (--config is a complete config: no preset applied)" in cap.err
    assert json.loads(cap.out.strip().splitlines()[-1])["preset"] == "none"
    assert yaml.safe_load((tmp_path / "a" / "config.yaml").read_text()) == cfg.to_dict()
    # an explicit --preset is still honoured
    assert main(["--config", str(path), "--preset", "small", "--data", "synthetic:8", "--out", str(tmp_path / "b"),
                 "--no-progress", "--set", "model.queue_size=24", "--set", "training.max_steps_per_epoch=1",
                 "--set", "training.num_epochs=1", "--set", "training.warmup_epochs=1",
                 "--set", "training.gradient_accumulation_steps=1"]) == 0  # small's 2 x 32 > synthetic:8's 44 cycles
    ran = yaml.safe_load((tmp_path / "b" / "config.yaml").read_text())
    assert ran["model"]["mamba_d_model"] == 64 and ran["model"]["mamba_d_model"] != cfg.model.mamba_d_model
