"""Helpers shared by the bench scripts: machine description, JSON output, statistics.

Not a benchmark itself. Every bench script records ``machine()`` (nproc, CPU model, versions,
date, load average) in its JSON so docs/benchmarks.md can say where each figure came from.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "ray", "optuna", "mlflow", "numpy", "scipy"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing package is reported, not fatal
            out[mod] = "n/a"
    return out


def machine() -> dict[str, Any]:
    import torch

    from pahcl.data.cycles import CODE_VERSION

    return {"nproc": os.cpu_count(), "cpu_model": cpu_model(), "arch": platform.machine(),
            "mem_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "cuda": torch.cuda.is_available(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "versions": versions(), "date": now_utc(), "loadavg": loadavg(), "data_code_version": CODE_VERSION}


def cycles_note(j: dict | None) -> str:
    """One sentence: which cycle-building code (preprocessing, segmentation, windowing) a result was measured on."""
    m = (j or {}).get("machine")  # a dict from machine(); older benches stored a string here
    v = m.get("data_code_version") if isinstance(m, dict) else None
    if v:
        return f"Cycles: data code `{v}`."
    return ("Cycles: built by data code older than `pahcl-data-4` (not recorded in the result); on Yaseen that "
            "code segmented N 001-050 and MS 090-098 at half their period (docs/segmentation.md).")


def command(argv: Sequence[str] | None = None) -> str:
    """The command line as typed from the repo root (python bench/x.py ARGS)."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(REPO)
    except ValueError:
        pass
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(["python", str(script), *map(shlex.quote, args)])


def write_json(path: str | os.PathLike | None, obj: dict) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, p)
    print(f"wrote {p}", file=sys.stderr)


def worker_results(procs, what: str) -> list:
    """Wait for worker processes (stdout piped) and join the JSON lists each printed as its last
    ``RESULT <json>`` line; a worker without one is an error naming ``what``."""
    out = []
    for p in procs:
        text, _ = p.communicate()
        line = next((ln for ln in reversed(text.splitlines()) if ln.startswith("RESULT ")), None)
        if line is None:
            raise RuntimeError(f"{what} worker failed (rc {p.returncode})")
        out += json.loads(line[7:])
    return out


def spread(values: Sequence[float]) -> dict[str, float]:
    v = [float(x) for x in values]
    if not v:
        return {"n": 0}
    return {"n": len(v), "median": statistics.median(v), "mean": statistics.fmean(v), "min": min(v), "max": max(v),
            "std": statistics.stdev(v) if len(v) > 1 else 0.0}


def fmt_spread(s: dict, nd: int = 3) -> str:
    if not s or not s.get("n"):
        return "—"
    return f"{s['median']:.{nd}f} ({s['min']:.{nd}f}–{s['max']:.{nd}f})"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)
