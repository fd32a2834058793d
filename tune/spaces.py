"""Search-space YAML: load (``yaml.safe_load``), validate, inherit from the previous stage, hash.

A space file (``search_spaces/NAME.yaml``) names Optuna-style distributions over dotted config
keys, the metric, the budget, ASHA settings and per-trial resources. Everything is checked
before Ray starts; every problem is a ``SpaceError`` (a ``pahcl.config.ConfigError``) naming the
key path and what is allowed. See docs/search.md for the format.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping


from pahcl.config import (
    DEFAULT_CONFIG,
    PRESET_DIR,
    ConfigError,
    available_presets,
    build_config,
    check_range,
    config_tree,
    deep_merge,
    read_yaml_mapping,
    set_dotted,
)
from pahcl.metrics import RANKABLE

REPO_ROOT = Path(__file__).resolve().parent.parent
SPACE_DIR = REPO_ROOT / "search_spaces"

# The keys whose recommended value a stage falls back to when the stage it inherits from never ran (issue 4);
# the values are the base config's (``recommended_defaults``), never written here.
RECOMMENDED_KEYS = ("training.learning_rate", "training.warmup_epochs", "model.moco_momentum", "model.queue_size")


def recommended_defaults(base_config: str | Path = DEFAULT_CONFIG) -> dict[str, Any]:
    """The recommended (full-size, no preset) values of ``RECOMMENDED_KEYS``: the base config file as validated
    (``pahcl/configs/pretrain.yaml`` by default, which a test keeps equal to the typed ``Config`` defaults)."""
    flat = build_config(config_tree(base_config, None, what="base_config", error=SpaceError)).flat()
    return {k: flat[k] for k in RECOMMENDED_KEYS}

# Epoch metrics the Trainer reports (docs/architecture.md) plus the raw losses (guarded below).
KNOWN_METRICS = RANKABLE
RAW_LOSS_METRICS = ("loss", "train/loss", "loss_cycle", "loss_sub", "val/loss")
# InfoNCE values are not comparable when the number of negatives changes.
NEGATIVES_KEYS = ("model.queue_size", "model.use_moco")

TOP_KEYS = {
    "stage": "str, the stage name (defaults to the file stem)",
    "description": "str",
    "base_config": "path of the base pretrain YAML, relative to the repository root",
    "preset": "auto | " + " | ".join(available_presets()),
    "data": "default data spec, e.g. synthetic:64 (the CLI's --data overrides it)",
    "metric": "epoch metric to optimise, e.g. val/logo_knn_acc (the default)",
    "mode": "max | min",
    "num_samples": "int >= 1: number of sampled configurations",
    "max_epochs": "int >= 1: epochs per trial (training.num_epochs)",
    "search": "mapping: seed, max_concurrent_trials",
    "scheduler": "mapping: type (asha), grace_period, reduction_factor",
    "resources": "mapping: cpus_per_trial, gpus_per_trial",
    "fixed": "mapping of dotted config keys to fixed values",
    "params": "mapping of dotted config keys to distributions",
    "derived": "mapping: effective_batch_size",
    "inherit": "mapping: from (stage name), params (list of dotted keys), defaults (mapping)",
    "budgets": "mapping of budget name (synthetic_cpu, smoke, ...) to partial overrides of this file",
    "guard": "refuse | warn: what the pre-Ray guard (tune/guard.py) does with a degenerate search",
    "confirm": "mapping: top (K configurations retrained after the search, 0 = none), seeds (S fresh seeds "
               "each), test_fraction (groups held out from the search as the test split)",
}
# After the search: the top K configurations and the baseline, S fresh seeds each, scored on the test split.
CONFIRM_DEFAULTS = {"top": 2, "seeds": 3, "test_fraction": 0.2}
DIST_KEYS = {
    "categorical": {"type", "choices", "around", "multipliers"},
    "float": {"type", "low", "high", "log", "around", "factor"},
    "int": {"type", "low", "high", "log", "step"},
}
SECTION_KEYS = {
    "search": {"seed", "max_concurrent_trials"},
    "scheduler": {"type", "grace_period", "reduction_factor"},
    "resources": {"cpus_per_trial", "gpus_per_trial"},
    "derived": {"effective_batch_size"},
    "inherit": {"from", "params", "defaults"},
    "confirm": set(CONFIRM_DEFAULTS),
}


class SpaceError(ConfigError):
    """The search-space file is malformed; the message names the key path and what is allowed."""


# ----------------------------------------------------------------------------- data classes


@dataclass
class Dist:
    """A concrete Optuna-style distribution over one dotted config key."""

    key: str
    type: str  # categorical | float | int
    choices: list | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None

    def to_optuna(self):
        import optuna.distributions as od

        if self.type == "categorical":
            return od.CategoricalDistribution(list(self.choices))
        if self.type == "float":
            return od.FloatDistribution(self.low, self.high, log=self.log)
        return od.IntDistribution(int(self.low), int(self.high), log=self.log, step=self.step or 1)

    def candidates(self) -> list:
        """Values that validation tries: every choice, or both bounds."""
        return list(self.choices) if self.type == "categorical" else [self.low, self.high]

    def max_value(self):
        return max(self.candidates())

    def describe(self) -> str:
        if self.type == "categorical":
            return f"categorical {self.choices}"
        return f"{self.type} [{self.low}, {self.high}]{' log' if self.log else ''}"


@dataclass
class Space:
    """A validated, resolved search space: what the driver needs to build the search."""

    name: str
    path: Path
    raw: dict  # the file as loaded (after the budget merge)
    base_config: Path
    preset: str
    data: str
    metric: str
    mode: str
    num_samples: int
    max_epochs: int
    seed: int
    max_concurrent_trials: int
    grace_period: int
    reduction_factor: float
    cpus_per_trial: float
    gpus_per_trial: float | str
    fixed: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Dist] = field(default_factory=dict)
    effective_batch_size: int | None = None
    inherited: dict[str, Any] = field(default_factory=dict)
    inherited_from: str | None = None
    inherited_provenance: dict | None = None  # budget, preset, data, data_fingerprint of the inherited search
    budget: str | None = None
    notes: list[str] = field(default_factory=list)
    confirm_top: int = 0  # configurations retrained on the test split after the search (0 = no confirmation)
    confirm_seeds: int = 1
    test_fraction: float = 0.0  # groups held out as test: the search and ASHA never see them

    def base_tree(self) -> dict:
        """Base YAML merged with the preset (``pahcl.config.config_tree``; not validated: trials add overrides)."""
        return config_tree(self.base_config, self.preset, what="base_config", error=SpaceError)

    def trial_overrides(self, params: Mapping[str, Any], seed_index: int | None = None) -> dict[str, Any]:
        """``overrides_for`` this space: what a trial with these sampled values runs."""
        return overrides_for(params, fixed=self.fixed, max_epochs=self.max_epochs, base_tree=self.base_tree(),
                             effective_batch_size=self.effective_batch_size, seed_index=seed_index)

    def baseline_params(self) -> dict[str, Any]:
        """The stage's baseline configuration as sampled values: for each searched key the inherited value,
        else the recommended default, else the base config's, moved to the nearest value the space allows
        (a CPU budget's warmup choices [1, 2] turn the recommended 20 into 2)."""
        tree, recommended = self.base_tree(), recommended_defaults(self.base_config)
        out = {}
        for k, d in self.params.items():
            v = self.inherited.get(k, recommended.get(k, _get_dotted(tree, k)))
            out[k] = _snap(d, v)
        return out

    def optuna_space(self) -> dict:
        return {k: d.to_optuna() for k, d in self.params.items()}

    def grid(self) -> list[dict] | None:
        """Every configuration of an all-categorical space (None when a parameter is continuous)."""
        if any(d.type != "categorical" for d in self.params.values()):
            return None
        import itertools

        keys = sorted(self.params)
        return [dict(zip(keys, vals)) for vals in itertools.product(*(self.params[k].choices for k in keys))]

    def largest_warmup(self) -> int:
        key = "training.warmup_epochs"
        if key in self.params:
            return int(self.params[key].max_value())
        if key in self.fixed:
            return int(self.fixed[key])
        return int(_get_dotted(self.base_tree(), key) or 0)


# ----------------------------------------------------------------------------- helpers


def _plain(v):
    """numpy scalars (from Optuna) -> Python scalars, so YAML/JSON dumps stay safe."""
    if hasattr(v, "item") and not isinstance(v, (list, dict, str)):
        return v.item()
    return v


def _snap(d: Dist, v):
    """``v`` moved into ``d``'s domain: the nearest choice (the first one for non-numbers), or clipped."""
    if d.type == "categorical":
        if v in d.choices:
            return v
        if _is_num(v) and all(_is_num(c) for c in d.choices):
            return min(d.choices, key=lambda c: (abs(float(c) - float(v)), c))
        return d.choices[0]
    if not _is_num(v):
        v = d.low
    v = min(max(float(v), float(d.low)), float(d.high))
    return int(round(v)) if d.type == "int" else v


def _get_dotted(tree: Mapping, key: str):
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _read_mapping(path: Path, what: str) -> dict:
    return read_yaml_mapping(path, what, SpaceError)


def overrides_for(params: Mapping[str, Any], *, fixed: Mapping[str, Any], max_epochs: int, base_tree: Mapping,
                  effective_batch_size: int | None = None, seed_index: int | None = None) -> dict[str, Any]:
    """THE path from a trial's sampled values to its dotted config overrides (driver checks, trials, summary,
    benches): ``training.num_epochs`` = max_epochs, then fixed (inherited included), then the sampled values,
    then the derived gradient accumulation (effective batch / batch size) and, with ``seed_index``, the seed
    (base seed + index: ``--seeds`` repeats and confirmation runs)."""
    ov: dict[str, Any] = {"training.num_epochs": int(max_epochs)}
    ov.update(fixed)
    ov.update({k: _plain(v) for k, v in params.items()})
    if effective_batch_size:
        bs = ov.get("training.batch_size")
        if bs is None:
            bs = _get_dotted(base_tree, "training.batch_size")
        ov["training.gradient_accumulation_steps"] = derive_accumulation(int(bs), int(effective_batch_size))
    if seed_index is not None:
        ov["seed"] = int(ov.get("seed", base_tree.get("seed", 42))) + int(seed_index)
    return ov


def derive_accumulation(batch_size: int, effective: int) -> int:
    if batch_size <= 0 or effective % batch_size:
        raise SpaceError(
            f"derived.effective_batch_size: {effective} is not a multiple of training.batch_size {batch_size}; "
            "allowed: batch sizes that divide the effective batch size"
        )
    return effective // batch_size


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(path: str, v, *, integer=False, lo=None, lo_open=False, hi=None, hi_open=False) -> Any:
    if isinstance(v, str):  # YAML 1.1 reads 1e-3 as a string
        try:
            v = float(v)
        except ValueError:
            pass
    if integer and _is_num(v) and float(v).is_integer():
        v = int(v)
    ok = _is_int(v) if integer else _is_num(v)
    if not ok or (not integer and not math.isfinite(v)):
        raise SpaceError(f"{path}: expected {'an integer' if integer else 'a number'}, got {type(v).__name__} {v!r}")
    check_range(path, v, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open, error=SpaceError)
    return v


def _check_dotted_key(path: str, key: Any) -> None:
    if not isinstance(key, str):
        raise SpaceError(f"{path}: keys must be dotted config keys (strings), got {key!r}")
    try:
        set_dotted({}, key, None)
    except ConfigError as e:
        raise SpaceError(f"{path}.{key}: not a config key ({e})") from None


# ----------------------------------------------------------------------------- loading


def space_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p.resolve()
    cand = SPACE_DIR / f"{name_or_path}.yaml"
    if cand.exists():
        return cand
    allowed = sorted(q.stem for q in SPACE_DIR.glob("*.yaml"))
    raise SpaceError(f"--space: {name_or_path!r} is not a space file or name; allowed names: {', '.join(allowed)}")


def _merge_budget(raw: dict, budget: str | None) -> dict:
    budgets = raw.get("budgets") or {}
    if not isinstance(budgets, dict):
        raise SpaceError("budgets: expected a mapping of budget name to partial overrides")
    out = {k: v for k, v in raw.items() if k != "budgets"}
    if budget is None:
        return out
    if budget.lstrip("?") in budgets:
        budget = budget.lstrip("?")
    if budget not in budgets:
        if budget.startswith("?"):  # optional budget (the CLI's automatic choice): absent -> the file as is
            return out
        raise SpaceError(f"budgets.{budget}: not defined in this space; defined: {', '.join(budgets) or 'none'}")
    upd = budgets[budget] or {}
    if not isinstance(upd, dict):
        raise SpaceError(f"budgets.{budget}: expected a mapping")
    for k, v in upd.items():
        if k == "params" and isinstance(v, dict):  # replace per key, never merge a distribution's fields
            merged = dict(out.get("params") or {})
            merged.update(v)
            out["params"] = merged
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_space_raw(name_or_path: str | Path, budget: str | None = None) -> tuple[Path, dict]:
    path = space_path(name_or_path)
    raw = _read_mapping(path, "space file")
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise SpaceError(f"{unknown[0]}: unknown key in {path.name}; allowed keys: {', '.join(TOP_KEYS)}")
    return path, _merge_budget(raw, budget)


def _check_section(name: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SpaceError(f"{name}: expected a mapping with keys {sorted(SECTION_KEYS[name])}")
    unknown = sorted(set(value) - SECTION_KEYS[name])
    if unknown:
        raise SpaceError(f"{name}.{unknown[0]}: unknown key; allowed keys: {', '.join(sorted(SECTION_KEYS[name]))}")
    return value


def _parse_dist(key: str, spec, inherited: Mapping[str, Any]) -> Dist:
    path = f"params.{key}"
    if not isinstance(spec, dict):
        raise SpaceError(f"{path}: expected a mapping like {{type: categorical, choices: [...]}} or "
                         "{type: float, low: ..., high: ..., log: true}")
    typ = spec.get("type")
    if typ not in DIST_KEYS:
        raise SpaceError(f"{path}.type: {typ!r} is not a distribution; allowed: {', '.join(DIST_KEYS)}")
    unknown = sorted(set(spec) - DIST_KEYS[typ])
    if unknown:
        raise SpaceError(f"{path}.{unknown[0]}: unknown key for type {typ}; allowed: {', '.join(sorted(DIST_KEYS[typ]))}")
    around = spec.get("around")
    center = None
    if around is not None:
        if around != "inherited":
            raise SpaceError(f"{path}.around: {around!r} is not allowed; allowed: inherited")
        if key not in inherited:
            raise SpaceError(f"{path}.around: inherited, but {key} is not listed in inherit.params")
        center = inherited[key]
    if typ == "categorical":
        if center is not None:
            mult = spec.get("multipliers")
            if not isinstance(mult, list) or not mult:
                raise SpaceError(f"{path}.multipliers: expected a non-empty list of numbers with around: inherited")
            mult = [_num(f"{path}.multipliers[{i}]", m, lo=0) for i, m in enumerate(mult)]
            if "choices" in spec:
                raise SpaceError(f"{path}.choices: give either choices or around+multipliers, not both")
            vals = [center * m for m in mult]
            if _is_int(center):
                vals = [int(round(v)) for v in vals]
            choices = sorted(set(vals))
        else:
            choices = spec.get("choices")
            if "multipliers" in spec:
                raise SpaceError(f"{path}.multipliers: only allowed together with around: inherited")
            if not isinstance(choices, list) or not choices:
                raise SpaceError(f"{path}.choices: expected a non-empty list of values, got {choices!r}")
            for i, c in enumerate(choices):
                if not (c is None or isinstance(c, (bool, int, float, str))):
                    raise SpaceError(f"{path}.choices[{i}]: {c!r} must be a number, string or bool")
            if len(set(map(repr, choices))) != len(choices):
                raise SpaceError(f"{path}.choices: duplicate values in {choices}")
        return Dist(key, "categorical", choices=list(choices))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{path}.log: expected true or false, got {log!r}")
    integer = typ == "int"
    if center is not None:  # float only
        factor = _num(f"{path}.factor", spec.get("factor", 3.0), lo=1.0, lo_open=True)
        if "low" in spec or "high" in spec:
            raise SpaceError(f"{path}: give either low/high or around+factor, not both")
        if not _is_num(center) or center <= 0:
            raise SpaceError(f"{path}.around: the inherited value {center!r} must be a positive number")
        low, high, log = float(center) / factor, float(center) * factor, True
    else:
        if "factor" in spec:
            raise SpaceError(f"{path}.factor: only allowed together with around: inherited")
        for b in ("low", "high"):
            if b not in spec:
                raise SpaceError(f"{path}.{b}: missing; a {typ} distribution needs low and high")
        low = _num(f"{path}.low", spec["low"], integer=integer)
        high = _num(f"{path}.high", spec["high"], integer=integer)
        if not low < high:
            raise SpaceError(f"{path}: low ({low}) must be below high ({high})")
        if log and low <= 0:
            raise SpaceError(f"{path}.low: {low} must be > 0 with log: true")
    step = None
    if integer and "step" in spec:
        step = _num(f"{path}.step", spec["step"], integer=True, lo=1)
        if log and step != 1:
            raise SpaceError(f"{path}.step: must be 1 with log: true (Optuna)")
    return Dist(key, typ, low=low, high=high, log=log, step=step)


# ----------------------------------------------------------------------------- inheritance


def previous_stage_best(results_root: Path, stage: str) -> tuple[dict[str, Any], str, dict | None] | None:
    """(the best trial's overrides, where from, the search's provenance or None) of ``stage`` from its saved
    summary (or, without one, the ranked results CSV, which records no provenance)."""
    d = Path(results_root) / stage
    summary = d / "summary.json"
    if summary.exists():
        try:
            s = json.loads(summary.read_text())
            sel = s.get("selected")  # the confirmation's winner, when the search ran one
            if sel:
                return dict(sel["overrides"]), (f"{summary} (search {s.get('search_id')}, confirmation winner "
                                                f"{sel.get('candidate')})"), s.get("provenance")
            best = s["best"]
            return dict(best["overrides"]), (
                f"{summary} (search {s.get('search_id')}, trial {best.get('trial_id')}, "
                f"{s.get('metric')}={best.get('metric_value')})"
            ), s.get("provenance")
        except (ValueError, KeyError, TypeError) as e:
            warnings.warn(f"inherit: cannot read {summary} ({e}); trying the results CSV", stacklevel=2)
    csv = d / "results.csv"
    if csv.exists():
        import pandas as pd

        df = pd.read_csv(csv)
        if len(df):
            row = df.iloc[0]  # the CSV is ranked best first
            ov = {c[len("param:"):]: _plain(row[c]) for c in df.columns if c.startswith("param:")}
            return ov, f"{csv} (rank 1, trial {row.get('trial_id')})", None
    return None


def check_provenance(src: str, prov: dict | None, preset: str, data: str, allow: bool,
                     log: Callable[[str], None]) -> None:
    """A stage inherits only from a search on the same preset and data (a CPU-budget tiny stage 1 must not
    silently set the lr of a full-size GPU stage 2); ``allow`` (--inherit-anyway) turns the refusal into a
    warning. The data files' fingerprint is checked by the driver once the data is prepared."""
    from pahcl.config import resolve_preset

    if prov is None:
        log(f"[inherit] WARNING: {src}'s summary records no preset or data (written by an older version); "
            "cannot check that they match this stage")
        return
    mine = {"preset": resolve_preset(preset), "data": data}
    diff = [f"{k} {prov.get(k)!r} there, {v!r} here" for k, v in mine.items() if prov.get(k) != v]
    if not diff:
        return
    msg = (f"inherit.from {src}: its best trial ran with another {' and '.join(d.split()[0] for d in diff)} "
           f"({'; '.join(diff)})")
    if not allow:
        raise SpaceError(f"{msg}. Run {src} with the same --data/--preset/--budget first, or pass --inherit-anyway")
    log(f"[inherit] WARNING: {msg}; inherited anyway (--inherit-anyway)")


def resolve_inheritance(raw: dict, results_root: Path, log: Callable[[str], None], preset: str = "auto",
                        data: str = "synthetic", allow_mismatch: bool = False,
                        base_config: str | Path = DEFAULT_CONFIG) -> tuple[dict, str | None, dict | None]:
    inh = _check_section("inherit", raw.get("inherit"))
    if not inh:
        return {}, None, None
    src = inh.get("from")
    if not isinstance(src, str) or not src:
        raise SpaceError("inherit.from: expected the name of the previous stage, e.g. simclr_stage1")
    keys = inh.get("params") or []
    if not isinstance(keys, list) or not keys:
        raise SpaceError("inherit.params: expected a non-empty list of dotted config keys")
    for k in keys:
        _check_dotted_key("inherit.params", k)
    defaults = recommended_defaults(base_config)
    extra = inh.get("defaults") or {}
    if not isinstance(extra, dict):
        raise SpaceError("inherit.defaults: expected a mapping of dotted keys to values")
    for k in extra:
        _check_dotted_key("inherit.defaults", k)
    defaults.update(extra)
    found = previous_stage_best(results_root, src)
    out: dict[str, Any] = {}
    if found is None:
        use = {k: defaults[k] for k in keys if k in defaults}
        msg = (f"stage {src!r} never ran (no {Path(results_root) / src / 'summary.json'}); "
               f"falling back to recommended defaults: {use}")
        warnings.warn(msg, stacklevel=2)
        log(f"[inherit] WARNING: {msg}")
        out.update(use)
        return out, "recommended defaults", None
    best, where, prov = found
    check_provenance(src, prov, preset, data, allow_mismatch, log)
    for k in keys:
        if k in best:
            out[k] = best[k]
        elif k in defaults:
            out[k] = defaults[k]
            log(f"[inherit] WARNING: {k} not in {src}'s best trial; using recommended default {defaults[k]}")
    log(f"[inherit] from {where}: " + ", ".join(f"{k}={v}" for k, v in out.items()))
    return out, where, prov


# ----------------------------------------------------------------------------- validation


def load_space(
    name_or_path: str | Path,
    *,
    results_root: str | Path = "results",
    budget: str | None = None,
    cli: Mapping[str, Any] | None = None,
    log: Callable[[str], None] = print,
    allow_inherit_mismatch: bool = False,
) -> Space:
    """Load, merge the budget, inherit, validate. ``cli`` overrides num_samples/max_epochs/data/preset."""
    path, raw = load_space_raw(name_or_path, budget)
    if budget and budget.startswith("?"):
        budget = budget[1:] if budget[1:] in ((_read_mapping(path, "space file").get("budgets")) or {}) else None
    cli = {k: v for k, v in (cli or {}).items() if v is not None}
    raw.update({k: v for k, v in cli.items() if k in ("num_samples", "max_epochs", "data", "preset")})
    if "scheduler" in cli:  # e.g. {"grace_period": 1}
        raw["scheduler"] = {**(raw.get("scheduler") or {}), **cli["scheduler"]}

    name = raw.get("stage", path.stem)
    if not isinstance(name, str) or not name.isidentifier():
        raise SpaceError(f"stage: {name!r} must be an identifier-like name")
    base = raw.get("base_config", str(DEFAULT_CONFIG.relative_to(REPO_ROOT)))
    if not isinstance(base, str):
        raise SpaceError(f"base_config: expected a path string, got {base!r}")
    base_path = (REPO_ROOT / base) if not Path(base).is_absolute() else Path(base)
    if not base_path.exists():
        raise SpaceError(f"base_config: {base_path} does not exist")
    preset = raw.get("preset", "auto")
    if preset not in ("auto", *available_presets()):
        raise SpaceError(f"preset: {preset!r} is not allowed; allowed: auto, {', '.join(available_presets())}")
    data = raw.get("data", "synthetic")
    if not isinstance(data, str):
        raise SpaceError(f"data: expected a data spec string like synthetic:64, got {data!r}")
    data = _absolute_data(data)
    metric = raw.get("metric", "val/logo_knn_acc")
    if metric not in KNOWN_METRICS + RAW_LOSS_METRICS:
        raise SpaceError(f"metric: {metric!r} is not reported by the Trainer; allowed: {', '.join(KNOWN_METRICS)}")
    if raw.get("guard", "refuse") not in ("refuse", "warn"):
        raise SpaceError(f"guard: {raw.get('guard')!r} is not allowed; allowed: refuse, warn")
    mode = raw.get("mode", "max")
    if mode not in ("max", "min"):
        raise SpaceError(f"mode: {mode!r} is not allowed; allowed: max, min")
    num_samples = _num("num_samples", raw.get("num_samples", 8), integer=True, lo=1)
    max_epochs = _num("max_epochs", raw.get("max_epochs", 30), integer=True, lo=1)
    seed, mct, grace, rf, cpus, gpus = _parse_run_settings(raw, cli)
    fixed, params_raw, eff = _parse_fixed_and_params(raw)
    inherited, inherited_from, inherited_prov = resolve_inheritance(
        raw, Path(results_root), log, preset=preset, data=data, allow_mismatch=allow_inherit_mismatch,
        base_config=base_path)
    params: dict[str, Dist] = {k: _parse_dist(k, v, inherited) for k, v in params_raw.items()}
    for k in sorted(set(inherited) & set(fixed)):
        if inherited[k] != fixed[k]:
            log(f"[inherit] {k}: the space{' budget ' + repr(budget) if budget else ''} fixes {fixed[k]!r}; "
                f"inherited {inherited[k]!r} not used")
    fixed = {**{k: v for k, v in inherited.items() if k not in params}, **fixed}

    _check_raw_loss_metric(metric, params)
    top, conf_seeds, test_fraction = _parse_confirm(raw, cli)
    if test_fraction > 0:
        if "data.test_fraction" in params:
            raise SpaceError("params.data.test_fraction: set confirm.test_fraction instead (one split per search)")
        fixed["data.test_fraction"] = test_fraction
    sp = Space(
        name=name, path=path, raw=raw, base_config=base_path, preset=preset, data=data, metric=metric,
        mode=mode, num_samples=num_samples, max_epochs=max_epochs, seed=seed, max_concurrent_trials=mct,
        grace_period=grace, reduction_factor=rf, cpus_per_trial=cpus, gpus_per_trial=gpus, fixed=fixed,
        params=params, effective_batch_size=eff, inherited=inherited, inherited_from=inherited_from, budget=budget,
        inherited_provenance=inherited_prov, confirm_top=top, confirm_seeds=conf_seeds, test_fraction=test_fraction,
    )
    _adjust_grace(sp, log)  # first: "max_epochs below the largest warmup" is the clearer message
    _cap_samples_at_grid(sp, log)
    _validate_against_config(sp)
    return sp


def _parse_run_settings(raw: dict, cli: Mapping[str, Any]) -> tuple:
    """(search seed, max concurrent trials, ASHA grace period, reduction factor, cpus, gpus per trial)."""
    search = _check_section("search", raw.get("search"))
    seed = _num("search.seed", search.get("seed", 0), integer=True, lo=0)
    mct = _num("search.max_concurrent_trials", search.get("max_concurrent_trials", 2), integer=True, lo=1)
    sched = _check_section("scheduler", raw.get("scheduler"))
    if sched.get("type", "asha") != "asha":
        raise SpaceError(f"scheduler.type: {sched.get('type')!r} is not allowed; allowed: asha")
    grace = _num("scheduler.grace_period", sched.get("grace_period", 1), integer=True, lo=1)
    rf = _num("scheduler.reduction_factor", sched.get("reduction_factor", 3), lo=1, lo_open=True)
    res = _check_section("resources", raw.get("resources"))
    cpus = _num("resources.cpus_per_trial", res.get("cpus_per_trial", 1), lo=0, lo_open=True)
    gpus = res.get("gpus_per_trial", "auto")
    if gpus != "auto":
        gpus = _num("resources.gpus_per_trial", gpus, lo=0)
    if "cpus_per_trial" in cli:
        cpus = _num("--cpus-per-trial", cli["cpus_per_trial"], lo=0, lo_open=True)
    if "gpus_per_trial" in cli:
        gpus = cli["gpus_per_trial"] if cli["gpus_per_trial"] == "auto" else _num("--gpus-per-trial", cli["gpus_per_trial"], lo=0)

    return seed, mct, grace, rf, cpus, gpus


def _parse_fixed_and_params(raw: dict) -> tuple[dict, dict, int | None]:
    """(fixed values, the raw params section, derived effective batch size), each key checked."""
    fixed = raw.get("fixed") or {}
    if not isinstance(fixed, dict):
        raise SpaceError("fixed: expected a mapping of dotted config keys to values")
    for k in fixed:
        _check_dotted_key("fixed", k)
    params_raw = raw.get("params") or {}
    if not isinstance(params_raw, dict):
        raise SpaceError("params: expected a mapping of dotted config keys to distributions")
    if not params_raw:
        raise SpaceError("params: empty; a search needs at least one searched key, e.g. training.learning_rate: "
                         "{type: float, low: 1e-4, high: 1e-2, log: true} (one fixed configuration: python -m "
                         "pahcl.pretrain --config FILE)")
    for k in params_raw:
        _check_dotted_key("params", k)
        if k in fixed:
            raise SpaceError(f"params.{k}: also set in fixed; a key is either fixed or searched")
        if k == "training.num_epochs":
            raise SpaceError("params.training.num_epochs: set max_epochs instead (ASHA needs one epoch budget)")
        if k == "training.gradient_accumulation_steps" and raw.get("derived"):
            raise SpaceError(f"params.{k}: derived from derived.effective_batch_size; do not search it")
    derived = _check_section("derived", raw.get("derived"))
    eff = None
    if "effective_batch_size" in derived:
        eff = _num("derived.effective_batch_size", derived["effective_batch_size"], integer=True, lo=2)
        if "training.gradient_accumulation_steps" in fixed:
            raise SpaceError("fixed.training.gradient_accumulation_steps: derived from derived.effective_batch_size")
    return fixed, params_raw, eff


def _check_raw_loss_metric(metric: str, params: Mapping[str, Any]) -> None:
    """A raw InfoNCE loss cannot rank trials whose number of negatives differs."""
    if metric in RAW_LOSS_METRICS:
        varying = [k for k in NEGATIVES_KEYS if k in params]
        if varying:
            raise SpaceError(
                f"metric: {metric!r} is a raw InfoNCE loss, whose value depends on the number of negatives; "
                f"it cannot rank trials while {', '.join(varying)} varies. Allowed here: {', '.join(KNOWN_METRICS[:4])}"
            )


def _parse_confirm(raw: dict, cli: Mapping[str, Any]) -> tuple[int, int, float]:
    """(top K, seeds S, test_fraction) from the space's ``confirm`` section, the defaults and the CLI's
    ``confirm_top`` / ``confirm_seeds`` (``--no-confirm`` = top 0: the test split stays, so the search is the
    same with or without its confirmation)."""
    conf = {**CONFIRM_DEFAULTS, **_check_section("confirm", raw.get("confirm"))}
    top = _num("confirm.top", conf["top"], integer=True, lo=0)
    seeds = _num("confirm.seeds", conf["seeds"], integer=True, lo=1)
    frac = _num("confirm.test_fraction", conf["test_fraction"], lo=0, hi=1, hi_open=True)
    if "confirm_top" in cli:
        top = _num("--confirm-top", cli["confirm_top"], integer=True, lo=0)
    if "confirm_seeds" in cli:
        seeds = _num("--confirm-seeds", cli["confirm_seeds"], integer=True, lo=1)
    if top > 0 and frac == 0:
        raise SpaceError("confirm.test_fraction: 0 leaves no test split for the confirmation runs; set it in (0, 1), "
                         "or confirm.top: 0 / --no-confirm to skip the confirmation")
    return int(top), int(seeds), float(frac)


def _absolute_data(data: str) -> str:
    """The data spec with its folder resolved against the current directory, once, here: trials run in
    their own working directory, where a relative ``circor:../data`` means another folder."""
    from pahcl.data.readers import DataSpecError, absolute_spec

    try:
        return absolute_spec(data)
    except DataSpecError as e:
        raise SpaceError(f"--data / data: {e}") from None


def _validate_against_config(sp: Space) -> None:
    """The fixed values, and then every candidate of every distribution, must build a valid Config."""
    tree = sp.base_tree()
    try:
        build_config(tree, sp.trial_overrides({}))
    except ConfigError as e:
        raise SpaceError(f"fixed: the fixed/inherited values do not build a valid config: {e}") from None
    for k, d in sp.params.items():
        for v in d.candidates():
            try:
                build_config(tree, sp.trial_overrides({k: v}))
            except SpaceError as e:
                raise SpaceError(f"params.{k}: value {v!r}: {e}") from None
            except ConfigError as e:
                raise SpaceError(f"params.{k}: value {v!r} is not allowed by the config: {e}") from None


def _cap_samples_at_grid(sp: Space, log: Callable[[str], None]) -> None:
    """Training is deterministic for a seed: a configuration sampled twice adds nothing. An all-categorical
    space with fewer configurations than num_samples runs each once (``--seeds`` measures seed spread)."""
    grid = sp.grid()
    if grid is not None and sp.num_samples > len(grid):
        msg = (f"num_samples {sp.num_samples} > the {len(grid)} configurations of this all-categorical space: "
               f"lowered to {len(grid)}, each trained once (use --seeds N for seed spread)")
        log(f"[space] {msg}")
        sp.notes.append(msg)
        sp.num_samples = len(grid)


def _adjust_grace(sp: Space, log: Callable[[str], None]) -> None:
    warm = sp.largest_warmup()
    if sp.max_epochs < warm:
        raise SpaceError(
            f"max_epochs: {sp.max_epochs} is below the largest training.warmup_epochs in the space ({warm}); "
            f"ASHA would stop trials before their learning rate has warmed up. Allowed: max_epochs >= {warm}"
        )
    if sp.grace_period < warm:
        msg = (f"scheduler.grace_period {sp.grace_period} is smaller than the largest training.warmup_epochs "
               f"in the space ({warm}); raised to {warm} so no trial is judged during its warmup")
        warnings.warn(msg, stacklevel=2)
        log(f"[space] WARNING: {msg}")
        sp.notes.append(msg)
        sp.grace_period = warm
    if sp.grace_period >= sp.max_epochs:
        sp.notes.append(f"grace_period {sp.grace_period} >= max_epochs {sp.max_epochs}: ASHA cannot stop any trial early")


# ----------------------------------------------------------------------------- hashing


def space_hash(sp: Space) -> str:
    """sha256 over the space file, the base config and the preset file (bytes)."""
    from pahcl.config import resolve_preset

    h = hashlib.sha256()
    for p in (sp.path, sp.base_config, PRESET_DIR / f"{resolve_preset(sp.preset)}.yaml"):
        h.update(str(Path(p).name).encode())
        h.update(Path(p).read_bytes())
    h.update(json.dumps({"budget": sp.budget}, sort_keys=True).encode())
    return h.hexdigest()


__all__ = [
    "Dist", "RECOMMENDED_KEYS", "Space", "SpaceError", "derive_accumulation", "load_space",
    "previous_stage_best", "space_hash", "space_path",
]
