"""Exposure: nothing the service starts listens beyond loopback; security floors of the pins.

The service's own local-Ray init (``tune.run_search._init_ray``, what ``run_search.py`` calls) and an
``mlflow server`` started the way docs/search.md documents it (no ``--host``) run as subprocesses; the
test reads LISTEN sockets from /proc/net/tcp{,6}, maps socket inodes to PIDs through /proc/*/fd and keeps
only the processes this test started (and their descendants), then fails on any non-loopback address.
"""
from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from importlib.metadata import version
from pathlib import Path

import pytest

from tune_helpers import REPO_ROOT, descendants


def _decode(hexaddr: str) -> ipaddress._BaseAddress:
    raw = bytes.fromhex(hexaddr)
    # /proc/net stores each 32-bit word in host (little-endian) order
    raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def listeners() -> list[tuple[str, int, str]]:
    out = []
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(f).read_text().splitlines()[1:]:
            p = line.split()
            if p[3] == "0A":  # TCP_LISTEN
                addr, port = p[1].split(":")
                out.append((str(_decode(addr)), int(port, 16), p[9]))
    return out


def _is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


def _socket_owners(pids: set[int]) -> dict[str, int]:
    owners = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if link.startswith("socket:["):
                    owners[link[8:-1]] = pid
        except OSError:
            pass
    return owners


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


RAY_DRIVER = """
import sys
import tune.run_search as rs
from tune.environment import setup_environment
setup_environment(local_ray=True)   # the service's environment for a local Ray, before Ray is imported
rs._init_ray(rs.parse_args(["--space", "moco_stage2"]), num_cpus=1)
import ray
assert ray.get(ray.remote(lambda: 1).remote()) == 1   # a worker process is up too
print("READY", flush=True)
sys.stdin.read()                                     # until the test closes stdin
ray.shutdown()
"""


@pytest.mark.slow
def test_local_ray_and_mlflow_server_listen_on_loopback_only(tmp_path, free_port):
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
    ray_proc = subprocess.Popen([sys.executable, "-c", RAY_DRIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env, cwd=str(tmp_path),
                                start_new_session=True)
    # the MLflow server exactly as docs/search.md documents it: no --host (default 127.0.0.1)
    ml_proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--port", str(free_port),
                                "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--workers", "1"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=str(tmp_path),
                               start_new_session=True)
    try:
        assert ray_proc.stdout.readline().strip() == "READY"
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{free_port}/health", timeout=2):
                    break
            except OSError:
                assert ml_proc.poll() is None and time.time() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        pids = descendants({ray_proc.pid, ml_proc.pid})
        owners = _socket_owners(pids)
        mine = [(a, p, owners[i]) for a, p, i in listeners() if i in owners]
        names = {_cmd(pid).split()[0].rsplit("/", 1)[-1] for _, _, pid in mine}
        # the test is only meaningful if it saw Ray's servers and MLflow's
        assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), names
        assert any(p == free_port for _, p, _ in mine), mine
        exposed = [(a, p, _cmd(pid)) for a, p, pid in mine if not _is_loopback(a)]
        assert not exposed, exposed
        print(f"{len(mine)} listening sockets from {len(pids)} processes, all loopback: "
              f"{sorted({a for a, _, _ in mine})}")
    finally:
        try:
            ray_proc.stdin.close()
            ray_proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(ray_proc.pid, signal.SIGKILL)
            ray_proc.wait()
        for p in (ray_proc, ml_proc):
            try:
                os.killpg(p.pid, signal.SIGKILL)  # what is left of the process groups this test started
            except ProcessLookupError:
                pass
        ml_proc.wait()


def test_ray_local_init_keeps_dashboard_off(monkeypatch):
    src = (REPO_ROOT / "tune" / "run_search.py").read_text()
    assert "include_dashboard=False" in src and "setup_environment(local_ray=not args.address)" in src
    from tune.environment import LOCAL_RAY_ENV, SERVICE_ENV, setup_environment

    for key in {**SERVICE_ENV, **LOCAL_RAY_ENV}:
        monkeypatch.delenv(key, raising=False)  # restored after the test
    setup_environment(local_ray=False)  # joining a cluster (--address): Ray's default
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in os.environ
    setup_environment(local_ray=True)  # a local Ray: single-node mode, servers on 127.0.0.1
    assert os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


def _floor(spec: str) -> tuple[int, ...]:
    return tuple(int(x) for x in spec.split(">=")[1].split(",")[0].split("<")[0].strip().split("."))


def _ver(name: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version(name).split("+")[0].split(".")[:2] if x.isdigit())


def test_security_floors_pinned_and_installed():
    deps = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_dep = next(d for d in deps if d.replace(" ", "").startswith("ray[tune]>="))
    mlflow_dep = next(d for d in deps if d.replace(" ", "").startswith("mlflow>="))
    assert _floor(ray_dep) >= (2, 52), ray_dep    # dashboard user-agent bypass advisory
    assert _floor(mlflow_dep) >= (3, 8), mlflow_dep  # artifact path traversal advisory
    assert _ver("ray") >= (2, 52), version("ray")
    assert _ver("mlflow") >= (3, 8), version("mlflow")
