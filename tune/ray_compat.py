"""Every access to a Ray or Ray-wrapped private name, in one place (written for Ray 2.60; the test
``tests/tune/test_tune_ray_compat.py`` pins the version and exercises each accessor).

Why each is needed:
* ``ResultGrid._experiment_analysis.trials``: the Trial objects (status, last result, id) after ``fit()``;
  the public ResultGrid has no trial status for trials cut by Ctrl+C.
* ``ray.train._internal.session.get_session().storage.trial_fs_path``: the trial's directory in the
  experiment (where Ray persists its checkpoints), for markers and checkpoint fallback.
* ``ASHAScheduler._brackets[i]._rungs`` / ``_num_stopped``: ASHA's rung records, which Ray does not save
  with the experiment (``tune.schedulers.PersistentASHA`` saves and restores them).
* ``OptunaSearch._ot_study``: the Optuna study, to enqueue an unseen configuration
  (``tune.searchers.NoRepeatSearcher``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

RAY_VERSION = "2.60"  # the minor version these accessors were written and tested for


def experiment_trials(result_grid) -> list:
    """The Trial objects of a finished or interrupted ``Tuner.fit()``."""
    return list(getattr(result_grid, "_experiment_analysis").trials)


def trial_storage_dir() -> Path | None:
    """The running trial's directory under the experiment, or None (not in a trial / API moved)."""
    try:
        from ray.train._internal.session import get_session

        return Path(get_session().storage.trial_fs_path)
    except Exception:  # noqa: BLE001 - private API; callers treat None as "no markers, no fallback"
        return None


def asha_rungs(scheduler) -> list[list[tuple[float, dict[str, float]]]]:
    """Per bracket: [(milestone, {trial_id: value}), ...], the live record dicts (mutable)."""
    return [list(b._rungs) for b in scheduler._brackets]


def asha_num_stopped(scheduler) -> int:
    return int(scheduler._num_stopped)


def set_asha_num_stopped(scheduler, n: int) -> None:
    scheduler._num_stopped = int(n)


def optuna_study(searcher) -> Any | None:
    """OptunaSearch's study (None for another searcher)."""
    return getattr(searcher, "_ot_study", None)
