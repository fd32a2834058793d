"""load_cycles windows + cache, split_by_group, ContrastiveCycleDataset views and boundaries."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
import torch

from pahcl.config import AugmentationConfig
from pahcl.data.cycles import load_cycles, split_by_group
from pahcl.data.dataset import ContrastiveCycleDataset, augment


def test_cycle_windows(small_cycles, data_cfg):
    cs = small_cycles
    L = int(round(data_cfg.segment_duration * data_cfg.sample_rate))
    assert cs.waves.shape == (len(cs), L) and cs.waves.dtype == np.float32
    assert cs.bounds.shape == (len(cs), 5) and cs.bounds.dtype == np.int64
    assert (cs.bounds[:, 0] == 0).all() and (np.diff(cs.bounds, axis=1) >= 0).all() and (cs.bounds <= L).all()
    assert list(cs.table.columns[:6]) == ["recording_id", "group", "label", "cycle_index", "start_sample", "source"]
    assert (cs.table["source"] == "annotations").all() and len(cs.table) == len(cs)
    sub = cs.subset(np.array([3, 1]))
    assert np.array_equal(sub.waves[1], cs.waves[1]) and sub.table.iloc[0]["cycle_index"] == cs.table.iloc[3]["cycle_index"]


def test_max_cycles_per_recording(data_cfg):
    cfg = dataclasses.replace(data_cfg, max_cycles_per_recording=3)
    cs = load_cycles("synthetic:4", cfg, log=None)
    assert len(cs) == 12 and cs.table.groupby("recording_id").size().max() == 3


def test_cache_hit_and_miss(tmp_path, data_cfg):
    a = load_cycles("synthetic:4", data_cfg, cache_dir=tmp_path, log=None)
    b = load_cycles("synthetic:4", data_cfg, cache_dir=tmp_path, log=None)
    assert (a.info["cache"], b.info["cache"]) == ("miss", "hit")
    assert np.array_equal(a.waves, b.waves) and np.array_equal(a.bounds, b.bounds)
    assert a.table.astype(str).equals(b.table.astype(str))
    c = load_cycles("synthetic:4", dataclasses.replace(data_cfg, bandpass_low=30.0), cache_dir=tmp_path, log=None)
    assert c.info["cache"] == "miss" and c.info["cache_path"] != a.info["cache_path"]
    d = load_cycles("synthetic:4", dataclasses.replace(data_cfg, val_fraction=0.5), cache_dir=tmp_path, log=None)
    assert d.info["cache"] == "hit"  # splitting does not change cycles


def test_cache_key_sees_file_changes(tmp_path, data_cfg):
    from data_helpers import pcg_like, write_wav

    src, cache = tmp_path / "src", tmp_path / "cache"
    write_wav(src / "a.wav", pcg_like(4, 4000), 4000)
    assert load_cycles(f"wav:{src}", data_cfg, cache_dir=cache, log=None).info["cache"] == "miss"
    write_wav(src / "b.wav", pcg_like(4, 4000, seed=3), 4000)
    assert load_cycles(f"wav:{src}", data_cfg, cache_dir=cache, log=None).info["cache"] == "miss"


def test_concurrent_builds_are_safe(tmp_path, data_cfg):
    out, errors = [], []

    def run():
        try:
            out.append(load_cycles("synthetic:2", data_cfg, cache_dir=tmp_path, log=None))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(out) == 3
    assert [p.name for p in tmp_path.iterdir()] == [p.name for p in tmp_path.glob("cycles-*")]  # no temp left
    assert len(list(tmp_path.glob("cycles-*"))) == 1
    assert all(np.array_equal(o.waves, out[0].waves) for o in out)


def test_split_by_group(small_cycles):
    tr, va = split_by_group(small_cycles, 0.34, seed=0)
    g = small_cycles.table["group"].to_numpy()
    assert len(set(g[tr]) & set(g[va])) == 0 and len(tr) + len(va) == len(small_cycles)
    assert np.array_equal(np.sort(np.r_[tr, va]), np.arange(len(small_cycles)))
    tr2, va2 = split_by_group(small_cycles, 0.34, seed=0)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    # few groups: still at least one group on each side
    tr, va = split_by_group(small_cycles, 0.01, seed=1)
    assert len(set(g[va])) == 1 and len(set(g[tr])) == 2
    tr, va = split_by_group(small_cycles, 0.99, seed=1)
    assert len(set(g[tr])) == 1


def test_split_one_group_errors(small_cycles):
    one = small_cycles.subset(np.flatnonzero(small_cycles.table["group"] == small_cycles.table["group"][0]))
    with pytest.raises(ValueError, match="at least 2 groups"):
        split_by_group(one, 0.2, 0)


def test_augment_shifts_boundaries_exactly():
    L = 1000
    wave = np.arange(L, dtype=np.float32)
    bounds = np.array([0, 100, 400, 500, 950])
    aug = AugmentationConfig(time_shift_max=0.1, amplitude_scale_range=[1.0, 1.0], gaussian_noise_std=0.0,
                             prob_time_shift=1.0, prob_amplitude_scale=0.0)
    seen = set()
    for seed in range(40):
        w, b, info = augment(wave, bounds, aug, np.random.default_rng(seed))
        s = info["shift"]
        seen.add(np.sign(s))
        assert abs(s) <= 100
        assert np.array_equal(b, np.clip(bounds + s, 0, L))
        if s > 0:
            assert np.array_equal(w[s:], wave[: L - s]) and (w[:s] == 0).all()
        elif s < 0:
            assert np.array_equal(w[: L + s], wave[-s:]) and (w[L + s :] == 0).all()
    assert {-1, 1} <= seen


def test_augment_scale_noise_and_no_op():
    wave = np.ones(500, np.float32)
    b = np.array([0, 50, 200, 260, 480])
    off = AugmentationConfig(time_shift_max=0.0, gaussian_noise_std=0.0, prob_time_shift=0.0, prob_amplitude_scale=0.0)
    w, bb, info = augment(wave, b, off, np.random.default_rng(0))
    assert np.array_equal(w, wave) and np.array_equal(bb, b) and w is not wave
    sc = AugmentationConfig(amplitude_scale_range=[2.0, 2.0], gaussian_noise_std=0.0, prob_amplitude_scale=1.0,
                            prob_time_shift=0.0)
    w, _, _ = augment(wave, b, sc, np.random.default_rng(0))
    assert np.allclose(w, 2.0)
    nz = AugmentationConfig(gaussian_noise_std=0.5, prob_time_shift=0.0, prob_amplitude_scale=0.0)
    w, _, _ = augment(wave, b, nz, np.random.default_rng(0))
    assert 0.4 < (w - 1).std() < 0.6 and w.dtype == np.float32


def test_dataset_items_deterministic_and_epoch_dependent(small_cycles):
    aug = AugmentationConfig(prob_time_shift=1.0, prob_amplitude_scale=1.0)
    ds = ContrastiveCycleDataset(small_cycles, aug, seed=3)
    it = ds[5]
    L = small_cycles.window
    assert it["view1"].shape == (1, L) and it["view1"].dtype == torch.float32 and it["bounds1"].dtype == torch.int64
    assert it["index"] == 5 and not torch.equal(it["view1"], it["view2"])
    again = ContrastiveCycleDataset(small_cycles, aug, seed=3)[5]
    assert all(torch.equal(it[k], again[k]) for k in ("view1", "view2", "bounds1", "bounds2"))
    ds.set_epoch(1)
    assert not torch.equal(ds[5]["view1"], it["view1"])


def test_dataset_independent_of_worker_count(small_cycles):
    ds = ContrastiveCycleDataset(small_cycles.subset(np.arange(8)), AugmentationConfig(), seed=0)
    ds.set_epoch(2)
    batches = []
    for workers in (0, 2):
        dl = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False, num_workers=workers)
        batches.append(torch.cat([b["view1"] for b in dl]))
    assert torch.equal(batches[0], batches[1])


def test_window_holds_the_cycle_only():
    from pahcl.data.cycles import cycle_window
    from pahcl.data.types import Cycle

    x = np.arange(1, 3001, dtype=np.float32)
    w, b = cycle_window(x, Cycle(100, 200, 400, 500, 900), 1000)  # short cycle: zero-padded
    assert np.array_equal(w[:800], x[100:900]) and (w[800:] == 0).all()
    assert b.tolist() == [0, 100, 300, 400, 800]
    w, b = cycle_window(x, Cycle(100, 300, 700, 900, 1600), 1000)  # long cycle: cropped, bounds clipped
    assert np.array_equal(w, x[100:1100]) and b.tolist() == [0, 200, 600, 800, 1000]
    w, b = cycle_window(x, Cycle(2500, 2600, 2800, 2900, 3000), 1000)  # recording end
    assert np.array_equal(w[:500], x[2500:]) and (w[500:] == 0).all()
