"""Training-step throughput (cycles/s) of the PA-HCL pretrain loop on this machine.

    .venv/bin/python bench/train_throughput.py                       # small + full presets, SimCLR vs MoCo
    .venv/bin/python bench/train_throughput.py --smoke-test          # tiny preset, 2 steps: seconds
    .venv/bin/python bench/train_throughput.py --presets small --steps 5 --out out/throughput.json

Each row times ``--steps`` optimizer steps of ``Trainer._optimizer_step`` (forward of both views,
key encoder in MoCo, loss, backward, clipping, AdamW, EMA update, queue) after ``--warmup`` untimed
steps, on synthetic cycles (1 s windows at data.sample_rate). cycles/s = cycles per optimizer step
(batch_size x gradient_accumulation_steps) x steps / seconds. The ``full`` preset trains with
``--full-batch`` cycles per micro-batch and no accumulation on CPU (the preset's 64 x 4 is a GPU
setting); the batch used is in the table. Prints a markdown table; ``--out`` writes JSON.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch


from pahcl.config import load_config
from pahcl.train import Trainer, prepare_data


def bench_one(preset: str, moco: bool, steps: int, warmup: int, batch: int | None, accum: int | None,
              cache: Path, spec: str, device: str) -> dict:
    over = {"model.use_moco": moco, "training.device": device, "training.num_epochs": 1,
            "training.warmup_epochs": 0, "training.num_workers": 0}  # batches are pre-loaded: no workers
    if batch:
        over["training.batch_size"] = batch
    if accum:
        over["training.gradient_accumulation_steps"] = accum
    cfg = load_config(preset=preset, overrides=over)
    train, _ = prepare_data(cfg, spec, cache_dir=cache, log=lambda m: None)
    if cfg.model.use_moco and cfg.model.queue_size > len(train):
        cfg = load_config(preset=preset, overrides={**over, "model.queue_size": max(cfg.training.batch_size, len(train) // 2)})
    tr = Trainer(cfg, train, None, log=None)
    bs, k = cfg.training.batch_size, cfg.training.gradient_accumulation_steps
    need = (steps + warmup) * k
    batches = []
    epoch = 0
    while len(batches) < need:  # pre-load the micro-batches: time the step, not the data pipeline
        for b in tr._loader(epoch):
            batches.append(b)
            if len(batches) >= need:
                break
        epoch += 1
    times = []
    for s in range(steps + warmup):
        group = batches[s * k:(s + 1) * k]
        t0 = time.perf_counter()
        tr._optimizer_step(group, 0, last_in_epoch=False)
        if tr.device.type == "cuda":
            torch.cuda.synchronize()
        if s >= warmup:
            times.append(time.perf_counter() - t0)
    sec = sum(times)
    n_params = sum(p.numel() for p in tr.model.parameters() if p.requires_grad)
    return {"preset": preset, "mode": "moco" if moco else "simclr", "batch_size": bs, "accum": k,
            "window": int(train.waves.shape[1]), "params": n_params, "steps": steps,
            "sec_per_step": sec / steps, "cycles_per_s": bs * k * steps / sec, "device": str(tr.device)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["small", "full"])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--full-batch", type=int, default=8, help="micro-batch size for the full preset on CPU")
    p.add_argument("--data", default="synthetic:16")
    p.add_argument("--cache-dir", default="out/cache")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave)")
    p.add_argument("--smoke-test", action="store_true", help="tiny preset, 2 steps, no warmup")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    args = p.parse_args(argv)
    load_start = list(os.getloadavg())
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke_test:
        args.presets, args.steps, args.warmup, args.data = ["tiny"], 2, 0, "synthetic:8"
    rows = []
    for preset in args.presets:
        for moco in (False, True):
            on_cpu = args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available())
            batch, accum = (args.full_batch, 1) if preset == "full" and on_cpu else (None, None)
            r = bench_one(preset, moco, args.steps, args.warmup, batch, accum, Path(args.cache_dir), args.data, args.device)
            rows.append(r)
            print(f"{preset:6s} {r['mode']:6s} {r['cycles_per_s']:.1f} cycles/s", file=sys.stderr, flush=True)
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    cmd = "python bench/train_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"\nTraining-step throughput ({when}; {machine}; `{cmd.strip()}`)\n")
    print("| preset | mode | batch x accum | window | params | s/step | cycles/s | device |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['mode']} | {r['batch_size']} x {r['accum']} | {r['window']} | "
              f"{r['params'] / 1e6:.2f} M | {r['sec_per_step']:.2f} | {r['cycles_per_s']:.1f} | {r['device']} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"date": when, "machine": machine, "command": cmd, "rows": rows,
                                              "load_start": load_start, "load_end": list(os.getloadavg())},
                                             indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
