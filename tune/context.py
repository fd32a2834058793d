"""What every trial of one search shares: the typed trial context.

    ctx = TrialContext(stage=..., search_id=..., base_tree=..., ...)      # built once by the driver
    trainable = ray_tune.with_parameters(train_pahcl, context=ctx, plugins=plugins)
    meta["context"] = ctx.to_dict()                                       # search_meta.json (JSON)
    ctx = TrialContext.from_dict(meta["context"])                         # --resume, confirmation

Passed to the trainable with ``tune.with_parameters`` (put in Ray's object store once, never part of
``param_space``: the searcher sees only the sampled keys). Frozen: a trial reads it, nothing changes it;
a confirmation gets a copy with its ``confirm_points`` (``dataclasses.replace``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TrialContext:
    stage: str                        # the space's name (MLflow tag pahcl.stage)
    search_id: str                    # <stage>-<timestamp>: the search's folder and MLflow parent run name
    base_tree: dict[str, Any]         # base config + preset merged (a complete config tree)
    fixed: dict[str, Any]             # dotted overrides every trial gets (the space's fixed + inherited)
    max_epochs: int                   # training.num_epochs of every trial (ASHA's max_t)
    data: str                         # the data spec, absolute paths (trials do not run in the cwd)
    cache_dir: str                    # absolute: the driver filled it before the trials start
    split_seed: int                   # train/val/test split seed: --seeds repeats differ in training only
    tracking_uri: str                 # MLflow
    experiment_id: str
    parent_run_id: str                # the search's parent run: trials nest their child runs under it
    effective_batch_size: int | None = None  # derived rule: accumulation = this / batch size (None: off)
    threads_per_trial: int = 1        # torch threads in a trial (= its CPUs)
    gpu_fraction: float | None = None  # the planned per-trial allocator cap (tune/resources.py), None: none
    gpu_simulation: dict[str, Any] | None = None  # tests only (tune/gpu.py): {"total": bytes} of the fake GPU
    flush_seconds: float = 5.0        # MLflow step-metric buffer flush interval
    confirm_points: dict[str, dict[str, Any]] = field(default_factory=dict)  # label -> params, seed_index

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, source: str = "search_meta.json") -> TrialContext:
        """The context a search recorded. A record from an older service version (``consts``, unknown or missing
        fields) is a ``ValueError`` naming the fields and the fix."""
        from tune.spaces import SpaceError

        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        if not isinstance(d, dict):
            raise SpaceError(f"{source}: no trial context (written by an older version of the service); "
                             "start a new search without --resume")
        unknown, missing = sorted(set(d) - names), sorted(required - set(d))
        if unknown or missing:
            raise SpaceError(f"{source}: trial context fields unknown {unknown}, missing {missing} (written by "
                             "another version of the service); start a new search without --resume")
        return cls(**d)

    def with_confirm_points(self, points: dict[str, dict[str, Any]]) -> TrialContext:
        return dataclasses.replace(self, confirm_points=dict(points))
