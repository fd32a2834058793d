"""data.segment_unannotated: cycles from the unannotated stretches of annotated recordings; the gap-aware S1/S2
scoring of bench/segmentation_f1.py; the adaptive (weighted) trained emission model."""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest

from pahcl.data.preprocess import preprocess_signal
from pahcl.data.segmentation import from_annotations
from pahcl.data.segmentation_gaps import unannotated_spans, with_unannotated
from pahcl.data.synthetic import generate_recording
from pahcl.data.types import Cycle

ROOT = Path(__file__).resolve().parents[3]


def _bench():
    spec = importlib.util.spec_from_file_location("segf1", ROOT / "bench" / "segmentation_f1.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_unannotated_spans():
    cycles = [Cycle(100, 110, 120, 130, 200), Cycle(200, 210, 220, 230, 300), Cycle(700, 710, 720, 730, 800)]
    assert unannotated_spans(cycles, 1000, 50) == [(0, 100), (300, 700), (800, 1000)]
    assert unannotated_spans(cycles, 1000, 150) == [(300, 700), (800, 1000)]
    assert unannotated_spans([], 10, 1) == [(0, 10)]


def test_with_unannotated_finds_the_hidden_cycles(data_cfg):
    """Annotations kept for the first third of a synthetic recording only: the rest is segmented automatically,
    its S1 onsets land near the hidden true ones, and the annotated cycles are kept as they were."""
    rec = generate_recording(0)
    sr = data_cfg.sample_rate
    x = preprocess_signal(rec.signal, rec.sample_rate, data_cfg)
    truth = from_annotations(rec.annotations, sr, len(x))
    cut = len(x) / sr / 3
    kept = from_annotations(rec.annotations[rec.annotations[:, 1] <= cut], sr, len(x))
    assert 0 < len(kept) < len(truth)
    cycles, sources = with_unannotated(x, sr, kept, data_cfg.max_heart_rate_bpm)
    assert [c for c, s in zip(cycles, sources) if s == "annotations"] == kept
    auto = np.array([c.s1_onset for c, s in zip(cycles, sources) if s == "auto"])
    assert len(auto) >= 0.7 * (len(truth) - len(kept))
    assert all(a >= kept[-1].next_s1_onset for a in auto)
    true_s1 = np.array([c.s1_onset for c in truth])
    err = np.min(np.abs(auto[:, None] - true_s1[None, :]), axis=1) / sr
    assert np.median(err) < 0.05
    assert [c.s1_onset for c in cycles] == sorted(c.s1_onset for c in cycles)


def test_segment_unannotated_on_circor(shared_data, data_cfg):
    """Opt-in: more cycles, annotated ones unchanged and marked per cycle; off (the default): same as before,
    same cache key."""
    from pahcl.data.cycles import build_cycles, cache_key
    from pahcl.data.readers import parse_spec

    spec = f"circor:{shared_data / 'circor_tiny'}"
    off = build_cycles(spec, data_cfg, log=None)
    on_cfg = dataclasses.replace(data_cfg, segment_unannotated=True)
    on = build_cycles(spec, on_cfg, log=None)
    assert set(off.table["source"]) == {"annotations"}
    ann = on.table[on.table["source"] == "annotations"]
    assert len(ann) == len(off) and len(on) > 2 * len(off)
    assert set(on.table["source"]) == {"annotations", "auto"}
    assert ann["start_sample"].tolist() == off.table["start_sample"].tolist()
    s = parse_spec(spec)
    key_off, inputs = cache_key(s, data_cfg)
    assert "segment_unannotated" not in inputs["data"] and cache_key(s, on_cfg)[0] != key_off


def test_score_recording_leaves_out_unannotated_gaps():
    """Interior state-0 rows and the S1 / S2 rows touching them are not scored (gaps='exclude'): neither the
    annotated sounds nor the detections centred there; with gaps='count' they are scored."""
    B = _bench()
    ann = np.array([[0.0, 0.1, 1], [0.1, 0.3, 2], [0.3, 0.4, 3], [0.4, 0.8, 4], [0.8, 0.85, 1], [0.85, 2.0, 0],
                    [2.0, 2.1, 1], [2.1, 2.3, 2], [2.3, 2.4, 3], [2.4, 2.8, 4]])
    sr = 1000
    segs = [(0, 100, 1), (300, 400, 3), (870, 970, 1), (1500, 1600, 1), (2000, 2100, 1), (2300, 2400, 3)]
    assert B.score_recording(ann, segs, sr, 0.06)["S1"] == (1, 0, 0)  # only the S1 at 0-0.1 s is scored
    assert B.score_recording(ann, segs, sr, 0.06, gaps="count")["S1"] == (2, 2, 1)  # 0.92 s, 1.55 s FP; 0.825 s FN
    assert B.score_recording(ann, segs, sr, 0.06)["S2"] == (2, 0, 0)


def test_adaptive_emission_model_weight():
    from pahcl.config import DataConfig
    from pahcl.data.readers import read_recordings
    from pahcl.data.segmentation import segment_states
    from pahcl.data.springer import EmissionModel, training_frames

    cfg = DataConfig()
    recs = read_recordings("synthetic:4")
    xs = [preprocess_signal(r.signal, r.sample_rate, cfg) for r in recs]
    model = EmissionModel(weight=0.3).fit([training_frames(x, cfg.sample_rate, r.annotations)
                                           for x, r in zip(xs[:3], recs[:3])])
    B = _bench()
    tp, fp, fn = B.score_recording(recs[3].annotations, segment_states(xs[3], cfg.sample_rate, emission_model=model),
                                   cfg.sample_rate, 0.06)["S1"]
    assert B.f1(tp, fp, fn)[2] >= 0.9
    with pytest.raises(ValueError, match="weight"):
        EmissionModel(weight=0.0)


def test_nested_selection_uses_the_other_patients_only():
    """bench/segmentation_f1.py --select: for each held-out patient the (C, weight) is chosen by an inner
    leave-one-patient-out on the other patients; the held-out patient's recordings are never decoded for it."""
    from pahcl.config import DataConfig
    from pahcl.data.readers import read_recordings

    B = _bench()
    recs = read_recordings("synthetic:12")  # 3 patients x 4 recordings
    lines: list[str] = []
    models = B.lopo_models(recs, DataConfig(), 0, 1.0, select=True, log=lines.append)
    assert sorted(models) == sorted({r.group for r in recs})
    chosen = [ln for ln in lines if ln.startswith("held-out patient")]
    assert len(chosen) == 3 and len([ln for ln in lines if "inner" in ln]) == 3 * len(B.GRID)
    assert all((m.C, m.weight) in B.GRID for m in models.values())


def test_bench_cli_refuses_weight_without_trained_lopo(capsys):
    B = _bench()
    for argv, msg in ((["--select"], "add --trained-lopo"), (["--trained-lopo", "--weight", "0"], "--weight must be > 0")):
        with pytest.raises(SystemExit) as e:
            B.main(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err
