"""Plain data types shared by the data path (see docs/architecture.md, "Data").

``Recording`` is what a reader yields (one audio file, as read); ``Cycle`` holds the sample
indices of one heart cycle and its four substructures inside a (preprocessed) recording.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# CirCor state codes used for annotations everywhere (readers, synthetic, segmentation).
STATE_UNANNOTATED, STATE_S1, STATE_SYSTOLE, STATE_S2, STATE_DIASTOLE = 0, 1, 2, 3, 4
SUBSTRUCTURES = ("S1", "systole", "S2", "diastole")


@dataclass
class Recording:
    id: str  # unique within a spec, e.g. "85343_AV", "MR/New_MR_001"
    group: str  # patient id where known, else the recording id
    signal: np.ndarray  # float32 [T], mono, as read
    sample_rate: int
    label: str | None
    annotations: np.ndarray | None = None  # float [M, 3]: (start_s, end_s, state), state 0..4 as CirCor
    meta: dict = field(default_factory=dict)  # e.g. {"murmur": "Present", "outcome": "Abnormal", "site": "AV"}

    @property
    def duration(self) -> float:
        return len(self.signal) / float(self.sample_rate)


@dataclass(frozen=True)
class Cycle:
    """Sample indices into the recording: S1 onset <= systole <= S2 <= diastole <= next S1 onset."""

    s1_onset: int
    systole_onset: int
    s2_onset: int
    diastole_onset: int
    next_s1_onset: int

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return (self.s1_onset, self.systole_onset, self.s2_onset, self.diastole_onset, self.next_s1_onset)

    @property
    def length(self) -> int:
        return self.next_s1_onset - self.s1_onset


__all__ = ["Recording", "Cycle", "SUBSTRUCTURES", "STATE_UNANNOTATED", "STATE_S1", "STATE_SYSTOLE", "STATE_S2",
           "STATE_DIASTOLE"]
