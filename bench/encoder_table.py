"""The encoder table on Yaseen: pretrained encoder vs random init vs the no-learning baselines (logspec, pcg),
both split directions, several training seeds, recording level, kNN and linear probe.

    # the table in docs/benchmarks.md section 9 (both directions, 5 seeds, 30 epochs of the small preset with the
    # configuration of docs/training.md E1 and the read-out of E2, 2 runs at a time; about 95 min on 2 idle cores)
    nice -n 10 .venv/bin/python bench/encoder_table.py --seeds 0 1 2 3 4 --epochs 30 --set training.warmup_epochs=1 \\
        --set model.embed_pool=cycle --set augmentation.prob_other_cycle=0.5 --set augmentation.prob_time_stretch=0.5 \\
        --set augmentation.prob_sub_gain=0.5 --set augmentation.prob_snr_noise=0.5 \\
        --set augmentation.prob_band_limit=0.3 --set model.embed_subs=true --jobs 2 --out bench/results/encoder_table.json
    # a candidate pretraining change, judged ONLY by grouped cross-validation inside the training side
    nice -n 10 .venv/bin/python bench/encoder_table.py --cv-only --seeds 0 --epochs 10 \\
        --set model.embed_pool=cycle --out out/exp_pool.json
    .venv/bin/python bench/encoder_table.py --smoke-test        # CI: tiny preset, synthetic:16, 1 epoch, seconds

For each direction TRAIN:TEST (recording numbers, ``001-050 -> 051-100`` and the reverse) and each seed, the
encoder is pretrained on the TRAINING side only (its validation split is a grouped split inside it), so the
test recordings are never seen, not even unlabelled. Every feature set is then scored two ways:

* ``cv``: 5-fold cross-validation inside the training side, folds grouped by recording and stratified by class,
  each fold scored like the test (recording level). This is the number experiments are decided by. The linear
  probe's C is chosen once per feature set by ``choose_probe_c`` on the whole training side (grouped 5-fold CV)
  and used in every fold and for the test (not re-chosen inside each fold: 5x cheaper, same for every row).
* ``test``: fit on the whole training side, score on the test side (skipped with ``--cv-only``).

Every feature set is z-scored with the training side's statistics (``pahcl.evaluate.frozen_features``; each cv
fold with its own training part's). Overrides in ``READOUT_ONLY`` (``model.embed_subs``) change only the read-out,
so they reuse the checkpoints of the same training configuration (the folder name leaves them out).

Rows: pretrained encoder (per seed), the same architecture randomly initialised (per seed), ``logspec`` and
``pcg`` (no learning: once per direction). The JSON holds every run (with its per-epoch validation history and
wall time) and the mean ± std over seeds; ``bench/run_all.py`` renders it into docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from _common import command, loadavg, machine, md_table, now_utc, spread, write_json

PROTOCOLS = ("knn", "linear", "linear_unit")
BASELINES = ("logspec", "pcg")
NAMES = {"pretrained": "pretrained encoder", "random_init": "random-init encoder",
         "projector": "pretrained, projector output", "logspec": "logspec baseline",
         "pcg": "pcg baseline (hand-made)"}


def _unit(f: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (the features' directions only, as kNN's cosine sees them)."""
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


def score(ftr, fte, train, test, cfg, seed: int, cv_only: bool) -> dict:
    """{protocol: {"cv": acc, "test": acc or None, "test_recall": {...}}} at recording level; each cv fold is
    z-scored with its own training part, as ``frozen_features`` z-scores the full sides. ``linear_unit`` is the
    linear probe on unit-length (z-scored) features (a diagnosis: how much of ``linear`` rides on the norm)."""
    from sklearn.model_selection import StratifiedGroupKFold

    from pahcl.evaluate import choose_probe_c, encode_labels, evaluate_features, standardize

    y = np.asarray(train.table["label"].astype(str))
    rec = np.asarray(train.table["recording_id"].astype(str))
    folds = list(StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(ftr, y, rec))

    def prep(a, b, unit: bool):
        a, b = standardize(a, b)
        return (_unit(a), _unit(b)) if unit else (a, b)

    out = {}
    for protocol in PROTOCOLS:
        unit = protocol == "linear_unit"
        kind = "linear" if unit else protocol
        # linear C: chosen once on the whole training side (grouped CV, choose_probe_c) and used in every fold and
        # for the test: a nested choice per fold would cost 5x the fits for the same comparison between feature sets
        C = (choose_probe_c(prep(ftr, ftr, unit)[0], encode_labels(y)[1], groups=rec, seed=seed)[0]
             if kind == "linear" else 1.0)  # kNN does not use it
        kw = dict(k=cfg.evaluation.knn_k, temperature=cfg.evaluation.knn_temperature, seed=seed, probe_c=C)
        accs = []
        for a, b in folds:
            fa, fb = prep(ftr[a], ftr[b], unit)
            m = evaluate_features(fa, y[a].tolist(), fb, y[b].tolist(), kind, "recording", rec_test=rec[b].tolist(),
                                  rec_train=rec[a].tolist(), **kw)
            accs.append(m["accuracy"])
        res = {"cv": float(np.mean(accs)), "test": None}
        if not cv_only:
            fa, fb = (_unit(ftr), _unit(fte)) if unit else (ftr, fte)
            m = evaluate_features(fa, y.tolist(), fb, test.table["label"].astype(str).tolist(), kind, "recording",
                                  rec_test=test.table["recording_id"].tolist(), rec_train=rec.tolist(), **kw)
            res.update(test=m["accuracy"], test_recall=m["per_class_recall"], probe_c=m.get("probe_c"))
        out[protocol] = res
    return out


def _sides(job: dict):
    from pahcl.config import load_config
    from pahcl.data import load_cycles
    from pahcl.evaluate import split_by_index

    cfg = load_config(preset=job["preset"], overrides=[*job["overrides"], f"seed={job['seed']}"])
    cycles = load_cycles(job["data"], cfg.data, cache_dir=job["cache_dir"], log=None)
    tr, te = split_by_index(cycles, job["direction"])
    return cfg, cycles.subset(tr), cycles.subset(te)


def projector_features(cfg, state, train, test):
    """(train, test) cycle-level projector outputs (before normalisation) of the pretrained model."""
    import torch

    from pahcl.evaluate import _build_model, extract_features

    model = _build_model(cfg, state, False, 0)

    class Projected(torch.nn.Module):
        def embed(self, x, bounds=None):  # the projector's input: the pooled cycle embedding (never embed_subs)
            return model.projector(model._pool_cycle(model.encoder(x), bounds))

    p = Projected().eval()
    return extract_features(p, train), extract_features(p, test)


def run_encoder(job: dict) -> dict:
    """Pretrain on the training side (or reuse the saved checkpoint), then score pretrained and random init."""
    import torch

    torch.set_num_threads(job["threads"])
    from pahcl.checkpoint import load_checkpoint
    from pahcl.data import split_by_group
    from pahcl.evaluate import frozen_features, standardize
    from pahcl.train import Trainer

    cfg, train, test = _sides(job)
    ckpt = Path(job["ckpt"])
    t0 = time.perf_counter()
    if ckpt.exists():  # a finished run of the same configuration: evaluate it again
        state = load_checkpoint(ckpt)
        history, reused = json.loads(ckpt.with_suffix(".history.json").read_text()), True
    else:
        a, b = split_by_group(train, cfg.data.val_fraction, cfg.seed, log=lambda m: print(m, file=sys.stderr))
        tag = f"{job['direction']} seed {job['seed']}"

        class Progress:
            def on_epoch_end(self, trainer, m):
                print(f"[encoder_table] {tag} epoch {int(m['epoch'])}: loss {m['train/loss']:.3f} val/knn_acc "
                      f"{m.get('val/knn_acc', float('nan')):.3f} ({time.perf_counter() - t0:.0f} s)",
                      file=sys.stderr, flush=True)

        trainer = Trainer(cfg, train.subset(a), train.subset(b), callbacks=[Progress()], log=None, device="cpu")
        trainer.fit()
        history, reused = trainer.history, False
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(ckpt)
        ckpt.with_suffix(".history.json").write_text(json.dumps(history))
        state = {"model": trainer.model.state_dict()}
    train_s = time.perf_counter() - t0
    rows = []
    for kind in ("pretrained", "random_init", "projector"):
        if kind == "projector":  # diagnosis: the projector's output instead of the backbone's pooled features
            ftr, fte = standardize(*projector_features(cfg, state, train, test))
        else:
            ftr, fte = frozen_features(kind, cfg, state, train, test, job["seed"])
        rows.append({"features": kind, "dim": int(ftr.shape[1]),
                     **score(ftr, fte, train, test, cfg, job["seed"], job["cv_only"])})
    print(f"[encoder_table] {job['direction']} seed {job['seed']}: " + ", ".join(
        f"{r['features']} {p} cv {r[p]['cv']:.3f}" for r in rows for p in PROTOCOLS), file=sys.stderr, flush=True)
    return {"direction": job["direction"], "seed": job["seed"], "train_s": round(train_s, 1), "reused": reused,
            "n_train_cycles": len(train), "n_test_cycles": len(test),
            "history": [{k: float(v) for k, v in h.items()} for h in history], "rows": rows}


def run_baselines(job: dict) -> dict:
    """logspec and pcg on one direction (no learning: no seed dependence beyond the probe's)."""
    import torch

    torch.set_num_threads(job["threads"])
    from pahcl.evaluate import frozen_features

    cfg, train, test = _sides(job)
    rows = []
    for kind in BASELINES:
        ftr, fte = frozen_features(kind, cfg, None, train, test, job["seed"])
        rows.append({"features": kind, "dim": int(ftr.shape[1]),
                     **score(ftr, fte, train, test, cfg, job["seed"], job["cv_only"])})
    return {"direction": job["direction"], "seed": None, "rows": rows}


def aggregate(results: list[dict]) -> list[dict]:
    """Mean ± std over seeds per (direction, features, protocol) of the cv and test accuracies."""
    cells: dict[tuple, dict[str, list]] = {}
    for r in results:
        for row in r["rows"]:
            for p in (p for p in PROTOCOLS if p in row):  # linear_unit: not in files written before it
                c = cells.setdefault((r["direction"], row["features"], p), {"cv": [], "test": []})
                c["cv"].append(row[p]["cv"])
                if row[p]["test"] is not None:
                    c["test"].append(row[p]["test"])
    return [{"direction": d, "features": f, "protocol": p, "cv": spread(v["cv"]), "test": spread(v["test"])}
            for (d, f, p), v in cells.items()]


def _ms(s: dict) -> str:
    if not s.get("n"):
        return "–"
    return f"{s['mean']:.3f} ± {s['std']:.3f}" if s["n"] > 1 else f"{s['mean']:.3f}"


def markdown(summary: list[dict]) -> str:
    """One table: direction x features rows; kNN, linear and linear on unit-length features, test and
    training-side cv columns."""
    by = {(c["direction"], c["features"], c["protocol"]): c for c in summary}
    rows = []
    for d in dict.fromkeys(c["direction"] for c in summary):
        for f in ("pretrained", "projector", "random_init", *BASELINES):
            if (d, f, "knn") not in by:
                continue
            n = by[(d, f, "knn")]["cv"]["n"]
            rows.append([d.replace(":", " → "), NAMES[f], n] + [_ms(by.get((d, f, p), {}).get(k, {}))
                                                              for p in PROTOCOLS for k in ("test", "cv")])
    return md_table(["train → test", "features", "runs", "kNN test", "kNN cv (train side)", "linear test",
                     "linear cv (train side)", "linear, unit-norm test", "linear, unit-norm cv"], rows)


# overrides that change only the frozen read-out, never the trained weights (PAHCL.forward does not use them):
# left out of the checkpoint folder's name, so that a read-out is scored on the same checkpoints
READOUT_ONLY = ("model.embed_subs",)


def run_tag(data: str, preset: str, overrides: list[str]) -> str:
    """The checkpoint folder of a pretraining configuration (data, preset, overrides but the read-out's, and the
    cycles' code version: a checkpoint trained on other cycles is not reused)."""
    from pahcl.data.cycles import CODE_VERSION

    trained = [o for o in overrides if o.split("=", 1)[0].strip() not in READOUT_ONLY]
    return hashlib.sha256(json.dumps([data, preset, trained, CODE_VERSION]).encode()).hexdigest()[:10]


def jobs_for(a) -> list[tuple]:
    tag = run_tag(a.data, a.preset, a.overrides)
    base = dict(data=a.data, cache_dir=a.cache_dir, preset=a.preset, overrides=a.overrides, cv_only=a.cv_only,
                threads=a.threads)
    skip = a.no_baselines or a.baselines_from
    jobs = [(run_baselines, dict(base, direction=d, seed=0)) for d in a.directions if not skip]
    for d in a.directions:
        for s in a.seeds:
            ckpt = Path(a.runs_dir) / tag / f"{d.replace(':', '_')}_seed{s}.pt"
            jobs.append((run_encoder, dict(base, direction=d, seed=s, ckpt=str(ckpt))))
    return jobs


def combine(paths: list[str], out: str | None) -> int:
    """One JSON/table from several earlier outputs (runs concatenated, summary recomputed)."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]
    if len({json.dumps([j["args"]["data"], j["args"]["preset"]]) for j in parts}) != 1:
        raise SystemExit("--combine: the files are of different data or presets")
    runs = [r for j in parts for r in j["runs"]]
    summary = aggregate(runs)
    md = markdown(summary)
    print(md)
    seeds = sorted({s for j in parts for s in j["args"]["seeds"]})  # every part's seeds, not the first's
    write_json(out, dict(first, args=dict(first["args"], seeds=seeds), command=" ; ".join(j["command"] for j in parts),
                         date=" / ".join(j["date"] for j in parts), wall_s=sum(j["wall_s"] for j in parts),
                         load_end=parts[-1]["load_end"], combined=[str(p) for p in paths], summary=summary,
                         markdown=md, runs=runs))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="yaseen:../shared/data/yaseen2018")
    ap.add_argument("--directions", nargs="+", default=["1-50:51-100", "51-100:1-50"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2], help="training seeds (none: baselines only)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="pretraining config override (pahcl.config keys), repeatable")
    ap.add_argument("--cv-only", action="store_true", help="score only by cross-validation inside the training side")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--baselines-from", default=None, metavar="JSON",
                    help="take the logspec / pcg rows from an earlier --out of the same data and directions")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (processes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--cache-dir", default="out/cache")
    ap.add_argument("--runs-dir", default="out/encoder_table", help="checkpoints; a finished run is reused")
    ap.add_argument("--out", default=None)
    ap.add_argument("--smoke-test", action="store_true", help="tiny preset, synthetic:16, 1 epoch, 1 seed")
    ap.add_argument("--combine", nargs="+", metavar="JSON", help="no runs: one table from earlier --out files "
                    "(e.g. an encoder run with --no-baselines and a baselines-only run); their commands are kept")
    a = ap.parse_args(argv)
    if a.combine:
        return combine(a.combine, a.out)
    if a.smoke_test:
        import tempfile

        tmp = tempfile.mkdtemp(prefix="encoder_table_")
        a.data, a.directions, a.seeds, a.epochs, a.preset = "synthetic:16", ["0-1:2-9", "2-9:0-1"], [0], 1, "tiny"
        a.overrides = [*a.overrides, "training.warmup_epochs=0", "model.queue_size=16", "training.batch_size=4",
                       "training.gradient_accumulation_steps=1", "training.max_steps_per_epoch=2"]
        a.cache_dir, a.runs_dir, a.jobs = f"{tmp}/cache", f"{tmp}/runs", 1
    # queue below the ~340 training cycles of one Yaseen side (the small preset's 512 would hold stale keys)
    a.overrides = ["model.queue_size=256", *a.overrides, f"training.num_epochs={a.epochs}", "training.device=cpu"]
    from pahcl.config import load_config
    from pahcl.data import load_cycles

    cfg = load_config(preset=a.preset, overrides=a.overrides)  # fails here, with the key named, if an override is bad
    load_cycles(a.data, cfg.data, cache_dir=a.cache_dir, log=None)  # build the cache once, before the workers
    t0, l0, when = time.perf_counter(), loadavg(), now_utc()
    jobs = jobs_for(a)
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs, mp_context=get_context("spawn")) as ex:
            results = [f.result() for f in [ex.submit(fn, job) for fn, job in jobs]]
    else:
        results = [fn(job) for fn, job in jobs]
    if a.baselines_from:
        old = json.loads(Path(a.baselines_from).read_text())
        if old["args"]["data"] != a.data or not set(a.directions) <= set(old["args"]["directions"]):
            ap.error(f"--baselines-from {a.baselines_from}: other data or directions than this run")
        results += [r for r in old["runs"] if r["seed"] is None and r["direction"] in a.directions]
    summary = aggregate(results)
    md = markdown(summary)
    print(md)
    write_json(a.out, {"command": command(argv), "date": when, "machine": machine(), "load_start": l0,
                       "load_end": loadavg(), "wall_s": round(time.perf_counter() - t0, 1), "args": vars(a),
                       "summary": summary, "markdown": md, "runs": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
