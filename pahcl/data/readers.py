"""Data specs (``KIND:PATH``), the reader registry, and the skip log.

Spec grammar (every CLI takes it via ``--data``)::

    synthetic               the embedded synthetic PCG set (default size, seed 0)
    synthetic:N             N synthetic recordings             (option: ?seed=S)
    wav:DIR                 *.wav under DIR, label = first sub-folder name (None at the top level)
    circor:DIR              CirCor DigiScope: <patient>_<site>.wav + .tsv states + <patient>.txt
    yaseen:DIR              Yaseen 2018: DIR/<class>/*.wav, group = recording
    physionet2016:DIR       PhysioNet/CinC 2016: DIR/training-*/REFERENCE.csv (1 abnormal, -1 normal)

Options follow a ``?``: ``wav:DIR?channel=mean``. The only file option is ``channel``:
multi-channel files are refused (skipped, with a reason) unless ``channel=mean`` (average the
channels) or ``channel=K`` (keep channel K, 0-based) is given. Stethoscope recordings are mono; a
stereo file usually means a wrong export, so averaging is opt-in rather than silent.

Readers yield ``Recording``s and never raise on a bad file: unreadable, empty, silent,
multi-channel (without a channel rule) or too-short files are skipped with a one-line reason in a
``SkipLog`` and counted. ``read_recordings`` raises ``NoUsableRecordingsError`` when nothing usable
is left, and ``parse_spec`` raises ``DataSpecError`` naming the allowed kinds.
"""
from __future__ import annotations

import csv
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .types import Recording

MIN_DURATION_S = 0.5  # shorter than this cannot hold one complete cycle (S1 .. next S1 onset)
SILENCE_PEAK = 1e-6  # max |x| below this (full scale = 1.0) counts as silent


class DataSpecError(ValueError):
    """A ``--data`` spec string is malformed or names an unknown kind / missing folder."""


class NoUsableRecordingsError(RuntimeError):
    """A data spec produced zero usable recordings (or zero cycles)."""


# ----------------------------------------------------------------------------- skip log


@dataclass
class SkipLog:
    """One line per skipped item: ``(item, reason)``; ``kind`` groups reasons for the summary."""

    entries: list[tuple[str, str, str]] = field(default_factory=list)  # (item, kind, detail)
    log: Callable[[str], None] | None = None

    def skip(self, item: str, kind: str, detail: str = "") -> None:
        self.entries.append((str(item), kind, detail))
        if self.log is not None:
            self.log(f"skip {item}: {kind}{' (' + detail + ')' if detail else ''}")

    def __len__(self) -> int:
        return len(self.entries)

    def counts(self) -> dict[str, int]:
        return dict(sorted(Counter(k for _, k, _ in self.entries).items()))

    def summary(self) -> str:
        if not self.entries:
            return "skipped: 0"
        parts = ", ".join(f"{k}: {n}" for k, n in self.counts().items())
        return f"skipped: {len(self.entries)} ({parts})"

    def to_records(self) -> list[dict]:
        return [{"item": i, "reason": k, "detail": d} for i, k, d in self.entries]

    @classmethod
    def from_records(cls, records, log=None) -> "SkipLog":
        return cls([(r["item"], r["reason"], r.get("detail", "")) for r in records], log=log)


# ----------------------------------------------------------------------------- specs


@dataclass(frozen=True)
class DataSpec:
    kind: str
    arg: str  # the text after "KIND:" without options ("" for bare "synthetic")
    options: tuple[tuple[str, str], ...] = ()

    @property
    def opts(self) -> dict[str, str]:
        return dict(self.options)

    @property
    def path(self) -> Path | None:
        return None if self.kind == "synthetic" else Path(self.arg).expanduser().resolve()

    def __str__(self) -> str:
        s = self.kind + (f":{self.arg}" if self.arg else "")
        return s + ("?" + "&".join(f"{k}={v}" for k, v in self.options) if self.options else "")


_OPTIONS = {"synthetic": {"seed"}, "wav": {"channel"}, "circor": {"channel"}, "yaseen": {"channel"},
            "physionet2016": {"channel"}}


def allowed_kinds() -> list[str]:
    return list(READERS)


def parse_spec(spec: str) -> DataSpec:
    """``"circor:../data/circor_tiny"`` -> ``DataSpec("circor", "../data/circor_tiny")``."""
    allowed = ", ".join(f"{k}:DIR" if k != "synthetic" else "synthetic, synthetic:N" for k in READERS)
    if not isinstance(spec, str) or not spec.strip():
        raise DataSpecError(f"data spec: empty; expected KIND:PATH with KIND one of: {allowed}")
    text = spec.strip()
    kind, _, rest = text.partition(":")
    if "?" in kind:
        kind, _, q = kind.partition("?")
        rest = "?" + q
    kind = kind.strip().lower()
    if kind not in READERS:
        raise DataSpecError(f"data spec {spec!r}: unknown kind {kind!r}; allowed: {allowed}")
    arg, _, query = rest.partition("?")
    options: list[tuple[str, str]] = []
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq or key not in _OPTIONS[kind]:
            raise DataSpecError(
                f"data spec {spec!r}: bad option {item!r}; allowed options for {kind}: "
                f"{', '.join(sorted(_OPTIONS[kind])) or 'none'} (as ?key=value)"
            )
        options.append((key, value))
    if kind == "synthetic":
        if arg and not re.fullmatch(r"[1-9][0-9]*", arg):
            raise DataSpecError(f"data spec {spec!r}: synthetic:N needs a positive integer N, got {arg!r}")
        opts = dict(options)
        if "seed" in opts and not re.fullmatch(r"[0-9]+", opts["seed"]):
            raise DataSpecError(f"data spec {spec!r}: seed must be a non-negative integer, got {opts['seed']!r}")
    else:
        if not arg:
            raise DataSpecError(f"data spec {spec!r}: {kind} needs a folder, e.g. {kind}:path/to/dir")
        p = Path(arg).expanduser()
        if not p.is_dir():
            raise DataSpecError(f"data spec {spec!r}: folder {str(p)!r} does not exist (resolved: {p.resolve()})")
        ch = dict(options).get("channel")
        if ch is not None and ch != "mean" and not re.fullmatch(r"[0-9]+", ch):
            raise DataSpecError(f"data spec {spec!r}: channel must be 'mean' or a 0-based index, got {ch!r}")
    return DataSpec(kind, arg, tuple(options))


def absolute_spec(spec: str | DataSpec) -> str:
    """The spec with its folder made absolute (from the current directory), options kept: a process that
    runs elsewhere (a Ray trial runs in its own working directory) reads the same files. Validates the spec
    (``DataSpecError``). ``synthetic`` specs come back normalised."""
    s = parse_spec(spec) if isinstance(spec, str) else spec
    if s.kind == "synthetic":
        return str(s)
    return str(DataSpec(s.kind, str(s.path), s.options))


def spec_files(spec: DataSpec) -> list[tuple[str, int, int]]:
    """Fingerprint of the input files: sorted (relative path, size, mtime_ns); [] for synthetic."""
    if spec.path is None:
        return []
    out = []
    for p in sorted(spec.path.rglob("*")):
        if p.is_file() and not p.name.startswith("."):
            st = p.stat()
            out.append((str(p.relative_to(spec.path)), st.st_size, st.st_mtime_ns))
    return out


# ----------------------------------------------------------------------------- wav loading


def load_wav(path: Path, item: str, skips: SkipLog, channel: str | None = None) -> tuple[np.ndarray, int] | None:
    """Read one wav -> (float32 [T], sample_rate), or None after logging why it is unusable."""
    import soundfile as sf

    try:
        if os.path.getsize(path) == 0:
            skips.skip(item, "empty file", "0 bytes")
            return None
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [T, C]
    except Exception as e:  # soundfile raises LibsndfileError / RuntimeError / OSError
        skips.skip(item, "unreadable", str(e).splitlines()[0][:120])
        return None
    if x.shape[0] == 0:
        skips.skip(item, "empty file", "0 frames")
        return None
    if x.shape[1] > 1:
        if channel is None:
            skips.skip(item, "multi-channel", f"{x.shape[1]} channels; mono only unless the spec says ?channel=mean|K")
            return None
        if channel == "mean":
            x = x.mean(axis=1, keepdims=True)
        else:
            k = int(channel)
            if k >= x.shape[1]:
                skips.skip(item, "multi-channel", f"channel={k} asked but the file has {x.shape[1]} channels")
                return None
            x = x[:, k : k + 1]
    sig = np.ascontiguousarray(x[:, 0], dtype=np.float32)
    if not np.all(np.isfinite(sig)):
        skips.skip(item, "unreadable", "non-finite samples")
        return None
    if float(np.max(np.abs(sig))) < SILENCE_PEAK:
        skips.skip(item, "silent", "all samples ~0")
        return None
    if len(sig) < MIN_DURATION_S * sr:
        skips.skip(item, "too short", f"{len(sig) / sr:.2f} s < {MIN_DURATION_S} s: no complete cycle possible")
        return None
    return sig, int(sr)


# ----------------------------------------------------------------------------- readers


def read_wav_dir(spec: DataSpec, skips: SkipLog) -> Iterator[Recording]:
    """``wav:DIR``: every *.wav below DIR; label = first sub-folder (None at top level); group = id."""
    root = spec.path
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() != ".wav" or not p.is_file():
            continue
        rel = p.relative_to(root)
        rid = str(rel.with_suffix("")).replace(os.sep, "/")
        got = load_wav(p, rid, skips, spec.opts.get("channel"))
        if got is None:
            continue
        label = rel.parts[0] if len(rel.parts) > 1 else None
        yield Recording(rid, rid, got[0], got[1], label, None, {"path": str(rel)})


def _circor_patient(txt: Path) -> dict[str, str]:
    meta = {}
    if txt.is_file():
        for line in txt.read_text(errors="replace").splitlines():
            if line.startswith("#") and ":" in line:
                k, _, v = line[1:].partition(":")
                meta[k.strip().lower()] = v.strip()
    return meta


def read_tsv_annotations(path: Path) -> np.ndarray | None:
    """CirCor segmentation file -> float [M, 3] (start_s, end_s, state), or None if absent/bad."""
    if not path.is_file():
        return None
    try:
        a = np.loadtxt(path, delimiter="\t", ndmin=2, dtype=np.float64)
    except ValueError:
        return None
    if a.ndim != 2 or a.shape[1] != 3 or len(a) == 0:
        return None
    return a


def read_circor(spec: DataSpec, skips: SkipLog) -> Iterator[Recording]:
    """``circor:DIR``: label = murmur (Present/Absent/Unknown); outcome, site in meta; group = patient."""
    root = spec.path
    cache: dict[str, dict[str, str]] = {}
    for p in sorted(root.glob("*.wav")):
        rid = p.stem
        patient, _, site = rid.partition("_")
        if patient not in cache:
            cache[patient] = _circor_patient(root / f"{patient}.txt")
        pmeta = cache[patient]
        got = load_wav(p, rid, skips, spec.opts.get("channel"))
        if got is None:
            continue
        ann = read_tsv_annotations(p.with_suffix(".tsv"))
        meta = {"patient": patient, "site": site, "murmur": pmeta.get("murmur"), "outcome": pmeta.get("outcome")}
        yield Recording(rid, patient, got[0], got[1], pmeta.get("murmur"), ann, meta)


def read_yaseen(spec: DataSpec, skips: SkipLog) -> Iterator[Recording]:
    """``yaseen:DIR``: DIR/<class>/*.wav; label = class; group = recording (no patient ids)."""
    root = spec.path
    for cls_dir in sorted(d for d in root.iterdir() if d.is_dir()):
        for p in sorted(cls_dir.glob("*.wav")):
            rid = f"{cls_dir.name}/{p.stem}"
            got = load_wav(p, rid, skips, spec.opts.get("channel"))
            if got is not None:
                yield Recording(rid, rid, got[0], got[1], cls_dir.name, None, {})


def read_physionet2016(spec: DataSpec, skips: SkipLog) -> Iterator[Recording]:
    """``physionet2016:DIR``: every folder with a REFERENCE.csv (training-a..f); 1 abnormal, -1 normal."""
    root = spec.path
    refs = sorted(root.rglob("REFERENCE.csv"))
    if not refs:
        skips.skip(str(root), "no REFERENCE.csv", "expected DIR/training-*/REFERENCE.csv")
    for ref in refs:
        folder = ref.parent
        with open(ref, newline="") as fh:
            rows = [r for r in csv.reader(fh) if r and r[0].strip()]
        for row in rows:
            name = row[0].strip()
            raw = row[1].strip() if len(row) > 1 else ""
            label = {"1": "abnormal", "-1": "normal"}.get(raw)
            rid = name
            if label is None:
                skips.skip(rid, "bad label", f"REFERENCE.csv value {raw!r}; allowed 1 or -1")
                continue
            wav = folder / f"{name}.wav"
            if not wav.is_file():
                skips.skip(rid, "missing file", f"{wav.name} listed in {ref.relative_to(root)}")
                continue
            got = load_wav(wav, rid, skips, spec.opts.get("channel"))
            if got is not None:
                yield Recording(rid, rid, got[0], got[1], label, None, {"folder": folder.name})


def read_synthetic(spec: DataSpec, skips: SkipLog) -> Iterator[Recording]:
    from .synthetic import DEFAULT_NUM_RECORDINGS, generate_recordings

    n = int(spec.arg) if spec.arg else DEFAULT_NUM_RECORDINGS
    yield from generate_recordings(n, seed=int(spec.opts.get("seed", 0)))


READERS: dict[str, Callable[[DataSpec, SkipLog], Iterator[Recording]]] = {
    "synthetic": read_synthetic,
    "wav": read_wav_dir,
    "circor": read_circor,
    "yaseen": read_yaseen,
    "physionet2016": read_physionet2016,
}


def iter_recordings(spec: str | DataSpec, skips: SkipLog) -> Iterator[Recording]:
    """Yield usable recordings of ``spec``; bad files go to ``skips``. Does not check for zero."""
    s = parse_spec(spec) if isinstance(spec, str) else spec
    yield from READERS[s.kind](s, skips)


def read_recordings(spec: str | DataSpec, skips: SkipLog | None = None) -> list[Recording]:
    """All usable recordings of ``spec`` as a list; raises NoUsableRecordingsError if none."""
    skips = skips if skips is not None else SkipLog()
    recs = list(iter_recordings(spec, skips))
    if not recs:
        raise NoUsableRecordingsError(
            f"data spec {str(spec)!r}: no usable recordings; {skips.summary()}"
            + (f"; first: {skips.entries[0][0]}: {skips.entries[0][1]}" if skips.entries else "")
        )
    return recs


__all__ = ["DataSpec", "absolute_spec", "DataSpecError", "NoUsableRecordingsError", "READERS", "SkipLog", "allowed_kinds",
           "iter_recordings", "load_wav", "parse_spec", "read_recordings", "read_tsv_annotations", "spec_files"]
