"""Heart-cycle segmentation: annotations -> cycles, and an automatic segmenter.

    cycles = from_annotations(rec.annotations, sample_rate, n_samples)   # CirCor / synthetic states
    cycles = segment(signal, sample_rate)                                # no annotations

A cycle is S1 onset -> systole onset -> S2 onset -> diastole onset -> next S1 onset; only
consecutive, contiguous, complete state sequences 1, 2, 3, 4, 1 count.

Automatic segmenter (Springer et al. 2016 style, without a trained emission model):
  1. one feature at 50 Hz: log |Hilbert envelope| of the 25-400 Hz band, low-passed at 8 Hz (the
     homomorphic envelope in log form), minus its 0.5 s running median (removes slow loudness
     changes such as crying, breathing, rubbing), as a robust z-score clipped to [-3, 6];
  2. heart rate: median over 4 s windows of the feature's autocorrelation; the highest peak at
     60/max_heart_rate_bpm .. 2 s lag (0.3-2 s by default: up to 200 bpm, for children), halved
     while a peak near half the lag is >= 0.9 as high and the half cycle shows S1 and S2 (a peak at
     0.2-0.8 of its lag, the S1 -> S2 lag); a cycle that shows none (evenly spaced S1 and S2) doubled
     when its double is >= 0.8 as high and <= 1.2 s (``_cycle_lag``). Systolic interval (S1 onset -> S2 onset):
     mean of the highest autocorrelation peak in [0.2 s, cycle / 2] and Weissler's regression
     0.49 - 0.0021 * HR s (the regression alone when there is no peak);
  3. duration-dependent (explicit-duration HSMM) Viterbi decoding of the cyclic state chain
     S1 -> systole -> S2 -> diastole with Gaussian state durations (Springer's priors: S1 122+-22
     ms, S2 94+-22 ms, systole interval - 122 ms +- 25 ms, diastole the rest +- (7 % + 6 ms)); the
     first and last segments may be truncated;
  4. emissions: a per-recording two-class (sound / silence) Gaussian mixture on the feature, then
     per-state Gaussians re-estimated from the first decoding and decoded again (one hard-EM pass).
Measured on CirCor (annotations hidden) by ``bench/segmentation_f1.py``; see docs/segmentation.md.
"""
from __future__ import annotations

import numpy as np
from scipy.signal import butter, hilbert, resample_poly, sosfiltfilt

from .types import STATE_DIASTOLE, STATE_S1, STATE_S2, STATE_SYSTOLE, Cycle

FEATURE_RATE = 50  # Hz
ENVELOPE_LOWPASS = 8.0  # Hz
DETREND_S = 0.5  # running-median window removed from the log envelope
HALF_PEAK_RATIO = 0.9  # halve (double) the cycle only when the half (double) lag peak is nearly as high
HALF_INNER_PEAK = (0.2, 0.8)  # a cycle shows S1 and S2: a peak (the S1 -> S2 lag) at this fraction of its lag
DOUBLE_PEAK_RATIO, DOUBLE_MAX_S = 0.8, 1.2  # a cycle without that peak doubles to a peak this high, <= 1.2 s
DETREND_PERCENTILE = 50  # 50 = running median
SYS_MODE = "blend"  # systolic interval: "autocorr" peak, literature "prior", or their mean
PRIOR_A, PRIOR_B = 0.49, 0.0021  # Weissler QS2 = 546 - 2.1 HR ms, minus ~55 ms Q -> S1 onset
DIA_SD_FRAC = 0.07  # diastole duration sd = DIA_SD_FRAC * mean + 6 ms (Springer)
BOUND_SD = 3.0  # diastole durations allowed within mean +- BOUND_SD sd
MAX_HEART_RATE_BPM = 200.0  # default shortest cycle 0.3 s (data.max_heart_rate_bpm)
REFINE = 1  # hard-EM passes (per-state emissions re-estimated from the previous decoding)
_CONTIGUITY_S = 0.005  # gap tolerated between consecutive annotation rows


# ----------------------------------------------------------------------------- annotations


def from_annotations(annotations: np.ndarray, sample_rate: int, n_samples: int | None = None) -> list[Cycle]:
    """Cycles from state annotations float [M, 3] (start_s, end_s, state): consecutive 1,2,3,4,1 runs."""
    if annotations is None or len(annotations) < 5:
        return []
    a = np.asarray(annotations, dtype=np.float64)
    a = a[np.argsort(a[:, 0], kind="stable")]
    states = a[:, 2].astype(int)
    want = np.array([STATE_S1, STATE_SYSTOLE, STATE_S2, STATE_DIASTOLE, STATE_S1])
    out: list[Cycle] = []
    for i in range(len(a) - 4):
        if not np.array_equal(states[i : i + 5], want):
            continue
        block = a[i : i + 5]
        if np.any(np.abs(block[1:, 0] - block[:-1, 1]) > _CONTIGUITY_S):  # a gap breaks the chain
            continue
        idx = np.round(block[:, 0] * sample_rate).astype(np.int64)
        if np.any(np.diff(idx) <= 0) or idx[0] < 0 or (n_samples is not None and idx[4] > n_samples):
            continue
        out.append(Cycle(*(int(v) for v in idx)))
    return out


# ----------------------------------------------------------------------------- features


def _features(x: np.ndarray, sr: int) -> np.ndarray:
    """Signal float [T] -> transient envelope feature float64 [F] at FEATURE_RATE.

    log |Hilbert| low-passed at ENVELOPE_LOWPASS Hz (a homomorphic envelope in log form), minus its
    running median over DETREND_S (removes slow loudness changes: breathing, crying, rubbing), as a
    robust z-score clipped to [-3, 6] so a noise burst cannot dominate.
    """
    from math import gcd

    from scipy.ndimage import median_filter

    x = np.asarray(x, dtype=np.float64)
    hi = min(400.0, 0.45 * sr)
    if len(x) > 30:
        x = sosfiltfilt(butter(4, [25.0, hi], btype="band", fs=sr, output="sos"), x)
    log_env = np.log(np.abs(hilbert(x)) + 1e-8)
    log_env = sosfiltfilt(butter(1, ENVELOPE_LOWPASS, btype="low", fs=sr, output="sos"), log_env)
    g = gcd(int(sr), FEATURE_RATE)
    f = resample_poly(log_env, FEATURE_RATE // g, int(sr) // g)
    if DETREND_S > 0:
        size = max(3, int(DETREND_S * FEATURE_RATE) | 1)
        if DETREND_PERCENTILE == 50:
            f = f - median_filter(f, size=size, mode="nearest")
        else:
            from scipy.ndimage import percentile_filter

            f = f - percentile_filter(f, DETREND_PERCENTILE, size=size, mode="nearest")
    return np.clip(_robust_z(f), -3.0, 6.0)


def _robust_z(v: np.ndarray) -> np.ndarray:
    med = np.median(v)
    mad = np.median(np.abs(v - med)) * 1.4826 + 1e-8
    return (v - med) / mad


def _windowed_autocorr(v: np.ndarray, fs: int = FEATURE_RATE, win_s: float = 4.0, hop_s: float = 1.0,
                       max_lag_s: float = 2.0) -> np.ndarray:
    """Median over 4 s windows of each window's normalised autocorrelation: float [max_lag + 1]."""
    W = min(len(v), int(win_s * fs))
    H = int(hop_s * fs)
    M = min(int(max_lag_s * fs) + 1, W)
    acs = []
    for s in range(0, max(1, len(v) - W + 1), H):
        w = v[s : s + W] - v[s : s + W].mean()
        ac = np.correlate(w, w, mode="full")[W - 1 : W - 1 + M]
        if ac[0] > 0:
            acs.append(ac / ac[0])
    return np.median(np.asarray(acs), axis=0) if acs else np.zeros(M)


def _cycle_lag(ac: np.ndarray, pk: np.ndarray, cand: np.ndarray) -> int:
    """The cycle's lag among the candidate peaks ``cand`` of ``ac`` (``pk``: all its peaks).

    The highest candidate, halved while a peak near half its lag is at least HALF_PEAK_RATIO as high (two
    beats read as one) and that half cycle shows S1 and S2: an autocorrelation peak (the S1 -> S2 lag) at
    HALF_INNER_PEAK of its lag. A cycle that does not show them (S1 -> S2 read as a beat: evenly spaced S1
    and S2, Yaseen N 001-050 and MS 090-098) is doubled when the peak near twice its lag is at least
    DOUBLE_PEAK_RATIO as high and no longer than DOUBLE_MAX_S (50 bpm; a murmur filling systole, as in
    MR, also hides the S1 -> S2 peak, and there the double is a 40 bpm "cycle").
    """
    def near(lag: float) -> int | None:
        c = cand[np.abs(cand - lag) <= max(2.0, 0.1 * lag)]
        return int(c[np.argmax(ac[c])]) if len(c) else None

    def two_sounds(lag: int) -> bool:
        return bool(np.any((pk >= HALF_INNER_PEAK[0] * lag) & (pk <= HALF_INNER_PEAK[1] * lag)))

    p = int(cand[np.argmax(ac[cand])])
    while (q := near(p / 2)) is not None and ac[q] >= HALF_PEAK_RATIO * ac[p] and two_sounds(q):
        p = q
    if (not two_sounds(p) and (q := near(2 * p)) is not None and ac[q] >= DOUBLE_PEAK_RATIO * ac[p]
            and q <= DOUBLE_MAX_S * FEATURE_RATE):
        p = q
    return p


def heart_rate(feature: np.ndarray, fs: int = FEATURE_RATE,
               max_bpm: float = MAX_HEART_RATE_BPM) -> tuple[float, float]:
    """(cycle duration s, systolic interval s) from the windowed autocorrelation of the feature.

    Cycle: the highest autocorrelation peak at 60/max_bpm .. 2 s, replaced by a peak near half its lag while
    that one is at least HALF_PEAK_RATIO as high (guards against picking two beats). Systolic
    interval (S1 onset -> S2 onset): by SYS_MODE, from the highest peak at 0.2 s .. half the cycle
    and/or Weissler's regression PRIOR_A - PRIOR_B * HR (the regression when there is no peak).
    """
    from scipy.signal import find_peaks

    ac = _windowed_autocorr(feature, fs)
    pk, _ = find_peaks(ac)
    cand = pk[(pk >= int(60.0 / max_bpm * fs)) & (pk <= int(2.0 * fs))]
    if len(cand) == 0:
        return 0.8, 0.32
    p = _cycle_lag(ac, pk, cand)
    cycle_s = p / fs
    prior = PRIOR_A - PRIOR_B * 60.0 / cycle_s  # S1 -> S2 onset interval (s) vs heart rate (bpm)
    sys_c = pk[(pk >= int(0.2 * fs)) & (pk <= p / 2)]
    if SYS_MODE == "prior" or len(sys_c) == 0:
        return cycle_s, prior
    sys_s = float(sys_c[np.argmax(ac[sys_c])]) / fs
    if SYS_MODE == "blend":
        sys_s = 0.5 * (sys_s + prior)
    return cycle_s, sys_s


# ----------------------------------------------------------------------------- HSMM decoding


def _duration_logpdf(mean: float, std: float, lo: float, hi: float, D: int) -> np.ndarray:
    d = np.arange(1, D + 1, dtype=np.float64)
    lp = -0.5 * ((d - mean) / std) ** 2
    lp[(d < lo) | (d > hi)] = -np.inf
    if not np.isfinite(lp).any():  # degenerate bounds: allow the nearest duration
        lp[int(np.clip(round(mean) - 1, 0, D - 1))] = 0.0
    m = lp[np.isfinite(lp)].max()
    return lp - (m + np.log(np.exp(lp - m).sum()))  # a proper log pmf: models stay comparable


def _viterbi(logb: np.ndarray, logp: np.ndarray) -> tuple[list[tuple[int, int, int]], float]:
    """Explicit-duration Viterbi over the cyclic chain 0->1->2->3->0.

    logb float [F, 4] frame log emissions; logp float [D, 4] log duration pmf for d = 1..D.
    Returns (segments (start_frame, end_frame_exclusive, state 0..3) covering [0, F), best log score).
    The first and last segments may be truncated (duration term = the state's best value).
    """
    F, S = logb.shape
    D = logp.shape[0]
    C = np.vstack([np.zeros((1, S)), np.cumsum(logb, axis=0)])  # [F+1, S]
    prev = np.array([3, 0, 1, 2])
    pmax = np.max(np.where(np.isfinite(logp), logp, -np.inf), axis=0)  # [S]
    dmax = np.array([np.max(np.flatnonzero(np.isfinite(logp[:, j]))) + 1 for j in range(S)])
    delta = np.full((F + 1, S), -np.inf)
    delta[0] = 0.0
    best_d = np.zeros((F + 1, S), dtype=np.int64)
    ds = np.arange(1, D + 1)
    for t in range(1, F + 1):
        n = min(D, t)
        idx = t - ds[:n]  # [n]
        emis = C[t] - C[idx]  # [n, S]
        cand = delta[idx][:, prev] + logp[:n] + emis
        if t <= D:  # segment starting at frame 0: truncated, no predecessor
            cand[t - 1] = np.where(t <= dmax, emis[t - 1] + pmax, -np.inf)
        if t == F:  # last segment may be truncated too
            trunc = delta[idx][:, prev] + pmax + emis
            trunc[ds[:n, None] > dmax[None, :]] = -np.inf
            if t <= D:
                trunc[t - 1] = np.where(t <= dmax, emis[t - 1] + pmax, -np.inf)
            cand = np.maximum(cand, trunc)
        k = np.argmax(cand, axis=0)
        delta[t] = cand[k, np.arange(S)]
        best_d[t] = k + 1
    segs = []
    t, j = F, int(np.argmax(delta[F]))
    score = float(delta[F, j])
    while t > 0:
        d = int(best_d[t, j])
        segs.append((t - d, t, j))
        t, j = t - d, int(prev[j])
    return segs[::-1], score


def _gauss_logpdf(v: np.ndarray, mu: float, sd: float) -> np.ndarray:
    return -0.5 * ((v - mu) / sd) ** 2 - np.log(sd)


def _durations(cycle_s: float, sys_s: float, fs: int) -> np.ndarray:
    """Log duration pmf float [D, 4] (S1, systole, S2, diastole) in frames."""
    m_s1, sd_s1 = 0.122 * fs, 0.022 * fs
    m_s2, sd_s2 = 0.094 * fs, 0.022 * fs
    m_sys = max(sys_s * fs - m_s1, 0.05 * fs)
    sd_sys = 0.025 * fs
    m_dia = max((cycle_s - sys_s - 0.094) * fs, 0.08 * fs)
    sd_dia = DIA_SD_FRAC * m_dia + 0.006 * fs
    D = int(np.ceil(max(m_dia + BOUND_SD * sd_dia, m_sys + 3 * sd_sys) + 2))
    cols = [
        _duration_logpdf(m_s1, sd_s1, max(1, m_s1 - 3 * sd_s1), m_s1 + 3 * sd_s1, D),
        _duration_logpdf(m_sys, sd_sys, max(1, m_sys - 3 * sd_sys), m_sys + 3 * sd_sys, D),
        _duration_logpdf(m_s2, sd_s2, max(1, m_s2 - 3 * sd_s2), m_s2 + 3 * sd_s2, D),
        _duration_logpdf(m_dia, sd_dia, max(1, m_dia - BOUND_SD * sd_dia), m_dia + BOUND_SD * sd_dia, D),
    ]
    return np.stack(cols, axis=1)


def _two_class_emissions(v: np.ndarray) -> np.ndarray:
    """Sound vs silence from a 2-component 1-D Gaussian mixture (a few EM steps): float [F, 4]."""
    lo_mu, hi_mu = np.percentile(v, 30), np.percentile(v, 90)
    sd_lo = sd_hi = max(np.std(v) / 2, 1e-3)
    w = 0.3
    for _ in range(10):
        a = np.log(w) + _gauss_logpdf(v, hi_mu, sd_hi)
        b = np.log(1 - w) + _gauss_logpdf(v, lo_mu, sd_lo)
        r = 1.0 / (1.0 + np.exp(np.clip(b - a, -50, 50)))  # responsibility of "sound"
        w = float(np.clip(r.mean(), 0.05, 0.6))
        hi_mu = float((r * v).sum() / (r.sum() + 1e-9))
        lo_mu = float(((1 - r) * v).sum() / ((1 - r).sum() + 1e-9))
        sd_hi = float(np.sqrt((r * (v - hi_mu) ** 2).sum() / (r.sum() + 1e-9)) + 1e-3)
        sd_lo = float(np.sqrt(((1 - r) * (v - lo_mu) ** 2).sum() / ((1 - r).sum() + 1e-9)) + 1e-3)
    snd = _gauss_logpdf(v, hi_mu, sd_hi)
    sil = _gauss_logpdf(v, lo_mu, sd_lo)
    return np.stack([snd, sil, snd, sil], axis=1)


def _state_emissions(v: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-state Gaussian on v re-estimated from a decoding: float [F, 4]."""
    out = np.empty((len(v), 4))
    sd_all = np.std(v) + 1e-3
    for j in range(4):
        sel = v[labels == j]
        mu = float(sel.mean()) if len(sel) > 3 else float(v.mean())
        sd = float(sel.std()) + 0.1 * sd_all if len(sel) > 3 else sd_all
        out[:, j] = _gauss_logpdf(v, mu, sd)
    return out


def segment_states(signal: np.ndarray, sample_rate: int, refine: int | None = None,
                   max_bpm: float = MAX_HEART_RATE_BPM, emission_model=None) -> list[tuple[int, int, int]]:
    """Decoded state segments (start_sample, end_sample, state 1..4) covering the signal. ``emission_model``
    (a fitted ``pahcl.data.springer.EmissionModel``): with ``weight=None`` its trained emissions replace the
    per-recording Gaussian ones and their hard-EM passes; with a weight w, w x the trained log emissions are
    added to the per-recording Gaussian ones in every pass (adaptive). Heart rate and durations are the same."""
    x = np.asarray(signal, dtype=np.float64)
    if len(x) < int(0.3 * sample_rate) or not np.all(np.isfinite(x)) or float(np.std(x)) < 1e-8:
        return []  # too short, broken or constant: nothing to segment
    v = _features(x, sample_rate)
    cycle_s, sys_s = heart_rate(v, max_bpm=max_bpm)
    logp = _durations(cycle_s, sys_s, FEATURE_RATE)
    trained = 0.0
    if emission_model is not None:
        from .springer import frame_features

        trained = emission_model.log_emissions(frame_features(x, sample_rate))
    if emission_model is not None and emission_model.weight is None:  # trained emissions alone
        segs, _ = _viterbi(trained, logp)
        refine = 0
    else:  # per-recording Gaussians (+ weight x trained emissions: the adaptive model)
        trained = trained if emission_model is None else emission_model.weight * trained
        segs, _ = _viterbi(_two_class_emissions(v) + trained, logp)
    for _ in range(REFINE if refine is None else refine):
        labels = np.empty(len(v), dtype=np.int64)
        for a, b, j in segs:
            labels[a:b] = j
        segs, _ = _viterbi(_state_emissions(v, labels) + trained, logp)
    scale = sample_rate / FEATURE_RATE
    n = len(x)
    return [(int(round(a * scale)), min(n, int(round(b * scale))), j + 1) for a, b, j in segs]


def states_to_cycles(segs: list[tuple[int, int, int]]) -> list[Cycle]:
    """Consecutive (S1, sys, S2, dia, S1) segment runs -> cycles; a truncated first S1 is not an onset."""
    out = []
    for i in range(len(segs) - 4):
        st = [s[2] for s in segs[i : i + 5]]
        if st != [1, 2, 3, 4, 1] or segs[i][0] == 0:
            continue
        idx = [s[0] for s in segs[i : i + 5]]
        if all(b > a for a, b in zip(idx, idx[1:])):
            out.append(Cycle(*idx))
    return out


def segment(signal: np.ndarray, sample_rate: int, max_bpm: float = MAX_HEART_RATE_BPM) -> list[Cycle]:
    """Automatic segmentation: float [T] -> cycles with sample indices into ``signal``. ``max_bpm``
    bounds the heart rate the period search admits (shortest cycle 60/max_bpm s)."""
    return states_to_cycles(segment_states(signal, sample_rate, max_bpm=max_bpm))


__all__ = ["FEATURE_RATE", "MAX_HEART_RATE_BPM", "from_annotations", "heart_rate", "segment", "segment_states",
           "states_to_cycles"]
