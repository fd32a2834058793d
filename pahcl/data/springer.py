"""A trained emission model for the segmenter, in Springer et al. (2016)'s way: logistic regression on frame
envelopes, trained on annotated cycles, decoded by the duration-dependent Viterbi of ``segmentation``.

    from pahcl.data.springer import EmissionModel, training_frames
    model = EmissionModel().fit([training_frames(x, sr, ann) for x, sr, ann in annotated])
    segs = segment_states(x, sr, emission_model=model)          # pahcl.data.segmentation
    adaptive = EmissionModel(weight=0.3).fit(...)   # per-recording Gaussians + 0.3 x these emissions, every pass

Held-out evaluation (leave one patient out on CirCor): ``bench/segmentation_f1.py --heldout-summary``; results and
why the trained model does not beat the untrained one on circor_tiny: docs/segmentation.md.

Frame features at ``FEATURE_RATE`` (50 Hz), each a log envelope minus its 0.5 s running median, as a robust
z-score clipped to [-3, 6] (the same normalisation as the untrained segmenter's single feature): the 25-400 Hz
homomorphic envelope (``segmentation._features``), and band envelopes at 25-60, 60-120, 120-250 and 250-400 Hz
standing in for Springer's PSD and wavelet envelopes (S1 is lower pitched than S2; murmurs fill the bands in
between); plus the broadband envelope 1, 2 and 4 frames (20-80 ms) before and after, which gives the linear
model the shape of a sound. Emissions: log P(state | frame) - log P(state) (a scaled likelihood, as Springer).
"""
from __future__ import annotations

import numpy as np

from .segmentation import FEATURE_RATE, _features, _robust_z

BANDS_HZ = ((25.0, 60.0), (60.0, 120.0), (120.0, 250.0), (250.0, 400.0))
CONTEXT = (-4, -2, -1, 1, 2, 4)  # frames


def _band_envelope(x: np.ndarray, sr: int, lo: float, hi: float, n_frames: int) -> np.ndarray:
    """Detrended log envelope of one band at FEATURE_RATE, [n_frames]."""
    from math import gcd

    from scipy.ndimage import median_filter
    from scipy.signal import butter, hilbert, resample_poly, sosfiltfilt

    hi = min(hi, 0.45 * sr)
    y = sosfiltfilt(butter(4, [lo, hi], btype="band", fs=sr, output="sos"), x) if len(x) > 30 else x
    env = sosfiltfilt(butter(1, 8.0, btype="low", fs=sr, output="sos"), np.log(np.abs(hilbert(y)) + 1e-8))
    g = gcd(int(sr), FEATURE_RATE)
    f = resample_poly(env, FEATURE_RATE // g, int(sr) // g)[:n_frames]
    f = f - median_filter(f, size=max(3, int(0.5 * FEATURE_RATE) | 1), mode="nearest")
    return np.clip(_robust_z(f), -3.0, 6.0)


def frame_features(x: np.ndarray, sr: int) -> np.ndarray:
    """Preprocessed signal [T] -> frame features float64 [F, 1 + len(BANDS_HZ) + len(CONTEXT)]."""
    x = np.asarray(x, dtype=np.float64)
    v = _features(x, sr)  # [F]
    bands = [_band_envelope(x, sr, lo, hi, len(v)) for lo, hi in BANDS_HZ]
    bands = [np.pad(b, (0, len(v) - len(b)), mode="edge") for b in bands]
    pad = max(abs(c) for c in CONTEXT)
    vp = np.pad(v, pad, mode="edge")
    ctx = [vp[pad + c: pad + c + len(v)] for c in CONTEXT]
    return np.stack([v, *bands, *ctx], axis=1)


def frame_labels(annotations: np.ndarray, n_frames: int) -> np.ndarray:
    """State 0..3 (S1, systole, S2, diastole) of each frame from CirCor-style rows (start_s, end_s, state 1..4);
    -1 where unannotated (state 0 or no row)."""
    t = np.arange(n_frames) / FEATURE_RATE
    out = np.full(n_frames, -1, dtype=np.int64)
    for start, end, state in np.asarray(annotations, dtype=np.float64):
        if 1 <= state <= 4:
            out[(t >= start) & (t < end)] = int(state) - 1
    return out


def training_frames(x: np.ndarray, sr: int, annotations: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(features [F', K], labels [F']) of a recording's annotated frames."""
    f = frame_features(x, sr)
    y = frame_labels(annotations, len(f))
    keep = y >= 0
    return f[keep], y[keep]


class EmissionModel:
    """Multinomial logistic regression frame -> state; ``log_emissions`` for the Viterbi decoder."""

    def __init__(self, C: float = 1.0, seed: int = 0, weight: float | None = None):
        """``weight`` None: the decoder uses these emissions alone (Springer); a float w: the decoder adds w x
        these log emissions to its per-recording Gaussian emissions (adapts to each recording's levels)."""
        if weight is not None and not weight > 0:
            raise ValueError(f"EmissionModel: weight must be None or > 0, got {weight!r}")
        self.C, self.seed, self.weight = C, seed, weight
        self.clf = None
        self.log_prior = None

    def fit(self, frames: list[tuple[np.ndarray, np.ndarray]]) -> "EmissionModel":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        X = np.concatenate([f for f, _ in frames])
        y = np.concatenate([lab for _, lab in frames])
        if set(np.unique(y)) != {0, 1, 2, 3}:
            raise ValueError("EmissionModel.fit: the training frames must hold all 4 states")
        self.clf = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=2000, random_state=self.seed))
        self.clf.fit(X, y)
        self.log_prior = np.log(np.bincount(y, minlength=4) / len(y))
        return self

    def log_emissions(self, features: np.ndarray) -> np.ndarray:
        """[F, K] -> [F, 4] log P(state | frame) - log P(state)."""
        if self.clf is None:
            raise RuntimeError("EmissionModel: call fit() first")
        return np.log(self.clf.predict_proba(features) + 1e-12) - self.log_prior


__all__ = ["BANDS_HZ", "EmissionModel", "frame_features", "frame_labels", "training_frames"]
