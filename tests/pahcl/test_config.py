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


# ----------------------------------------------------------------------------- YAML limits (issue 15 item 6)

_LIMIT_PROBE = r"""
import resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a regression fails with MemoryError, not 8 GB
from pahcl.config import ConfigError, load_config
t0 = time.perf_counter()
try:
    load_config(sys.argv[1])
    outcome = "loaded"
except ConfigError as e:
    outcome = str(e)
except MemoryError:
    outcome = "MemoryError"
print(outcome)
# peak RSS of this process image (VmHWM; ru_maxrss would include the forking pytest's own peak)
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print(f"{time.perf_counter() - t0:.3f} {hwm}")
"""


def _alias_bomb(depth: int) -> str:
    """The "billion laughs": each level is a list of 9 aliases of the one before (9**depth leaves)."""
    parts = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, depth)]
    return "seed: [" + ", ".join(parts) + "]\n"


@pytest.mark.parametrize("kind", ["alias_bomb_depth9", "file_50MB", "recursive_alias"])
def test_hostile_yaml_refused_fast_in_one_line_with_little_memory(kind, tmp_path):
    """Before the limits: depth 9 spent 40+ s building a repr for the error and hit MemoryError; a 50 MB file
    grew to 7.9 GB. Now: refused by size (before reading) or by alias expansion (before building objects)."""
    import subprocess
    import sys

    path = tmp_path / f"{kind}.yaml"
    if kind == "file_50MB":
        with open(path, "w") as f:
            f.write("seed: ")
            for _ in range(50):
                f.write("a" * (1 << 20))
    else:
        path.write_text(_alias_bomb(9) if kind == "alias_bomb_depth9" else "seed: &a [1, *a]\n")
    assert path.stat().st_size < 1000 or kind == "file_50MB"
    out = subprocess.run([sys.executable, "-c", _LIMIT_PROBE, str(path)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    message, figures = out.stdout.rstrip("\n").split("\n")
    seconds, peak_kib = float(figures.split()[0]), int(figures.split()[1])
    print(f"{kind}: {seconds:.3f} s, peak RSS {peak_kib / 1024:.0f} MiB: {message}")
    assert message.startswith(f"config file {path}: ")
    assert {"alias_bomb_depth9": "aliases", "file_50MB": "larger than", "recursive_alias": "recursive"}[kind] in message
    assert len(message) < 400
    assert seconds < 5.0, seconds            # the refusal itself (imports excluded); measured: milliseconds
    assert peak_kib < 100 * 1024, peak_kib   # the whole interpreter (VmHWM); measured 17-18 MiB


def test_error_messages_are_cut_and_aliases_within_the_limit_still_load(tmp_path):
    err = ConfigError("x" * 10_000_000)
    assert len(str(err)) < 2100 and str(err).endswith("[message cut: 10000000 characters]")
    ok = tmp_path / "anchors.yaml"  # ordinary anchors / merge keys are still fine
    ok.write_text("training: &t {batch_size: 8}\nevaluation: {<<: *t}\n")
    assert load_config(ok).evaluation.batch_size == 8
    bomb = tmp_path / "bomb5.yaml"  # 9**5 = 59049 nodes: inside the limit; the error repr is cut
    bomb.write_text(_alias_bomb(5))
    with pytest.raises(ConfigError, match=r"^seed: .*message cut") as e:
        load_config(bomb)
    assert len(str(e.value)) < 2100


def test_zero_loss_weights_refused_and_one_zero_warned():
    """Issue 15 item 8: lambda_cycle=0 AND lambda_sub=0 trained a zero loss without a word."""
    import warnings

    from pahcl.config import ConfigWarning

    with pytest.raises(ConfigError, match=r"^loss.lambda_cycle and loss.lambda_sub: both 0 .* > 0"):
        build_config({}, ["loss.lambda_cycle=0", "loss.lambda_sub=0"])
    for key, other in (("lambda_cycle", "sub-structure"), ("lambda_sub", "cycle-level")):
        with pytest.warns(ConfigWarning, match=rf"loss.{key}=0: that loss is off, only the {other} loss"):
            cfg = build_config({}, [f"loss.{key}=0"])
        assert getattr(cfg.loss, key) == 0.0  # allowed (an ablation), and recorded as given
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_config({})  # the defaults warn about nothing
