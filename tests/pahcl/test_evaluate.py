"""Evaluation functions on hand-made features with known answers, plus the logspec baseline on Yaseen."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pahcl.evaluate import (
    align_uniform,
    choose_probe_c,
    classification_metrics,
    evaluate_features,
    extract_features,
    knn_predict,
    knn_scores,
    linear_probe,
    logspec_features,
    pcg_features,
    recording_level,
    recording_numbers,
    split_by_index,
)

YASEEN = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "yaseen2018"


def _clusters(n_per=30, d=8, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.eye(d)[:4] * 5
    x = np.concatenate([c + rng.normal(0, 0.3, (n_per, d)) for c in centers])
    y = np.repeat(np.arange(4), n_per)
    return x.astype(np.float32), y


def test_knn_weighted_vote_known_answer():
    bank = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2])
    q = np.array([[1, 0.05], [0.05, 1], [-1, 0.01]], dtype=np.float32)
    assert knn_predict(bank, labels, q, 3, k=2, temperature=0.07).tolist() == [0, 1, 2]
    s = knn_scores(bank, labels, q, 3, k=5, temperature=0.07)
    assert np.allclose(s.sum(1), 1.0)
    # votes are exp(sim / tau): check one row against a hand computation
    b = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    qq = q[0] / np.linalg.norm(q[0])
    w = np.exp(b @ qq / 0.07)
    expect = np.array([w[:2].sum(), w[2:4].sum(), w[4]]) / w.sum()
    assert np.allclose(s[0], expect, atol=1e-5)


def test_knn_is_cosine_scale_invariant():
    x, y = _clusters()
    a = knn_scores(x, y, x[:10] * 100, 4, k=5)
    b = knn_scores(x * 0.01, y, x[:10], 4, k=5)
    assert np.allclose(a, b, atol=1e-5)


def test_knn_and_linear_on_separable_clusters():
    x, y = _clusters(seed=1)
    xt, yt = _clusters(seed=2)
    for protocol in ["knn", "linear"]:
        m = evaluate_features(x, y, xt, yt, protocol)
        assert m["accuracy"] == 1.0 and m["balanced_accuracy"] == 1.0 and m["n"] == len(yt)
    proba, seen = linear_probe(x, y, xt, seed=0)
    assert proba.shape == (len(xt), 4) and list(seen) == [0, 1, 2, 3]
    p2, _ = linear_probe(x, y, xt, seed=0)
    assert np.array_equal(proba, p2)  # deterministic


def test_probe_c_by_grouped_cv_on_the_training_side():
    x, y = _clusters(seed=1)
    groups = np.arange(len(y)) // 3  # 10 "recordings" of 3 cycles per class
    C, cv = choose_probe_c(x, y, groups=groups, seed=0)
    assert set(cv) == {0.001, 0.01, 0.1, 1.0, 10.0} and all(v == 1.0 for v in cv.values())
    assert C == 0.001  # all tie: the strongest regularisation wins
    # noisy features: the chosen C is the one with the best mean fold accuracy
    rng = np.random.default_rng(0)
    xn = x + rng.normal(0, 3.0, x.shape).astype(np.float32)
    C, cv = choose_probe_c(xn, y, groups=groups, seed=0)
    assert cv[C] == max(cv.values())
    # one recording per class: nothing to cross-validate, C = 1 and no scores
    assert choose_probe_c(x[:8], np.array([0, 0, 1, 1, 2, 2, 3, 3]), groups=np.array([0, 0, 1, 1, 2, 2, 3, 3])) == (1.0, {})


def test_linear_probe_c_is_reported_and_validated():
    x, y = _clusters(seed=1)
    xt, yt = _clusters(seed=2)
    m = evaluate_features(x, y, xt, yt, "linear", rec_train=list(np.arange(len(y)) // 3))
    assert m["probe_c"] == 0.001 and set(m["probe_cv_acc"]) == {"0.001", "0.01", "0.1", "1.0", "10.0"}
    assert evaluate_features(x, y, xt, yt, "linear", probe_c=1.0)["probe_c"] == 1.0
    for bad in [0, -1.0, "auto", True]:
        with pytest.raises(ValueError, match=r"probe_c: .*allowed: 'cv' or a number > 0"):
            evaluate_features(x, y, xt, yt, "linear", probe_c=bad)


def test_metrics_known_answer():
    m = classification_metrics(np.array([0, 0, 0, 0, 1, 1]), np.array([0, 0, 0, 0, 0, 1]), ["a", "b"])
    assert m["accuracy"] == pytest.approx(5 / 6)
    assert m["per_class_recall"] == {"a": 1.0, "b": 0.5}
    assert m["balanced_accuracy"] == pytest.approx(0.75)


def test_recording_level_averages_scores():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    s, y, r = recording_level(scores, ["r2", "r2", "r1", "r1"], np.array([1, 1, 0, 0]))
    assert list(r) == ["r2", "r1"] and list(y) == [1, 0]
    assert np.allclose(s, [[0.55, 0.45], [0.45, 0.55]])


def test_align_uniform_known_values():
    z = torch.nn.functional.normalize(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    a, u = align_uniform(z, z)
    assert a == pytest.approx(0.0, abs=1e-12)
    same = torch.zeros(16, 4)
    same[:, 0] = 1
    a2, u2 = align_uniform(same, -same)  # antipodal positives: ||x - y||^2 = 4
    assert a2 == pytest.approx(4.0)
    assert u2 == pytest.approx(0.0, abs=1e-9)  # all points equal: log E exp(0) = 0
    assert u < -1.0  # spread-out points are more uniform (lower)


def test_split_by_index_by_trailing_number():
    table = pd.DataFrame({"recording_id": ["MR/New_MR_001", "MR/New_MR_001", "N/New_N_051", "N/New_N_050", "x"]})
    cyc = type("C", (), {"table": table})()
    assert recording_numbers(table["recording_id"]).tolist() == [1, 1, 51, 50, -1]
    tr, te = split_by_index(cyc, "1-50:51-100")
    assert tr.tolist() == [0, 1, 3] and te.tolist() == [2]
    with pytest.raises(ValueError):
        split_by_index(cyc, "1-60:50-100")


def test_extract_features_eval_mode_no_grad():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(10, 3)
            self.seen = []

        def embed(self, x):
            self.seen.append((self.training, torch.is_grad_enabled(), tuple(x.shape)))
            return self.lin(x[:, 0])

    m = M().train()
    f = extract_features(m, np.random.randn(7, 10).astype(np.float32), batch_size=4)
    assert f.shape == (7, 3) and m.training
    assert m.seen == [(False, False, (4, 1, 10)), (False, False, (3, 1, 10))]


def test_logspec_features_shape():
    sr = 2000
    t = np.arange(sr) / sr
    waves = np.stack([np.sin(2 * np.pi * 100 * t), np.sin(2 * np.pi * 400 * t)]).astype(np.float32)
    f = logspec_features(waves, sr, n_fft=256, max_hz=1000)
    assert f.shape[0] == 2 and f.shape[1] == 129
    assert f[0].argmax() != f[1].argmax()


def _toy_cycle(sr, f_s1, a_s1, a_sys, f_sys, length):
    """One synthetic cycle window [sr] with bounds: a tone burst S1 (f_s1, amplitude a_s1), a systolic
    'murmur' (f_sys, a_sys), S2 at 150 Hz amplitude 1, silent diastole, zero padding after ``length`` samples."""
    rng = np.random.default_rng(0)
    b = np.array([0, int(0.1 * sr), int(0.4 * sr), int(0.5 * sr), length])
    t = np.arange(sr) / sr
    w = 0.001 * rng.standard_normal(sr)
    w[b[0]:b[1]] += a_s1 * np.sin(2 * np.pi * f_s1 * t[b[0]:b[1]])
    w[b[1]:b[2]] += a_sys * np.sin(2 * np.pi * f_sys * t[b[1]:b[2]])
    w[b[2]:b[3]] += np.sin(2 * np.pi * 150 * t[b[2]:b[3]])
    w[length:] = 0
    return w.astype(np.float32), b


def test_pcg_features_measure_what_they_name():
    from pahcl.evaluate import PCG_BANDS_HZ

    sr = 5000
    nb = len(PCG_BANDS_HZ) + 5  # per-segment block: bands, log RMS, log peak, centroid, spread, crest
    quiet, q_b = _toy_cycle(sr, 60, 2.0, 0.0, 300, 4000)
    murmur, m_b = _toy_cycle(sr, 60, 2.0, 0.5, 250, 3000)
    f = pcg_features(np.stack([quiet, murmur]), np.stack([q_b, m_b]), sr)
    assert f.shape[0] == 2 and np.isfinite(f).all()
    s1, systole = f[:, nb:2 * nb], f[:, 2 * nb:3 * nb]
    # S1's energy is in its 50-100 Hz band; the murmur puts systolic energy into 200-300 Hz, and raises the
    # systolic level and spectral centroid
    assert s1[0, :len(PCG_BANDS_HZ)].argmax() == 1
    assert systole[1, :len(PCG_BANDS_HZ)].argmax() == 4 and systole[1, 7] > systole[0, 7] + 5
    assert systole[1, 9] * 100 == pytest.approx(250, abs=20)
    timing = f[:, 5 * nb:5 * nb + 7]
    assert timing[:, 0] == pytest.approx([0.8, 0.6]) and timing[:, 1] == pytest.approx([0.75, 1.0])
    assert timing[0, 2:6] == pytest.approx(np.diff(q_b) / 4000)
    contrasts = f[:, 5 * nb + 7:5 * nb + 11]
    assert contrasts[:, 0] == pytest.approx([np.log(2.0)] * 2, abs=0.05)  # S1 twice as loud as S2
    assert contrasts[1, 1] > contrasts[0, 1] + 5  # systole / S1 rises with the murmur
    # the zero padding after the cycle changes nothing: features use the cycle's own span
    padded = quiet.copy()
    padded[4000:] = 0
    assert np.allclose(pcg_features(padded[None], q_b[None], sr), f[:1], atol=1e-5)


@pytest.mark.skipif(not YASEEN.is_dir(), reason="shared Yaseen data not present")
def test_logspec_knn_on_yaseen_recording_level(tmp_path):
    from pahcl.config import load_config
    from pahcl.data import load_cycles

    cfg = load_config(preset="tiny")
    cycles = load_cycles(f"yaseen:{YASEEN}", cfg.data, cache_dir=tmp_path / "cache", log=lambda m: None)
    tr, te = split_by_index(cycles, "1-50:51-100")
    assert len(tr) > 0 and len(te) > 0
    train, test = cycles.subset(tr), cycles.subset(te)
    ftr = logspec_features(train.waves, train.sample_rate)
    fte = logspec_features(test.waves, test.sample_rate)
    m = evaluate_features(ftr, train.table["label"].tolist(), fte, test.table["label"].tolist(), "knn",
                          level="recording", rec_test=test.table["recording_id"].tolist(), k=20)
    assert m["n"] >= 150  # recordings on the test side (up to 200)
    assert m["accuracy"] > 0.5, m  # chance is 0.25


def test_cli_prints_one_json(tmp_path, capsys):
    import json

    from pahcl.config import load_config
    from pahcl.evaluate import main
    from pahcl.train import Trainer, prepare_data

    cfg = load_config(preset="tiny", overrides={"data.sample_rate": 2000, "model.queue_size": 32,
                                                 "training.device": "cpu"})
    train, _ = prepare_data(cfg, "synthetic:8", cache_dir=tmp_path / "cache", log=lambda m: None)
    ckpt = Trainer(cfg, train, None, log=None).save_checkpoint(tmp_path / "c.pt")
    common = ["--train", "synthetic:8", "--test", "synthetic:8", "--cache-dir", str(tmp_path / "cache")]
    for extra, features in [(["--checkpoint", str(ckpt)], "pretrained"),
                            (["--checkpoint", str(ckpt), "--random-init", "--protocol", "linear"], "random_init"),
                            (["--baseline", "logspec", "--checkpoint", str(ckpt), "--level", "recording"], "logspec"),
                            (["--baseline", "pcg", "--protocol", "linear", "--level", "recording"], "pcg")]:
        assert main(common + extra) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        assert len(lines) == 1
        res = json.loads(lines[0])
        assert res["features"] == features and 0 <= res["accuracy"] <= 1
        assert {"accuracy", "balanced_accuracy", "per_class_recall", "n", "protocol", "level"} <= set(res)
    with pytest.raises(SystemExit):
        main(common + ["--baseline", "logspec", "--protocol", "linear", "--probe-c", "zero"])
    assert "--probe-c: 'zero'; allowed: cv or a number > 0" in capsys.readouterr().err


def test_cli_smoke_test_and_missing_specs(tmp_path, capsys, monkeypatch):
    import json

    from pahcl.evaluate import main

    monkeypatch.chdir(tmp_path)  # nothing is written; the smoke run needs no checkpoint and no data
    assert main(["--smoke-test"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["features"] == "random_init" and res["protocol"] == "knn" and res["n"] > 0
    assert res["embed_subs"] is False
    assert main(["--smoke-test", "--embed-subs"]) == 0  # the read-out is recorded as it ran
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["embed_subs"] is True
    with pytest.raises(SystemExit):
        main(["--smoke-test", "--embed-subs", "--baseline", "pcg"])
    assert "--embed-subs is a read-out of the encoder; --baseline pcg has none" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--protocol", "knn"])
    assert "--train and --test are required (KIND:PATH) unless --smoke-test" in capsys.readouterr().err


def test_cli_same_train_and_test_spec_is_warned_and_recorded(tmp_path, capsys, monkeypatch):
    """Issue 15 item 8: the same spec for --train and --test scored the training set against itself silently."""
    import json

    from pahcl.evaluate import main

    monkeypatch.chdir(tmp_path)
    assert main(["--smoke-test", "--train", "synthetic:8", "--test", "synthetic:8"]) == 0
    cap = capsys.readouterr()
    assert "WARNING: --train and --test are the same spec (synthetic:8)" in cap.err and "--split-by-index" in cap.err
    assert json.loads(cap.out.strip().splitlines()[-1])["test_is_train"] is True
    assert main(["--smoke-test", "--train", "synthetic:8", "--test", "synthetic:6"]) == 0
    cap = capsys.readouterr()
    assert "same spec" not in cap.err and json.loads(cap.out.strip().splitlines()[-1])["test_is_train"] is False


def test_knn_leave_group_out_never_uses_the_own_group():
    from pahcl.evaluate import knn_scores_leave_group_out

    rng = np.random.default_rng(0)
    f = rng.normal(size=(12, 4)) * 0.1
    y = np.array([0, 0, 0, 1, 1, 1] * 2)
    g = np.repeat(np.arange(4), 3)
    f[y == 0, 0] += 1
    f[y == 1, 1] += 1
    assert np.array_equal(knn_scores_leave_group_out(f, y, g, 2, k=3).argmax(1), y)
    # each cycle's nearest neighbours are its own group's: if they counted, relabelling group 0 as class 2
    # would be predicted for group 0; leave-group-out predicts it from group 2 (class 0) instead
    y2 = y.copy()
    y2[:3] = 2
    pred = knn_scores_leave_group_out(f, y2, g, 3, k=3).argmax(1)
    assert list(pred[:3]) == [0, 0, 0] and list(pred[6:9]) == [2, 2, 2]
    with pytest.raises(ValueError, match="at least 2 groups"):
        knn_scores_leave_group_out(f, y, np.zeros(12), 2)


class _Side:
    """A CycleSet stand-in for validation_metrics: waves [N, L] and the table's label and group columns."""

    def __init__(self, waves, labels, groups):
        self.waves, self.table = waves, pd.DataFrame({"label": labels, "group": groups})

    def __len__(self):
        return len(self.waves)


class _FirstSamples(torch.nn.Module):
    def embed(self, x, bounds=None):  # [B, 1, L] -> [B, 4]
        return x[:, 0, :4]


def test_validation_logo_knn_scores_every_patient_of_both_sides_against_the_others():
    from types import SimpleNamespace

    from pahcl.evaluate import knn_scores_leave_group_out, validation_metrics

    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 0, 1, 0, 1], 4)  # 6 patients of 4 cycles, one class each; the last 2 validate
    g = np.repeat(np.arange(6), 4).astype(str)
    waves = rng.normal(size=(24, 16)).astype(np.float32) * 0.05
    waves[np.arange(24), y] += 1.0
    waves[:4, :3] = [0.0, 1.0, 0.5]  # training patient 0 (class 0) looks like class 1: only a LOGO query sees it
    train, val = _Side(waves[:16], list(y[:16]), list(g[:16])), _Side(waves[16:], list(y[16:]), list(g[16:]))
    cfg = SimpleNamespace(evaluation=SimpleNamespace(batch_size=5, knn_k=3, knn_temperature=0.07))
    out = validation_metrics(_FirstSamples(), train, val, cfg)
    s = knn_scores_leave_group_out(waves[:, :4], y, g, 2, k=3, temperature=0.07)
    assert out["val/logo_knn_acc"] == pytest.approx(float(np.mean(s.argmax(1) == y)))
    assert out["val/logo_knn_acc"] == pytest.approx(20 / 24) and out["val/knn_acc"] == 1.0
    one = validation_metrics(_FirstSamples(), _Side(waves[:4], list(y[:4]), ["a"] * 4),
                             _Side(waves[4:8], list(y[4:8]), ["a"] * 4), cfg)
    assert "val/knn_acc" in one and "val/logo_knn_acc" not in one  # one patient: nobody to leave it out against


@pytest.mark.parametrize("kind", ["random_init", "logspec", "pcg"])
def test_frozen_features_are_z_scored_with_the_training_sides_statistics(kind):
    """Every feature set reaches kNN z-scored by the TRAINING side (docs/training.md E3): mean 0 and std 1 there
    (constant columns 0), the test side shifted and scaled by the same numbers, not by its own."""
    from pahcl.config import load_config
    from pahcl.data import load_cycles
    from pahcl.evaluate import extract_features, frozen_features, _build_model

    cfg = load_config(preset="tiny", overrides=["model.embed_pool=cycle", "model.embed_subs=true"])
    train, test = load_cycles("synthetic:8", cfg.data), load_cycles("synthetic:6", cfg.data)
    ftr, fte = frozen_features(kind, cfg, None, train, test, seed=3)
    sd = ftr.std(0)
    live = sd > 1e-6
    np.testing.assert_allclose(ftr.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(sd[live], 1.0, rtol=1e-3)
    if kind == "random_init":
        assert ftr.shape[1] == 5 * cfg.model.mamba_d_model  # cycle + S1, systole, S2, diastole
        raw_tr = extract_features(_build_model(cfg, None, True, 3), train)
        raw_te = extract_features(_build_model(cfg, None, True, 3), test)
        mu, s = raw_tr.mean(0), np.where(raw_tr.std(0) > 1e-12, raw_tr.std(0), 1.0)
        np.testing.assert_allclose(fte, (raw_te - mu) / s, rtol=1e-4, atol=1e-4)
