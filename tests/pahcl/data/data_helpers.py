"""Helpers shared by the data tests (imported by name; pytest puts this folder on sys.path)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf


def pcg_like(seconds: float, sr: int, seed: int = 0) -> np.ndarray:
    """A crude mono PCG (S1/S2 bursts at 75 bpm + noise) for files written in tmp dirs: float32 [T]."""
    from pahcl.data.synthetic import generate_recording
    from pahcl.data.preprocess import resample

    rec = generate_recording(seed)
    x = resample(rec.signal, rec.sample_rate, sr)
    n = int(seconds * sr)
    x = np.resize(x, n) if len(x) < n else x[:n]
    return (0.5 * x / np.max(np.abs(x))).astype(np.float32)


def write_wav(path: Path, x: np.ndarray, sr: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, subtype="PCM_16")
    return path
