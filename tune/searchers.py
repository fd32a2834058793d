"""Search-algorithm wrappers of the service.

:class:`NoRepeatSearcher` keeps TPE from training one configuration twice: training is deterministic
for a seed, so a repeat costs a trial and adds nothing (TPE repeated 2-4 of 10 trials on the
all-categorical stages). Wrapped as ``ConcurrencyLimiter(Repeater(NoRepeatSearcher(OptunaSearch)))``:
the seeds of ``--seeds`` are repeats made on purpose, outside this wrapper.
"""
from __future__ import annotations

import json
import os
import pickle
import random
from typing import Any

from ray.tune.search import Searcher

from tune.ray_compat import optuna_study


def config_key(config: dict) -> str:
    return json.dumps({k: config[k] for k in sorted(config)}, sort_keys=True, default=str)


class NoRepeatSearcher(Searcher):
    """No configuration is suggested twice. A duplicate from the inner searcher is answered with the earlier
    trial's result when it is known (the inner searcher learns from it), else marked failed, and the inner
    searcher is asked again; in a finite space (``grid``) an unseen configuration is enqueued after
    ``max_tries // 2`` duplicates, and once every configuration is taken the searcher is FINISHED."""

    def __init__(self, searcher, grid: list[dict] | None = None, max_tries: int = 20, seed: int = 0):
        self.searcher = searcher
        self.grid = grid
        self.max_tries = max_tries
        self._rng = random.Random(seed)
        self._seen: dict[str, float | None] = {}  # config key -> its trial's metric (None while unknown)
        self._inner_id: dict[str, str] = {}  # Ray trial id -> the id the inner searcher knows it by
        self._key: dict[str, str] = {}  # Ray trial id -> config key
        self.duplicates_skipped = 0
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def suggest(self, trial_id: str) -> dict | None:
        if self.grid is not None and len(self._seen) >= len(self.grid):
            return Searcher.FINISHED
        for attempt in range(self.max_tries + 1):
            inner_id = trial_id if attempt == 0 else f"{trial_id}-dup{attempt}"
            config = self.searcher.suggest(inner_id)
            if config is None or config == Searcher.FINISHED:
                return config
            key = config_key(config)
            if key not in self._seen:
                self._seen[key] = None
                self._inner_id[trial_id], self._key[trial_id] = inner_id, key
                return config
            self._answer_duplicate(inner_id, self._seen[key])
            if attempt == self.max_tries // 2:
                self._enqueue_unseen()
        return None  # no new configuration now: Ray asks again later

    def _answer_duplicate(self, inner_id: str, value: float | None) -> None:
        self.duplicates_skipped += 1
        if value is None:
            self.searcher.on_trial_complete(inner_id, result=None, error=True)
        else:
            self.searcher.on_trial_complete(inner_id, result={self.metric: value})

    def _enqueue_unseen(self) -> None:
        if self.grid is None:
            return
        unseen = [c for c in self.grid if config_key(c) not in self._seen]
        study = optuna_study(self.searcher)
        if unseen and study is not None:
            study.enqueue_trial(self._rng.choice(unseen))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._inner_id:
            self.searcher.on_trial_result(self._inner_id[trial_id], result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self._inner_id:
            return
        if result and self.metric in result and not error:
            self._seen[self._key[trial_id]] = result[self.metric]
        self.searcher.on_trial_complete(self._inner_id[trial_id], result=result, error=error)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    # Ray saves the searcher into one file: the inner searcher's bytes and this wrapper's state together.
    def get_state(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "searcher"}

    def set_state(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)
        with open(checkpoint_path, "rb") as f:
            inner = f.read()
        with open(checkpoint_path, "wb") as f:
            pickle.dump({"inner": inner, "state": self.get_state()}, f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as f:
            saved = pickle.load(f)
        tmp = f"{checkpoint_path}.inner-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(saved["inner"])
        try:
            self.searcher.restore(tmp)
        finally:
            os.remove(tmp)
        self.set_state(saved["state"])
