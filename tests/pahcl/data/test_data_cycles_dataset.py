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


def test_split_train_val_test(data_cfg):
    from pahcl.data import load_cycles, split_train_val_test

    cs = load_cycles("synthetic:40", data_cfg, cache_dir=None, log=None)
    g = cs.table["group"].to_numpy()
    tr, va, te = split_train_val_test(cs, 0.25, 0.25, seed=3, log=lambda m: None)
    # three disjoint sets of whole groups covering every cycle
    assert not (set(g[tr]) & set(g[va])) and not (set(g[tr]) & set(g[te])) and not (set(g[va]) & set(g[te]))
    assert np.array_equal(np.sort(np.r_[tr, va, te]), np.arange(len(cs)))
    n = cs.table["group"].nunique()
    assert len(set(g[te])) == round(0.25 * n) and len(set(g[va])) == round(0.25 * (n - len(set(g[te]))))
    again = split_train_val_test(cs, 0.25, 0.25, seed=3, log=lambda m: None)
    assert all(np.array_equal(a, b) for a, b in zip((tr, va, te), again))  # deterministic by seed
    others = [split_train_val_test(cs, 0.25, 0.25, seed=s, log=lambda m: None)[2] for s in range(4, 8)]
    assert any(not np.array_equal(te, o) for o in others)  # the seed chooses the test groups
    # test_fraction 0: exactly the two-way split, test empty
    tr0, va0, te0 = split_train_val_test(cs, 0.25, 0.0, seed=3, log=lambda m: None)
    ref = split_by_group(cs, 0.25, 3, log=lambda m: None)
    assert np.array_equal(tr0, ref[0]) and np.array_equal(va0, ref[1]) and len(te0) == 0


def test_prepare_data_keeps_the_test_side_out(data_cfg):
    from pahcl.config import load_config
    from pahcl.train import prepare_data

    cfg = load_config(preset="tiny", overrides={"data.test_fraction": 0.25})
    tr, va, te = prepare_data(cfg, "synthetic:40", log=lambda m: None, with_test=True)
    assert len(te) and not set(te.table["recording_id"]) & (set(tr.table["recording_id"]) | set(va.table["recording_id"]))
    tr2, va2 = prepare_data(cfg, "synthetic:40", log=lambda m: None)
    assert tr2.table["recording_id"].tolist() == tr.table["recording_id"].tolist() and len(va2) == len(va)


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


def _toy_cycles(groups, labels):
    """A CycleSet of one 8-sample cycle per (group, label) row: enough for split tests."""
    import pandas as pd

    from pahcl.data.cycles import CycleSet

    n = len(groups)
    table = pd.DataFrame({"recording_id": [f"r{i}" for i in range(n)], "group": groups, "label": labels})
    return CycleSet(np.zeros((n, 8), np.float32), np.zeros((n, 5), np.int64), table, 1000)


def test_split_by_group_is_stratified_by_label():
    # 40 groups: 30 of label A, 10 of B (2 cycles each); 25 % validation -> 10 groups: 7-8 A and 2-3 B
    groups = [f"g{i}" for i in range(40) for _ in range(2)]
    labels = ["A" if i < 30 else "B" for i in range(40) for _ in range(2)]
    cs = _toy_cycles(groups, labels)
    for seed in range(5):
        tr, va = split_by_group(cs, 0.25, seed)
        val_groups = set(np.asarray(groups)[va])
        n_b = sum(int(g[1:]) >= 30 for g in val_groups)
        assert len(val_groups) == 10 and n_b in (2, 3), (seed, n_b)
        assert not val_groups & set(np.asarray(groups)[tr])
    # seeds still change which groups are drawn
    assert len({tuple(split_by_group(cs, 0.25, s)[1]) for s in range(5)}) > 1


def test_split_keeps_every_label_in_training_where_possible():
    # 4 groups labelled X, Y, Y, Z (circor_tiny's shape): the only validation group that leaves every label in
    # training is one of the two Y groups, whatever the seed
    cs = _toy_cycles(["p1", "p2", "p3", "p4"], ["X", "Y", "Y", "Z"])
    for seed in range(10):
        tr, va = split_by_group(cs, 0.2, seed)
        assert set(cs.table["label"][va]) == {"Y"} and set(cs.table["label"][tr]) == {"X", "Y", "Z"}


def test_split_reports_a_validation_label_absent_from_training():
    cs = _toy_cycles(["p1", "p2", "p3"], ["X", "Y", "Z"])  # one group per label: impossible to keep all
    said = []
    tr, va = split_by_group(cs, 0.3, 0, log=said.append)
    (val_label,) = set(cs.table["label"][va])
    assert len(said) == 1 and f"label(s) {val_label} appear in validation" in said[0] and "not in training" in said[0]
    with pytest.warns(UserWarning, match="not in training"):
        split_by_group(cs, 0.3, 0)
    said.clear()
    split_by_group(_toy_cycles(["p1", "p2", "p3", "p4"], ["X", "Y", "Y", "Z"]), 0.2, 0, log=said.append)
    assert said == []


def test_split_on_circor_tiny_validates_a_label_seen_in_training(shared_data, data_cfg):
    # seed 42 used to put the only Unknown patient in validation (val/knn_acc 0 for every trial)
    cs = load_cycles(f"circor:{shared_data / 'circor_tiny'}", data_cfg, log=None)
    said = []
    tr, va = split_by_group(cs, 0.2, 42, log=said.append)
    assert said == [] and set(cs.table["label"][va]) <= set(cs.table["label"][tr])
    assert set(cs.table["label"][tr]) == {"Present", "Absent", "Unknown"}


def _aug(**kw):
    base = dict(prob_time_shift=0.0, prob_amplitude_scale=0.0, gaussian_noise_std=0.0)
    return dataclasses.replace(AugmentationConfig(), **{**base, **kw})


def test_physiological_augmentations_do_what_they_name():
    L, sr = 5000, 5000
    t = np.arange(L) / sr
    wave = (np.sin(2 * np.pi * 20 * t) + np.sin(2 * np.pi * 350 * t)).astype(np.float32)
    wave[4000:] = 0
    b = np.array([0, 500, 2000, 2500, 4000])
    rng = np.random.default_rng(0)
    # time stretch: bounds scale by r and the content follows them
    v, vb, _ = augment(wave, b, _aug(prob_time_stretch=1.0, time_stretch_range=[1.1, 1.1]), rng, sr)
    assert np.array_equal(vb, [0, 550, 2200, 2750, 4400])
    assert np.allclose(v[::11][:300], wave[::10][:300], atol=1e-4)
    # gain per substructure: each span times one factor in the range
    v, vb, _ = augment(wave, b, _aug(prob_sub_gain=1.0, sub_gain_range=[0.5, 1.5]), rng, sr)
    ratios = [v[lo:hi][np.abs(wave[lo:hi]) > 0.1] / wave[lo:hi][np.abs(wave[lo:hi]) > 0.1] for lo, hi in zip(b, b[1:])]
    assert all(np.allclose(r, r[0], atol=1e-5) and 0.5 <= r[0] <= 1.5 for r in ratios)
    assert len({round(float(r[0]), 4) for r in ratios}) == 4
    # band limit: one of the two tones is removed (low-pass below 350 Hz or high-pass above 20 Hz)
    spec = lambda x: np.abs(np.fft.rfft(x[:4000]))  # noqa: E731
    kept = []
    for seed in range(8):
        v, _, _ = augment(wave, b, _aug(prob_band_limit=1.0), np.random.default_rng(seed), sr)
        s = spec(v)
        kept.append((bool(s[280] > 100), bool(s[16] > 100)))  # 350 Hz, 20 Hz (1.25 Hz bins)
    assert (True, False) in kept and (False, True) in kept
    with pytest.raises(ValueError, match="needs the sample rate"):
        augment(wave, b, _aug(prob_band_limit=1.0), rng)
    # noise at an SNR: the measured SNR over the cycle span is the drawn one
    v, _, _ = augment(wave, b, _aug(prob_snr_noise=1.0, snr_db_range=[10.0, 10.0]), rng, sr)
    noise = v[:4000] - wave[:4000]
    assert 10 * np.log10(np.mean(wave[:4000] ** 2) / np.mean(noise ** 2)) == pytest.approx(10.0, abs=0.3)


def test_defaults_draw_nothing_new_and_other_cycle_positive(small_cycles):
    # all new probabilities at 0: the same random stream, so the same views as before these keys existed
    aug = AugmentationConfig()
    a = augment(small_cycles.waves[0], small_cycles.bounds[0], aug, np.random.default_rng(5), small_cycles.sample_rate)
    rng = np.random.default_rng(5)
    assert rng.random() == pytest.approx(np.random.default_rng(5).random())
    b = augment(small_cycles.waves[0], small_cycles.bounds[0], aug, np.random.default_rng(5))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # prob_other_cycle = 1: view 2 comes from another cycle of the same recording
    aug = _aug(prob_other_cycle=1.0)
    ds = ContrastiveCycleDataset(small_cycles, aug, seed=0)
    rid = small_cycles.table["recording_id"].to_numpy()
    for i in range(0, len(small_cycles), 7):
        (w1, _, _), (w2, _, _) = ds.views(i)
        assert np.array_equal(w1, small_cycles.waves[i])
        j = [k for k in range(len(small_cycles)) if np.array_equal(small_cycles.waves[k], w2)]
        assert j and j[0] != i and rid[j[0]] == rid[i]
