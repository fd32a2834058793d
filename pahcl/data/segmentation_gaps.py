"""Cycles from the unannotated parts of annotated recordings (``data.segment_unannotated``, opt-in).

    cycles, sources = with_unannotated(x, sr, annotated_cycles, max_bpm)

CirCor annotates only part of each recording (about a quarter of circor_tiny's seconds). With the option set,
every stretch of the preprocessed signal outside the annotated cycles (S1 onset to next S1 onset) that lasts at
least ``MIN_GAP_S`` is segmented by the automatic segmenter (``segmentation.segment``) on that stretch alone, and
its cycles are added with source ``"auto"``; the annotated cycles stay as annotated (``"annotations"``), so
they remain the ground truth wherever they exist. Cycles are returned in time order.
"""
from __future__ import annotations

import numpy as np

from .segmentation import segment
from .types import Cycle

MIN_GAP_S = 2.0  # shorter stretches hold too few beats for the heart-rate estimate


def unannotated_spans(cycles: list[Cycle], n_samples: int, min_samples: int) -> list[tuple[int, int]]:
    """[(start, end)] sample spans of [0, n_samples) not covered by any cycle, at least ``min_samples`` long."""
    covered = np.zeros(n_samples + 1, dtype=np.int64)
    for c in cycles:
        covered[max(0, c.s1_onset)] += 1
        covered[min(n_samples, c.next_s1_onset)] -= 1
    free = np.cumsum(covered)[:n_samples] == 0
    edges = np.flatnonzero(np.diff(np.concatenate([[0], free.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2]) if b - a >= min_samples]


def with_unannotated(x: np.ndarray, sr: int, cycles: list[Cycle], max_bpm: float) -> tuple[list[Cycle], list[str]]:
    """Annotated ``cycles`` plus automatic ones from the uncovered stretches of ``x``: (cycles, per-cycle source)."""
    out = [(c, "annotations") for c in cycles]
    for a, b in unannotated_spans(cycles, len(x), int(MIN_GAP_S * sr)):
        for c in segment(x[a:b], sr, max_bpm=max_bpm):
            out.append((Cycle(*(int(v) + a for v in c.as_tuple())), "auto"))
    out.sort(key=lambda cs: cs[0].s1_onset)
    return [c for c, _ in out], [s for _, s in out]


__all__ = ["MIN_GAP_S", "unannotated_spans", "with_unannotated"]
