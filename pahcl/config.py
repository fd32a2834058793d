"""Typed configuration for PA-HCL: one dataclass tree, loaded with ``yaml.safe_load``,
overridden with dotted keys, validated in one place before any work starts.

    cfg = load_config("pahcl/configs/pretrain.yaml", overrides=["training.learning_rate=1e-3"])
    cfg = load_config(path, preset="small", overrides={"model.use_moco": False})

Every error is a ``ConfigError`` naming the key path and what is allowed.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "pretrain.yaml"
PRESET_DIR = CONFIG_DIR / "presets"


class ConfigError(ValueError):
    """A configuration key is unknown, has the wrong type, or is out of range.

    The message is cut to ``MAX_MESSAGE`` characters: a value shown with ``!r`` can be large (a YAML alias
    tree within ``MAX_YAML_NODES``), and an error is one readable line, never megabytes."""

    MAX_MESSAGE = 2000

    def __init__(self, message: object = "", *args):
        text = str(message)
        if len(text) > self.MAX_MESSAGE:
            text = f"{text[:self.MAX_MESSAGE]} ... [message cut: {len(text)} characters]"
        super().__init__(text, *args)


def _f(default, *, lo=None, hi=None, lo_open=False, hi_open=False, choices=None, length=None, help=""):
    """A dataclass field with its allowed values in metadata (checked by ``validate``)."""
    meta = dict(lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, choices=choices, length=length, help=help)
    if isinstance(default, list):
        return field(default_factory=lambda d=default: list(d), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ExperimentConfig:
    name: str = _f("pahcl_pretrain_moco")


@dataclass
class DataConfig:
    sample_rate: int = _f(5000, lo=500, hi=48000)
    segment_duration: float = _f(1.0, lo=0.1, hi=5.0)
    num_substructures: int = _f(4, choices=[4], help="S1, systole, S2, diastole")
    bandpass_low: float = _f(25.0, lo=0.0, lo_open=True, hi=1000.0)
    bandpass_high: float = _f(400.0, lo=0.0, lo_open=True, hi=2400.0)
    val_fraction: float = _f(0.2, lo=0.0, lo_open=True, hi=1.0, hi_open=True,
                             help="share of the groups (left after the test split) that validate")
    test_fraction: float = _f(0.0, lo=0.0, hi=1.0, hi_open=True,
                              help="share of the groups held out as test (0 = none); never seen by training, "
                                   "validation or a search's ranking")
    max_cycles_per_recording: int = _f(0, lo=0, help="0 = keep all")
    max_heart_rate_bpm: float = _f(200.0, lo=40.0, hi=300.0,
                                   help="automatic segmentation: highest heart rate the period search admits "
                                        "(200 suits children; ~120 for adults at rest)")
    segment_unannotated: bool = _f(False, help="annotated recordings (CirCor): also segment automatically the "
                                               "stretches (>= 2 s) outside the annotated cycles and use their cycles "
                                               "(source 'auto'); annotated cycles stay as annotated")


@dataclass
class ModelConfig:
    encoder_type: str = _f("cnn_mamba", choices=["cnn_mamba"])
    cnn_channels: list[int] = _f([32, 64, 128, 256], length=4)
    cnn_strides: list[int] = _f([2, 2, 2, 2], length=4)
    mamba_d_model: int = _f(256, lo=8)
    mamba_n_layers: int = _f(4, lo=1, hi=64)
    mamba_d_state: int = _f(16, lo=1, hi=256)
    mamba_expand: int = _f(2, lo=1, hi=8)
    mamba_d_conv: int = _f(4, lo=2, hi=8)
    mamba_backend: str = _f("auto", choices=["auto", "torch", "mamba_ssm"])
    mamba_chunk_size: int = _f(32, lo=1, hi=4096, help="tokens per checkpointed scan chunk (torch backend)")
    proj_hidden_dim: int = _f(512, lo=1)
    proj_output_dim: int = _f(128, lo=1)
    sub_proj_hidden_dim: int = _f(256, lo=1)
    sub_proj_output_dim: int = _f(64, lo=1)
    use_moco: bool = _f(True)
    moco_momentum: float = _f(0.999, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    queue_size: int = _f(8192, lo=1, hi=1_000_000)
    embed_pool: str = _f("window", choices=["window", "cycle"],
                         help="cycle embedding (projector input and frozen features): mean over all tokens of the "
                              "window (zero padding included) or over the cycle's own span, S1 onset to next S1 onset")
    embed_subs: bool = _f(False, help="frozen features (embed) append the span means over S1, systole, S2 and "
                                     "diastole to the cycle embedding (5 x mamba_d_model); training is unchanged")


@dataclass
class LossConfig:
    temperature: float = _f(0.07, lo=0.0, lo_open=True, hi=10.0)
    lambda_cycle: float = _f(1.0, lo=0.0)
    lambda_sub: float = _f(1.0, lo=0.0)


@dataclass
class TrainingConfig:
    num_epochs: int = _f(100, lo=1, hi=100_000)
    batch_size: int = _f(64, lo=2, hi=65536, help="at least 2: contrastive losses need negatives")
    gradient_accumulation_steps: int = _f(4, lo=1, hi=1024)
    learning_rate: float = _f(2e-3, lo=0.0, lo_open=True, hi=10.0)
    weight_decay: float = _f(1e-4, lo=0.0, hi=1.0)
    warmup_epochs: int = _f(20, lo=0, hi=100_000)
    min_lr: float = _f(1e-6, lo=0.0)
    use_amp: bool = _f(True, help="CUDA only; CPU always trains in fp32")
    grad_clip_norm: float = _f(1.0, lo=0.0, help="0 disables clipping")
    num_workers: int = _f(4, lo=0, hi=256)
    pin_memory: bool = _f(True)
    prefetch_factor: int = _f(2, lo=1, hi=64)
    log_interval: int = _f(50, lo=1)
    save_interval: int = _f(10, lo=1, help="epochs between numbered checkpoints")
    device: str = _f("auto", choices=["auto", "cpu", "cuda"])
    max_steps_per_epoch: int = _f(0, lo=0, help="0 = full epoch; >0 caps optimizer steps (smoke runs)")


@dataclass
class AugmentationConfig:
    time_shift_max: float = _f(0.1, lo=0.0, hi=0.5, help="fraction of the window")
    amplitude_scale_range: list[float] = _f([0.8, 1.2], length=2)
    gaussian_noise_std: float = _f(0.01, lo=0.0, hi=10.0)
    prob_time_shift: float = _f(0.5, lo=0.0, hi=1.0)
    prob_amplitude_scale: float = _f(0.5, lo=0.0, hi=1.0)
    # physiological augmentations (0 = off: the defaults keep the old views); see pahcl/data/dataset.py
    prob_time_stretch: float = _f(0.0, lo=0.0, hi=1.0, help="heart-rate change: resample the cycle by a factor")
    time_stretch_range: list[float] = _f([0.85, 1.15], length=2)
    prob_band_limit: float = _f(0.0, lo=0.0, hi=1.0, help="random low-pass (150-400 Hz) or high-pass (25-80 Hz)")
    prob_snr_noise: float = _f(0.0, lo=0.0, hi=1.0, help="white noise at an SNR drawn from snr_db_range")
    snr_db_range: list[float] = _f([5.0, 30.0], length=2)
    prob_sub_gain: float = _f(0.0, lo=0.0, hi=1.0, help="an independent gain per substructure (S1, systole, S2, diastole)")
    sub_gain_range: list[float] = _f([0.5, 1.5], length=2)
    prob_other_cycle: float = _f(0.0, lo=0.0, hi=1.0,
                                 help="view 2 from another cycle of the same recording (when it has one)")


@dataclass
class EvaluationConfig:
    knn_k: int = _f(20, lo=1)
    knn_temperature: float = _f(0.07, lo=0.0, lo_open=True)
    batch_size: int = _f(256, lo=1)


@dataclass
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    seed: int = _f(42, lo=0, hi=2**32 - 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, e.g. ``{"training.learning_rate": 0.002, ...}``."""
        return flatten(self.to_dict())

    @property
    def effective_batch_size(self) -> int:
        return self.training.batch_size * self.training.gradient_accumulation_steps


# ----------------------------------------------------------------------------- helpers


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (arg, *_) = typing.get_args(tp)
        return f"list of {arg.__name__}"
    return getattr(tp, "__name__", str(tp))


def _coerce(path: str, value: Any, tp) -> Any:
    """Coerce ``value`` to the field type ``tp`` or raise ConfigError naming ``path``."""
    origin = typing.get_origin(tp)
    if origin in (list, tuple):
        (arg,) = typing.get_args(tp)[:1]
        if isinstance(value, str):  # "--set model.cnn_channels=[8,16]" already parsed by yaml; a bare str is wrong
            raise ConfigError(f"{path}: expected a list of {arg.__name__}, got string {value!r}")
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list of {arg.__name__}, got {type(value).__name__} {value!r}")
        return [_coerce(f"{path}[{i}]", v, arg) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{path}: expected true or false, got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConfigError(f"{path}: expected an integer, got {type(value).__name__} {value!r}")
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected an integer, got string {value!r}") from None
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{path}: expected an integer, got {value!r}")
            value = int(value)
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected a number, got bool {value!r}")
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                value = float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got string {value!r}") from None
        if not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {type(value).__name__} {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp!r} at {path}")


def _build(cls, data: Mapping[str, Any], path: str = ""):
    """Build dataclass ``cls`` from a nested mapping, rejecting unknown keys."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path or '<root>'}: expected a mapping of keys, got {type(data).__name__}")
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{where}: unknown key; allowed keys{' under ' + path if path else ''}: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        sub = f"{path}.{name}" if path else name
        tp = hints[name]
        if _is_dataclass_type(tp):
            kwargs[name] = _build(tp, data[name] if data[name] is not None else {}, sub)
        else:
            kwargs[name] = _coerce(sub, data[name], tp)
    return cls(**kwargs)


def _check_field(path: str, value: Any, meta: Mapping[str, Any]) -> None:
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError(f"{path}: {value!r} is not allowed; allowed values: {choices}")
    length = meta.get("length")
    if length is not None and len(value) != length:
        raise ConfigError(f"{path}: expected exactly {length} values, got {len(value)}: {value!r}")
    items = value if isinstance(value, list) else [value]
    for v in items:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            check_range(path, v, lo=meta.get("lo"), hi=meta.get("hi"), lo_open=bool(meta.get("lo_open")),
                        hi_open=bool(meta.get("hi_open")))


def check_range(path: str, v: float, *, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
                error: type[ValueError] = ConfigError) -> None:
    """THE number range check (config fields here, space-file numbers in ``tune.spaces``): ``error``
    "<path>: <v> is out of range; allowed: [lo, hi)" when ``v`` lies outside the interval."""
    bad_lo = lo is not None and (v <= lo if lo_open else v < lo)
    bad_hi = hi is not None and (v >= hi if hi_open else v > hi)
    if bad_lo or bad_hi:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        rng = f"{lb}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{rb}"
        raise error(f"{path}: {v!r} is out of range; allowed: {rng}")


def _walk(obj, path: str = ""):
    for f in dataclasses.fields(obj):
        sub = f"{path}.{f.name}" if path else f.name
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _walk(value, sub)
        else:
            yield sub, value, f.metadata


def validate(cfg: Config) -> Config:
    """The one place every rule lives. Raises ConfigError naming the key; returns cfg."""
    for path, value, meta in _walk(cfg):
        _check_field(path, value, meta)
    m, d, t, a = cfg.model, cfg.data, cfg.training, cfg.augmentation
    for i, c in enumerate(m.cnn_channels):
        if c < 1:
            raise ConfigError(f"model.cnn_channels[{i}]: {c} must be >= 1")
    for i, s in enumerate(m.cnn_strides):
        if s not in (1, 2, 4):
            raise ConfigError(f"model.cnn_strides[{i}]: {s} is not allowed; allowed values: [1, 2, 4]")
    if m.cnn_channels[-1] != m.mamba_d_model:
        raise ConfigError(
            f"model.mamba_d_model: {m.mamba_d_model} must equal model.cnn_channels[-1] "
            f"({m.cnn_channels[-1]}): the CNN's last block feeds the Mamba stack"
        )
    if d.bandpass_high >= d.sample_rate / 2:
        raise ConfigError(
            f"data.bandpass_high: {d.bandpass_high} must be below Nyquist (data.sample_rate/2 = {d.sample_rate / 2})"
        )
    if d.bandpass_low >= d.bandpass_high:
        raise ConfigError(f"data.bandpass_low: {d.bandpass_low} must be below data.bandpass_high ({d.bandpass_high})")
    lo, hi = a.amplitude_scale_range
    if not 0 < lo <= hi:
        raise ConfigError(f"augmentation.amplitude_scale_range: {[lo, hi]} must satisfy 0 < low <= high")
    for key in ("time_stretch_range", "sub_gain_range", "snr_db_range"):
        lo, hi = getattr(a, key)
        if not (lo <= hi and (key == "snr_db_range" or lo > 0)):
            rule = "low <= high" if key == "snr_db_range" else "0 < low <= high"
            raise ConfigError(f"augmentation.{key}: {[lo, hi]} must satisfy {rule}")
    if t.min_lr > t.learning_rate:
        raise ConfigError(f"training.min_lr: {t.min_lr} must not exceed training.learning_rate ({t.learning_rate})")
    if t.warmup_epochs > t.num_epochs:
        raise ConfigError(
            f"training.warmup_epochs: {t.warmup_epochs} must not exceed training.num_epochs ({t.num_epochs})"
        )
    _check_loss_weights(cfg.loss)
    return cfg


class ConfigWarning(UserWarning):
    """A valid but unusual setting (shown once per process by Python's default warning filter)."""


def _check_loss_weights(loss: LossConfig) -> None:
    """Both weights 0 train a zero loss (nothing learns): refused. One of them 0 switches that loss off: warned."""
    if loss.lambda_cycle == 0 and loss.lambda_sub == 0:
        raise ConfigError("loss.lambda_cycle and loss.lambda_sub: both 0 make the training loss 0 (nothing learns); "
                          "set at least one of them > 0")
    for key, other in (("lambda_cycle", "sub-structure"), ("lambda_sub", "cycle-level")):
        if getattr(loss, key) == 0:
            warnings.warn(f"loss.{key}=0: that loss is off, only the {other} loss trains", ConfigWarning,
                          stacklevel=3)


# ----------------------------------------------------------------------------- overrides


def parse_override(item: str) -> tuple[str, Any]:
    """``"training.learning_rate=1e-3"`` -> ``("training.learning_rate", 0.001)`` (value read as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected KEY=VALUE, e.g. training.learning_rate=1e-3")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.load(raw, Loader=LimitedSafeLoader) if raw.strip() else raw  # noqa: S506 - safe + limited
    except (yaml.YAMLError, _YamlLimit, RecursionError) as e:
        raise ConfigError(f"{key}: cannot parse value {raw[:200]!r}: {e or type(e).__name__}") from None
    return key, value


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in a nested dict, checking each segment names a known section."""
    parts = key.split(".")
    node: Any = tree
    cls: Any = Config
    for i, part in enumerate(parts[:-1]):
        hints = _hints(cls)
        if part not in hints or not _is_dataclass_type(hints[part]):
            sections = [n for n, tp in hints.items() if _is_dataclass_type(tp)]
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"{where}: unknown section in override {key!r}; allowed sections: {', '.join(sections)}")
        cls = hints[part]
        node = node.setdefault(part, {})
        if node is None:
            node = tree[part] = {}
    leaf = parts[-1]
    names = list(_hints(cls))
    if leaf not in names or _is_dataclass_type(_hints(cls)[leaf]):
        where = ".".join(parts)
        keys = [n for n in names if not _is_dataclass_type(_hints(cls)[n])]
        raise ConfigError(f"{where}: unknown key in override; allowed keys here: {', '.join(keys)}")
    node[leaf] = value


MAX_YAML_BYTES = 1 << 20   # configuration and space files are a few KB; refuse anything over 1 MiB unread
MAX_YAML_NODES = 100_000   # nodes after alias expansion ("billion laughs": 1 KB of aliases = 10^9 nodes)


class _YamlLimit(Exception):
    pass


def _expanded_nodes(node, memo: dict, active: set) -> int:
    """Nodes in ``node`` with every alias expanded (shared subtrees counted each time they are used)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise _YamlLimit("an alias refers to a node that contains it (recursive structure)")
    active.add(key)
    n = 1
    if isinstance(node, yaml.SequenceNode):
        n += sum(_expanded_nodes(c, memo, active) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        n += sum(_expanded_nodes(k, memo, active) + _expanded_nodes(v, memo, active) for k, v in node.value)
    active.discard(key)
    if n > MAX_YAML_NODES:
        raise _YamlLimit(f"more than {MAX_YAML_NODES} values once its aliases (*name) are expanded")
    memo[key] = n
    return n


class LimitedSafeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document whose alias expansion exceeds ``MAX_YAML_NODES`` nodes,
    counted on the composed node graph before any Python object is built."""

    def compose_document(self):
        node = super().compose_document()
        if node is not None:
            _expanded_nodes(node, {}, set())
        return node


def read_yaml_mapping(path: str | Path, what: str = "config file", error: type[ValueError] = ConfigError) -> dict[str, Any]:
    """Read a YAML mapping (safe: no Python tags; limited: ``MAX_YAML_BYTES``, ``MAX_YAML_NODES`` after alias
    expansion); every failure is ONE short ``error`` naming ``what`` and the path."""
    try:
        with open(path, "rb") as f:  # read at most the limit + 1 byte (also for /dev/zero, a FIFO...)
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as e:
        raise error(f"{what} {path}: cannot read ({e.strerror})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise error(f"{what} {path}: larger than {MAX_YAML_BYTES} bytes (1 MiB); configuration files are a few KB "
                    "- give the right file") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{what} {path}: not UTF-8 text (byte {e.start}); give a YAML file") from None
    try:
        data = yaml.load(text, Loader=LimitedSafeLoader)  # noqa: S506 - a SafeLoader subclass
    except _YamlLimit as e:
        raise error(f"{what} {path}: refused: {e}; write the values out instead of nesting aliases") from None
    except RecursionError:
        raise error(f"{what} {path}: refused: nested too deeply") from None
    except yaml.YAMLError as e:
        raise error(f"{what} {path}: not valid YAML (safe_load refuses tags like !!python/...): {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise error(f"{what} {path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def deep_merge(base: dict[str, Any], upd: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in upd.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def resolve_preset(name: str | None) -> str:
    """``None``/``"auto"`` -> ``"full"`` on CUDA, ``"small"`` on CPU; otherwise checks the name."""
    if name in (None, "auto"):
        import torch

        return "full" if torch.cuda.is_available() else "small"
    allowed = available_presets()
    if name not in allowed:
        raise ConfigError(f"preset: {name!r} is not a known preset; allowed values: {', '.join(['auto', *allowed])}")
    return name


def load_config(
    path: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] | None = None,
    preset: str | None = "full",
) -> Config:
    """Base YAML -> preset (named partial YAML) -> dotted overrides -> validated Config.

    ``preset="full"`` (default here) applies nothing beyond the base file; CLIs pass ``"auto"``.
    """
    return build_config(config_tree(path, preset), overrides)


def config_tree(path: str | Path | None = None, preset: str | None = "full", what: str = "config file",
                error: type[ValueError] = ConfigError) -> dict[str, Any]:
    """THE preset merge: the base YAML (``DEFAULT_CONFIG`` when None) with the preset's partial YAML merged over
    it (``None``: none), not yet validated. ``load_config`` and the search spaces' ``Space.base_tree`` use it;
    read errors are ``error`` naming ``what``."""
    tree = read_yaml_mapping(Path(path) if path else DEFAULT_CONFIG, what, error)
    if preset is not None:
        name = resolve_preset(preset)
        tree = deep_merge(tree, read_yaml_mapping(PRESET_DIR / f"{name}.yaml", "preset", error))
    return tree


def is_complete_config(tree: Mapping[str, Any]) -> bool:
    """True when ``tree`` sets every config key (a file written by ``dump_config``, e.g. a search's
    best_config.yaml): such a file is the whole configuration and no preset is merged over it."""
    return set(flatten(Config().to_dict())) <= set(flatten(tree))


def build_config(tree: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any] | None = None) -> Config:
    tree = copy.deepcopy(dict(tree))
    if overrides:
        items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
        for key, value in items:
            set_dotted(tree, key, value)
    return validate(_build(Config, tree))


def config_from_dict(d: Mapping[str, Any]) -> Config:
    """Inverse of ``Config.to_dict`` (used when a checkpoint carries its config)."""
    return build_config(d)


def dump_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


__all__ = [
    "Config",
    "ConfigError",
    "ConfigWarning",
    "DEFAULT_CONFIG",
    "available_presets",
    "build_config",
    "config_from_dict",
    "dump_config",
    "flatten",
    "is_complete_config",
    "load_config",
    "parse_override",
    "read_yaml_mapping",
    "resolve_preset",
    "validate",
]
