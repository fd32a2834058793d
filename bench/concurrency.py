"""Concurrency and packing: aggregate training throughput (cycles/s) of 1 vs 2 concurrent trials.

    python bench/concurrency.py --out bench/results/concurrency.json            # CPU: ~2 min on 2 cores
    python bench/concurrency.py --presets tiny --seconds 10 --out /tmp/cc.json
    python bench/concurrency.py --smoke-test --out /tmp/cc_smoke.json           # seconds
    python bench/concurrency.py --gpu --out bench/results/concurrency_gpu.json  # CUDA machine (GPU part)

CPU part (always): every "trial" is a separate Python process running the real optimizer step
(``Trainer._optimizer_step`` over micro-batches drawn from the Trainer's own DataLoader, so data
loading is included; validation is not) on synthetic cycles, with ``torch.set_num_threads(T)``.
Layouts: 1 trial x 1 thread, 1 trial x 2 threads, 2 concurrent trials x 1 thread (what the
CPU search budget runs: ``cpus_per_trial: 1``, 2 at a time). The processes start together: each
loads data, builds its Trainer, runs ``--warmup`` steps, then waits at a barrier; all then train
for ``--seconds``. Throughput of a trial = cycles of its steps finished inside the window / time from
the start to its last finished step; aggregate = sum over trials.

GPU part (``--gpu``, or by default when CUDA is present): for each stage space (full preset) the
peak memory of one training step of every memory-relevant configuration (``training.batch_size`` x
``model.queue_size`` choices), measured with ``tune.resources.measure_peak_gpu_memory`` (the same
probe ``--gpus-per-trial auto`` uses); the ``auto`` packing decision (``plan_resources``: trials per
GPU, memory cap); and aggregate throughput of k packed fractional trials (each capping itself with
``torch.cuda.set_per_process_memory_fraction`` like the trainable) vs one trial alone.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, command, machine, md_table, write_json

# per-preset settings of the CPU search (moco_stage2 synthetic_cpu budget) and the small CPU default
PRESET_OVERRIDES = {
    "tiny": {"model.use_moco": True, "model.queue_size": 256, "training.batch_size": 8,
             "training.gradient_accumulation_steps": 2},
    "small": {"model.use_moco": True},
    "full": {"model.use_moco": True},
}


# ----------------------------------------------------------------------------- worker


def worker(spec: dict) -> dict:
    import torch

    torch.set_num_threads(int(spec["threads"]))
    from pahcl.config import build_config, load_config
    from pahcl.train import Trainer, prepare_data

    if spec.get("tree") is not None:  # GPU part: a space's config
        cfg = build_config(spec["tree"], {**spec["overrides"], "training.device": spec["device"]})
    else:
        cfg = load_config(None, preset=spec["preset"], overrides={**spec["overrides"], "training.device": spec["device"],
                                                                   "training.num_workers": 0, "training.warmup_epochs": 0})
    if spec.get("gpu_fraction") and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(float(spec["gpu_fraction"]))
    train, _ = prepare_data(cfg, spec["data"], cache_dir=spec["cache"], log=lambda m: None)
    tr = Trainer(cfg, train, None, log=lambda m: None)
    sync = torch.cuda.synchronize if tr.device.type == "cuda" else (lambda: None)
    per_step = cfg.training.batch_size * tr.micro_per_step

    def batches():
        epoch = 0
        while True:
            group = []
            for b in tr._loader(epoch):
                group.append(b)
                if len(group) == tr.micro_per_step:
                    yield group
                    group = []
            epoch += 1

    it = batches()
    for _ in range(spec["warmup"]):
        tr._optimizer_step(next(it), 0, last_in_epoch=False)
    sync()
    ready, go = Path(spec["ready"]), Path(spec["go"])
    ready.write_text(str(os.getpid()))
    while not go.exists():
        time.sleep(0.005)
    t_go, deadline = json.loads(go.read_text())
    while time.time() < t_go:
        time.sleep(0.001)
    steps, last = 0, t_go
    while True:
        tr._optimizer_step(next(it), 0, last_in_epoch=False)
        sync()
        now = time.time()
        if now > deadline:
            break
        steps, last = steps + 1, now
    return {"steps": steps, "cycles": steps * per_step, "active_s": last - t_go,
            "cycles_per_s": steps * per_step / max(last - t_go, 1e-9), "cycles_per_step": per_step,
            "threads": torch.get_num_threads(), "device": str(tr.device),
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30 if tr.device.type == "cuda" else None}


def run_layout(n_trials: int, threads: int, base: dict, seconds: float, tmp: Path, tag: str) -> dict:
    """Start n_trials worker processes, release them together, train for ``seconds``."""
    go = tmp / f"go-{tag}"
    procs, readies = [], []
    for i in range(n_trials):
        ready = tmp / f"ready-{tag}-{i}"
        spec = {**base, "threads": threads, "ready": str(ready), "go": str(go)}
        readies.append(ready)
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(spec)], cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    t_wait = time.time()
    while not all(r.exists() for r in readies):
        if any(p.poll() is not None for p in procs):
            errs = [p.communicate()[1][-3000:] for p in procs if p.poll() is not None]
            raise RuntimeError(f"a worker exited before the barrier:\n{errs}")
        if time.time() - t_wait > 900:
            raise RuntimeError("workers never reached the barrier")
        time.sleep(0.05)
    t_go = time.time() + 0.5
    go.write_text(json.dumps([t_go, t_go + seconds]))
    load_during = []
    results = []
    for p in procs:
        out, err = p.communicate(timeout=seconds + 900)
        line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"worker failed (rc {p.returncode}): {err[-3000:]}")
        results.append(json.loads(line[7:]))
    load_during.append(os.getloadavg()[0])
    return {"trials": n_trials, "threads_per_trial": threads, "per_trial": results,
            "aggregate_cycles_per_s": sum(r["cycles_per_s"] for r in results),
            "steps": [r["steps"] for r in results], "loadavg_after": load_during[-1]}


# ----------------------------------------------------------------------------- CPU part


def cpu_part(a, tmp: Path) -> list[dict]:
    from pahcl.config import load_config
    from pahcl.train import prepare_data

    rows = []
    for preset in a.presets:
        over = PRESET_OVERRIDES.get(preset, {})
        prepare_data(load_config(None, preset=preset, overrides=over), a.data, cache_dir=tmp / "cache", log=lambda m: None)
        base = {"preset": preset, "overrides": over, "device": "cpu", "data": a.data, "cache": str(tmp / "cache"),
                "warmup": a.warmup}
        for rnd in range(a.rounds):  # layouts interleaved, so slow drifts of the machine's load hit all of them
            for n, threads in a.layouts:
                r = run_layout(n, threads, base, a.seconds, tmp, f"{preset}-{n}x{threads}-{rnd}")
                r.update(preset=preset, round=rnd)
                rows.append(r)
            print(f"[{preset} {n} trial(s) x {threads} thread(s)] {r['aggregate_cycles_per_s']:.1f} cycles/s "
                  f"(steps {r['steps']}, load {os.getloadavg()[0]:.2f})", file=sys.stderr, flush=True)
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per (preset, trials, threads): median aggregate cycles/s over the rounds."""
    import statistics

    out = []
    for key in dict.fromkeys((r["preset"], r["trials"], r["threads_per_trial"]) for r in rows):
        rs = [r for r in rows if (r["preset"], r["trials"], r["threads_per_trial"]) == key]
        out.append({"preset": key[0], "trials": key[1], "threads_per_trial": key[2], "rounds": rs,
                    "aggregate_cycles_per_s": statistics.median(r["aggregate_cycles_per_s"] for r in rs)})
    return out


def cpu_markdown(rows: list[dict], seconds: float) -> str:
    out = []
    summ = summarise(rows)
    for preset in dict.fromkeys(r["preset"] for r in summ):
        rs = [r for r in summ if r["preset"] == preset]
        base = next((r for r in rs if r["trials"] == 1 and r["threads_per_trial"] == 1), rs[0])
        for r in rs:
            per = "; ".join(", ".join(f"{t['cycles_per_s']:.1f}" for t in x["per_trial"]) for x in r["rounds"])
            out.append([preset, f"{r['trials']} x {r['threads_per_trial']} thread(s)", per,
                        " / ".join(f"{x['aggregate_cycles_per_s']:.1f}" for x in r["rounds"]),
                        f"**{r['aggregate_cycles_per_s']:.1f}**",
                        f"{r['aggregate_cycles_per_s'] / base['aggregate_cycles_per_s']:.2f}",
                        f"{r['rounds'][0]['per_trial'][0]['cycles_per_step']}",
                        "; ".join(" / ".join(str(s) for s in x["steps"]) for x in r["rounds"])])
    head = ["preset", "trials x threads", "cycles/s per trial (each round)", "aggregate per round",
            "aggregate cycles/s (median)", "vs 1 x 1", "cycles per step", f"steps in {seconds:.0f} s (each round)"]
    return md_table(head, out)


# ----------------------------------------------------------------------------- GPU part (CUDA only)


def gpu_part(a, tmp: Path, log=print) -> dict:
    """Peak memory per configuration, the auto packing decision, packed vs alone throughput. Needs CUDA."""
    import torch

    if not torch.cuda.is_available():
        return {"status": "not run: no CUDA device"}
    from tune.resources import measure_peak_gpu_memory, plan_resources
    from tune.spaces import load_space

    cache = tmp / "cache"
    out = {"status": "ok", "gpu": torch.cuda.get_device_name(0), "spaces": []}
    for name in a.spaces:
        space = load_space(name, results_root=tmp / "results", cli={"preset": "full", "data": a.gpu_data},
                           log=lambda m: None)
        from pahcl.train import prepare_data
        from pahcl.config import build_config

        prepare_data(build_config(space.base_tree(), space.trial_overrides(
            {k: d.candidates()[0] for k, d in space.params.items()})), a.gpu_data, cache_dir=cache, log=lambda m: None)
        heavy = {k: d for k, d in space.params.items() if k in ("training.batch_size", "model.queue_size")
                 and d.type == "categorical"}
        configs = []
        for combo in itertools.product(*[d.choices for d in heavy.values()]) if heavy else [()]:
            params = {k: d.candidates()[0] for k, d in space.params.items()}
            params.update(dict(zip(heavy, combo)))

            class _One:  # a one-configuration view of the space for the probe
                def __init__(self, sp, p):
                    self._sp, self._p = sp, p
                    self.params = {}

                def base_tree(self):
                    return self._sp.base_tree()

                def trial_overrides(self, _):
                    return self._sp.trial_overrides(self._p)

            t0 = time.perf_counter()
            probe = measure_peak_gpu_memory(_One(space, params), a.gpu_data, cache)
            configs.append({"params": {k: params[k] for k in heavy}, "peak_gb": probe["peak"] / 2**30,
                            "free_gb": probe["free"] / 2**30, "total_gb": probe["total"] / 2**30,
                            "probe_s": time.perf_counter() - t0})
            log(f"[gpu] {name} {configs[-1]['params']}: peak {configs[-1]['peak_gb']:.2f} GiB")
        res = plan_resources(space, "auto", None, a.gpu_data, cache, log=log)
        row = {"space": name, "configs": configs, "trials_per_gpu": res.trials_per_gpu, "gpu_fraction": res.gpu_fraction,
               "gpus_per_trial": res.gpus, "peak_gb_largest": res.peak_bytes / 2**30, "message": res.message}
        # throughput: one trial alone vs k packed trials (at most --max-pack), the largest configuration
        from tune.resources import largest_overrides

        base = {"tree": space.base_tree(), "overrides": {**largest_overrides(space), "training.num_workers": 0},
                "device": "cuda", "data": a.gpu_data, "cache": str(cache), "warmup": 3}
        k = max(1, min(res.trials_per_gpu, a.max_pack))
        alone = run_layout(1, a.gpu_threads, {**base, "gpu_fraction": res.gpu_fraction}, a.seconds, tmp, f"{name}-gpu1")
        packed = run_layout(k, a.gpu_threads, {**base, "gpu_fraction": res.gpu_fraction}, a.seconds, tmp, f"{name}-gpu{k}") \
            if k > 1 else alone
        row.update(alone_cycles_per_s=alone["aggregate_cycles_per_s"], packed_trials=k,
                   packed_cycles_per_s=packed["aggregate_cycles_per_s"],
                   packed_speedup=packed["aggregate_cycles_per_s"] / max(alone["aggregate_cycles_per_s"], 1e-9))
        out["spaces"].append(row)
    return out


def gpu_markdown(g: dict) -> str:
    if g.get("status") != "ok":
        return f"GPU part: {g.get('status')}"
    rows = []
    for s in g["spaces"]:
        peaks = "; ".join(f"{c['params'] or 'largest'}: {c['peak_gb']:.2f} GiB" for c in s["configs"])
        rows.append([s["space"], peaks, s["trials_per_gpu"], f"{s['gpu_fraction']:.3f}",
                     f"{s['alone_cycles_per_s']:.0f}", f"{s['packed_trials']}: {s['packed_cycles_per_s']:.0f}",
                     f"{s['packed_speedup']:.2f}"])
    return md_table(["space (full preset)", "peak memory per configuration", "auto: trials per GPU", "memory cap",
                     "1 trial cycles/s", "k packed: aggregate cycles/s", "speed-up"], rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny"], help="tiny = the CPU search budget; small steps take tens of s")
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--seconds", type=float, default=15.0, help="measurement window per layout")
    ap.add_argument("--rounds", type=int, default=2, help="repeats of the interleaved layouts (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before the barrier")
    ap.add_argument("--gpu", action="store_true", help="run the GPU part (default: when CUDA is present)")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU part")
    ap.add_argument("--spaces", nargs="+", default=["simclr_stage1", "moco_stage2", "moco_stage3"])
    ap.add_argument("--gpu-data", default="synthetic")
    ap.add_argument("--gpu-threads", type=int, default=2)
    ap.add_argument("--max-pack", type=int, default=4, help="GPU: at most this many packed trials in the throughput run")
    ap.add_argument("--smoke-test", action="store_true", help="tiny preset, synthetic:8, 2 s windows")
    ap.add_argument("--out", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print("RESULT " + json.dumps(worker(json.loads(a.worker))), flush=True)
        return 0
    a.layouts = [(1, 1), (1, 2), (2, 1)]
    if a.smoke_test:
        a.presets, a.data, a.seconds, a.warmup, a.rounds = ["tiny"], "synthetic:8", 2.0, 1, 1

    import torch

    torch.set_num_threads(1)
    m0 = machine()
    tmp = Path(tempfile.mkdtemp(prefix="pahcl_concurrency_"))
    cpu_rows = [] if a.no_cpu else cpu_part(a, tmp)
    run_gpu = a.gpu or torch.cuda.is_available()
    gpu = gpu_part(a, tmp, log=lambda m: print(m, file=sys.stderr)) if run_gpu else \
        {"status": "not run: no CUDA device on this machine (no GPU was lent to this task)"}
    text = (cpu_markdown(cpu_rows, a.seconds) if cpu_rows else "") + "\n\n" + gpu_markdown(gpu)
    print(text)
    m0["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    args = {k: v for k, v in vars(a).items() if k not in ("worker",)}
    write_json(a.out, {"bench": "concurrency", "command": command(argv), "machine": m0, "args": args,
                       "cpu": summarise(cpu_rows) if cpu_rows else [], "cpu_runs": cpu_rows, "gpu": gpu, "markdown": text, "cpu_markdown": cpu_markdown(cpu_rows, a.seconds)
                       if cpu_rows else "", "gpu_markdown": gpu_markdown(gpu)})
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
