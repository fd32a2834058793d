"""Cycles: every recording of a data spec -> fixed windows starting at S1 onset (+ boundaries), cached.

    cs = load_cycles("circor:../shared/data/circor_tiny", cfg.data, cache_dir="out/circor")
    cs.waves   # float32 [N, L], L = round(data.segment_duration * data.sample_rate)
    cs.bounds  # int64 [N, 5]: S1, systole, S2, diastole, next-S1 onsets relative to the window, in [0, L]
    cs.table   # per cycle: recording_id, group, label, cycle_index, start_sample, source, dataset, ...
    train_idx, val_idx = split_by_group(cs, cfg.data.val_fraction, cfg.seed)

Window: the cycle's samples from its S1 onset to the next S1 onset, zero-padded to L (or cropped
to L when the cycle is longer).

Per recording: ``preprocess_signal`` (resample, band-pass, spike removal, z-normalise), then cycles
from the annotations when present (``source = "annotations"``; CirCor .tsv, synthetic), else from
the automatic segmenter (``source = "auto"``; also the fallback when annotations give no complete
cycle). A recording with no complete cycle is skipped with a reason ("no complete cycle").
``data.max_cycles_per_recording > 0`` keeps the first N cycles of each recording.

Cache (``cache_dir`` not None): ``<cache_dir>/cycles-<key>/`` holding ``waves.npy``,
``bounds.npy``, ``table.parquet`` (``table.csv`` without pyarrow) and ``info.json`` (key inputs,
counts, skip log). The key is a SHA-256 over: CODE_VERSION, the normalised spec, the resolved
absolute path, the input file list with sizes and mtimes, and the data config minus
``val_fraction`` (splitting does not change the cycles). It is built in a private temp folder
and published with one ``os.rename``; if another process (a parallel Ray trial) published the
same key first, ours is discarded and theirs is read, so concurrent builds are safe.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from .preprocess import preprocess_signal
from .readers import DataSpec, NoUsableRecordingsError, absolute_spec, SkipLog, iter_recordings, parse_spec, spec_files
from .segmentation import from_annotations, segment
from .types import Cycle, Recording

CODE_VERSION = "pahcl-data-4"  # bump when preprocessing / segmentation / windowing changes
TABLE_COLUMNS = ["recording_id", "group", "label", "cycle_index", "start_sample", "source"]
_META_COLUMNS = ["dataset", "cycle_length", "murmur", "outcome", "site"]


@dataclass
class CycleSet:
    waves: np.ndarray  # float32 [N, L]
    bounds: np.ndarray  # int64 [N, 5]
    table: pd.DataFrame  # N rows
    sample_rate: int
    info: dict = field(default_factory=dict)  # counts, skip summary, cache key (not used for indexing)

    def __len__(self) -> int:
        return int(self.waves.shape[0])

    @property
    def window(self) -> int:
        return int(self.waves.shape[1])

    def subset(self, idx) -> "CycleSet":
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return CycleSet(self.waves[idx], self.bounds[idx], self.table.iloc[idx].reset_index(drop=True),
                        self.sample_rate, dict(self.info))

    @property
    def labels(self) -> np.ndarray:
        return self.table["label"].to_numpy()

    @property
    def groups(self) -> np.ndarray:
        return self.table["group"].astype(str).to_numpy()


# ----------------------------------------------------------------------------- windows


def cycle_window(x: np.ndarray, c: Cycle, L: int) -> tuple[np.ndarray, np.ndarray]:
    """One cycle -> (float32 [L], int64 [5] bounds in [0, L]).

    The window holds the cycle only (S1 onset up to the next S1 onset), zero-padded to L when the
    cycle is shorter, cropped when it is longer: no sound of the next cycle leaks into it.
    """
    w = np.zeros(L, dtype=np.float32)
    seg = x[c.s1_onset : min(c.next_s1_onset, c.s1_onset + L)]
    w[: len(seg)] = seg
    b = np.clip(np.asarray(c.as_tuple(), dtype=np.int64) - c.s1_onset, 0, L)
    return w, b


def recording_cycles(rec: Recording, data_cfg) -> tuple[np.ndarray, list[Cycle], str | list[str]]:
    """Preprocess one recording and find its cycles: (float32 [T'], cycles, source); with
    ``data.segment_unannotated`` on an annotated recording, source is a list (one per cycle)."""
    sr = int(data_cfg.sample_rate)
    x = preprocess_signal(rec.signal, rec.sample_rate, data_cfg)
    cycles: list[Cycle] = []
    source = "auto"
    if rec.annotations is not None:
        cycles = from_annotations(rec.annotations, sr, len(x))
        source = "annotations"
    if not cycles:
        cycles, source = segment(x, sr, max_bpm=data_cfg.max_heart_rate_bpm), "auto"
    elif getattr(data_cfg, "segment_unannotated", False):  # opt-in: per-cycle sources
        from .segmentation_gaps import with_unannotated

        cycles, source = with_unannotated(x, sr, cycles, data_cfg.max_heart_rate_bpm)
    if data_cfg.max_cycles_per_recording > 0:
        cycles = cycles[: data_cfg.max_cycles_per_recording]
        source = source[: len(cycles)] if isinstance(source, list) else source
    return x, cycles, source


def _recording_windows(rec: Recording, data_cfg) -> tuple:
    """Worker job: one recording -> (id, n_samples, source, waves [n, L], bounds [n, 5], cycles) or (id, error)."""
    sr = int(data_cfg.sample_rate)
    L = int(round(data_cfg.segment_duration * sr))
    try:
        x, cycles, source = recording_cycles(rec, data_cfg)
    except Exception as e:  # a numerically broken file must not end the run
        return rec.id, f"{type(e).__name__}: {e}"[:120]
    wins = [cycle_window(x, c, L) for c in cycles]
    waves = np.stack([w for w, _ in wins]) if wins else np.zeros((0, L), np.float32)
    bounds = np.stack([b for _, b in wins]) if wins else np.zeros((0, 5), np.int64)
    return rec.id, len(x), source, waves, bounds, cycles


def _processed(recordings, data_cfg, workers: int, progress: Callable[[int], None]):
    """Yield (Recording without its signal, _recording_windows result) in input order; ``workers > 1`` runs
    them in that many processes (forked where the OS allows: a spawned worker would first import pahcl, torch
    included, which costs seconds; at most 4 x workers recordings in flight)."""
    if workers <= 1:
        for i, rec in enumerate(recordings, 1):
            yield rec, _recording_windows(rec, data_cfg)
            progress(i)
        return
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_all_start_methods, get_context

    method = "fork" if "fork" in get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(workers, mp_context=get_context(method)) as ex:
        pending: deque = deque()
        done = 0
        for rec in recordings:
            light = dataclasses.replace(rec, signal=np.zeros(0, np.float32))  # the table needs no samples
            pending.append((light, ex.submit(_recording_windows, rec, data_cfg)))
            while len(pending) > 4 * workers:
                r, f = pending.popleft()
                done += 1
                yield r, f.result()
                progress(done)
        while pending:
            r, f = pending.popleft()
            done += 1
            yield r, f.result()
            progress(done)


def _progress_logger(total: int | None, log: Callable[[str], None] | None, every_s: float = 5.0):
    """progress(n, final=False): a log line at most every ``every_s`` seconds and on the final call: n/total,
    recordings/s."""
    import time

    t0, last = time.perf_counter(), [time.perf_counter()]

    def progress(n: int, final: bool = False) -> None:
        now = time.perf_counter()
        if log is None or (now - last[0] < every_s and not final):
            return
        last[0] = now
        rate = n / max(now - t0, 1e-9)
        log(f"preprocessing: {n}{'/' + str(total) if total else ''} recordings, {rate:.1f} recordings/s")

    return progress


def build_cycles(spec: str | DataSpec, data_cfg, log: Callable[[str], None] | None = print, workers: int = 1) -> CycleSet:
    """Read, preprocess and segment every recording of ``spec`` (no cache); ``workers`` processes (the
    result is the same for any number)."""
    s = parse_spec(spec) if isinstance(spec, str) else spec
    sr = int(data_cfg.sample_rate)
    skips = SkipLog(log=log)  # one line per skipped file, as it happens
    waves, bounds, rows = [], [], []
    n_read = n_used = 0
    total = sum(f.endswith(".wav") for f, _, _ in spec_files(s)) or None
    progress = _progress_logger(total, log)
    for rec, res in _processed(iter_recordings(s, skips), data_cfg, workers, progress):
        n_read += 1
        if len(res) == 2:
            skips.skip(rec.id, "preprocessing failed", res[1])
            continue
        _, n_samples, source, w, b, cycles = res
        if not cycles:
            skips.skip(rec.id, "no complete cycle", f"{n_samples / sr:.2f} s, {source} segmentation")
            continue
        n_used += 1
        waves.append(w)
        bounds.append(b)
        for k, c in enumerate(cycles):
            rows.append({
                "recording_id": rec.id, "group": str(rec.group), "label": rec.label, "cycle_index": k,
                "start_sample": c.s1_onset, "source": source[k] if isinstance(source, list) else source,
                "dataset": s.kind, "cycle_length": c.length,
                "murmur": rec.meta.get("murmur"), "outcome": rec.meta.get("outcome"), "site": rec.meta.get("site"),
            })
    progress(n_read, True)
    info = {"spec": str(s), "recordings_read": n_read, "recordings_used": n_used, "cycles": len(rows),
            "skipped": len(skips), "skip_counts": skips.counts(), "skips": skips.to_records()}
    if not rows:
        first = f"; first: {skips.entries[0][0]}: {skips.entries[0][1]}" if skips.entries else ""
        raise NoUsableRecordingsError(f"data spec {str(s)!r}: no usable recordings ({skips.summary()}{first})")
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS + _META_COLUMNS)
    cs = CycleSet(np.concatenate(waves).astype(np.float32), np.concatenate(bounds).astype(np.int64), table, sr, info)
    if log is not None:
        log(describe(cs))
    return cs


def describe(cs: CycleSet) -> str:
    """One-paragraph count summary (recordings, cycles, skipped grouped by reason)."""
    i = cs.info
    lines = [f"{i.get('spec')}: recordings {i.get('recordings_used')} used / {i.get('recordings_read')} read, "
             f"cycles {len(cs)}, skipped {i.get('skipped', 0)}"]
    for reason, n in (i.get("skip_counts") or {}).items():
        lines.append(f"  skipped {n:5d}  {reason}")
    if len(cs):
        by = cs.table.groupby(cs.table["label"].astype(str)).size()
        lines.append("  cycles per label: " + ", ".join(f"{k}={v}" for k, v in by.items()))
        lines.append(f"  groups {cs.table['group'].nunique()}, window {cs.window} samples @ {cs.sample_rate} Hz")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- cache


def cache_key(spec: DataSpec, data_cfg) -> tuple[str, dict]:
    """(hex key, the JSON-able inputs it hashes)."""
    cfg = dataclasses.asdict(data_cfg) if dataclasses.is_dataclass(data_cfg) else dict(vars(data_cfg))
    cfg.pop("val_fraction", None)  # splitting does not change the cycles
    cfg.pop("test_fraction", None)
    if not cfg.get("segment_unannotated", True):
        cfg.pop("segment_unannotated")  # off (the default): the keys of existing caches stay valid
    inputs = {
        "code_version": CODE_VERSION,
        "spec": absolute_spec(spec),  # circor:../x and circor:/abs/x are one cache entry
        "path": str(spec.path) if spec.path is not None else None,
        "files": spec_files(spec),
        "data": cfg,
    }
    blob = json.dumps(inputs, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest(), inputs


def _write(cs: CycleSet, folder: Path, key_inputs: dict) -> None:
    np.save(folder / "waves.npy", cs.waves)
    np.save(folder / "bounds.npy", cs.bounds)
    try:
        cs.table.to_parquet(folder / "table.parquet", index=False)
    except ImportError:
        cs.table.to_csv(folder / "table.csv", index=False)
    info = dict(cs.info, key_inputs={k: v for k, v in key_inputs.items() if k != "files"},
                n_files=len(key_inputs["files"]), sample_rate=cs.sample_rate)
    (folder / "info.json").write_text(json.dumps(info, indent=1, default=str))  # written last


def _read(folder: Path) -> CycleSet:
    info = json.loads((folder / "info.json").read_text())
    if (folder / "table.parquet").exists():
        table = pd.read_parquet(folder / "table.parquet")
    else:
        table = pd.read_csv(folder / "table.csv", keep_default_na=False, na_values=[""])
    waves = np.load(folder / "waves.npy", allow_pickle=False)
    bounds = np.load(folder / "bounds.npy", allow_pickle=False)
    return CycleSet(waves, bounds, table, int(info["sample_rate"]), info)


def load_cycles(spec: str, data_cfg, cache_dir=None, log: Callable[[str], None] | None = print,
                workers: int = 1) -> CycleSet:
    """Cycles of ``spec`` under ``data_cfg``; cached under ``cache_dir`` (None = no cache); a build runs in
    ``workers`` processes (the cache key and the cycles do not depend on it).

    ``cs.info["cache"]`` is "hit", "miss" or "off"; ``cs.info["spec"]`` is the absolute spec and
    ``cs.info["fingerprint"]`` the cache key (spec, files, data settings): what a checkpoint records of its
    data. Raises DataSpecError / NoUsableRecordingsError.
    """
    s = parse_spec(spec) if isinstance(spec, str) else spec
    key, inputs = cache_key(s, data_cfg)  # stats every input file: once per load
    cs = _load_cycles(s, data_cfg, cache_dir, log, workers, key, inputs)
    cs.info.update(spec=absolute_spec(s), fingerprint=key)
    return cs


def _load_cycles(s: DataSpec, data_cfg, cache_dir, log, workers: int, key: str, inputs: dict) -> CycleSet:
    if cache_dir is None:
        cs = build_cycles(s, data_cfg, log, workers)
        cs.info["cache"] = "off"
        return cs
    root = Path(cache_dir)
    final = root / f"cycles-{key[:20]}"
    if (final / "info.json").exists():
        cs = _read(final)
        cs.info["cache"] = "hit"
        cs.info["cache_path"] = str(final)
        if log is not None:
            log(f"cache hit: {final}\n{describe(cs)}")
        return cs
    cs = build_cycles(s, data_cfg, log, workers)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-cycles-{key[:20]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write(cs, tmp, inputs)
        try:
            os.rename(tmp, final)  # atomic publish; fails if another process got there first
        except OSError:
            if not (final / "info.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    cs.info["cache"] = "miss"
    cs.info["cache_path"] = str(final)
    if log is not None:
        log(f"cache written: {final}")
    return cs


# ----------------------------------------------------------------------------- splits


def _group_labels(cycles: CycleSet) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique groups [G], each group's label as a string [G]: its most frequent cycle label,
    ties to the smaller string; "None" when the data has no labels)."""
    t = cycles.table
    groups = t["group"].astype(str).to_numpy()
    labels = t["label"].astype(str).to_numpy() if "label" in t.columns else np.full(len(t), "None")
    uniq = np.unique(groups)  # sorted: independent of row order
    pairs = pd.DataFrame({"g": groups, "y": labels}).value_counts().reset_index(name="n")
    pairs = pairs.sort_values(["g", "n", "y"], ascending=[True, False, True]).drop_duplicates("g")
    by = dict(zip(pairs["g"], pairs["y"]))
    return uniq, np.asarray([by[g] for g in uniq])


def _stratified_quota(n_per_label: np.ndarray, n_val: int) -> np.ndarray:
    """Validation groups per label stratum [S], summing to ``n_val``: proportional (largest remainder),
    at most n_s - 1 per stratum (every label keeps a training group) while that is possible."""
    frac = n_val * n_per_label / n_per_label.sum()
    cap = np.maximum(n_per_label - 1, 0)
    q = np.minimum(np.floor(frac).astype(np.int64), cap)
    for s in np.argsort(-(frac - q), kind="stable"):  # largest remainder first, within the cap
        if q.sum() >= n_val:
            break
        q[s] += int(q[s] < cap[s])
    for cap_now in (cap, n_per_label):  # still short: any stratum with capacity, the cap last of all
        for s in np.argsort(-n_per_label, kind="stable"):
            while q.sum() < n_val and q[s] < cap_now[s]:
                q[s] += 1
    return q


def split_by_group(cycles: CycleSet, val_fraction: float, seed: int,
                   log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, val_idx) int64, sorted; whole groups on one side, deterministic by ``seed``.

    round(val_fraction * G) groups go to validation, clamped to [1, G - 1] so both sides get at least
    one group. Stratified by label where possible: each group takes its most frequent label, each
    label's share of the validation groups is proportional to its number of groups, and a label keeps at
    least one group in training while any label has groups to spare; within a label the groups are
    drawn with ``seed``. A label that still appears in validation but not in training (e.g. every label
    has a single group) is reported through ``log`` (``warnings.warn`` without one): a kNN validation
    score can never be right for it. Raises ValueError for < 2 groups.
    """
    if not 0.0 < float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction: {val_fraction!r} is out of range; allowed: (0, 1)")
    groups = cycles.table["group"].astype(str).to_numpy()
    uniq, glabel = _group_labels(cycles)
    if len(uniq) < 2:
        raise ValueError(
            f"split_by_group: only {len(uniq)} group ({', '.join(uniq[:1])}) in {len(groups)} cycles; a grouped "
            "train/validation split needs at least 2 groups (patients / recordings)"
        )
    rng = np.random.default_rng(int(seed))
    n_val = int(np.clip(round(val_fraction * len(uniq)), 1, len(uniq) - 1))
    strata = np.unique(glabel)
    quota = _stratified_quota(np.array([np.sum(glabel == s) for s in strata]), n_val)
    val_groups = []
    for s, q in zip(strata, quota):
        members = uniq[glabel == s]
        val_groups.extend(members[rng.permutation(len(members))[:q]])
    is_val = np.isin(groups, val_groups)
    unseen = sorted(set(glabel[np.isin(uniq, val_groups)]) - set(glabel[~np.isin(uniq, val_groups)]))
    if unseen:
        msg = unseen_classes_message(unseen, cycles.table["label"].astype(str).to_numpy()[is_val])
        log(msg) if log is not None else warnings.warn(msg, stacklevel=2)
    return np.flatnonzero(~is_val).astype(np.int64), np.flatnonzero(is_val).astype(np.int64)


def split_train_val_test(cycles: CycleSet, val_fraction: float, test_fraction: float, seed: int,
                         log: Callable[[str], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train_idx, val_idx, test_idx) int64, sorted; whole groups on one side, deterministic by ``seed``.

    ``test_fraction`` 0: no test split, exactly ``split_by_group(cycles, val_fraction, seed)`` (test empty).
    Else the test groups are drawn first (``split_by_group`` with ``test_fraction`` of all groups), then the
    validation groups from the rest (``val_fraction`` of the groups left). A search and ASHA see train and
    validation only; the test groups are read by the confirmation runs and by ``pahcl.evaluate``.
    """
    if not 0.0 <= float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction: {test_fraction!r} is out of range; allowed: [0, 1)")
    if float(test_fraction) == 0.0:
        tr, va = split_by_group(cycles, val_fraction, seed, log=log)
        return tr, va, np.zeros(0, dtype=np.int64)
    n_groups = cycles.table["group"].nunique()
    if n_groups < 3:
        raise ValueError(f"split_train_val_test: {n_groups} group(s); train, validation and test need at least 3 "
                         "groups (patients / recordings); use more data or data.test_fraction=0")
    rest, te = split_by_group(cycles, test_fraction, seed, log=log)  # sorted: so are rest[tr_r], rest[va_r]
    tr_r, va_r = split_by_group(cycles.subset(rest), val_fraction, seed, log=log)
    return rest[tr_r], rest[va_r], te


def unseen_classes_message(unseen: list[str], val_labels: np.ndarray) -> str:
    """One line naming the validation labels that have no training group."""
    n = int(np.isin(val_labels, unseen).sum())
    return (f"split_by_group: label(s) {', '.join(unseen)} appear in validation ({n} of {len(val_labels)} cycles) but "
            "not in training, so val/knn_acc can never count them right; use more groups per label, another "
            "seed, or a larger data.val_fraction")


__all__ = ["CODE_VERSION", "CycleSet", "build_cycles", "cache_key", "cycle_window", "describe", "load_cycles",
           "recording_cycles", "split_by_group", "split_train_val_test", "unseen_classes_message"]
