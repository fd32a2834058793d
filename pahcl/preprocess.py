"""Preprocess a data spec once and cache its cycles (the cache later runs reuse).

    python -m pahcl.preprocess --data synthetic --out out/synthetic
    python -m pahcl.preprocess --data circor:../shared/data/circor_tiny --out out/circor
    python -m pahcl.preprocess --data yaseen:../shared/data/yaseen2018 --out out/yaseen
    python -m pahcl.preprocess --data wav:DIR?channel=mean --out out/wav --set data.sample_rate=4000
    python -m pahcl.preprocess --data circor:/data/circor --out out/circor --workers 2   # 2 processes
    python -m pahcl.preprocess --smoke-test            # synthetic:8 into a temp folder

``--out`` is the cache folder (``<out>/cycles-<key>/``: waves.npy, bounds.npy, table.parquet,
info.json); a second run with the same inputs is a cache hit and reads it back. ``--workers N``
preprocesses the recordings in N processes (same cycles for any N; progress, recordings/s, every 5 s).
Prints counts: recordings, cycles, skipped grouped by reason. ``--config`` /
``--set key=value`` follow ``pahcl.config.load_config``; only the ``data`` section matters here.
Exit codes: 0 ok, 2 bad spec / config, 3 no usable recordings.
"""
from __future__ import annotations

import argparse
import sys
import tempfile

from .config import ConfigError, load_config
from .data.cycles import load_cycles
from .data.readers import DataSpecError, NoUsableRecordingsError


def _workers(v: str) -> int:
    """argparse type of ``--workers``: an integer >= 1."""
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{v!r}; allowed: an integer >= 1 (processes)")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pahcl.preprocess", description=__doc__.split("\n")[0])
    ap.add_argument("--data", help="data spec KIND:PATH (synthetic, synthetic:N, wav:, circor:, yaseen:, physionet2016:)")
    ap.add_argument("--out", help="cache folder")
    ap.add_argument("--config", default=None, help="config YAML (default: pahcl/configs/pretrain.yaml)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--smoke-test", action="store_true", help="run on synthetic:8 into a temp folder")
    ap.add_argument("--workers", type=_workers, default=1, help="processes that preprocess recordings (default 1)")
    ap.add_argument("--verbose", action="store_true", help="on a cache hit, list the skipped files again")
    args = ap.parse_args(argv)
    if args.smoke_test:
        args.data = args.data or "synthetic:8"
    if not args.data:
        ap.error("--data is required (or --smoke-test)")
    try:
        cfg = load_config(args.config, args.overrides, preset=None)
        tmp = tempfile.TemporaryDirectory() if args.smoke_test and not args.out else None
        out = args.out or (tmp.name if tmp else None)
        if out is None:
            ap.error("--out is required (the cache folder)")
        cs = load_cycles(args.data, cfg.data, cache_dir=out, log=print, workers=args.workers)
    except (ConfigError, DataSpecError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except NoUsableRecordingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    if args.verbose and cs.info.get("cache") == "hit":
        for s in cs.info.get("skips", []):
            print(f"skip {s['item']}: {s['reason']} ({s.get('detail', '')})")
    print(f"cache {cs.info.get('cache')}: {cs.info.get('cache_path')}")
    print(f"recordings={cs.info.get('recordings_used')} cycles={len(cs)} skipped={cs.info.get('skipped', 0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
