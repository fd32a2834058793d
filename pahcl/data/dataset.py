"""Contrastive dataset: two augmented views of each cycle, with boundaries moved with the signal.

    ds = ContrastiveCycleDataset(cycles, cfg.augmentation, seed=cfg.seed)
    ds.set_epoch(epoch)            # call before each epoch (views change per epoch)
    item = ds[i]  # {"view1": float32 [1, L], "view2": float32 [1, L], "bounds1": int64 [5],
                  #  "bounds2": int64 [5], "index": int}     (torch tensors, except "index")

Augmentations (``AugmentationConfig``), applied independently to each view:
  * time shift, with probability ``prob_time_shift``: integer shift s uniform in
    [-time_shift_max * L, +time_shift_max * L]; view[t] = wave[t - s] (zeros fill); bounds + s,
    clipped to [0, L];
  * amplitude scale, with probability ``prob_amplitude_scale``: factor uniform in
    ``amplitude_scale_range``;
  * additive Gaussian noise of std ``gaussian_noise_std`` (always, when > 0; it has no probability
    key).
Physiological augmentations (all off by default, so the views above are unchanged):
  * time stretch (a heart-rate change), probability ``prob_time_stretch``: factor r uniform in
    ``time_stretch_range``; view[t] = wave[t / r] (linear interpolation, zeros past the end); bounds * r;
    applied after the time shift, before the amplitude scale;
  * gain per substructure, probability ``prob_sub_gain``: each of S1, systole, S2, diastole times its own
    factor uniform in ``sub_gain_range``;
  * band limit, probability ``prob_band_limit``: half the time a low-pass at a cut-off uniform in
    150-400 Hz, else a high-pass at 25-80 Hz (FFT mask over the window; needs the sample rate);
  * noise at an SNR, probability ``prob_snr_noise``: white noise whose power is the cycle span's power
    over 10^(snr/10), snr uniform in ``snr_db_range`` dB;
  * another cycle of the same recording as view 2, probability ``prob_other_cycle`` (when the
    recording has another cycle): a natural positive pair; both views are then augmented as usual.
Randomness: one ``np.random.Generator`` per item seeded by ``(seed, epoch, index)`` -- the views of
item i in epoch e are the same whatever the DataLoader worker count or order.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def _time_stretch(x: np.ndarray, b: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """[L], [5] -> stretched by ``r`` (r > 1 = slower heart): y[t] = x[t / r], zeros past x's end."""
    L = x.shape[-1]
    t = np.arange(L) / r
    y = np.interp(t, np.arange(L), x, right=0.0).astype(np.float32)
    return y, np.clip(np.round(b * r).astype(np.int64), 0, L)


def _physiological(x: np.ndarray, b: np.ndarray, aug, rng: np.random.Generator, sample_rate: int | None) -> np.ndarray:
    """Gain per substructure, band limit, noise at an SNR (each with its probability; see the module doc)."""
    if getattr(aug, "prob_sub_gain", 0) > 0 and rng.random() < aug.prob_sub_gain:
        gains = rng.uniform(*aug.sub_gain_range, size=4).astype(np.float32)
        x = x.copy()
        for i in range(4):
            x[b[i]:b[i + 1]] *= gains[i]
    if getattr(aug, "prob_band_limit", 0) > 0 and rng.random() < aug.prob_band_limit:
        if sample_rate is None:
            raise ValueError("augment: augmentation.prob_band_limit > 0 needs the sample rate")
        spec = np.fft.rfft(x)
        f = np.fft.rfftfreq(len(x), 1.0 / sample_rate)
        if rng.random() < 0.5:
            spec[f > rng.uniform(150, 400)] = 0  # low-pass
        else:
            spec[f < rng.uniform(25, 80)] = 0  # high-pass
        x = np.fft.irfft(spec, len(x)).astype(np.float32)
    if getattr(aug, "prob_snr_noise", 0) > 0 and rng.random() < aug.prob_snr_noise:
        span = x[b[0]:max(b[4], b[0] + 1)]
        power = float(np.mean(span.astype(np.float64) ** 2)) if len(span) else 0.0
        snr_db = rng.uniform(*aug.snr_db_range)
        x = x + rng.standard_normal(len(x)).astype(np.float32) * np.float32(np.sqrt(power / 10 ** (snr_db / 10)))
    return x


def augment(wave: np.ndarray, bounds: np.ndarray, aug, rng: np.random.Generator,
            sample_rate: int | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """One view: float32 [L], int64 [5] -> (float32 [L], int64 [5], {"shift", "scale"} applied)."""
    L = wave.shape[-1]
    shift, scale = 0, 1.0
    out = np.asarray(wave, dtype=np.float32)
    b = np.asarray(bounds, dtype=np.int64)
    max_shift = int(aug.time_shift_max * L)
    if max_shift > 0 and rng.random() < aug.prob_time_shift:
        shift = int(rng.integers(-max_shift, max_shift + 1))
    if shift:
        y = np.zeros_like(out)
        if shift > 0:
            y[shift:] = out[: L - shift]
        else:
            y[:shift] = out[-shift:]
        out = y
        b = np.clip(b + shift, 0, L)
    if getattr(aug, "prob_time_stretch", 0) > 0 and rng.random() < aug.prob_time_stretch:
        out, b = _time_stretch(out, b, float(rng.uniform(*aug.time_stretch_range)))
    lo, hi = aug.amplitude_scale_range
    if rng.random() < aug.prob_amplitude_scale:
        scale = float(rng.uniform(lo, hi))
    if scale != 1.0:
        out = out * np.float32(scale)
    out = _physiological(out, b, aug, rng, sample_rate)
    if aug.gaussian_noise_std > 0:
        out = out + rng.standard_normal(L, dtype=np.float32) * np.float32(aug.gaussian_noise_std)
    if out is wave:
        out = out.copy()
    return out.astype(np.float32, copy=False), b, {"shift": shift, "scale": scale}


class ContrastiveCycleDataset(Dataset):
    """Two augmented views per cycle; deterministic given (seed, epoch, index)."""

    def __init__(self, cycles, aug, seed: int = 0):
        self.cycles = cycles
        self.aug = aug
        self.seed = int(seed)
        self.epoch = 0
        self._by_recording: dict | None = None  # recording id -> cycle indices (prob_other_cycle), built lazily
        self._rid = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.cycles)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _siblings(self, index: int) -> np.ndarray:
        """Indices of the other cycles of ``index``'s recording (empty without a recording_id column)."""
        if self._by_recording is None:
            t = getattr(self.cycles, "table", None)
            rid = t["recording_id"].astype(str).to_numpy() if t is not None and "recording_id" in t else None
            self._rid = rid
            self._by_recording = {} if rid is None else {r: np.flatnonzero(rid == r) for r in np.unique(rid)}
        if self._rid is None:
            return np.zeros(0, dtype=np.int64)
        same = self._by_recording[self._rid[index]]
        return same[same != index]

    def views(self, index: int) -> tuple[tuple, tuple]:
        """Both views as numpy plus what was applied: ((wave, bounds, info), (wave, bounds, info))."""
        rng = self.rng(index)
        w, b = self.cycles.waves[index], self.cycles.bounds[index]
        w2, b2 = w, b
        if getattr(self.aug, "prob_other_cycle", 0) > 0 and rng.random() < self.aug.prob_other_cycle:
            others = self._siblings(index)
            if len(others):
                j = int(others[rng.integers(len(others))])
                w2, b2 = self.cycles.waves[j], self.cycles.bounds[j]
        sr = getattr(self.cycles, "sample_rate", None)
        return augment(w, b, self.aug, rng, sr), augment(w2, b2, self.aug, rng, sr)

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} cycles")
        index = int(index) % len(self)
        (w1, b1, _), (w2, b2, _) = self.views(index)
        return {
            "view1": torch.from_numpy(np.ascontiguousarray(w1)[None]),  # [1, L]
            "view2": torch.from_numpy(np.ascontiguousarray(w2)[None]),  # [1, L]
            "bounds1": torch.from_numpy(b1),  # [5]
            "bounds2": torch.from_numpy(b2),  # [5]
            "index": index,
        }


__all__ = ["ContrastiveCycleDataset", "augment"]
