"""Linear probe (and kNN) on Yaseen (recording level; recordings 001-050 of each class train, 051-100 test)
for (a) the pretrained encoder, (b) the same architecture randomly initialised, (c) a log-spectrogram
baseline. Each row equals one ``python -m pahcl.evaluate`` run; prints markdown tables.

    .venv/bin/python bench/linear_probe_yaseen.py --checkpoint runs/y/checkpoint_last.pt --cache-dir runs/y/cache \
        --out bench/results/linear_probe_yaseen.json
    .venv/bin/python bench/linear_probe_yaseen.py --checkpoint runs/y/checkpoint_last.pt --protocol linear

The cycles are loaded once with the checkpoint's data config (cache in --cache-dir). The JSON also holds the
segmented cycle lengths per class and split side, which the probe's features partly encode.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch


from pahcl.checkpoint import load_checkpoint
from pahcl.config import config_from_dict
from pahcl.data import load_cycles
from pahcl.evaluate import evaluate_features, frozen_features, probe_c_arg, split_by_index


FEATURES = [("pretrained encoder", "pretrained", ""), ("random-init encoder", "random_init", " --random-init"),
            ("log-spectrogram baseline", "logspec", " --baseline logspec")]  # (row name, kind, CLI flags)
SHORT_S = 0.45  # a "cycle" this short at rest is likely a half cycle (S1->S2 taken as the period)


def cycle_lengths(train, test, sides: tuple[str, str]) -> list[dict]:
    """Per label and split side: number of cycles, median segmented length (s), fraction shorter than SHORT_S."""
    out = []
    for side, cyc in zip(sides, (train, test)):
        t = cyc.table
        for label in sorted(set(t["label"])):
            sec = t.loc[t["label"] == label, "cycle_length"].to_numpy() / cyc.sample_rate
            out.append({"label": label, "side": side, "n": int(len(sec)), "median_s": float(np.median(sec)),
                        "short_frac": float(np.mean(sec < SHORT_S))})
    return sorted(out, key=lambda r: (r["label"], r["side"]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", default="yaseen:../shared/data/yaseen2018")
    p.add_argument("--split", default="1-50:51-100")
    p.add_argument("--protocol", nargs="+", default=["linear", "knn"], choices=["linear", "knn"])
    p.add_argument("--level", default="recording", choices=["recording", "cycle"])
    p.add_argument("--cache-dir", default="out/cache")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-c", default="cv", type=probe_c_arg,
                   help="linear probe C: 'cv' (grouped cross-validation on the training side) or a number")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    state = load_checkpoint(args.checkpoint)
    cfg = config_from_dict(state["config"])
    cycles = load_cycles(args.data, cfg.data, cache_dir=args.cache_dir, log=lambda m: print(m, file=sys.stderr))
    tr, te = split_by_index(cycles, args.split)
    train, test = cycles.subset(tr), cycles.subset(te)
    feats = {}
    for name, kind, _ in FEATURES:
        t0 = time.perf_counter()
        ftr, fte = frozen_features(kind, cfg, state, train, test, args.seed)
        feats[name] = (ftr, fte, time.perf_counter() - t0)
    rows = []
    for protocol in args.protocol:
        common = (f"python -m pahcl.evaluate --checkpoint {args.checkpoint} --train {args.data} --test {args.data} "
                  f"--split-by-index {args.split} --protocol {protocol} --level {args.level}"
                  + (f" --probe-c {args.probe_c}" if protocol == "linear" and args.probe_c != "cv" else ""))
        for name, _, extra in FEATURES:
            ftr, fte, t_feat = feats[name]
            t0 = time.perf_counter()
            m = evaluate_features(ftr, train.table["label"].tolist(), fte, test.table["label"].tolist(), protocol,
                                  args.level, rec_test=test.table["recording_id"].tolist(), k=cfg.evaluation.knn_k,
                                  temperature=cfg.evaluation.knn_temperature, seed=args.seed,
                                  probe_c=args.probe_c, rec_train=train.table["recording_id"].tolist())
            m.update(features=name, dim=int(ftr.shape[1]), seconds=round(t_feat + time.perf_counter() - t0, 1),
                     command=common + extra)
            rows.append(m)
            print(f"{protocol} / {name}: acc {m['accuracy']:.3f}", file=sys.stderr, flush=True)

    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    ck = f"epoch {state['epoch']}, step {state['step']}"
    side_a, side_b = args.split.split(":")
    print(f"\nYaseen probes, {args.level} level, train recordings {side_a} / test {side_b} of each class ({when}; "
          f"{machine}; checkpoint {args.checkpoint}, {ck})\n")
    classes = rows[0]["classes"]
    print("| protocol | features | dim | C | accuracy | balanced acc. | " + " | ".join(f"recall {c}" for c in classes)
          + " | n test |")
    print("|---|---|---|---|---|---|" + "---|" * len(classes) + "---|")
    for r in rows:
        rec = " | ".join(f"{r['per_class_recall'].get(c, float('nan')):.2f}" for c in classes)
        print(f"| {r['protocol']} | {r['features']} | {r['dim']} | {r.get('probe_c', '–')} | {r['accuracy']:.3f} "
              f"| {r['balanced_accuracy']:.3f} "
              f"| {rec} | {r['n']} |")
    lengths = cycle_lengths(train, test, (side_a, side_b))
    print(f"\nSegmented cycle length per class and side (s): n cycles, median, fraction < {SHORT_S} s\n")
    for r in lengths:
        print(f"    {r['label']:>4} {r['side']:>7}: n {r['n']:4d}  median {r['median_s']:.2f}  short {r['short_frac']:.2f}")
    print("\nCommands (each prints the same metrics as one JSON line):\n")
    for r in rows:
        print(f"    {r['command']}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"date": when, "machine": machine, "checkpoint": args.checkpoint,
                                              "checkpoint_epoch": state["epoch"], "rows": rows,
                                              "cycle_lengths": lengths}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
