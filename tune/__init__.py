"""PA-HCL hyper-parameter search service: Ray Tune + Optuna + MLflow.

Installed with the project (``make setup``: ``pip install -e .`` installs ``pahcl`` and ``tune``); modules
importable by name, because Ray unpickles the scheduler and callbacks from the experiment on restore:

    spaces       search-space YAML loading, validation, stage inheritance, hashing
    trainable    the Ray Tune function trainable (runs ``pahcl.train.Trainer``)
    mlflow_utils store setup, parent/child runs, batched step logging, run-ending callback
    schedulers   ASHA whose rung state survives ``Tuner.restore``
    resources    ``--gpus-per-trial auto`` (peak-memory probe in a subprocess)
    summary      ranked table, seed aggregation, plots, best config
    searchers    NoRepeatSearcher;  guard: the pre-Ray search guard;  gpu: GPU placement
    ray_compat   every access to a Ray-private name
    plugins      extension points: Tune callbacks for the driver, Trainer callbacks for the trials
    environment  the process environment (set at run time by the driver and every trial)
    run_search   the CLI (``python tune/run_search.py --space NAME``)
"""
