"""tune/ray_compat.py: the Ray version its private accessors were written for, and each accessor on the
real objects (a failing test here after a Ray upgrade says which access moved)."""
from __future__ import annotations

import optuna
import ray
from ray.tune.search.optuna import OptunaSearch

from tune import ray_compat
from tune.schedulers import PersistentASHA


def test_installed_ray_is_the_version_the_accessors_were_written_for():
    assert ray.__version__.startswith(ray_compat.RAY_VERSION + "."), (
        f"Ray {ray.__version__}: re-check every accessor in tune/ray_compat.py, then update RAY_VERSION")


def test_asha_rungs_are_live_and_restorable(tmp_path):
    sched = PersistentASHA(time_attr="epoch", max_t=8, grace_period=2, reduction_factor=2, metric="m", mode="max",
                           state_file=str(tmp_path / "asha.json"))
    rungs = ray_compat.asha_rungs(sched)
    assert rungs and [m for m, _ in rungs[0]] == sorted((m for m, _ in rungs[0]), reverse=True)
    rungs[0][-1][1]["t1"] = 0.5  # the record dicts are the scheduler's own
    assert sched.restored_records() == 1
    ray_compat.set_asha_num_stopped(sched, 3)
    assert ray_compat.asha_num_stopped(sched) == 3
    sched._dump()
    again = PersistentASHA(time_attr="epoch", max_t=8, grace_period=2, reduction_factor=2, metric="m", mode="max",
                           state_file=str(tmp_path / "asha.json"))
    again._load_once()
    assert again.restored_records() == 1 and ray_compat.asha_num_stopped(again) == 3


def test_optuna_study_and_trial_dir_outside_a_trial():
    s = OptunaSearch(space={"x": optuna.distributions.CategoricalDistribution([1, 2])}, metric="m", mode="max")
    assert isinstance(ray_compat.optuna_study(s), optuna.Study)
    assert ray_compat.optuna_study(object()) is None
    assert ray_compat.trial_storage_dir() is None
