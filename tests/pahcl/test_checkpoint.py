import io
import os

import pytest
import torch

import pahcl.checkpoint as ck
from pahcl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


def _state(v=1.0):
    return {"model": {"w": torch.full((3, 3), v)}, "epoch": 2, "rng": {"python": [1, 2, 3], "gauss": None},
            "config": {"seed": 42, "training": {"learning_rate": 1e-3}}}


def test_roundtrip(tmp_path):
    p = save_checkpoint(_state(), tmp_path / "c.pt")
    s = load_checkpoint(p)
    assert torch.equal(s["model"]["w"], torch.ones(3, 3)) and s["epoch"] == 2
    assert s["config"]["training"]["learning_rate"] == 1e-3
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]  # no temp file left


def test_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    save_checkpoint(_state(1.0), path)
    real_save = torch.save

    def half_then_crash(obj, f, *a, **k):
        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        raise KeyboardInterrupt("simulated crash mid-write")

    monkeypatch.setattr(ck.torch, "save", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(_state(7.0), path)
    monkeypatch.setattr(ck.torch, "save", real_save)
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(3, 3))  # the old file, intact
    leftovers = [f for f in tmp_path.iterdir() if f.name != "c.pt"]
    for f in leftovers:  # whatever partial file might remain is never accepted
        with pytest.raises(CheckpointError):
            load_checkpoint(f)
    assert leftovers == []


def test_truncated_and_corrupt_and_missing(tmp_path):
    p = save_checkpoint(_state(), tmp_path / "c.pt")
    data = p.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 3])
    (tmp_path / "junk.pt").write_bytes(os.urandom(1000))
    (tmp_path / "empty.pt").write_bytes(b"")
    for name in ["trunc.pt", "junk.pt", "empty.pt", "missing.pt"]:
        with pytest.raises(CheckpointError):
            load_checkpoint(tmp_path / name)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_refused_without_side_effect(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "payload": _Evil(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="weights_only|allowlist"):
        load_checkpoint(path)
    assert not marker.exists()


def test_non_dict_refused(tmp_path):
    p = tmp_path / "t.pt"
    torch.save(torch.zeros(2), p)
    with pytest.raises(CheckpointError, match="dict"):
        load_checkpoint(p)
