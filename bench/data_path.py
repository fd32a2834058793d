"""Data path: preprocessing throughput (recordings/s) and data-loader throughput vs the training step.

    python bench/data_path.py --out bench/results/data_path.json          # ~1-2 min on 2 cores
    python bench/data_path.py --smoke-test --out /tmp/dp_smoke.json       # seconds

1. Preprocessing, per data set (``yaseen:../shared/data/yaseen2018``, ``circor:../shared/data/circor_tiny``,
   ``synthetic``): reading (``iter_recordings``; for synthetic this is the generator) and, separately,
   ``recording_cycles`` (resample, band-pass, spike removal, normalise, cycles from annotations or the
   automatic segmenter) + ``cycle_window`` for every recording -- what ``load_cycles`` does on a cache
   miss. Reported: recordings/s, audio seconds per second, cycles/s. One process, single-threaded
   numpy/scipy (``torch.set_num_threads(1)``; torch is not used there).
2. Loader: ``ContrastiveCycleDataset`` (two augmented views per cycle) + ``torch.utils.data.DataLoader``
   with the ``small`` (CPU) preset's settings (batch 32, shuffle, drop_last, ``num_workers`` 0, no
   pinning) over the synthetic training split, built with ``Trainer._loader`` itself: cycles/s.
   A row with 2 workers is given for reference.
3. Step: the ``small`` preset's optimizer step (MoCo, batch 32 x 2 micro-batches) on pre-loaded
   batches with ``torch.set_num_threads`` 1 and 2: the cycles/s the training step consumes.
   Loader share = step rate / loader rate = the fraction of a serial (num_workers 0) step spent loading.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from _common import REPO, command, machine, md_table, write_json

DATASETS = [f"yaseen:{REPO.parent / 'shared' / 'data' / 'yaseen2018'}",
            f"circor:{REPO.parent / 'shared' / 'data' / 'circor_tiny'}", "synthetic"]


def _short(spec: str) -> str:
    kind, _, path = spec.partition(":")
    return f"{kind}:{os.path.relpath(path, REPO)}" if path and os.path.isabs(path) else spec


def preprocessing(spec: str, data_cfg, max_recordings: int | None) -> dict:
    from pahcl.data.cycles import cycle_window, recording_cycles
    from pahcl.data.readers import SkipLog, iter_recordings

    skips = SkipLog(log=None)
    t0 = time.perf_counter()
    recs = []
    for r in iter_recordings(spec, skips):
        recs.append(r)
        if max_recordings and len(recs) >= max_recordings:
            break
    t_read = time.perf_counter() - t0
    L = int(round(data_cfg.segment_duration * data_cfg.sample_rate))
    audio_s = sum(len(r.signal) / r.sample_rate for r in recs)
    n_cycles, failed = 0, 0
    t0 = time.perf_counter()
    for r in recs:
        try:
            x, cycles, _src = recording_cycles(r, data_cfg)
        except Exception:  # noqa: BLE001 - counted like load_cycles' "preprocessing failed"
            failed += 1
            continue
        for c in cycles:
            cycle_window(x, c, L)
        n_cycles += len(cycles)
    t_pre = time.perf_counter() - t0
    rates = sorted({r.sample_rate for r in recs})
    return {"spec": _short(spec), "recordings": len(recs), "skipped_while_reading": len(skips), "failed": failed,
            "audio_s": audio_s, "source_rates": rates, "cycles": n_cycles, "read_s": t_read, "preprocess_s": t_pre,
            "recordings_per_s": len(recs) / t_pre, "audio_s_per_s": audio_s / t_pre, "cycles_per_s": n_cycles / t_pre,
            "read_recordings_per_s": len(recs) / max(t_read, 1e-9)}


def loader_rate(tr, epochs: int, workers: int) -> dict:
    import torch

    object.__setattr__(tr.cfg.training, "num_workers", workers)  # Config dataclasses may be frozen
    n, t0 = 0, time.perf_counter()
    for e in range(epochs):
        for b in tr._loader(e):
            n += int(b["view1"].shape[0])
    sec = time.perf_counter() - t0
    return {"num_workers": workers, "cycles": n, "seconds": sec, "cycles_per_s": n / sec,
            "torch_threads": torch.get_num_threads()}


def step_rate(tr, steps: int, warmup: int) -> dict:
    k = tr.micro_per_step
    batches, e = [], 0
    while len(batches) < (steps + warmup) * k:
        for b in tr._loader(e):
            batches.append(b)
            if len(batches) >= (steps + warmup) * k:
                break
        e += 1
    times = []
    for s in range(steps + warmup):
        t0 = time.perf_counter()
        tr._optimizer_step(batches[s * k:(s + 1) * k], 0, last_in_epoch=False)
        if s >= warmup:
            times.append(time.perf_counter() - t0)
    cyc = tr.cfg.training.batch_size * k
    return {"steps": steps, "cycles_per_step": cyc, "sec_per_step": sum(times) / steps,
            "cycles_per_s": cyc * steps / sum(times)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=DATASETS)
    ap.add_argument("--max-recordings", type=int, default=None, help="per data set (default: all)")
    ap.add_argument("--loader-data", default="synthetic")
    ap.add_argument("--loader-epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2, help="timed small-preset optimizer steps (tens of s each on 2 cores)")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--step-threads", type=int, nargs="+", default=[1, 2], help="torch threads of the step rows")
    ap.add_argument("--smoke-test", action="store_true", help="5 recordings per data set, synthetic:8, 1 step")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.smoke_test:
        a.max_recordings, a.loader_data, a.loader_epochs, a.steps, a.warmup = 5, "synthetic:8", 1, 1, 0

    import tempfile

    import torch

    from pahcl.config import load_config
    from pahcl.train import Trainer, prepare_data

    m0 = machine()
    torch.set_num_threads(1)
    cfg = load_config(None, preset="small", overrides={"model.use_moco": True, "training.warmup_epochs": 0})
    pre = []
    for spec in a.datasets:
        kind, _, path = spec.partition(":")
        if kind in ("yaseen", "circor") and not Path(path).exists():
            pre.append({"spec": _short(spec), "status": f"not run: {path} missing"})
            continue
        r = preprocessing(spec, cfg.data, a.max_recordings)
        pre.append(r)
        print(f"[preprocess] {r['spec']}: {r['recordings']} recordings, {r['recordings_per_s']:.1f} rec/s, "
              f"{r['audio_s_per_s']:.0f} audio-s/s", file=sys.stderr, flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="pahcl_datapath_"))
    train, _ = prepare_data(cfg, a.loader_data, cache_dir=tmp / "cache", log=lambda m: None)
    tr = Trainer(cfg, train, None, log=lambda m: None)
    loaders = [loader_rate(tr, a.loader_epochs, 0)]
    if not a.smoke_test:
        loaders.append(loader_rate(tr, a.loader_epochs, 2))
    object.__setattr__(cfg.training, "num_workers", 0)
    steps = []
    for th in a.step_threads:
        torch.set_num_threads(th)
        st = step_rate(tr, a.steps, a.warmup)
        st["torch_threads"] = torch.get_num_threads()
        steps.append(st)
        print(f"[step] {th} thread(s): {st['sec_per_step']:.2f} s/step, {st['cycles_per_s']:.1f} cycles/s",
              file=sys.stderr, flush=True)
    step = max(steps, key=lambda r: r["cycles_per_s"])  # the fastest consumer: the loader's hardest case
    share = step["cycles_per_s"] / loaders[0]["cycles_per_s"]
    text = markdown(pre, loaders, steps, share, len(train), a)
    print(text)
    m0["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    write_json(a.out, {"bench": "data_path", "command": command(argv), "machine": m0, "args": vars(a),
                       "preprocessing": pre, "loader": loaders, "step": step, "steps": steps, "loader_share_of_step": share,
                       "train_cycles": len(train), "markdown": text})
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def markdown(pre, loaders, steps, share, n_train, a) -> str:
    rows = []
    for r in pre:
        if "status" in r:
            rows.append([r["spec"], "—", "—", "—", "—", "—", r["status"]])
            continue
        rows.append([r["spec"], f"{r['recordings']} ({'/'.join(str(x) for x in r['source_rates'])} Hz)",
                     f"{r['audio_s']:.0f}", f"{r['read_s']:.2f}", f"{r['preprocess_s']:.2f}",
                     f"**{r['recordings_per_s']:.1f}**", f"{r['audio_s_per_s']:.0f} audio-s/s, {r['cycles_per_s']:.0f} cycles/s"])
    t1 = md_table(["data set", "recordings (source rate)", "audio s", "read s", "preprocess + segment s",
                   "recordings/s", "also"], rows)
    rows2 = [[f"loader: ContrastiveCycleDataset + DataLoader, batch 32, num_workers {x['num_workers']}"
              f"{' (small preset)' if x['num_workers'] == 0 else ''}", f"**{x['cycles_per_s']:.0f}**",
              f"{x['cycles']} cycles in {x['seconds']:.2f} s"] for x in loaders]
    for step in steps:
        rows2.append([f"training step, small preset (MoCo, 32 x 2), {step['torch_threads']} torch thread(s)",
                      f"**{step['cycles_per_s']:.1f}**",
                      f"{step['sec_per_step']:.2f} s per step of {step['cycles_per_step']} cycles"])
    t2 = md_table(["stage (synthetic training split, %d cycles)" % n_train, "cycles/s", "detail"], rows2)
    note = (f"\n\nLoader share of a serial step (fastest step row): {100 * share:.2f} % (step rate / loader rate): the loader is "
            f"{'not ' if share < 0.1 else ''}the bottleneck.")
    return t1 + "\n\n" + t2 + note


if __name__ == "__main__":
    sys.exit(main())
