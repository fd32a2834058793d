"""tune/context.py: the typed trial context survives search_meta.json (JSON) unchanged, and a record from an
older service version (the untyped ``consts`` dict, unknown or missing fields) is refused with the fix."""
from __future__ import annotations

import dataclasses
import json

import pytest

from tune.context import TrialContext
from tune.spaces import SpaceError

CTX = TrialContext(stage="s", search_id="s-20261129-000000", base_tree={"seed": 42, "training": {"num_epochs": 3}},
                   fixed={"training.batch_size": 8}, max_epochs=3, data="synthetic:40", cache_dir="/tmp/c",
                   split_seed=42, tracking_uri="sqlite:////tmp/m.db", experiment_id="1", parent_run_id="abc",
                   effective_batch_size=16, gpu_fraction=0.3, gpu_simulation={"total": 24 * 2**30})


def test_round_trip_through_search_meta_json():
    back = TrialContext.from_dict(json.loads(json.dumps(CTX.to_dict())))
    assert back == CTX
    with pytest.raises(dataclasses.FrozenInstanceError):
        back.max_epochs = 9  # type: ignore[misc]


def test_confirmation_gets_a_copy_with_its_points():
    pts = {"top1/s0": {"params": {"training.learning_rate": 1e-3}, "seed_index": 1000}}
    c = CTX.with_confirm_points(pts)
    assert c.confirm_points == pts and CTX.confirm_points == {} and dataclasses.replace(c, confirm_points={}) == CTX


def test_older_records_are_refused_with_the_fix():
    old = {k: v for k, v in CTX.to_dict().items() if k != "split_seed"}
    with pytest.raises(SpaceError, match=r"missing \['split_seed'\].*start a new search without --resume"):
        TrialContext.from_dict(old, source="x/search_meta.json")
    with pytest.raises(SpaceError, match=r"unknown \['threads'\]"):
        TrialContext.from_dict({**CTX.to_dict(), "threads": 1})
    with pytest.raises(SpaceError, match="no trial context .* older version"):
        TrialContext.from_dict(None)
