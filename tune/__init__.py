"""PA-HCL hyper-parameter search service: Ray Tune + Optuna + MLflow.

Modules (importable, because Ray unpickles the scheduler and callbacks from the experiment on restore):

    spaces       search-space YAML loading, validation, stage inheritance, hashing
    trainable    the Ray Tune function trainable (runs ``pahcl.train.Trainer``)
    mlflow_utils store setup, parent/child runs, batched step logging, run-ending callback
    schedulers   ASHA whose rung state survives ``Tuner.restore``
    resources    ``--gpus-per-trial auto`` (peak-memory probe in a subprocess)
    summary      ranked table, seed aggregation, plots, best config
    bench_logging  measures the MLflow logging overhead (python -m tune.bench_logging)
    run_search   the CLI (``python tune/run_search.py --space NAME``)
"""
