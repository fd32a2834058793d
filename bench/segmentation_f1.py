"""S1 / S2 detection F1 of the automatic segmenter on CirCor, annotations hidden.

    .venv/bin/python bench/segmentation_f1.py                       # ../shared/data/circor_tiny
    .venv/bin/python bench/segmentation_f1.py --heldout-summary --out bench/results/segmentation_f1.json  # bench/run_all.py
    .venv/bin/python bench/segmentation_f1.py --data circor:DIR --tolerance 0.06 --markdown out.md
    .venv/bin/python bench/segmentation_f1.py --trained-lopo                 # Springer: trained emissions alone
    .venv/bin/python bench/segmentation_f1.py --trained-lopo --weight 0.3    # adaptive: Gaussians + 0.3 x trained
    .venv/bin/python bench/segmentation_f1.py --trained-lopo --select        # weight chosen by an inner LOPO
    .venv/bin/python bench/segmentation_f1.py --gaps count                   # score interior unannotated gaps too

Each recording goes through the training preprocessing (``preprocess_signal`` at data.sample_rate)
and ``segment_states``; a detected S1 (S2) is the centre of a decoded S1 (S2) state. A detection
is a hit when its centre lies within ``tolerance`` (60 ms) of an annotated sound's centre, with
one-to-one matching (closest pairs first). Only the annotated region counts: from the start of the first to the
end of the last non-zero-state annotation, without the unannotated (state 0) rows inside it and the S1 / S2 rows
touching them (``--gaps exclude``, default; see ``score_recording``). Prints a markdown table (per recording +
overall micro-averaged F1).

``--trained-lopo``: Springer-style trained emissions (``pahcl.data.springer.EmissionModel``: logistic
regression on frame envelopes), patient-level held out: each patient's recordings are decoded by a model trained
on the OTHER patients' annotated frames (plus ``--synthetic N`` generated recordings); ``--weight``/``--select``
as above. ``--heldout-summary`` adds one S1 F1 table of the untrained segmenter (both gap rules) and of every
trained variant, leave one patient out (docs/segmentation.md).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from pahcl.config import DataConfig
from pahcl.data.preprocess import preprocess_signal
from pahcl.data.readers import read_recordings
from pahcl.data.segmentation import segment_states

S1_F1_TARGET_REACHED = 0.95  # asserted by tests/pahcl/data on circor_tiny, untrained segmenter (measured 0.953; docs/segmentation.md)


def match(ref: np.ndarray, det: np.ndarray, tol: float) -> int:
    """Number of one-to-one matches |ref - det| <= tol (closest pairs first)."""
    if len(ref) == 0 or len(det) == 0:
        return 0
    d = np.abs(ref[:, None] - det[None, :])
    pairs = np.argwhere(d <= tol)
    order = np.argsort(d[pairs[:, 0], pairs[:, 1]], kind="stable")
    used_r, used_d, n = set(), set(), 0
    for i, j in pairs[order]:
        if i not in used_r and j not in used_d:
            used_r.add(i)
            used_d.add(j)
            n += 1
    return n


def score_recording(ann: np.ndarray, segs: list, sr: int, tol: float, gaps: str = "exclude") -> dict:
    """Counts for S1 and S2 of one recording. ann float [M, 3] (start_s, end_s, state).

    Scored region: first to last non-zero-state row. ``gaps="exclude"`` also leaves out the unannotated
    (state 0) rows inside it together with the S1 / S2 rows that touch them (cut short by the gap, their centre is
    not the sound's): neither those annotated sounds nor detections centred in these spans are scored.
    ``"count"`` scores them (the rule before 2026-11-29)."""
    nz = ann[ann[:, 2] > 0]
    lo, hi = nz[0, 0], nz[-1, 1]
    gap = ann[(ann[:, 2] == 0) & (ann[:, 0] >= lo) & (ann[:, 1] <= hi)] if gaps == "exclude" else ann[:0]
    near = lambda t, ends: np.any(np.abs(np.asarray(ends)[None, :] - t[:, None]) < 0.005, axis=1)  # noqa: E731
    touch = np.isin(ann[:, 2], (1, 3)) & (near(ann[:, 1], gap[:, 0]) | near(ann[:, 0], gap[:, 1]))
    skip = np.concatenate([gap[:, :2], ann[touch, :2]])
    out = {}
    for name, state in (("S1", 1), ("S2", 3)):
        ref = ann[(ann[:, 2] == state) & ~touch]
        ref_c = (ref[:, 0] + ref[:, 1]) / 2
        det_c = np.array([(a + b) / 2 / sr for a, b, s in segs if s == state])
        det_c = det_c[(det_c >= lo) & (det_c <= hi)]
        det_c = det_c[~np.any((det_c[:, None] >= skip[None, :, 0]) & (det_c[:, None] <= skip[None, :, 1]), axis=1)]
        tp = match(ref_c, det_c, tol)
        out[name] = (tp, len(det_c) - tp, len(ref_c) - tp)
    return out


def f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


GRID = ((1.0, None), (1.0, 1.0), (1.0, 0.3), (1.0, 0.1))  # (C, weight) candidates for --select, in tie order


def _fit(ids: list, frames: dict, syn: list, C: float, weight):
    from pahcl.data.springer import EmissionModel

    return EmissionModel(C=C, weight=weight).fit([frames[i] for i in ids] + syn)


def _s1_inner(recs, xs: dict, model, sr: int, tol: float) -> tuple[np.ndarray, list]:
    """S1 (tp, fp, fn) summed over ``recs`` and each annotated S1's distance (s) to the nearest detected S1
    within ``tol``."""
    tot, err = np.zeros(3, int), []
    for r in recs:
        segs = segment_states(xs[r.id], sr, emission_model=model)
        tot += score_recording(r.annotations, segs, sr, tol)["S1"]
        ref = r.annotations[r.annotations[:, 2] == 1]
        det = np.array([(a + b) / 2 / sr for a, b, s in segs if s == 1])
        if len(ref) and len(det):
            d = np.abs((ref[:, 0] + ref[:, 1])[:, None] / 2 - det[None, :]).min(axis=1)
            err += d[d <= tol].tolist()
    return tot, err


def _select(recs, xs, frames, syn, sr, tol, log) -> tuple:
    """(C, weight) of GRID with the best S1 F1 in a leave-one-patient-out inside ``recs``; ties (frequent with
    few patients) go to the smaller mean S1 timing error, then to the first in GRID."""
    pats = sorted({r.group for r in recs})
    best, best_key = GRID[0], None
    for C, w in GRID:
        tot, err = np.zeros(3, int), []
        for q in pats:
            model = _fit([r.id for r in recs if r.group != q], frames, syn, C, w)
            t, e = _s1_inner([r for r in recs if r.group == q], xs, model, sr, tol)
            tot, err = tot + t, err + e
        key = (round(f1(*tot)[2], 6), -float(np.mean(err)) if err else -1.0)
        log(f"    inner C {C} weight {w}: S1 F1 {key[0]:.3f}, mean S1 timing error {-key[1] * 1000:.1f} ms")
        if best_key is None or key > best_key:
            best, best_key = (C, w), key
    return best


def lopo_models(recs, cfg, n_synthetic: int, C: float, weight=None, select=False, tol=0.06, log=print) -> dict:
    """{patient: EmissionModel trained on the OTHER patients' annotated frames (+ synthetic:N)}. ``select``:
    (C, weight) chosen per held-out patient among GRID by a leave-one-patient-out on the other patients only."""
    from pahcl.data.springer import training_frames

    sr = cfg.sample_rate
    xs = {r.id: preprocess_signal(r.signal, r.sample_rate, cfg) for r in recs}
    frames = {r.id: training_frames(xs[r.id], sr, r.annotations) for r in recs}
    syn = [training_frames(preprocess_signal(r.signal, r.sample_rate, cfg), sr, r.annotations)
           for r in (read_recordings(f"synthetic:{n_synthetic}") if n_synthetic else [])]
    models = {}
    for p in sorted({r.group for r in recs}):
        rest = [r for r in recs if r.group != p]
        c, w = _select(rest, xs, frames, syn, sr, tol, log) if select else (C, weight)
        log(f"held-out patient {p}: C {c}, weight {w}")
        models[p] = _fit([r.id for r in rest], frames, syn, c, w)
    return models


def evaluate(recs, xs: dict, models: dict, sr: int, tol: float, gaps: str = "exclude") -> dict:
    """{recording id: score_recording counts}, each recording decoded with its patient's model (if any)."""
    return {r.id: score_recording(r.annotations, segment_states(xs[r.id], sr, emission_model=models.get(r.group)),
                                  sr, tol, gaps) for r in recs}


def table(per: dict) -> tuple[str, dict]:
    """Markdown table (per recording + overall) and the micro-summed counts {"S1": [tp, fp, fn], "S2": ...}."""
    lines = ["| recording | S1 ref | S1 TP | S1 FP | S1 FN | S1 F1 | S2 ref | S2 TP | S2 FP | S2 FN | S2 F1 |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    tot = {"S1": np.zeros(3, int), "S2": np.zeros(3, int)}
    for rid, res in per.items():
        cells = [rid]
        for k in ("S1", "S2"):
            tp, fp, fn = res[k]
            tot[k] += (tp, fp, fn)
            cells += [str(tp + fn), str(tp), str(fp), str(fn), f"{f1(tp, fp, fn)[2]:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    cells = ["**overall**"]
    for k in ("S1", "S2"):
        tp, fp, fn = (int(v) for v in tot[k])
        cells += [str(tp + fn), str(tp), str(fp), str(fn), f"**{f1(tp, fp, fn)[2]:.3f}**"]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), tot


def heldout_summary(recs, cfg, tol: float, n_synthetic: int, log=print) -> str:
    """Markdown: S1 F1 per recording and overall for the untrained segmenter (both gap rules) and the trained
    emission models, leave one patient out (fixed weights, and the weight chosen by the inner LOPO)."""
    sr = cfg.sample_rate
    xs = {r.id: preprocess_signal(r.signal, r.sample_rate, cfg) for r in recs}
    variants = [("untrained, gaps counted", {}, "count"), ("untrained", {}, "exclude")]
    for C, w in GRID:
        variants.append((f"trained LOPO, weight {w}", lopo_models(recs, cfg, n_synthetic, C, w, log=log), "exclude"))
    variants.append(("trained LOPO, weight chosen by inner LOPO",
                     lopo_models(recs, cfg, n_synthetic, 1.0, select=True, tol=tol, log=log), "exclude"))
    cols = {name: evaluate(recs, xs, models, sr, tol, gaps) for name, models, gaps in variants}
    lines = ["| recording | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for r in recs:
        lines.append(f"| {r.id} | " + " | ".join(f"{f1(*c[r.id]['S1'])[2]:.3f}" for c in cols.values()) + " |")
    for k in ("S1", "S2"):
        tots = [np.sum([res[k] for res in c.values()], axis=0) for c in cols.values()]
        lines.append(f"| **{k} overall** (TP/FP/FN) | " + " | ".join(
            f"**{f1(*t)[2]:.3f}** ({t[0]}/{t[1]}/{t[2]})" for t in tots) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=f"circor:{ROOT / '..' / 'shared' / 'data' / 'circor_tiny'}")
    ap.add_argument("--tolerance", type=float, default=0.06, help="seconds between centres (default 0.06)")
    ap.add_argument("--sample-rate", type=int, default=DataConfig().sample_rate)
    ap.add_argument("--markdown", default=None, help="also write the table to this file")
    ap.add_argument("--out", default=None, help="also write the table and overall scores as JSON")
    ap.add_argument("--trained-lopo", action="store_true", help="trained emissions, leave one patient out")
    ap.add_argument("--synthetic", type=int, default=0, help="with --trained-lopo: also train on synthetic:N")
    ap.add_argument("--C", type=float, default=1.0, help="with --trained-lopo: logistic-regression C")
    ap.add_argument("--weight", type=float, default=None,
                    help="with --trained-lopo: adaptive emissions (per-recording Gaussians + weight x trained)")
    ap.add_argument("--select", action="store_true",
                    help="with --trained-lopo: choose (C, weight) per held-out patient by an inner leave-one-patient-out")
    ap.add_argument("--gaps", choices=["exclude", "count"], default="exclude",
                    help="unannotated rows inside the scored region: left out (default) or scored")
    ap.add_argument("--heldout-summary", action="store_true",
                    help="also the S1 F1 table of every emission variant, leave one patient out")
    args = ap.parse_args(argv)
    if (args.weight is not None or args.select) and not args.trained_lopo:
        ap.error("--weight and --select apply to --trained-lopo only; add --trained-lopo")
    if args.weight is not None and not args.weight > 0:
        ap.error(f"--weight must be > 0 (got {args.weight}); leave it out for the trained emissions alone")
    cfg = DataConfig(sample_rate=args.sample_rate)
    sr = cfg.sample_rate
    recs = [r for r in read_recordings(args.data) if r.annotations is not None]
    t0 = time.perf_counter()
    models = (lopo_models(recs, cfg, args.synthetic, args.C, args.weight, args.select, args.tolerance)
              if args.trained_lopo else {})
    xs = {r.id: preprocess_signal(r.signal, r.sample_rate, cfg) for r in recs}
    text, tot = table(evaluate(recs, xs, models, sr, args.tolerance, args.gaps))
    print(text)
    for k in ("S1", "S2"):
        p, r_, f = f1(*(int(v) for v in tot[k]))
        print(f"{k}: precision {p:.3f} recall {r_:.3f} F1 {f:.3f}")
    summary = heldout_summary(recs, cfg, args.tolerance, args.synthetic) if args.heldout_summary else None
    if summary:
        print(summary)
    print(f"{len(recs)} recordings, tolerance {args.tolerance * 1000:.0f} ms, {time.perf_counter() - t0:.1f} s")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n" + (f"\n{summary}\n" if summary else ""))
    if args.out:
        import json
        import shlex

        overall = {k: dict(zip(("precision", "recall", "f1"), f1(*(int(v) for v in tot[k])))) for k in ("S1", "S2")}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({
            "bench": "segmentation_f1", "data": args.data, "tolerance_s": args.tolerance, "recordings": len(recs),
            "seconds": time.perf_counter() - t0, "overall": overall, "markdown": text, "heldout_summary": summary,
            "command": "python bench/segmentation_f1.py " + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv)),
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
