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
Randomness: one ``np.random.Generator`` per item seeded by ``(seed, epoch, index)`` -- the views of
item i in epoch e are the same whatever the DataLoader worker count or order.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def augment(wave: np.ndarray, bounds: np.ndarray, aug, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
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
    lo, hi = aug.amplitude_scale_range
    if rng.random() < aug.prob_amplitude_scale:
        scale = float(rng.uniform(lo, hi))
    if scale != 1.0:
        out = out * np.float32(scale)
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

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.cycles)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def views(self, index: int) -> tuple[tuple, tuple]:
        """Both views as numpy plus what was applied: ((wave, bounds, info), (wave, bounds, info))."""
        rng = self.rng(index)
        w, b = self.cycles.waves[index], self.cycles.bounds[index]
        return augment(w, b, self.aug, rng), augment(w, b, self.aug, rng)

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
