"""Preprocessing throughput (read, resample, band-pass, segment, window) with 1 and 2 processes, and what it
predicts for the full CirCor (5,272 recordings) and PhysioNet 2016 (3,240 recordings) sets.

    .venv/bin/python bench/preprocess_throughput.py --out bench/results/preprocess_throughput.json
    .venv/bin/python bench/preprocess_throughput.py --workers 1 2 4 --repeats 3
    .venv/bin/python bench/preprocess_throughput.py --smoke-test      # synthetic:4, 1 and 2 processes, seconds

Each data set is built without a cache (``pahcl.data.cycles.build_cycles(..., workers=N)``, the code behind
``python -m pahcl.preprocess --workers N``), the worker counts alternated within each repeat so that they see
the same load. Reported: recordings/s and seconds of audio/s (median over repeats, process start-up
included), the speed-up of N processes over 1, and the minutes the full sets would take: CirCor at
circor_tiny's rate per second of audio (cycles from its annotations), PhysioNet 2016 at Yaseen's (no
annotations: automatic segmentation, the costly part), both assuming circor_tiny's mean recording duration
(in the JSON; the time scales linearly with the audio).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from _common import command, loadavg, machine, md_table, now_utc, write_json

# full sets: (recordings, kind of the measured set whose rate per second of audio applies). CirCor cycles come from
# its annotations (no automatic segmentation: circor_tiny's rate); PhysioNet 2016 has no annotations, so every
# recording goes through the automatic segmenter (Yaseen's rate, also segmented automatically). Their durations
# are not in ../shared: both assume circor_tiny's mean recording duration, and the time scales with the audio.
FULL_SETS = {"CirCor (5,272)": (5272, "circor"), "PhysioNet 2016 (3,240)": (3240, "yaseen")}


def measure(spec: str, workers: int) -> dict:
    from pahcl.config import DataConfig
    from pahcl.data.cycles import build_cycles
    from pahcl.data.readers import iter_recordings, SkipLog

    audio_s = sum(r.duration for r in iter_recordings(spec, SkipLog(log=None)))
    t0 = time.perf_counter()
    cs = build_cycles(spec, DataConfig(), log=None, workers=workers)
    wall = time.perf_counter() - t0
    n = cs.info["recordings_read"]
    return {"spec": spec, "workers": workers, "wall_s": wall, "recordings": n, "audio_s": audio_s,
            "recordings_per_s": n / wall, "audio_s_per_s": audio_s / wall, "cycles": len(cs)}


def summarise(runs: list[dict], specs: list[str], workers: list[int]) -> tuple[list, str]:
    """Median per (spec, workers); minutes for the full sets at the matching kind's audio rate."""
    rows = []
    for spec in specs:
        base = None
        for w in workers:
            mine = [r for r in runs if r["spec"] == spec and r["workers"] == w]
            med = {k: statistics.median(r[k] for r in mine) for k in ("wall_s", "recordings_per_s", "audio_s_per_s")}
            base = base or med["recordings_per_s"]
            rows.append({"spec": spec, "workers": w, "repeats": len(mine), **med, "recordings": mine[0]["recordings"],
                         "audio_s": mine[0]["audio_s"], "speedup": med["recordings_per_s"] / base})
    circor = [r for r in rows if r["spec"].startswith("circor")]
    mean_s = circor[0]["audio_s"] / circor[0]["recordings"] if circor else None
    table = []
    for row in rows:
        kind = row["spec"].split(":")[0]
        if mean_s is not None:
            row["assumed_mean_duration_s"] = mean_s
            row["full_sets_min"] = {name: n * mean_s / row["audio_s_per_s"] / 60 for name, (n, k) in FULL_SETS.items()
                                    if k == kind}
        table.append([f"{kind} ({row['recordings']} rec., {row['audio_s'] / 60:.1f} min audio)", row["workers"],
                      f"{row['wall_s']:.1f}", f"{row['recordings_per_s']:.2f}", f"{row['audio_s_per_s']:.0f}",
                      f"{row['speedup']:.2f}x"]
                     + [f"{row['full_sets_min'][k]:.0f}" if k in row.get("full_sets_min", {}) else "–" for k in FULL_SETS])
    header = ["data", "processes", "wall s", "recordings/s", "audio s/s", "speed-up"] + \
             [f"{k}: min (extrapolated)" for k in FULL_SETS]
    return rows, md_table(header, table)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=["circor:../shared/data/circor_tiny", "yaseen:../shared/data/yaseen2018"])
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke-test", action="store_true", help="synthetic:4, 1 and 2 processes, one repeat")
    ap.add_argument("--from-json", default=None, help="no measurement: re-summarise the runs of an earlier --out")
    a = ap.parse_args(argv)
    if a.from_json:
        import json

        j = json.loads(Path(a.from_json).read_text())
        j["rows"], j["markdown"] = summarise(j["runs"], j["args"]["data"], j["args"]["workers"])
        j["full_sets"] = FULL_SETS
        print(j["markdown"])
        write_json(a.out or a.from_json, j)
        return 0
    if a.smoke_test:
        a.data, a.workers, a.repeats = ["synthetic:4"], [1, 2], 1
    t0, l0, when = time.perf_counter(), loadavg(), now_utc()
    runs = []
    for rep in range(a.repeats):
        for spec in a.data:
            for w in (a.workers if rep % 2 == 0 else a.workers[::-1]):  # alternate the order between repeats
                runs.append(dict(measure(spec, w), repeat=rep, load=loadavg()[0]))
                r = runs[-1]
                print(f"{spec} workers {w}: {r['wall_s']:.1f} s, {r['recordings_per_s']:.2f} rec/s "
                      f"(load {r['load']:.1f})", file=sys.stderr, flush=True)
    rows, md = summarise(runs, a.data, a.workers)
    print(md)
    write_json(a.out, {"command": command(argv), "date": when, "machine": machine(), "load_start": l0,
                       "load_end": loadavg(), "wall_s": round(time.perf_counter() - t0, 1), "full_sets": FULL_SETS,
                       "args": {"data": a.data, "workers": a.workers, "repeats": a.repeats},
                       "rows": rows, "runs": runs, "markdown": md})
    return 0


if __name__ == "__main__":
    sys.exit(main())
