"""Evaluation of frozen features: kNN, linear probe, recording-level scores, alignment/uniformity.

Pure functions on feature arrays (numpy or torch) plus a CLI. Exact commands:

    # kNN (k = evaluation.knn_k, cosine, exp(sim/tau) votes) on a pretrained encoder, cycle level
    python -m pahcl.evaluate --checkpoint runs/y/checkpoint_last.pt \\
        --train yaseen:../shared/data/yaseen2018 --test yaseen:../shared/data/yaseen2018 \\
        --split-by-index 1-50:51-100 --protocol knn --level cycle

    # linear probe at recording level; same split; randomly initialised encoder / log-spectrogram baselines
    python -m pahcl.evaluate --checkpoint runs/y/checkpoint_last.pt --train yaseen:../shared/data/yaseen2018 \\
        --test yaseen:../shared/data/yaseen2018 --split-by-index 1-50:51-100 --protocol linear --level recording
    ... --random-init          # same architecture (from the checkpoint's config), seeded random weights
    ... --baseline logspec     # mean log-magnitude STFT per frequency bin, no learning (--checkpoint optional)
    ... --baseline pcg         # hand-made PCG features: band statistics over the cycle and each substructure
    ... --embed-subs           # encoder read-out: cycle embedding + S1, systole, S2, diastole span means

    python -m pahcl.evaluate --smoke-test   # seconds: tiny random-init encoder, synthetic:8, kNN

The CLI prints ONE JSON object: accuracy, balanced_accuracy, per_class_recall, n, protocol, level,
features (and classes, n_train; linear: probe_c and the cross-validation accuracy per C).

Every feature set is z-scored with the training side's mean and std before either protocol.
Linear probe: StandardScaler + logistic regression; C is chosen from PROBE_CS by 5-fold cross-validation
on the training side only (folds grouped by recording, stratified by class; ``--probe-c 1.0`` fixes it).

``--split-by-index A-B:C-D`` (train and test the same spec): cycles whose recording id ends in a number
in [A, B] form the training side, [C, D] the test side (Yaseen: ``New_MR_001`` -> 1).
"""
from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from typing import Any, Sequence

import numpy as np
import torch

log = logging.getLogger(__name__)

__all__ = [
    "align_uniform",
    "choose_probe_c",
    "classification_metrics",
    "extract_features",
    "frozen_features",
    "knn_scores",
    "knn_scores_leave_group_out",
    "knn_predict",
    "linear_probe",
    "logspec_features",
    "pcg_features",
    "probe_c_arg",
    "recording_level",
    "recording_numbers",
    "split_by_index",
    "test_metrics",
    "validation_metrics",
    "evaluate_features",
    "main",
]


# ----------------------------------------------------------------------------- helpers


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x)


def _l2n(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(eps)


def encode_labels(train_labels: Sequence, test_labels: Sequence | None = None):
    """Map labels to 0..C-1 over the sorted union of training and test classes (a test class never
    seen in training gets an index too: it can never be predicted, so its recall is 0)."""
    classes = sorted({str(v) for v in train_labels} | {str(v) for v in ([] if test_labels is None else test_labels)})
    index = {c: i for i, c in enumerate(classes)}
    y_tr = np.array([index[str(v)] for v in train_labels], dtype=np.int64)
    y_te = None if test_labels is None else np.array([index[str(v)] for v in test_labels], dtype=np.int64)
    return classes, y_tr, y_te


# ----------------------------------------------------------------------------- kNN / linear probe


@torch.no_grad()
def knn_scores(
    bank: np.ndarray | torch.Tensor,
    bank_labels: np.ndarray | torch.Tensor,
    queries: np.ndarray | torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> np.ndarray:
    """Weighted kNN vote scores (Wu et al. 2018): cosine similarity, the ``k`` nearest bank items
    vote for their class with weight ``exp(sim / temperature)``. Returns [Nq, C], rows normalised to
    sum 1 (a class-probability-like vector, averaged for recording-level predictions)."""
    b = _l2n(torch.as_tensor(_np(bank), dtype=torch.float32))
    q = _l2n(torch.as_tensor(_np(queries), dtype=torch.float32))
    yb = torch.as_tensor(_np(bank_labels), dtype=torch.long)
    if len(b) == 0:
        raise ValueError("knn_scores: empty feature bank")
    k = min(k, len(b))
    out = [_knn_vote(q[s : s + chunk] @ b.T, yb, k, temperature, num_classes) for s in range(0, len(q), chunk)]
    return torch.cat(out).numpy() if out else np.zeros((0, num_classes), dtype=np.float32)


def _knn_vote(sim: torch.Tensor, bank_labels: torch.Tensor, k: int, temperature: float,
              num_classes: int) -> torch.Tensor:
    """Weighted vote of the ``k`` most similar bank items per row of ``sim`` [n, N] -> [n, C], rows sum 1."""
    top, idx = sim.topk(k, dim=1)
    # subtract the row max before exp: same normalised votes, no overflow for small temperatures
    w = ((top - top[:, :1]) / temperature).exp()
    scores = torch.zeros(len(top), num_classes)
    scores.scatter_add_(1, bank_labels[idx], w)
    return scores / scores.sum(1, keepdim=True)


@torch.no_grad()
def knn_scores_leave_group_out(feats, labels, groups, num_classes: int, k: int = 20, temperature: float = 0.07,
                               chunk: int = 1024) -> np.ndarray:
    """``knn_scores`` of every item against all items of the OTHER groups (leave one group out: a patient is
    never its own neighbour), so every group is scored once and no choice of validation groups is needed.
    Returns [N, C]."""
    f = _l2n(torch.as_tensor(_np(feats), dtype=torch.float32))
    y = torch.as_tensor(_np(labels), dtype=torch.long)
    _, g = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    g = torch.as_tensor(g)
    if len(torch.unique(g)) < 2:
        raise ValueError("knn_scores_leave_group_out: needs at least 2 groups")
    k = min(k, int(len(f) - torch.bincount(g).max()))
    out = []
    for s in range(0, len(f), chunk):
        sim = f[s : s + chunk] @ f.T  # [n, N]
        sim[g[s : s + chunk, None] == g[None, :]] = -float("inf")  # own group: never a neighbour
        out.append(_knn_vote(sim, y, k, temperature, num_classes))
    return torch.cat(out).numpy()


def knn_predict(bank, bank_labels, queries, num_classes: int, k: int = 20, temperature: float = 0.07) -> np.ndarray:
    return knn_scores(bank, bank_labels, queries, num_classes, k, temperature).argmax(1)


PROBE_CS = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # inverse L2 strengths the linear probe chooses from ("cv")


def _probe(C: float, seed: int, max_iter: int = 5000):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=C, random_state=seed))


def choose_probe_c(train_feats, train_labels, groups: Sequence | None = None, seed: int = 0, folds: int = 5,
                   cs: Sequence[float] = PROBE_CS) -> tuple[float, dict[float, float]]:
    """C of the linear probe by cross-validation on the TRAINING side only: folds grouped by recording
    (``groups``) and stratified by class; mean fold accuracy per C; ties go to the smaller C (stronger
    regularisation). Returns (C, {C: mean accuracy}); (1.0, {}) when there are too few groups to split."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    X, y = _np(train_feats).astype(np.float64), _np(train_labels).astype(np.int64)
    g = None if groups is None else np.asarray(list(groups))
    # folds = at most the number of recordings (or cycles) of the rarest class
    per_class = min(int(np.sum(y == c)) if g is None else len(set(g[y == c])) for c in np.unique(y))
    if per_class < 2 or len(np.unique(y)) < 2:
        return 1.0, {}
    kfold = StratifiedKFold if g is None else StratifiedGroupKFold
    splits = list(kfold(min(folds, per_class), shuffle=True, random_state=seed).split(X, y, g))
    scores = {}
    for C in sorted(cs):
        accs = [_probe(C, seed).fit(X[a], y[a]).score(X[b], y[b]) for a, b in splits]
        scores[float(C)] = float(np.mean(accs))
    best = max(scores.values())
    return min(c for c, v in scores.items() if v >= best - 1e-12), scores


def linear_probe(
    train_feats, train_labels, test_feats, seed: int = 0, max_iter: int = 5000, C: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Logistic regression on standardised frozen features. Returns (test probabilities [N, C_seen],
    the class indices those columns stand for). ``choose_probe_c`` picks C without the test side."""
    X, y, Xt = _np(train_feats).astype(np.float64), _np(train_labels).astype(np.int64), _np(test_feats).astype(np.float64)
    clf = _probe(C, seed, max_iter).fit(X, y)
    return clf.predict_proba(Xt), clf[-1].classes_


def recording_level(scores: np.ndarray, recording_ids: Sequence, labels: np.ndarray):
    """Average per-cycle class scores over each recording's cycles. Returns (scores [R, C], labels [R],
    recording ids [R]) in order of first appearance; a recording's label is its first cycle's label."""
    rid = np.asarray([str(r) for r in recording_ids])
    uniq, first, inv = np.unique(rid, return_index=True, return_inverse=True)
    order = np.argsort(first)
    sums = np.zeros((len(uniq), scores.shape[1]), dtype=np.float64)
    np.add.at(sums, inv, scores)
    counts = np.bincount(inv, minlength=len(uniq))[:, None]
    mean = sums / counts
    return mean[order], np.asarray(labels)[first][order], uniq[order]


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean recall over classes present in ``y_true``), per-class recall."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    n = len(y_true)
    recall: dict[str, float] = {}
    for i, c in enumerate(classes):
        m = y_true == i
        if m.any():
            recall[str(c)] = float((y_pred[m] == i).mean())
    return {
        "accuracy": float((y_true == y_pred).mean()) if n else float("nan"),
        "balanced_accuracy": float(np.mean(list(recall.values()))) if recall else float("nan"),
        "per_class_recall": recall,
        "n": int(n),
    }


def align_uniform(z1, z2, alpha: float = 2.0, t: float = 2.0) -> tuple[float, float]:
    """Wang & Isola (2020) on L2-normalised features: align = E||f(x) - f(x+)||^alpha over positive
    pairs (z1[i], z2[i]); uniform = log E exp(-t ||f(x) - f(y)||^2) over distinct pairs, averaged over
    the two views."""
    a = _l2n(torch.as_tensor(_np(z1), dtype=torch.float64))
    b = _l2n(torch.as_tensor(_np(z2), dtype=torch.float64))
    align = (a - b).norm(dim=1).pow(alpha).mean().item()

    def unif(x):
        if len(x) < 2:
            return float("nan")
        return torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log().item()

    return float(align), float((unif(a) + unif(b)) / 2)


# ----------------------------------------------------------------------------- features


@torch.no_grad()
def extract_features(model: torch.nn.Module, cycles, batch_size: int = 256, device: str | torch.device = "cpu") -> np.ndarray:
    """``model.embed`` on every cycle (input [B, 1, L], and the CycleSet's bounds [B, 5]) in eval mode under
    no_grad -> float32 [N, d]. ``cycles`` is a CycleSet or a float array [N, L] (no bounds: window mean). The model's train/eval mode is restored."""
    waves = cycles.waves if hasattr(cycles, "waves") else cycles
    waves = _np(waves)
    bounds = getattr(cycles, "bounds", None)  # N×5 samples, for model.embed_pool: cycle
    was_training = model.training
    model.eval()
    out = []
    try:
        for s in range(0, len(waves), batch_size):
            x = torch.as_tensor(np.ascontiguousarray(waves[s : s + batch_size]), dtype=torch.float32, device=device)
            if bounds is None:
                out.append(model.embed(x.unsqueeze(1)).float().cpu())
            else:
                b = torch.as_tensor(np.asarray(bounds[s : s + batch_size]), device=device)
                out.append(model.embed(x.unsqueeze(1), b).float().cpu())
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()


def logspec_features(waves: np.ndarray, sample_rate: int, n_fft: int = 256, hop: int | None = None, max_hz: float = 1000.0) -> np.ndarray:
    """Log-spectrogram baseline (no learning): mean over frames of log(1 + |STFT|) per frequency bin
    up to ``max_hz``, per cycle -> float32 [N, bins]."""
    x = torch.as_tensor(_np(waves), dtype=torch.float32)
    hop = hop or n_fft // 4
    spec = torch.stft(x, n_fft=n_fft, hop_length=hop, window=torch.hann_window(n_fft), return_complex=True).abs()
    bins = int(np.floor(max_hz / (sample_rate / n_fft))) + 1
    return torch.log1p(spec[:, :bins]).mean(-1).numpy().astype(np.float32)


PCG_BANDS_HZ = ((25, 50), (50, 100), (100, 150), (150, 200), (200, 300), (300, 400), (400, 800))
PCG_SEGMENTS = ("cycle", "S1", "systole", "S2", "diastole")


def _segment_stats(seg: np.ndarray, sample_rate: int) -> np.ndarray:
    """One segment [n] -> [len(PCG_BANDS_HZ) + 5]: log band powers (Hann periodogram), log RMS, log peak
    |x|, spectral centroid (Hz / 100), spectral spread (Hz / 100), envelope crest factor (peak / RMS)."""
    nb = len(PCG_BANDS_HZ)
    if len(seg) < 16:
        return np.zeros(nb + 5)
    n_fft = 1 << int(np.ceil(np.log2(max(len(seg), 256))))
    power = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), n_fft)) ** 2 / len(seg)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
    bands = [power[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in PCG_BANDS_HZ]
    total = power[(freqs >= 25) & (freqs < 800)]
    f = freqs[(freqs >= 25) & (freqs < 800)]
    centroid = float((f * total).sum() / max(total.sum(), 1e-12))
    spread = float(np.sqrt(((f - centroid) ** 2 * total).sum() / max(total.sum(), 1e-12)))
    rms = float(np.sqrt(np.mean(seg ** 2)))
    peak = float(np.abs(seg).max())
    return np.r_[np.log(np.asarray(bands) + 1e-8), np.log(rms + 1e-8), np.log(peak + 1e-8), centroid / 100,
                 spread / 100, peak / max(rms, 1e-8)]


def _span_logspec(seg: np.ndarray, sample_rate: int, n_fft: int = 256, max_hz: float = 800.0) -> np.ndarray:
    """Mean and std over STFT frames (hop n_fft/4) of log(1 + |STFT|) per bin up to ``max_hz``, over the
    segment only (zero-padded to n_fft when shorter) -> [2 * bins]."""
    x = torch.as_tensor(np.asarray(seg, dtype=np.float32))
    if len(x) < n_fft:
        x = torch.nn.functional.pad(x, (0, n_fft - len(x)))
    spec = torch.stft(x, n_fft=n_fft, hop_length=n_fft // 4, window=torch.hann_window(n_fft), return_complex=True)
    bins = int(np.floor(max_hz / (sample_rate / n_fft))) + 1
    logs = torch.log1p(spec.abs()[:bins])  # bins x frames
    return torch.cat([logs.mean(-1), logs.std(-1, correction=0)]).numpy()


def pcg_features(waves: np.ndarray, bounds: np.ndarray, sample_rate: int) -> np.ndarray:
    """Hand-made PCG features, as a PCG engineer would make them (no learning), per cycle -> float32 [N, D]
    (D = 153 at 5 kHz).

    For the whole cycle (S1 onset to next S1 onset: the cycle's own span, not the zero padding) and each of
    its 4 substructures (S1, systole, S2, diastole): log power in the bands of ``PCG_BANDS_HZ``, log RMS,
    log peak, spectral centroid and spread, crest factor (``_segment_stats``); plus durations (cycle length s,
    heart rate / 100 bpm, each substructure's share of the cycle, systole / diastole ratio) and the level
    contrasts a murmur or a valve sound changes: log RMS ratios S1/S2, systole/S1, diastole/S2,
    systole/diastole; plus the cycle span's log-spectrum (mean and std over frames per bin up to 800 Hz,
    ``_span_logspec``).
    """
    waves, bounds = _np(waves), _np(bounds).astype(np.int64)
    out = []
    for w, b in zip(waves, bounds):
        spans = [(b[0], b[4]), (b[0], b[1]), (b[1], b[2]), (b[2], b[3]), (b[3], b[4])]
        stats = [_segment_stats(w[lo:hi].astype(np.float64), sample_rate) for lo, hi in spans]
        n_cycle = max(int(b[4] - b[0]), 1)
        dur = np.diff(b).astype(np.float64)
        log_rms = {name: st[len(PCG_BANDS_HZ)] for name, st in zip(PCG_SEGMENTS, stats)}
        timing = np.r_[n_cycle / sample_rate, 60.0 * sample_rate / n_cycle / 100, dur / n_cycle,
                       dur[1] / max(dur[3], 1.0)]
        contrasts = np.r_[log_rms["S1"] - log_rms["S2"], log_rms["systole"] - log_rms["S1"],
                          log_rms["diastole"] - log_rms["S2"], log_rms["systole"] - log_rms["diastole"]]
        spectrum = _span_logspec(w[b[0]:b[4]], sample_rate)
        out.append(np.concatenate([*stats, timing, contrasts, spectrum]))
    return np.asarray(out, dtype=np.float32).reshape(len(waves), -1) if out else np.zeros((0, 0), np.float32)


def standardize(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z-score both sides with the TRAINING side's mean and std (constant columns -> 0)."""
    mu, sd = train.mean(0), train.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    return ((train - mu) / sd).astype(np.float32), ((test - mu) / sd).astype(np.float32)


# ----------------------------------------------------------------------------- during pretraining


def _labels_of(cycles) -> list | None:
    if "label" not in cycles.table.columns:
        return None
    labels = cycles.table["label"].tolist()
    if all(v is None or (isinstance(v, float) and np.isnan(v)) for v in labels):
        return None
    return labels


@torch.no_grad()
def validation_metrics(model, train, val, cfg, device="cpu", val_views=None, log_fn=None) -> dict[str, float]:
    """Per-epoch validation metrics.

    ``val/knn_acc``, ``val/knn_bal_acc``: cycle-level weighted kNN (``evaluation.knn_k``,
    ``evaluation.knn_temperature``) with the training cycles as the bank and the validation cycles as
    queries; omitted (and ``log_fn`` told) when either side has no labels.
    ``val/logo_knn_acc``: the same kNN over training + validation cycles together, each cycle scored
    against the cycles of every OTHER group (leave one group out, ``knn_scores_leave_group_out``): every
    patient is scored once, so no choice of validation patients moves it (the search's objective;
    docs/benchmarks.md section 12). Omitted with the kNN, or when there is only one group.
    ``val/align``, ``val/uniform``: Wang & Isola on the encoder features of two views of the
    validation cycles, ``val_views = (x1, x2)`` float arrays [N, 1, L] or [N, L]; omitted if None.
    """
    out: dict[str, float] = {}
    if val is None or len(val) == 0:
        return out
    bs = cfg.evaluation.batch_size
    tr_labels, va_labels = _labels_of(train), _labels_of(val)
    if tr_labels is not None and va_labels is not None:
        ok = [i for i, v in enumerate(tr_labels) if v is not None]
        fb = extract_features(model, train, bs, device)[ok]  # the labelled training cycles: the bank
        fq = extract_features(model, val, bs, device)
        classes, yb, yq = encode_labels([tr_labels[i] for i in ok], va_labels)
        scores = knn_scores(fb, yb, fq, len(classes), cfg.evaluation.knn_k, cfg.evaluation.knn_temperature)
        m = classification_metrics(yq, scores.argmax(1), classes)
        out["val/knn_acc"] = m["accuracy"]
        out["val/knn_bal_acc"] = m["balanced_accuracy"]
        groups = [*train.table["group"].to_numpy()[ok], *val.table["group"].to_numpy()]
        if len(set(map(str, groups))) >= 2:
            y_all = np.concatenate([yb, yq])
            s_all = knn_scores_leave_group_out(np.concatenate([fb, fq]), y_all, groups, len(classes),
                                               cfg.evaluation.knn_k, cfg.evaluation.knn_temperature)
            out["val/logo_knn_acc"] = classification_metrics(y_all, s_all.argmax(1), classes)["accuracy"]
    elif log_fn is not None:
        log_fn("validation: no labels in the data; skipping val/knn_acc and val/knn_bal_acc")
    if val_views is not None:
        x1, x2 = val_views
        f1 = extract_features(model, x1[:, 0] if x1.ndim == 3 else x1, bs, device)
        f2 = extract_features(model, x2[:, 0] if x2.ndim == 3 else x2, bs, device)
        out["val/align"], out["val/uniform"] = align_uniform(f1, f2)
    return out


def test_metrics(model, bank_sides: Sequence, test, cfg, device="cpu", seed: int = 0) -> dict[str, float]:
    """Held-out test scores of a trained model: recording-level kNN (``evaluation.knn_k`` /
    ``knn_temperature``) and linear probe (C chosen by grouped 5-fold cross-validation on the bank) of frozen
    encoder features; the bank is every non-test side (``bank_sides``: train and validation CycleSets).
    -> ``test/knn_acc``, ``test/knn_bal_acc``, ``test/linear_acc``, ``test/linear_bal_acc``, ``test/recordings``."""
    bs = cfg.evaluation.batch_size
    f_bank = np.concatenate([extract_features(model, c, bs, device) for c in bank_sides])
    f_test = extract_features(model, test, bs, device)
    y_bank = [v for c in bank_sides for v in c.table["label"].tolist()]
    r_bank = [v for c in bank_sides for v in c.table["recording_id"].tolist()]
    y_test, r_test = test.table["label"].tolist(), test.table["recording_id"].tolist()
    out: dict[str, float] = {}
    for protocol in ("knn", "linear"):
        m = evaluate_features(f_bank, y_bank, f_test, y_test, protocol, "recording", rec_test=r_test,
                              k=cfg.evaluation.knn_k, temperature=cfg.evaluation.knn_temperature, seed=seed,
                              rec_train=r_bank)
        out[f"test/{protocol}_acc"] = float(m["accuracy"])
        out[f"test/{protocol}_bal_acc"] = float(m["balanced_accuracy"])
    out["test/recordings"] = float(len(set(r_test)))
    return out


# ----------------------------------------------------------------------------- split / CLI


def recording_numbers(recording_ids: Sequence) -> np.ndarray:
    """Trailing number of each recording id (``"MR/New_MR_007"`` -> 7); -1 where there is none."""
    out = []
    for r in recording_ids:
        m = re.search(r"(\d+)\D*$", str(r))
        out.append(int(m.group(1)) if m else -1)
    return np.asarray(out, dtype=np.int64)


def _parse_range(s: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", s)
    if not m:
        raise ValueError(f"--split-by-index: {s!r} is not a range A-B")
    a, b = int(m.group(1)), int(m.group(2))
    if a > b:
        raise ValueError(f"--split-by-index: range {s!r} is empty")
    return a, b


def split_by_index(cycles, spec: str) -> tuple[np.ndarray, np.ndarray]:
    """``"1-50:51-100"`` -> (train indices, test indices) by the trailing recording number."""
    if spec.count(":") != 1:
        raise ValueError(f"--split-by-index: expected A-B:C-D, got {spec!r}")
    (a, b), (c, d) = (_parse_range(p) for p in spec.split(":"))
    nums = recording_numbers(cycles.table["recording_id"].tolist())
    tr = np.flatnonzero((nums >= a) & (nums <= b))
    te = np.flatnonzero((nums >= c) & (nums <= d))
    if len(set(cycles.table["recording_id"].iloc[tr]) & set(cycles.table["recording_id"].iloc[te])):
        raise ValueError("--split-by-index: the ranges overlap (a recording on both sides)")
    return tr, te


def evaluate_features(
    f_train, labels_train, f_test, labels_test, protocol: str, level: str = "cycle",
    rec_test: Sequence | None = None, k: int = 20, temperature: float = 0.07, seed: int = 0,
    probe_c: float | str = "cv", rec_train: Sequence | None = None,
) -> dict[str, Any]:
    """Fit/score one protocol on feature arrays; returns the metrics dict (cycle or recording level).
    Linear probe: ``probe_c="cv"`` chooses C by ``choose_probe_c`` on the training side (folds grouped by
    ``rec_train`` when given), a number fixes it; the C used is returned as ``probe_c``."""
    classes, ytr, yte = encode_labels(labels_train, labels_test)
    extra: dict[str, Any] = {}
    if protocol == "knn":
        scores = knn_scores(f_train, ytr, f_test, len(classes), k, temperature)
    elif protocol == "linear":
        if probe_c == "cv":
            C, cv = choose_probe_c(f_train, ytr, groups=rec_train, seed=seed)
            extra = {"probe_c": C, "probe_cv_acc": {str(c): round(v, 4) for c, v in cv.items()}}
        elif isinstance(probe_c, (int, float)) and not isinstance(probe_c, bool) and probe_c > 0:
            C, extra = float(probe_c), {"probe_c": float(probe_c)}
        else:
            raise ValueError(f"probe_c: {probe_c!r}; allowed: 'cv' or a number > 0")
        proba, seen = linear_probe(f_train, ytr, f_test, seed=seed, C=C)
        scores = np.zeros((len(proba), len(classes)))
        scores[:, seen] = proba
    else:
        raise ValueError(f"protocol: {protocol!r}; allowed: knn, linear")
    if level == "recording":
        if rec_test is None:
            raise ValueError("level=recording needs the test recording ids")
        scores, yte, _ = recording_level(scores, rec_test, yte)
    elif level != "cycle":
        raise ValueError(f"level: {level!r}; allowed: cycle, recording")
    m = classification_metrics(yte, scores.argmax(1), classes)
    m.update(protocol=protocol, level=level, classes=list(classes), n_train=int(len(ytr)), **extra)
    return m


def _build_model(cfg, state: dict | None, random_init: bool, seed: int):
    from pahcl.models import PAHCL

    torch.manual_seed(seed)
    model = PAHCL(cfg.model)
    if state is not None and not random_init:
        model.load_state_dict(state["model"])
    return model.eval()


def frozen_features(kind: str, cfg, state: dict | None, train, test, seed: int = 0, device="cpu"):
    """(train features, test features) for ``kind`` in pretrained | random_init | logspec | pcg, every kind
    z-scored with the TRAINING side's statistics (``standardize``), so that kNN's cosine weighs every feature
    alike (the linear probe standardises its input anyway). The encoders' read-out is ``model.embed``
    (``model.embed_subs`` appends the substructure span means; docs/training.md, E2 and E3)."""
    if kind == "logspec":
        f = logspec_features(train.waves, train.sample_rate), logspec_features(test.waves, test.sample_rate)
    elif kind == "pcg":
        f = pcg_features(train.waves, train.bounds, train.sample_rate), pcg_features(test.waves, test.bounds,
                                                                                     test.sample_rate)
    else:
        model = _build_model(cfg, state, kind == "random_init", seed).to(device)
        bs = cfg.evaluation.batch_size
        f = extract_features(model, train, bs, device), extract_features(model, test, bs, device)
    return standardize(*f)


def probe_c_arg(v: str) -> str | float:
    """argparse type of ``--probe-c``: 'cv' or a number > 0."""
    try:
        c = v if v == "cv" else float(v)
    except ValueError:
        c = None
    if c is None or (c != "cv" and not c > 0):
        raise argparse.ArgumentTypeError(f"{v!r}; allowed: cv or a number > 0")
    return c


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI: one JSON line on stdout; a bad checkpoint, config or data spec is one line and exit 2."""
    from pahcl.checkpoint import CheckpointError
    from pahcl.config import ConfigError
    from pahcl.data.readers import DataSpecError, NoUsableRecordingsError

    try:
        return _run(argv)
    except (CheckpointError, ConfigError, DataSpecError, NoUsableRecordingsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def load_eval_checkpoint(path) -> tuple[dict, object]:
    """(state, config) of a checkpoint whose weights fit the model its config describes; anything else
    (no config, another model's or a truncated state) is a ``CheckpointError``."""
    from pahcl.checkpoint import CheckpointError, load_checkpoint
    from pahcl.config import ConfigError, config_from_dict
    from pahcl.models import PAHCL

    state = load_checkpoint(path)
    try:
        cfg = config_from_dict(state["config"])
        PAHCL(cfg.model).load_state_dict(state["model"])
    except (KeyError, TypeError, RuntimeError, ConfigError) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise CheckpointError(f"checkpoint {path}: not a usable PA-HCL checkpoint ({type(e).__name__}: {first}); "
                              "pass a checkpoint_*.pt written by python -m pahcl.pretrain") from None
    return state, cfg


def _run(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pahcl.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", help="checkpoint .pt (config + weights); optional with --baseline logspec")
    p.add_argument("--train", help="data spec KIND:PATH for the training side (bank / probe fit)")
    p.add_argument("--test", help="data spec KIND:PATH for the test side")
    p.add_argument("--protocol", choices=["knn", "linear"], default="knn")
    p.add_argument("--level", choices=["cycle", "recording"], default="cycle")
    p.add_argument("--random-init", action="store_true", help="same architecture, seeded random weights")
    p.add_argument("--baseline", choices=["logspec", "pcg"],
                   help="no-learning features instead of the encoder: logspec (mean log-spectrogram) or pcg "
                        "(band statistics over the cycle and its 4 substructures, durations, S1/S2 ratios)")
    p.add_argument("--embed-subs", action="store_true",
                   help="encoders: append the S1, systole, S2 and diastole span means to the cycle embedding "
                        "(model.embed_subs; needs no retraining)")
    p.add_argument("--split-by-index", metavar="A-B:C-D", help="split one spec by trailing recording number")
    p.add_argument("--cache-dir", default=None, help="cycle cache directory (default: none)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-c", default="cv", metavar="cv|C", type=probe_c_arg,
                   help="linear probe: 'cv' (default) picks C from %s by 5-fold cross-validation on the training "
                        "side, grouped by recording; a number fixes C" % (list(PROBE_CS),))
    p.add_argument("--smoke-test", action="store_true",
                   help="seconds: tiny preset, randomly initialised, synthetic:8 on both sides (no checkpoint)")
    args = p.parse_args(argv)
    if args.smoke_test:
        args.train, args.test, args.random_init = args.train or "synthetic:8", args.test or "synthetic:8", True
    if not args.train or not args.test:
        p.error("--train and --test are required (KIND:PATH) unless --smoke-test")

    from pahcl.config import load_config
    from pahcl.data import load_cycles

    state = None
    if args.checkpoint:
        state, cfg = load_eval_checkpoint(args.checkpoint)
    elif args.smoke_test:
        cfg = load_config(preset="tiny")
    elif args.baseline in ("logspec", "pcg"):
        cfg = load_config(preset="auto")
    else:
        p.error("--checkpoint is required unless --baseline logspec or pcg")

    if args.embed_subs and args.baseline:
        p.error(f"--embed-subs is a read-out of the encoder; --baseline {args.baseline} has none: drop one of them")
    cfg.model.embed_subs = cfg.model.embed_subs or args.embed_subs  # a read-out choice: the weights are the same
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731  (stdout carries only the JSON)
    if args.split_by_index:
        if args.train != args.test:
            p.error("--split-by-index needs --train and --test to be the same spec")
        allc = load_cycles(args.train, cfg.data, cache_dir=args.cache_dir, log=say)
        tr_idx, te_idx = split_by_index(allc, args.split_by_index)
        train, test = allc.subset(tr_idx), allc.subset(te_idx)
    else:
        if args.test == args.train:  # kNN then finds each test cycle's own copy in the bank
            say(f"WARNING: --train and --test are the same spec ({args.train}): the score is measured on the training "
                "set itself; use --split-by-index A-B:C-D or a different --test for a held-out score")
        train = load_cycles(args.train, cfg.data, cache_dir=args.cache_dir, log=say)
        test = train if args.test == args.train else load_cycles(args.test, cfg.data, cache_dir=args.cache_dir, log=say)

    features = args.baseline or ("random_init" if args.random_init else "pretrained")
    ftr, fte = frozen_features(features, cfg, state, train, test, args.seed, args.device)
    res = evaluate_features(
        ftr, train.table["label"].tolist(), fte, test.table["label"].tolist(), args.protocol, args.level,
        rec_test=test.table["recording_id"].tolist(), k=cfg.evaluation.knn_k,
        temperature=cfg.evaluation.knn_temperature, seed=args.seed, probe_c=args.probe_c,
        rec_train=train.table["recording_id"].tolist(),
    )
    res["features"] = features
    if not args.baseline:
        res["embed_subs"] = bool(cfg.model.embed_subs)  # the read-out that ran
    res["test_is_train"] = bool(args.test == args.train and not args.split_by_index)  # recorded in the JSON too
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
