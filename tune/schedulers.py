"""ASHA whose rung state survives ``Tuner.restore``.

Ray 2.60 does not save the scheduler with the experiment: ``Tuner.restore`` unpickles the
scheduler object as it was when the search started, i.e. with empty rungs. Trials resumed after a
restore would then be compared only against each other, and a rung they already passed would never
be judged again. ``PersistentASHA`` writes its rungs (milestone -> {trial_id: value}) to a JSON file
beside the experiment whenever a trial is recorded at a rung, and reloads them the first time it
sees a trial after a restore, so the resumed search makes the same stop/continue decisions.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ray.tune.schedulers import ASHAScheduler

from tune.ray_compat import asha_num_stopped, asha_rungs, set_asha_num_stopped


class PersistentASHA(ASHAScheduler):
    def __init__(self, *args, state_file: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.state_file = state_file
        self._loaded = False
        self.stopped_ids: list[str] = []  # trials this scheduler stopped (early or at max_t)

    # -- persistence
    def _snapshot(self) -> dict:
        return {"brackets": [[[m, dict(rec)] for m, rec in rungs] for rungs in asha_rungs(self)],
                "num_stopped": asha_num_stopped(self), "stopped": list(self.stopped_ids)}

    def _dump(self) -> None:
        if not self.state_file:
            return
        tmp = f"{self.state_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(self._snapshot(), f)
        os.replace(tmp, self.state_file)

    def _load_once(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        if not self.state_file or not Path(self.state_file).exists():
            return
        try:
            snap = json.loads(Path(self.state_file).read_text())
        except ValueError:
            return
        for live, rungs in zip(asha_rungs(self), snap.get("brackets", [])):
            saved = {float(m): rec for m, rec in rungs}
            for m, rec in live:
                rec.update({k: float(v) for k, v in saved.get(float(m), {}).items()})
        set_asha_num_stopped(self, int(snap.get("num_stopped", 0)))
        self.stopped_ids = list(dict.fromkeys(list(snap.get("stopped", [])) + self.stopped_ids))
        n = self.restored_records()
        print(f"[asha] restored {n} rung records from {self.state_file}")

    def restored_records(self) -> int:
        return sum(len(rec) for rungs in asha_rungs(self) for _, rec in rungs)

    # -- scheduler hooks
    def on_trial_add(self, tune_controller, trial):
        self._load_once()
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller, trial, result):
        self._load_once()
        before = self.restored_records()
        action = super().on_trial_result(tune_controller, trial, result)
        if action == self.STOP and trial.trial_id not in self.stopped_ids:
            self.stopped_ids.append(trial.trial_id)
        if self.restored_records() != before or action == self.STOP:
            self._dump()
        return action

    def on_trial_complete(self, tune_controller, trial, result):
        self._load_once()
        super().on_trial_complete(tune_controller, trial, result)
        self._dump()


def stopped_trial_ids(state_file) -> set[str]:
    """Ids of the trials the scheduler stopped, read from its state file (empty if none)."""
    try:
        return set(json.loads(Path(state_file).read_text()).get("stopped", []))
    except (OSError, ValueError):
        return set()
