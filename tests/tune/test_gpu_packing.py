"""Fractional-GPU packing through Ray, on CPU: real searches on Ray nodes with DECLARED GPUs.

Ray accepts declared GPUs without hardware (``ray.init(num_gpus=1)``, ``ray start --num-gpus 1``). The
driver's ``PAHCL_SIMULATED_GPU`` switch (tune/gpu.py) makes the trials record their assignment and
planned memory cap and train on the CPU. Every trial stalls a few seconds in its only step
(``PAHCL_FAULTS`` stall) so that trials that CAN run together are seen together; the trials' own
start / report times then show how many overlapped.

Also here: ``pahcl.pretrain --config best_config.yaml`` runs exactly the winning trial's config
(MLflow child-run params ``cfg.*``), and the clear start-up errors for a GPU request without GPUs.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from testkit.faults import env_vars
from tune_helpers import BASE_SPACE, REPO_ROOT, descendants, write_space

RUN = [sys.executable, str(REPO_ROOT / "tune" / "run_search.py")]
STALL_S = 12


def _space(tmp_path: Path, name: str, n: int, gpus) -> Path:
    sp = yaml.safe_load(yaml.safe_dump(BASE_SPACE))
    sp.update(stage=name, num_samples=n, max_epochs=1, search={"seed": 0, "max_concurrent_trials": 8},
              scheduler={"type": "asha", "grace_period": 1, "reduction_factor": 2},
              resources={"cpus_per_trial": 0.25, "gpus_per_trial": gpus})
    sp["fixed"].update({"training.max_steps_per_epoch": 1, "training.warmup_epochs": 1})
    return write_space(tmp_path / "spaces" / f"{name}.yaml", sp)


def _env(sim: dict) -> dict:
    env = dict(os.environ, PAHCL_SIMULATED_GPU=json.dumps(sim), OMP_NUM_THREADS="1",
               **env_vars([{"kind": "stall", "at_step": 0, "seconds": STALL_S}]))
    return env


def _trial_results(results: Path, stage: str) -> list[dict]:
    """The last result of every trial, from Ray's own result.json files."""
    out = []
    for f in sorted((results / stage / "ray").glob("*/*/result.json")):
        lines = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
        assert lines, f"{f} is empty"
        out.append(lines[-1])
    return out


def _max_overlap(rows: list[dict]) -> int:
    ev = sorted([(r["trial_wall_start"], 1) for r in rows] + [(r["trial_wall_report"], -1) for r in rows],
                key=lambda e: (e[0], e[1]))
    cur = best = 0
    for _, d in ev:
        cur += d
        best = max(best, cur)
    return best


def _check_packing(rows: list[dict], n: int, k: int, cap: float, total_gib: float) -> None:
    assert len(rows) == n, rows
    for r in rows:
        assert r["gpu_ids"] == "0" and r["gpu_simulated"] is True, r
        assert r["gpu_share"] == pytest.approx(1.0 / k)
        assert r["gpu_cap_fraction"] == pytest.approx(cap, rel=1e-6)
        assert r["gpu_cap_gib"] == pytest.approx(cap * total_gib, rel=1e-6)
    assert _max_overlap(rows) == k, [(r["trial_wall_start"], r["trial_wall_report"]) for r in rows]


@pytest.fixture(scope="module")
def quarter_search(tmp_path_factory):
    """--gpus-per-trial 0.25 on a local Ray with 1 declared GPU: 5 trials, at most 4 at once."""
    tmp = tmp_path_factory.mktemp("quarter")
    space = _space(tmp, "packq", 5, 0)
    res = tmp / "results"
    out = subprocess.run(RUN + ["--space", str(space), "--results-dir", str(res), "--gpus-per-trial", "0.25"],
                         env=_env({"total_gib": 24}), capture_output=True, text=True, timeout=600, cwd=str(tmp))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return {"results": res, "stdout": out.stdout}


def test_packing_quarter_gpu_runs_four_at_once(quarter_search):
    rows = _trial_results(quarter_search["results"], "packq")
    _check_packing(rows, n=5, k=4, cap=0.9 * 0.25, total_gib=24)


def test_best_config_yaml_reproduces_the_winning_trial(quarter_search, tmp_path):
    """The winner's config as the trial ran it (its MLflow params: every config key once, by its dotted name)
    == what pretrain --config runs."""
    import mlflow

    stage_dir = quarter_search["results"] / "packq"
    summary = json.loads((stage_dir / "summary.json").read_text())
    client = mlflow.MlflowClient(f"sqlite:///{quarter_search['results'] / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`pahcl.trial_id` = '{summary['best']['trial_id']}'")
    assert len(runs) == 1
    ran = dict(runs[0].data.params)
    set_by_trial = runs[0].data.tags["pahcl.overrides"].split(",")
    assert "training.learning_rate" in set_by_trial and "model.moco_momentum" in set_by_trial
    out = subprocess.run([sys.executable, "-m", "pahcl.pretrain", "--config", str(stage_dir / "best_config.yaml"),
                          "--data", "synthetic:40", "--out", str(tmp_path / "re"), "--no-progress"],
                         capture_output=True, text=True, timeout=300, cwd=str(REPO_ROOT),
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-3000:]
    from pahcl.config import flatten

    used = flatten(yaml.safe_load((tmp_path / "re" / "config.yaml").read_text()))
    assert set(used) == set(ran)
    diff = {k: (ran[k], used[k]) for k in ran if ran[k] != str(used[k])[:6000]}
    assert not diff, diff
    assert "no preset applied" in out.stderr


@pytest.fixture(scope="module")
def ray_head():
    """A separately started `ray start --head` on loopback with 1 declared GPU; stopped by process group."""
    tmp = tempfile.mkdtemp(prefix="rayg", dir="/tmp")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free_port = sock.getsockname()[1]
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={free_port}",
           "--node-ip-address=127.0.0.1", "--num-cpus=2", "--num-gpus=1", "--include-dashboard=false",
           f"--temp-dir={tmp}", "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 90
        env = dict(os.environ, RAY_AUTH_MODE="token")  # the head enables token auth (~/.ray/auth_token)
        while subprocess.run([cmd[0], "status", f"--address=127.0.0.1:{free_port}"], capture_output=True,
                             env=env, timeout=60).returncode != 0:  # until the head (GCS + raylet) is up
            assert proc.poll() is None and time.time() < deadline, "ray start --head did not come up"
            time.sleep(2)
        yield f"127.0.0.1:{free_port}"
    finally:
        pids = descendants({proc.pid})
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:  # `ray start --block` can take long to stop its children
            pass
        for pid in descendants(pids) | pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)
        shutil.rmtree(tmp, ignore_errors=True)


def test_packing_auto_known_peak_on_a_joined_cluster(ray_head, tmp_path):
    """auto with a known peak (7 GiB of a 24 GiB GPU): k = floor(24 / 7.7) = 3, cap 8/24 each."""
    space = _space(tmp_path, "packa", 4, "auto")
    res = tmp_path / "results"
    cmd = RUN + ["--space", str(space), "--results-dir", str(res), "--address", ray_head]
    out = subprocess.run(cmd, env=_env({"total_gib": 24, "peak_gib": 7}), capture_output=True, text=True,
                         timeout=600, cwd=str(tmp_path))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "3 trial(s) per GPU" in out.stdout
    _check_packing(_trial_results(res, "packa"), n=4, k=3, cap=8 / 24, total_gib=24)


def test_packing_trial_given_a_gpu_without_cuda_fails_clearly(ray_head, tmp_path):
    """No simulation switch: a real run whose trial gets a (declared) GPU but has no CUDA must not train on CPU."""
    space = _space(tmp_path, "nocuda", 1, 0.5)
    env = {k: v for k, v in _env({}).items() if k not in ("PAHCL_SIMULATED_GPU", "PAHCL_FAULTS")}
    out = subprocess.run(RUN + ["--space", str(space), "--results-dir", str(tmp_path / "r"), "--address", ray_head,
                                "--max-failures", "0"], env=env, capture_output=True, text=True, timeout=600,
                         cwd=str(tmp_path))
    errors = [f.read_text() for f in (tmp_path / "r" / "nocuda" / "ray").glob("*/*/error.txt")]
    assert len(errors) == 1, out.stdout[-3000:] + out.stderr[-3000:]
    assert "GpuUnavailableError" in errors[0] and "Ray assigned GPU(s) 0 (0.5 per trial) but torch has no CUDA" \
        in errors[0]
    assert not list((tmp_path / "r" / "nocuda" / "ray").glob("*/*/result.json")) or \
        all(not f.read_text().strip() for f in (tmp_path / "r" / "nocuda" / "ray").glob("*/*/result.json"))


def test_packing_gpu_request_without_any_gpu_exits_2(tmp_path):
    space = _space(tmp_path, "nogpu", 1, 0.5)
    env = {k: v for k, v in os.environ.items() if k != "PAHCL_SIMULATED_GPU"}
    out = subprocess.run(RUN + ["--space", str(space), "--results-dir", str(tmp_path / "r")], env=env,
                         capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "--gpus-per-trial 0.5" in out.stderr and "no CUDA device" in out.stderr
    assert not (tmp_path / "r" / "mlflow.db").exists()


def test_packing_gpu_request_on_a_cluster_without_gpus_is_refused(ray_session):
    """The joined cluster (here the session's local Ray, no GPUs) is checked before any run is created."""
    from tune.gpu import check_cluster_gpus

    from pahcl.config import ConfigError

    with pytest.raises(ConfigError, match=r"--gpus-per-trial 0.5: the Ray cluster has 0 GPU"):
        check_cluster_gpus(0.5)
