"""Fixtures for the data tests: the shared real data folder and small synthetic cycle sets."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = (Path(__file__).resolve().parents[3] / ".." / "shared" / "data").resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (relative to the repo root); skips only when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def data_cfg():
    from pahcl.config import DataConfig

    return DataConfig()


@pytest.fixture(scope="session")
def small_cycles(data_cfg):
    from pahcl.data.cycles import load_cycles

    return load_cycles("synthetic:12", data_cfg, cache_dir=None, log=None)
