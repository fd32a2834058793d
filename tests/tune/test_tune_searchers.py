"""tune/searchers.py: TPE never trains one configuration twice (issue 12 item 6). The real OptunaSearch
(TPE, seeded) driven through Ray's Searcher API, as Tune drives it."""
from __future__ import annotations

import optuna
import pytest
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from tune.searchers import NoRepeatSearcher, config_key

QUEUE = {"model.queue_size": optuna.distributions.CategoricalDistribution([4096, 8192, 16384])}
GRID = [{"model.queue_size": q} for q in (4096, 8192, 16384)]


def _tpe(seed=0, startup=2):
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return OptunaSearch(space=dict(QUEUE), metric="val/knn_acc", mode="max",
                        sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup))


def _drive(searcher, n, score=lambda c: c["model.queue_size"] / 1e5):
    """Tune's loop, one trial at a time: suggest, then complete with a deterministic score."""
    configs = []
    for i in range(n):
        c = searcher.suggest(f"t{i}")
        if c is None or c == Searcher.FINISHED:
            configs.append(c)
            continue
        configs.append(c)
        searcher.on_trial_complete(f"t{i}", result={"val/knn_acc": score(c)})
    return configs


def test_plain_tpe_repeats_itself_on_a_small_categorical_space():
    """The problem: 6 suggestions over 3 configurations must repeat (the wrapper's reason to exist)."""
    configs = _drive(_tpe(), 6)
    assert len({config_key(c) for c in configs}) < 6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_configuration_once_then_finished(seed):
    s = NoRepeatSearcher(_tpe(seed), grid=GRID, seed=seed)
    configs = _drive(s, 5)
    trained = [c for c in configs[:3]]
    assert sorted(c["model.queue_size"] for c in trained) == [4096, 8192, 16384]
    assert configs[3:] == [Searcher.FINISHED, Searcher.FINISHED]


def test_a_duplicate_of_a_running_trial_is_not_suggested():
    s = NoRepeatSearcher(_tpe(startup=10), grid=GRID)
    running = [s.suggest(f"r{i}") for i in range(3)]  # none completed yet
    assert len({config_key(c) for c in running}) == 3


def test_state_survives_save_and_restore(tmp_path):
    s = NoRepeatSearcher(_tpe(), grid=GRID)
    first = _drive(s, 2)
    s.save(str(tmp_path / "searcher.pkl"))
    fresh = NoRepeatSearcher(_tpe(), grid=GRID)
    fresh.restore(str(tmp_path / "searcher.pkl"))
    third = fresh.suggest("t2")
    assert config_key(third) not in {config_key(c) for c in first}
    fresh.on_trial_complete("t2", result={"val/knn_acc": 0.1})
    assert fresh.suggest("t3") == Searcher.FINISHED
