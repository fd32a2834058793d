"""Signal preprocessing: resample -> band-pass -> spike removal -> normalise (one recording).

    x = preprocess_signal(signal, sample_rate, data_cfg)   # float32 [T'] at data_cfg.sample_rate

* ``resample``: polyphase (``scipy.signal.resample_poly``) with up/down reduced by their gcd.
* ``bandpass``: zero-phase 4th-order Butterworth (``sosfiltfilt``), ``data.bandpass_low`` to
  ``data.bandpass_high`` Hz (25-400 Hz by default).
* ``remove_spikes``: Schmidt et al. 2010 (as in Springer's code): cut the signal into 500 ms
  windows; while some window's max |x| exceeds 3x the median of the window maxima, take the
  largest one, locate its peak, and zero the samples between the zero-crossings around the peak;
  repeat (at most ``max_iter`` times). Needs >= 3 windows (a median of fewer windows would call a
  normal S1 a spike), so very short recordings are left as they are.
* ``normalise``: zero mean, unit standard deviation per recording (not max-abs: one residual
  spike would then shrink the whole recording).
"""
from __future__ import annotations

from math import gcd

import numpy as np
from scipy.signal import butter, resample_poly, sosfiltfilt


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Polyphase resampling float32 [T] at sr_in -> float32 [~T*sr_out/sr_in]."""
    if int(sr_in) == int(sr_out):
        return np.asarray(x, dtype=np.float32)
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(np.asarray(x, dtype=np.float64), int(sr_out) // g, int(sr_in) // g).astype(np.float32)


def bandpass(x: np.ndarray, sr: int, low: float, high: float, order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth band-pass: float32 [T] -> float32 [T]."""
    if not 0 < low < high < sr / 2:
        raise ValueError(f"bandpass: need 0 < low ({low}) < high ({high}) < Nyquist ({sr / 2})")
    sos = butter(order, [low, high], btype="band", fs=sr, output="sos")
    padlen = min(3 * (2 * len(sos) + 1), len(x) - 1)
    return sosfiltfilt(sos, np.asarray(x, dtype=np.float64), padlen=max(padlen, 0)).astype(np.float32)


def remove_spikes(x: np.ndarray, sr: int, window_s: float = 0.5, factor: float = 3.0, max_iter: int = 200) -> np.ndarray:
    """Schmidt 2010 spike removal on a copy: float32 [T] -> float32 [T]."""
    y = np.array(x, dtype=np.float32, copy=True)
    w = int(round(window_s * sr))
    n_win = len(y) // w
    if n_win < 3:
        return y
    frames = y[: n_win * w].reshape(n_win, w)  # view: edits write through to y
    for _ in range(max_iter):
        maxes = np.abs(frames).max(axis=1)  # [n_win]
        med = np.median(maxes)
        worst = int(np.argmax(maxes))
        if med <= 0 or maxes[worst] <= factor * med:
            break
        f = frames[worst]
        peak = int(np.argmax(np.abs(f)))
        sign_change = np.flatnonzero(np.abs(np.diff(np.signbit(f).astype(np.int8))) > 0)  # index i: change i -> i+1
        before = sign_change[sign_change < peak]
        after = sign_change[sign_change >= peak]
        start = int(before[-1]) + 1 if len(before) else 0
        end = int(after[0]) + 1 if len(after) else w
        f[start:end] = 0.0
    return y


def normalise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit std: float32 [T] -> float32 [T] (an all-constant input returns zeros)."""
    x = np.asarray(x, dtype=np.float32)
    x = x - x.mean()
    s = float(x.std())
    return (x / s if s > 0 else x).astype(np.float32)


def preprocess_signal(signal: np.ndarray, sample_rate: int, data_cfg) -> np.ndarray:
    """The full chain at ``data_cfg.sample_rate``: float32 [T] -> float32 [T']."""
    sr = int(data_cfg.sample_rate)
    x = resample(signal, sample_rate, sr)
    x = bandpass(x, sr, float(data_cfg.bandpass_low), float(data_cfg.bandpass_high))
    x = remove_spikes(x, sr)
    return normalise(x)


__all__ = ["bandpass", "normalise", "preprocess_signal", "remove_spikes", "resample"]
