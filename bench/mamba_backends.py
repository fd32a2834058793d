"""Mamba backend micro-benchmark: forward + backward time and peak memory of the CNN+Mamba encoder.

Each configuration runs in its own subprocess (so peak RSS is per configuration, read with
``resource.getrusage(RUSAGE_SELF).ru_maxrss``); a sampler thread kills a worker whose RSS passes
``--mem-cap-gb`` and the row is reported as "over cap".

CPU (always): the pure-PyTorch block with
  * ``fused``      -- chunked scan, custom autograd Function, per-chunk recompute (the default),
  * ``checkpoint`` -- chunked scan in plain autograd, each chunk under torch.utils.checkpoint,
  * ``naive``      -- per-timestep Python loop keeping every state (reference),
at the full (default) size with a batch that fits, the full size at batch 64 with the default
scan, and the ``small`` preset.
CUDA (when present): mamba_ssm vs the torch scan, fp32 vs AMP (bf16 autocast); peak memory from
``torch.cuda.max_memory_allocated``.

    python bench/mamba_backends.py --out bench/results/mamba_backends.json
    python bench/mamba_backends.py --smoke-test --out /tmp/mb.json     # tiny, seconds
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- worker


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _watchdog(cap_bytes: int, peak: list[int]) -> None:
    while True:
        rss = _rss_bytes()
        peak[0] = max(peak[0], rss)
        if rss > cap_bytes:
            print(json.dumps({"status": f"over cap ({rss / 2**30:.1f} GB > {cap_bytes / 2**30:.1f} GB)"}), flush=True)
            os._exit(3)
        time.sleep(0.05)


def run_worker(spec: dict) -> dict:
    import torch

    from pahcl.config import load_config
    from pahcl.models import CNNMambaEncoder

    torch.set_num_threads(spec.get("threads", 2))
    peak = [0]
    if spec["device"] == "cpu":
        threading.Thread(target=_watchdog, args=(int(spec["mem_cap_gb"] * 2**30), peak), daemon=True).start()
    over = {"model.mamba_backend": spec["backend"], "model.mamba_chunk_size": spec["chunk"]}
    over.update(spec.get("overrides", {}))
    cfg = load_config(preset=spec["preset"], overrides=over).model
    torch.manual_seed(0)
    enc = CNNMambaEncoder(cfg)
    if enc.backend == "torch":
        for layer in enc.mamba:
            layer.mixer.scan = spec["scan"]
    dev = torch.device(spec["device"])
    enc = enc.to(dev)
    x = torch.randn(spec["batch"], 1, spec["samples"], device=dev)
    amp = spec.get("amp", False)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    rss_before = _rss_bytes()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    fwd, bwd, cpu = [], [], []
    for i in range(spec["warmup"] + spec["repeats"]):
        enc.zero_grad(set_to_none=True)
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        sync()
        t0 = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            h = enc(x)  # N×T×d_model
            loss = h.float().square().mean()
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        if i >= spec["warmup"]:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            cpu.append((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime))
    res = {
        "status": "ok",
        "backend": enc.backend,
        "tokens": int(h.shape[1]),
        "params": sum(p.numel() for p in enc.parameters()),
        "fwd_s": statistics.median(fwd),
        "bwd_s": statistics.median(bwd),
        "step_s": statistics.median([a + b for a, b in zip(fwd, bwd)]),
        "cpu_s": statistics.median(cpu),
        "rss_before_gb": rss_before / 2**30,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30,  # KiB on Linux
    }
    if dev.type == "cuda":
        res["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return res


# ----------------------------------------------------------------------------- driver


def _specs(args) -> list[dict]:
    base = dict(device="cpu", backend="torch", samples=5000, warmup=1, repeats=args.repeats,
                threads=args.threads, mem_cap_gb=args.mem_cap_gb, chunk=32)
    if args.smoke_test:
        return [
            {**base, "name": "tiny fused", "preset": "tiny", "scan": "fused", "batch": 4, "samples": 800, "warmup": 0},
            {**base, "name": "tiny checkpoint", "preset": "tiny", "scan": "checkpoint", "batch": 4, "samples": 800,
             "warmup": 0},
            {**base, "name": "tiny naive", "preset": "tiny", "scan": "naive", "batch": 4, "samples": 800, "warmup": 0},
        ]
    specs = [
        {**base, "name": "full fused b8", "preset": "full", "scan": "fused", "batch": 8},
        {**base, "name": "full checkpoint b8", "preset": "full", "scan": "checkpoint", "batch": 8},
        {**base, "name": "full naive b8", "preset": "full", "scan": "naive", "batch": 8},
        {**base, "name": "full fused b8 chunk16", "preset": "full", "scan": "fused", "batch": 8, "chunk": 16},
        {**base, "name": "small fused b32", "preset": "small", "scan": "fused", "batch": 32},
        {**base, "name": "small naive b32", "preset": "small", "scan": "naive", "batch": 32},
    ]
    if not args.skip_large:
        specs.append({**base, "name": "full fused b64", "preset": "full", "scan": "fused", "batch": 64, "warmup": 0})
    if args.cuda:
        for backend in ("mamba_ssm", "torch"):
            for amp in (False, True):
                specs.append({**base, "name": f"cuda {backend} {'amp-bf16' if amp else 'fp32'} b64", "device": "cuda",
                              "preset": "full", "backend": backend, "scan": "fused", "batch": 64, "amp": amp,
                              "warmup": 2, "repeats": max(3, args.repeats)})
    return specs


def _run_spec(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout ({timeout:.0f} s)"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if lines:
        return json.loads(lines[-1])
    err = (p.stderr.strip().splitlines() or ["?"])[-1]
    return {"status": f"failed (rc {p.returncode}): {err[:200]}"}


def _fmt(v, nd=2):
    return "—" if v is None else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))


def markdown(rows: list[dict]) -> str:
    head = ("| config | preset | device | backend/scan | batch | chunk | tokens | fwd s | bwd s | fwd+bwd s "
            "| CPU s | peak RSS GB | peak GPU GB | status |")
    out = [head, "|" + "|".join(["---"] * 14) + "|"]
    for r in rows:
        s, m = r["spec"], r["result"]
        be = s["backend"] if s["backend"] != "torch" else f"torch/{s['scan']}"
        if s.get("amp"):
            be += " +amp"
        out.append("| " + " | ".join([
            s["name"], s["preset"], s["device"], be, str(s["batch"]), str(s["chunk"]), _fmt(m.get("tokens")),
            _fmt(m.get("fwd_s")), _fmt(m.get("bwd_s")), _fmt(m.get("step_s")), _fmt(m.get("cpu_s")),
            _fmt(m.get("peak_rss_gb")), _fmt(m.get("peak_gpu_gb")), m["status"],
        ]) + " |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="write results as JSON here")
    ap.add_argument("--smoke-test", action="store_true", help="tiny preset, short input: seconds")
    ap.add_argument("--repeats", type=int, default=1, help="timed iterations per configuration (after 1 warm-up)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in each worker")
    ap.add_argument("--mem-cap-gb", type=float, default=6.0, help="kill a CPU worker whose RSS passes this")
    ap.add_argument("--timeout", type=float, default=420.0, help="seconds per configuration")
    ap.add_argument("--skip-large", action="store_true", help="skip the full-size batch-64 CPU run")
    ap.add_argument("--only", default=None, help="comma-separated substrings of config names to run")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(json.loads(args.worker))), flush=True)
        return 0

    import torch

    args.cuda = torch.cuda.is_available()
    specs = _specs(args)
    if args.only:
        keys = [k.strip() for k in args.only.split(",") if k.strip()]
        specs = [s for s in specs if any(k in s["name"] for k in keys)]
    rows = []
    t_all = time.perf_counter()
    for spec in specs:
        t0 = time.perf_counter()
        res = _run_spec(spec, args.timeout)
        rows.append({"spec": spec, "result": res})
        print(f"[{time.perf_counter() - t0:6.1f} s] {spec['name']}: {res}", file=sys.stderr, flush=True)
    table = markdown(rows)
    print(table)
    meta = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "cuda": args.cuda,
        "gpu": torch.cuda.get_device_name(0) if args.cuda else None,
        "total_s": time.perf_counter() - t_all,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "rows": rows, "markdown": table}, indent=2))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0 if all(r["result"]["status"] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
