"""Readers on real files (circor_tiny, yaseen2018) and on small folders made in tmp_path."""
from __future__ import annotations

import numpy as np
import pytest

from pahcl.data.cycles import load_cycles
from pahcl.data.readers import (DataSpecError, NoUsableRecordingsError, SkipLog, allowed_kinds, parse_spec,
                                read_recordings)

from data_helpers import pcg_like, write_wav


def test_circor_reader(shared_data):
    skips = SkipLog()
    recs = read_recordings(f"circor:{shared_data / 'circor_tiny'}", skips)
    assert len(recs) == 13 and len(skips) == 0
    assert {r.group for r in recs} == {"85343", "85345", "85349", "9983"}
    r = next(r for r in recs if r.id == "85343_AV")
    assert r.sample_rate == 4000 and r.signal.dtype == np.float32 and r.signal.ndim == 1
    assert r.label == "Present" and r.meta["outcome"] == "Abnormal" and r.meta["site"] == "AV"
    assert r.annotations.shape[1] == 3 and set(np.unique(r.annotations[:, 2])) <= {0, 1, 2, 3, 4}
    assert all(r.label in {"Present", "Absent", "Unknown"} for r in recs)


def test_yaseen_reader(shared_data):
    recs = read_recordings(f"yaseen:{shared_data / 'yaseen2018'}")
    assert len(recs) == 400
    assert {r.label for r in recs} == {"N", "MR", "MS", "MVP"}
    assert all(r.group == r.id and r.annotations is None for r in recs)
    assert recs[0].id.count("/") == 1 and recs[0].sample_rate == 8000


def test_shortest_yaseen_recording_yields_a_cycle(shared_data, tmp_path, data_cfg):
    # New_MS_006 is 1.16 s, the shortest Yaseen file: it still holds one complete cycle.
    (tmp_path / "MS").mkdir()
    for name in ("New_MS_006.wav", "New_MS_013.wav"):
        (tmp_path / "MS" / name).symlink_to(shared_data / "yaseen2018" / "MS" / name)
    cs = load_cycles(f"yaseen:{tmp_path}", data_cfg, log=None)
    assert set(cs.table["recording_id"]) == {"MS/New_MS_006", "MS/New_MS_013"}
    assert (cs.table["source"] == "auto").all()


def test_wav_reader_labels_from_subfolders(tmp_path):
    write_wav(tmp_path / "normal" / "a.wav", pcg_like(3, 4000), 4000)
    write_wav(tmp_path / "murmur" / "b.wav", pcg_like(3, 2000, seed=5), 2000)
    write_wav(tmp_path / "c.wav", pcg_like(3, 4000), 4000)
    recs = read_recordings(f"wav:{tmp_path}")
    got = {r.id: (r.label, r.group, r.sample_rate) for r in recs}
    assert got == {"murmur/b": ("murmur", "murmur/b", 2000), "normal/a": ("normal", "normal/a", 4000), "c": (None, "c", 4000)}


def test_physionet2016_reader(tmp_path):
    for folder, rows in {"training-a": [("a0001", "1"), ("a0002", "-1")], "training-b": [("b0001", "-1"), ("b0009", "1")]}.items():
        for name, _ in rows[:2]:
            if name != "b0009":  # listed but missing -> skipped with a reason
                write_wav(tmp_path / folder / f"{name}.wav", pcg_like(3, 2000), 2000)
        (tmp_path / folder / "REFERENCE.csv").write_text("".join(f"{n},{v}\n" for n, v in rows))
    skips = SkipLog()
    recs = read_recordings(f"physionet2016:{tmp_path}", skips)
    assert {r.id: r.label for r in recs} == {"a0001": "abnormal", "a0002": "normal", "b0001": "normal"}
    assert skips.counts() == {"missing file": 1}


@pytest.fixture()
def bad_folder(tmp_path):
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "notawav.wav").write_bytes(b"this is not a RIFF file at all" * 10)
    (d / "empty.wav").write_bytes(b"")
    write_wav(d / "silent.wav", np.zeros(4000 * 3, np.float32), 4000)
    write_wav(d / "stereo.wav", np.stack([pcg_like(3, 4000)] * 2, axis=1), 4000)
    write_wav(d / "short.wav", pcg_like(0.3, 4000), 4000)
    write_wav(d / "good1.wav", pcg_like(4, 4000, seed=1), 4000)
    write_wav(d / "good2.wav", pcg_like(4, 4000, seed=2), 4000)
    return d


def test_bad_files_are_skipped_and_counted(bad_folder, data_cfg):
    lines = []
    cs = load_cycles(f"wav:{bad_folder}", data_cfg, log=lines.append)
    assert set(cs.table["recording_id"]) == {"good1", "good2"}
    assert cs.info["skip_counts"] == {"empty file": 1, "multi-channel": 1, "silent": 1, "too short": 1, "unreadable": 1}
    skipped = {s["item"]: s["reason"] for s in cs.info["skips"]}
    assert skipped == {"empty": "empty file", "notawav": "unreadable", "silent": "silent", "stereo": "multi-channel",
                       "short": "too short"}
    assert sum(line.startswith("skip ") for line in lines) == 5  # one line each


def test_channel_rule_accepts_stereo_when_asked(bad_folder):
    recs = read_recordings(f"wav:{bad_folder}?channel=mean")
    assert "stereo" in {r.id for r in recs}
    recs = read_recordings(f"wav:{bad_folder}?channel=1")
    assert "stereo" in {r.id for r in recs}


def test_all_bad_folder_raises(tmp_path, data_cfg):
    (tmp_path / "x.wav").write_bytes(b"junk")
    (tmp_path / "y.wav").write_bytes(b"")
    with pytest.raises(NoUsableRecordingsError, match="no usable recordings"):
        read_recordings(f"wav:{tmp_path}")
    with pytest.raises(NoUsableRecordingsError, match="no usable recordings"):
        load_cycles(f"wav:{tmp_path}", data_cfg, log=None)


@pytest.mark.parametrize("spec, msg", [
    ("", "empty"),
    ("mp3:/tmp", "unknown kind"),
    ("nocolon", "unknown kind"),
    ("wav:", "needs a folder"),
    ("wav:/definitely/not/here", "does not exist"),
    ("synthetic:abc", "positive integer"),
    ("synthetic:0", "positive integer"),
    ("synthetic:4?color=red", "bad option"),
    ("wav:.?channel=left", "channel must be"),
])
def test_bad_specs(spec, msg):
    with pytest.raises(DataSpecError, match=msg) as e:
        parse_spec(spec)
    if "unknown kind" in msg:
        for kind in allowed_kinds():
            assert kind in str(e.value)


def test_good_specs(tmp_path):
    assert parse_spec("synthetic").kind == "synthetic"
    s = parse_spec("synthetic:16?seed=3")
    assert (s.arg, s.opts) == ("16", {"seed": "3"})
    s = parse_spec(f"wav:{tmp_path}?channel=mean")
    assert s.path == tmp_path.resolve() and s.opts == {"channel": "mean"}
