"""User errors at the search CLI end in one line and exit 2, before Ray or data preparation, and leave
no empty output folders (issue 15 items 2 and 7). Each case is a real ``tune/run_search.py`` process."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tune_helpers import REPO_ROOT


def _run(args, tmp_path, env_extra=None, timeout=120):
    env = dict(os.environ, **(env_extra or {}))
    env.pop("MLFLOW_TRACKING_URI", None) if not (env_extra or {}).get("MLFLOW_TRACKING_URI") else None
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "tune/run_search.py", *args], cwd=REPO_ROOT, env=env, capture_output=True,
                       text=True, timeout=timeout)
    return p, time.monotonic() - t0


def _one_error_line(p) -> str:
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in p.stderr, p.stderr[-3000:]
    assert lines and lines[-1].startswith("error: "), p.stderr[-2000:]
    return lines[-1]


@pytest.mark.parametrize("data, needle", [
    ("circor:../no/such/folder", "does not exist"),
    ("nosuchkind:x", "unknown kind"),
])
def test_bad_data_spec(tmp_path, data, needle):
    out = tmp_path / "results"
    p, _ = _run(["--space", "moco_stage2", "--smoke-test", "--data", data, "--results-dir", str(out)], tmp_path)
    assert p.returncode == 2 and needle in _one_error_line(p)
    assert not out.exists()  # no empty results folder left behind


def test_empty_data_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "results"
    p, _ = _run(["--space", "moco_stage2", "--smoke-test", "--data", f"wav:{tmp_path / 'empty'}",
                 "--results-dir", str(out)], tmp_path)
    assert p.returncode == 2 and "no usable recordings" in _one_error_line(p)
    assert not (out / "moco_stage2").exists()  # nothing of the stage; only the MLflow store may exist


def test_results_folder_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    p, _ = _run(["--space", "moco_stage2", "--smoke-test", "--results-dir", str(blocker / "results")], tmp_path)
    line = _one_error_line(p)
    assert p.returncode == 2 and line.startswith("error: --results-dir: cannot write to") and "--results-dir DIR" in line


def test_unreachable_tracking_server_fails_in_seconds(tmp_path, free_port):
    out = tmp_path / "results"
    p, wall = _run(["--space", "moco_stage2", "--smoke-test", "--results-dir", str(out)], tmp_path,
                   {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port}"})
    line = _one_error_line(p)
    assert p.returncode == 2 and "no MLflow server answers" in line and "MLFLOW_TRACKING_URI" in line
    assert wall < 60  # before: 13 s of MLflow retries after data preparation, then chained tracebacks
    assert not (out / "cache").exists()  # refused before any data was prepared


def test_relative_sqlite_uri_refused_before_data_preparation(tmp_path):
    out = tmp_path / "results"
    p, _ = _run(["--space", "moco_stage2", "--smoke-test", "--results-dir", str(out),
                 "--mlflow-uri", "sqlite:///mlflow.db"], tmp_path)
    assert p.returncode == 2 and "absolute sqlite path" in _one_error_line(p)
    assert not (out / "cache").exists()


@pytest.mark.parametrize("setting, needle", [
    ("mamba", "model.mamba_backend"),
    ("device", "training.device is 'cuda'"),
])
def test_hardware_the_machine_lacks(tmp_path, space_file, setting, needle):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the requested hardware exists")
    fixed = {"model.mamba_backend": "mamba_ssm"} if setting == "mamba" else {"training.device": "cuda"}
    from tune_helpers import BASE_SPACE

    space = space_file(fixed={**BASE_SPACE["fixed"], **fixed})
    p, _ = _run(["--space", str(space), "--results-dir", str(tmp_path / "r")], tmp_path)
    assert p.returncode == 2 and needle in _one_error_line(p)


def test_cli_state_does_not_leak_between_calls_in_one_process(tmp_path, capsys):
    """cli() called twice in one process (tests, notebooks): the parent run the first call opened is not
    ended again by the second call's error path (the CI failure of stop 10: a stale run on a stopped server)."""
    from tune import run_search

    run_search._OPEN_PARENT.update(uri="http://127.0.0.1:9", run_id="0" * 32)  # what an earlier call left
    run_search._MADE_DIRS.append(tmp_path / "earlier")
    (tmp_path / "earlier").mkdir()
    rc = run_search.cli(["--space", "moco_stage2", "--smoke-test", "--data", "nosuchkind:x",
                         "--results-dir", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "unknown kind" in err, err
    assert (tmp_path / "earlier").is_dir()  # not this call's folder: kept
    assert run_search._OPEN_PARENT == {}
