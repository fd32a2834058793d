"""Shared fixtures for the search-service tests: ONE local Ray (num_cpus=2) for the whole session,
space files written to tmp dirs, a free port."""
from __future__ import annotations

import os
import socket

import pytest
import yaml

from testkit import pythonpath

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")

from tune_helpers import BASE_SPACE, write_space  # noqa: E402


@pytest.fixture
def space_file(tmp_path):
    def make(name="test_stage", **changes):
        sp = yaml.safe_load(yaml.safe_dump(BASE_SPACE))
        sp["stage"] = name
        for k, v in changes.items():
            sp[k] = v
        return write_space(tmp_path / "spaces" / f"{name}.yaml", sp)

    return make


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for all tests that need it (run_search.main joins it and leaves it running)."""
    import ray

    os.environ["PYTHONPATH"] = pythonpath()  # tests/support first: trial workers unpickle plug-ins (testkit)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"], "MLFLOW_DISABLE_TELEMETRY": "true"}})
    yield ray
    ray.shutdown()


@pytest.fixture
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
