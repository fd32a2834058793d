"""Names of the metrics the pretrain loop reports: the one list every layer uses (``pahcl.train`` writes
them, ``tune.spaces`` checks a search's metric against them, ``tune.mlflow_utils`` logs them).

Step metrics (``Callback.on_step_end``) and epoch metrics (``Callback.on_epoch_end``) are described in
``pahcl/train.py``; ``val/logo_knn_acc`` is what the shipped search spaces optimise.
"""
from __future__ import annotations

STEP_LOSSES = ("loss", "loss_cycle", "loss_sub")
DRIFT = ("drift", "drift/cnn", "drift/mamba", "drift/projector")  # PAHCL.drift(), MoCo only
# sent to MLflow every log_interval steps (the drift keys exist only on those steps)
STEP_LOGGED = (*STEP_LOSSES, "grad_norm", "lr", "cycle_acc", "cycles_per_s", *DRIFT, "kq_cos", "queue_fill")
VALIDATION = ("val/knn_acc", "val/knn_bal_acc", "val/logo_knn_acc", "val/align", "val/uniform")
EPOCH = ("epoch", "step", "train/loss", *VALIDATION)  # the leading columns of metrics.csv
RANKABLE = (*VALIDATION, "train/loss")  # epoch metrics a search may rank by
