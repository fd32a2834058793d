"""The search service's process environment, set at run time (never at import): called first by the driver
(``run_search.main``, before anything imports Ray) and by every trial (``trainable.train_pahcl``).

Every variable is a default: a value the user already set wins.
"""
from __future__ import annotations

import os

SERVICE_ENV = {
    # nothing leaves the machine
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "RAY_DISABLE_USAGE_STATS": "1",
    # short epochs + num_to_keep make Ray warn about experiment-checkpoint sync time on every save; the
    # syncing is local and cheap here (stack-notes), so the warning is silenced.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Snapshot the experiment state (trials + searcher) on every controller step instead of Ray's "auto"
    # (>= 10 s): a driver killed between snapshots otherwise forgets trials it already started, whose
    # work is then lost and re-sampled on --resume. A snapshot here takes ~10 ms.
    "TUNE_GLOBAL_CHECKPOINT_S": "0",
    # MLflow's HTTP client retries a failed request 7 times with factor-2 back-off (minutes per call). A trial
    # must not stall on a tracking server that went away: fail fast (~5 s) and let BatchLogger keep the
    # metrics buffered and retry in the background.
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# A local (single-node) Ray binds its gRPC servers (GCS, raylet, workers) and the runtime-env agent to the
# node's IP on all interfaces by default; with Ray's single-node mode they listen on 127.0.0.1 only. Read by
# Ray when it is imported: set before any `import ray`, and not when joining a cluster (--address).
LOCAL_RAY_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def setup_environment(local_ray: bool = False) -> None:
    """Set the service's defaults in ``os.environ``; ``local_ray``: this process will start a local Ray."""
    for key, value in {**SERVICE_ENV, **(LOCAL_RAY_ENV if local_ray else {})}.items():
        os.environ.setdefault(key, value)


def worker_env() -> dict[str, str]:
    """``runtime_env`` variables for Ray workers (a joined cluster's raylet does not have the driver's
    environment); the driver's ``PYTHONPATH`` travels when it has one (the service itself is installed)."""
    env = {"MLFLOW_DISABLE_TELEMETRY": "true"}
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env
