"""Config loading, presets, dotted overrides and validation errors (pahcl/config.py)."""
from __future__ import annotations

import pytest
import yaml

from pahcl.config import (
    DEFAULT_CONFIG,
    Config,
    ConfigError,
    available_presets,
    build_config,
    config_from_dict,
    load_config,
    parse_override,
    resolve_preset,
)


def test_defaults_match_recommended_moco_hybrid():
    cfg = load_config()
    assert cfg.experiment.name == "pahcl_pretrain_moco"
    assert (cfg.data.sample_rate, cfg.data.segment_duration, cfg.data.num_substructures) == (5000, 1.0, 4)
    m = cfg.model
    assert m.encoder_type == "cnn_mamba"
    assert m.cnn_channels == [32, 64, 128, 256] and m.cnn_strides == [2, 2, 2, 2]
    assert (m.mamba_d_model, m.mamba_n_layers) == (256, 4)
    assert (m.proj_hidden_dim, m.proj_output_dim, m.sub_proj_hidden_dim, m.sub_proj_output_dim) == (512, 128, 256, 64)
    assert m.use_moco is True and m.moco_momentum == 0.999 and m.queue_size == 8192
    assert (cfg.loss.temperature, cfg.loss.lambda_cycle, cfg.loss.lambda_sub) == (0.07, 1.0, 1.0)
    t = cfg.training
    assert (t.num_epochs, t.batch_size, t.gradient_accumulation_steps) == (100, 64, 4)
    assert cfg.effective_batch_size == 256
    assert (t.learning_rate, t.weight_decay, t.warmup_epochs, t.min_lr) == (2e-3, 1e-4, 20, 1e-6)
    assert (t.use_amp, t.grad_clip_norm, t.num_workers, t.pin_memory, t.prefetch_factor) == (True, 1.0, 4, True, 2)
    assert (t.log_interval, t.save_interval) == (50, 10)
    a = cfg.augmentation
    assert (a.time_shift_max, a.amplitude_scale_range, a.gaussian_noise_std) == (0.1, [0.8, 1.2], 0.01)
    assert (a.prob_time_shift, a.prob_amplitude_scale) == (0.5, 0.5)
    assert cfg.seed == 42


def test_yaml_file_and_dataclass_defaults_agree():
    from_file = load_config(DEFAULT_CONFIG).to_dict()
    assert from_file == Config().to_dict()


def test_cli_and_dict_overrides_give_same_config():
    a = load_config(overrides=["training.learning_rate=1e-3", "model.use_moco=false", "model.cnn_channels=[8,8,16,16]",
                               "model.mamba_d_model=16"])
    b = load_config(overrides={"training.learning_rate": 1e-3, "model.use_moco": False,
                               "model.cnn_channels": [8, 8, 16, 16], "model.mamba_d_model": 16})
    assert a == b
    assert a.training.learning_rate == pytest.approx(1e-3) and a.model.use_moco is False


def test_yaml_1e_minus_3_string_is_read_as_float():
    # YAML 1.1 reads "1e-3" as a string; float fields accept it.
    assert parse_override("training.learning_rate=1e-3") == ("training.learning_rate", "1e-3")
    assert load_config(overrides=["training.learning_rate=1e-3"]).training.learning_rate == 1e-3


def test_int_field_accepts_integral_float_only():
    assert load_config(overrides={"training.batch_size": 32.0}).training.batch_size == 32
    with pytest.raises(ConfigError, match=r"training\.batch_size: expected an integer"):
        load_config(overrides={"training.batch_size": 32.5})


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("training.lr=1", r"training\.lr: unknown key .*learning_rate"),
        ("trainng.learning_rate=1", r"trainng: unknown section .*training"),
        ("training.learning_rate=0", r"training\.learning_rate: 0\.0 is out of range; allowed: \(0\.0, 10\.0\]"),
        ("training.learning_rate=-1e-3", r"training\.learning_rate: .* out of range"),
        ("model.moco_momentum=1.0", r"model\.moco_momentum: 1\.0 is out of range; allowed: \(0\.0, 1\.0\)"),
        ("model.moco_momentum=0", r"model\.moco_momentum: .* out of range"),
        ("model.queue_size=0", r"model\.queue_size: 0 is out of range; allowed: \[1, "),
        ("model.queue_size=big", r"model\.queue_size: expected an integer, got string 'big'"),
        ("model.use_moco=maybe", r"model\.use_moco: expected true or false"),
        ("model.encoder_type=transformer", r"model\.encoder_type: 'transformer' is not allowed; allowed values: \['cnn_mamba'\]"),
        ("model.mamba_backend=cuda", r"model\.mamba_backend: 'cuda' is not allowed; allowed values: \['auto', 'torch', 'mamba_ssm'\]"),
        ("model.cnn_channels=[8,16]", r"model\.cnn_channels: expected exactly 4 values"),
        ("model.cnn_channels=8", r"model\.cnn_channels: expected a list of int"),
        ("model.mamba_d_model=128", r"model\.mamba_d_model: 128 must equal model\.cnn_channels\[-1\]"),
        ("data.num_substructures=3", r"data\.num_substructures: 3 is not allowed; allowed values: \[4\]"),
        ("data.max_heart_rate_bpm=20", r"data\.max_heart_rate_bpm: 20\.0 is out of range; allowed: \[40\.0, 300\.0\]"),
        ("data.sample_rate=600", r"data\.bandpass_high: 400\.0 must be below Nyquist"),
        ("augmentation.prob_time_shift=1.5", r"augmentation\.prob_time_shift: 1\.5 is out of range; allowed: \[0\.0, 1\.0\]"),
        ("augmentation.amplitude_scale_range=[1.2,0.8]", r"augmentation\.amplitude_scale_range: .*low <= high"),
        ("training.warmup_epochs=200", r"training\.warmup_epochs: 200 must not exceed training\.num_epochs"),
        ("training.batch_size=1", r"training\.batch_size: 1 is out of range"),
        ("training.num_epochs=nan", r"training\.num_epochs: expected an integer"),
        ("loss.temperature=.nan", r"loss\.temperature: expected a finite number"),
        ("seed", r"override 'seed': expected KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key_and_allowed_values(override, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(overrides=[override])


def test_unknown_key_in_yaml_file_is_rejected(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"training": {"learning_rate": 1e-3, "epochs": 3}}))
    with pytest.raises(ConfigError, match=r"training\.epochs: unknown key; allowed keys under training: num_epochs"):
        load_config(p)


def test_partial_yaml_keeps_defaults(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  learning_rate: 0.01\n")
    cfg = load_config(p)
    assert cfg.training.learning_rate == 0.01 and cfg.training.batch_size == 64


def test_python_tag_in_yaml_is_refused_without_side_effect(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.yaml"
    p.write_text(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(p)
    assert not marker.exists()


def test_non_mapping_yaml_and_missing_file(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_config(p)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_presets_are_named_and_valid():
    assert {"full", "small", "tiny"} <= set(available_presets())
    full, small, tiny = (load_config(preset=n) for n in ("full", "small", "tiny"))
    assert full == load_config()
    assert small.model.mamba_d_model < full.model.mamba_d_model
    assert tiny.model.mamba_d_model < small.model.mamba_d_model
    # presets keep the architecture family
    for c in (small, tiny):
        assert c.model.encoder_type == "cnn_mamba" and len(c.model.cnn_channels) == 4


def test_auto_preset_is_small_on_cpu():
    import torch

    expected = "full" if torch.cuda.is_available() else "small"
    assert resolve_preset("auto") == expected
    with pytest.raises(ConfigError, match=r"preset: 'huge' is not a known preset; allowed values: auto, full"):
        resolve_preset("huge")


def test_overrides_apply_after_preset():
    cfg = load_config(preset="tiny", overrides=["model.queue_size=100"])
    assert cfg.model.queue_size == 100 and cfg.model.mamba_d_model == 16


def test_round_trip_through_plain_dict():
    cfg = load_config(preset="small", overrides=["training.learning_rate=3e-4"])
    assert config_from_dict(cfg.to_dict()) == cfg
    assert cfg.flat()["training.learning_rate"] == 3e-4
    assert build_config(cfg.to_dict(), {"seed": 7}).seed == 7
