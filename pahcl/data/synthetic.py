"""Synthetic phonocardiograms: the embedded default data set (``--data synthetic[:N]``).

Each recording is generated at ``NATIVE_RATE`` = 4000 Hz (CirCor's rate) and then goes through
the same preprocessing as real data (resample to ``data.sample_rate``, band-pass, ...). Every
recording carries exact state annotations (float [M, 3]: start_s, end_s, state; 1 S1, 2 systole,
3 S2, 4 diastole, 0 outside), so cycles come from the annotations, not the auto segmenter.

Physiology, per cycle:
  * S1 = M1 + T1 (T1 20-30 ms later, weaker), S2 = A2 + P2 with the split widening on inspiration
    (15 ms + up to 30 ms, following a respiratory sinusoid of 3-5 s period); each component a
    damped oscillation at 30-150 Hz with a gamma-shaped envelope.
  * heart rate 55-110 bpm per patient, respiratory sinus arrhythmia (+-4 %) and 2 % beat jitter;
    systolic interval from a Weissler-style regression on heart rate.
  * white background noise at a per-recording SNR of 8-22 dB (relative to the clean signal).

Classes (``CLASSES``; each synthetic patient has one class, ``RECORDINGS_PER_PATIENT`` recordings):
  normal              no murmur (30 % of normal patients get a faint innocent early-systolic murmur)
  systolic_ejection   crescendo-decrescendo systolic murmur (aortic-stenosis like), 80-350 Hz
  holosystolic        plateau murmur from S1 to S2 (mitral-regurgitation like), 120-400 Hz
  midsystolic_click   sharp mid-systolic click + late-systolic crescendo murmur (MVP like)
  diastolic_rumble    low-pitched (30-90 Hz) mid-diastolic decrescendo + presystolic crescendo

Murmur intensity is drawn per patient (0.08-0.5 of the S1 peak), so some murmurs hide under the
noise: the classes are separable by timing and spectrum, but not trivially.

Determinism: recording ``i`` depends only on ``(seed, i)`` (patient ``i // 4``), so
``synthetic:8`` is a prefix of ``synthetic``. Vectorised with numpy (event templates scattered with
``np.bincount``; murmur envelopes evaluated for all samples at once): tens of thousands of cycles
per second on one core (see ``bench`` / ``python -m pahcl.data.synthetic``).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from scipy.signal import butter, sosfilt

from .types import Recording

NATIVE_RATE = 4000
DEFAULT_NUM_RECORDINGS = 120  # x ~10 cycles each = ~1200 cycles
RECORDINGS_PER_PATIENT = 4
CLASSES = ("normal", "systolic_ejection", "holosystolic", "midsystolic_click", "diastolic_rumble")
_TEMPLATE_S = 0.12  # length of one damped-oscillation event template
_BANDS = {  # murmur noise band (Hz) per class
    "normal": (100.0, 300.0),
    "systolic_ejection": (80.0, 350.0),
    "holosystolic": (120.0, 400.0),
    "midsystolic_click": (120.0, 400.0),
    "diastolic_rumble": (30.0, 90.0),
}


@lru_cache(maxsize=None)
def _band_sos(cls: str, fs: int) -> np.ndarray:
    return butter(4, _BANDS[cls], btype="band", fs=fs, output="sos")


def _patient_params(seed: int, patient: int) -> dict:
    rng = np.random.default_rng([seed, patient, 7919])
    cls = CLASSES[patient % len(CLASSES)]
    hr = rng.uniform(55.0, 110.0)
    murmur = rng.uniform(0.08, 0.5) if cls != "normal" else (rng.uniform(0.03, 0.1) if rng.random() < 0.3 else 0.0)
    return dict(
        cls=cls,
        hr=hr,
        sys_interval=0.50 - 0.0021 * hr + rng.normal(0, 0.01),  # S1 onset -> S2 onset (s)
        f_s1=rng.uniform(35.0, 70.0),
        f_s2=rng.uniform(55.0, 110.0),
        a_s2=rng.uniform(0.5, 1.0),
        murmur=murmur,
        f_click=rng.uniform(110.0, 150.0),
    )


def _events(starts: np.ndarray, amps: np.ndarray, freqs: np.ndarray, tps: np.ndarray, phases: np.ndarray,
            n: int, fs: int) -> np.ndarray:
    """Sum of damped oscillations: starts [E] samples -> float64 [n]."""
    m = int(_TEMPLATE_S * fs)
    t = np.arange(m) / fs  # [M]
    r = t[None, :] / tps[:, None]  # [E, M]
    env = (r**2) * np.exp(2.0 * (1.0 - r))  # gamma shape, peak 1 at t = tp
    w = amps[:, None] * env * np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phases[:, None])
    idx = starts[:, None] + np.arange(m)[None, :]
    ok = idx < n
    return np.bincount(idx[ok], weights=w[ok], minlength=n)[:n]


def _smooth_box(x: np.ndarray, a: np.ndarray, b: np.ndarray, edge: float = 0.01) -> np.ndarray:
    """~1 inside [a, b], smooth edges of ``edge`` seconds (all arrays broadcast)."""
    return np.clip((x - a) / edge, 0, 1) * np.clip((b - x) / edge, 0, 1)


def _murmur_envelope(cls: str, t, k, on, s1_end, s2, s2_end, sys) -> np.ndarray:
    """Murmur amplitude per sample (0..1) of class ``cls``; ``k`` = the cycle of each sample, the timing arrays
    per cycle (S1 onsets ``on``, S1 ends, S2 onsets and ends, systolic intervals)."""
    a, b, nxt = s1_end[k], s2[k], on[k + 1]
    if cls == "systolic_ejection":
        u = (t - a) / np.maximum(b - 0.03 - a, 1e-3)
        env = np.where((u > 0) & (u < 1), np.where(u < 0.4, u / 0.4, (1 - u) / 0.6), 0.0)
    elif cls == "holosystolic":
        env = _smooth_box(t, on[k] + 0.03, b + 0.01)
    elif cls == "midsystolic_click":
        c = on[k] + 0.5 * sys[k]
        env = np.where((t > c) & (t < b), (t - c) / np.maximum(b - c, 1e-3), 0.0)
    elif cls == "diastolic_rumble":
        d0 = s2_end[k] + 0.06
        u = (t - d0) / np.maximum(nxt - d0, 1e-3)
        env = np.where((u > 0) & (u < 1), np.exp(-3 * u) + np.clip((u - 0.75) / 0.25, 0, 1), 0.0)
    else:  # faint innocent early-systolic murmur of some normal patients
        u = (t - a) / np.maximum(0.5 * (b - a), 1e-3)
        env = np.where((u > 0) & (u < 1), np.sin(np.pi * u), 0.0)
    return env


def generate_recording(index: int, seed: int = 0, fs: int = NATIVE_RATE) -> Recording:
    """Recording ``index`` of the synthetic set: float32 signal at ``fs`` with exact annotations."""
    patient = index // RECORDINGS_PER_PATIENT
    p = _patient_params(seed, patient)
    rng = np.random.default_rng([seed, patient, index])
    n_cyc = int(rng.integers(8, 13))
    rr0 = 60.0 / p["hr"]
    resp_T, resp_ph = rng.uniform(3.0, 5.0), rng.uniform(0, 2 * np.pi)
    t0 = rng.uniform(0.1, 0.4)
    # beat-to-beat RR with respiratory sinus arrhythmia: onsets of n_cyc + 1 S1s
    rr = np.empty(n_cyc)
    on = np.empty(n_cyc + 1)
    on[0] = t0
    for k in range(n_cyc):  # tiny loop (<= 12): RR depends on the respiratory phase at the onset
        rr[k] = rr0 * (1 + 0.04 * np.sin(2 * np.pi * on[k] / resp_T + resp_ph) + 0.02 * rng.standard_normal())
        on[k + 1] = on[k] + rr[k]
    resp = np.sin(2 * np.pi * on / resp_T + resp_ph)  # [K+1] inspiration > 0
    sys = p["sys_interval"] * np.sqrt(np.r_[rr, rr[-1]] / rr0) + rng.normal(0, 0.005, n_cyc + 1)  # [K+1]
    s2 = on + sys
    t1_delay = rng.uniform(0.02, 0.03, n_cyc + 1)
    split = 0.015 + 0.03 * np.clip(resp, 0, None) + rng.uniform(0, 0.005, n_cyc + 1)
    s1_end = on + t1_delay + 0.07
    s2_end = s2 + split + 0.06
    duration = on[-1] + rng.uniform(0.3, 0.45)
    n = int(round(duration * fs))
    K = n_cyc + 1
    # --- heart sounds: M1, T1 (all K S1s), A2, P2 (first K-1 cycles only) -----------------------
    amp_j = 1.0 + 0.1 * rng.standard_normal(K)
    starts = np.concatenate([on, on + t1_delay, s2[:-1], s2[:-1] + split[:-1]])
    amps = np.concatenate([amp_j, 0.6 * amp_j, p["a_s2"] * amp_j[:-1], 0.5 * p["a_s2"] * amp_j[:-1]])
    freqs = np.concatenate([np.full(K, p["f_s1"]), np.full(K, p["f_s1"] * 1.2),
                            np.full(K - 1, p["f_s2"]), np.full(K - 1, p["f_s2"] * 0.85)])
    freqs = freqs * rng.uniform(0.93, 1.07, len(freqs))
    tps = np.concatenate([np.full(2 * K, 0.018), np.full(2 * (K - 1), 0.012)]) * rng.uniform(0.8, 1.2, len(freqs))
    phases = rng.uniform(0, 2 * np.pi, len(freqs))
    cls = p["cls"]
    if cls == "midsystolic_click":
        click_t = on[:-1] + rng.uniform(0.45, 0.6, n_cyc) * sys[:-1]
        starts = np.concatenate([starts, click_t])
        amps = np.concatenate([amps, rng.uniform(0.3, 0.7) * np.ones(n_cyc)])
        freqs = np.concatenate([freqs, np.full(n_cyc, p["f_click"])])
        tps = np.concatenate([tps, np.full(n_cyc, 0.005)])
        phases = np.concatenate([phases, rng.uniform(0, 2 * np.pi, n_cyc)])
    x = _events(np.round(starts * fs).astype(np.int64), amps, freqs, tps, phases, n, fs)
    # --- murmur: band-limited noise x per-sample envelope --------------------------------------
    if p["murmur"] > 0:
        t = np.arange(n) / fs
        k = np.clip(np.searchsorted(on, t, side="right") - 1, 0, n_cyc - 1)  # cycle of each sample
        inside = (t >= on[0]) & (t < on[-1])
        env = _murmur_envelope(cls, t, k, on, s1_end, s2, s2_end, sys)
        noise = sosfilt(_band_sos(cls, fs), rng.standard_normal(n))
        noise /= np.std(noise) + 1e-12
        x += p["murmur"] * 0.6 * env * inside * noise
    # --- background noise at a set SNR, overall gain ------------------------------------------
    snr_db = rng.uniform(8.0, 22.0)
    power = np.mean(x**2)
    x += rng.standard_normal(n) * np.sqrt(power / 10 ** (snr_db / 10))
    x *= rng.uniform(0.1, 0.4) / (np.max(np.abs(x)) + 1e-12)
    # --- exact annotations: 0 | (S1, sys, S2, dia) x n_cyc | S1 | 0 -----------------------------
    rows = [(0.0, on[0], 0)]
    for j in range(n_cyc):
        rows += [(on[j], s1_end[j], 1), (s1_end[j], s2[j], 2), (s2[j], s2_end[j], 3), (s2_end[j], on[j + 1], 4)]
    rows += [(on[-1], s1_end[-1], 1), (s1_end[-1], duration, 0)]
    ann = np.asarray(rows, dtype=np.float64)
    rid = f"syn_p{patient:04d}_r{index % RECORDINGS_PER_PATIENT}"
    meta = {"patient": f"syn_p{patient:04d}", "snr_db": round(float(snr_db), 2), "hr": round(float(p["hr"]), 1),
            "murmur_level": round(float(p["murmur"]), 3)}
    return Recording(rid, f"syn_p{patient:04d}", x.astype(np.float32), fs, cls, ann, meta)


def generate_recordings(n: int, seed: int = 0, fs: int = NATIVE_RATE):
    """Yield ``n`` synthetic recordings (deterministic by ``seed``; recording i only depends on (seed, i))."""
    for i in range(int(n)):
        yield generate_recording(i, seed, fs)


if __name__ == "__main__":  # throughput: python -m pahcl.data.synthetic
    import time

    t, c = time.perf_counter(), time.process_time()
    recs = list(generate_recordings(DEFAULT_NUM_RECORDINGS))
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    cyc = sum(int((r.annotations[:, 2] == 4).sum()) for r in recs)
    print(f"{len(recs)} recordings, {cyc} cycles: {cyc / wall:.0f} cycles/s wall, {cyc / cpu:.0f} cycles per CPU-second")
