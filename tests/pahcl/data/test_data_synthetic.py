"""Synthetic generator: determinism, classes, annotations, size of the default set."""
from __future__ import annotations

import numpy as np

from pahcl.data.readers import read_recordings
from pahcl.data.segmentation import from_annotations
from pahcl.data.synthetic import CLASSES, DEFAULT_NUM_RECORDINGS, generate_recording


def test_deterministic_by_seed():
    a, b, c = generate_recording(7, seed=1), generate_recording(7, seed=1), generate_recording(7, seed=2)
    assert np.array_equal(a.signal, b.signal) and np.array_equal(a.annotations, b.annotations)
    assert not np.array_equal(a.signal[: len(c.signal)], c.signal[: len(a.signal)])


def test_prefix_property_and_groups():
    small = read_recordings("synthetic:8")
    assert [r.id for r in small] == [f"syn_p{i // 4:04d}_r{i % 4}" for i in range(8)]
    assert len({r.group for r in small}) == 2
    assert np.array_equal(small[5].signal, generate_recording(5).signal)


def test_default_set_size_classes_and_exact_cycles():
    recs = read_recordings("synthetic")
    assert len(recs) == DEFAULT_NUM_RECORDINGS
    assert {r.label for r in recs} == set(CLASSES)
    n_cycles = 0
    for r in recs:
        assert r.signal.dtype == np.float32 and np.isfinite(r.signal).all()
        cyc = from_annotations(r.annotations, r.sample_rate, len(r.signal))
        assert len(cyc) == int((r.annotations[:, 2] == 4).sum()) >= 8
        for c in cyc:
            t = c.as_tuple()
            assert all(b > a for a, b in zip(t, t[1:]))
            assert 0.3 * r.sample_rate < c.length < 1.4 * r.sample_rate  # 43 .. 200 bpm
        n_cycles += len(cyc)
    assert 900 <= n_cycles <= 1500  # "a few thousand cycles at most"
    groups = {}
    for r in recs:
        groups.setdefault(r.group, set()).add(r.label)
    assert all(len(v) == 1 for v in groups.values()) and len(groups) == DEFAULT_NUM_RECORDINGS // 4
