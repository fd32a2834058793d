"""python -m pahcl.preprocess: --workers N gives the same cycles as one process, shows progress, reuses the cache."""
import numpy as np
import pytest

from pahcl.config import DataConfig
from pahcl.data.cycles import load_cycles
from pahcl.preprocess import main


def test_workers_same_cycles_progress_and_cache(tmp_path, capsys):
    assert main(["--data", "synthetic:6", "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "preprocessing: 6 recordings" in out and "recordings/s" in out and "cache miss" in out
    assert main(["--data", "synthetic:6", "--out", str(tmp_path / "two"), "--workers", "2"]) == 0
    assert "cache hit" in capsys.readouterr().out  # the second run reads the cache, preprocesses nothing
    one = load_cycles("synthetic:6", DataConfig(), cache_dir=None, log=None, workers=1)
    two = load_cycles("synthetic:6", DataConfig(), cache_dir=tmp_path / "two", log=None)
    assert two.info["cache"] == "hit"
    assert np.array_equal(one.waves, two.waves) and np.array_equal(one.bounds, two.bounds)
    assert one.table.astype(str).equals(two.table.astype(str))


def test_bad_workers_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--data", "synthetic:2", "--out", "x", "--workers", "0"])
    assert e.value.code == 2
    assert "--workers: '0'; allowed: an integer >= 1 (processes)" in capsys.readouterr().err
