"""Step metrics reach MLflow on every epoch's last optimizer step, for SimCLR and MoCo alike.

The end-of-epoch step row used to be triggered by the MoCo drift key, which SimCLR never has: a SimCLR
stage with a large ``log_interval`` logged loss and grad_norm a handful of times per trial. Real Trainer,
real MLflow store (temp sqlite), the callback the trials use.
"""
from __future__ import annotations

import pytest



@pytest.mark.parametrize("use_moco", [False, True], ids=["simclr", "moco"])
def test_every_epoch_last_step_is_logged(use_moco, tmp_path):
    from pahcl.config import load_config
    from pahcl.train import Trainer, prepare_data
    from tune.mlflow_utils import BatchLogger, MLflowStepCallback, _client, ensure_experiment

    cfg = load_config(None, preset="tiny", overrides={
        "model.use_moco": use_moco, "model.queue_size": 16, "training.num_epochs": 2, "training.warmup_epochs": 1,
        "training.batch_size": 8, "training.max_steps_per_epoch": 3, "training.log_interval": 100,
        "training.device": "cpu"})
    train, val = prepare_data(cfg, "synthetic:8", cache_dir=tmp_path / "cache", log=lambda m: None)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exp = ensure_experiment(uri, tmp_path)
    run_id = _client(uri).create_run(exp).info.run_id
    logger = BatchLogger(uri, run_id, background=False)
    tr = Trainer(cfg, train, val, callbacks=[MLflowStepCallback(logger, cfg.training.log_interval)], log=None)
    tr.fit()
    logger.close_safe()
    assert tr.steps_per_epoch == 3 and tr.global_step == 6
    for key in ("loss", "grad_norm", "lr"):
        steps = [m.step for m in _client(uri).get_metric_history(run_id, key)]
        assert sorted(steps) == [3, 6], (key, steps)  # log_interval 100: exactly the two epochs' last steps
