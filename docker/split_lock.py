#!/usr/bin/env python3
"""Split a uv/pip-compile hashed lock file into two lock files (stdlib only, used in docker/Dockerfile).

    python split_lock.py LOCK --main OUT_MAIN --source OUT_SOURCE NAME [NAME ...]

Entries named NAME (e.g. mamba-ssm, causal-conv1d: sdists whose build imports torch) go to
OUT_SOURCE, everything else to OUT_MAIN, each entry with all its --hash lines, so both halves can be
installed with --require-hashes: OUT_MAIN first, then OUT_SOURCE with --no-build-isolation.
Fails if a NAME is not in LOCK.
"""
import argparse
import re
import sys


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def entries(text: str):
    """Yield (canonical name, entry text); an entry is a `name==version \\` line and its indented lines."""
    current_name, current = None, []
    for line in text.splitlines(keepends=True):
        if line[:1].isspace() or not line.strip():
            if current_name is not None:
                current.append(line)
            continue
        if line.lstrip().startswith("#"):
            continue
        if current_name is not None:
            yield current_name, "".join(current)
        match = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==", line)
        if not match:
            raise SystemExit(f"split_lock: not a pinned requirement: {line.strip()!r}")
        current_name, current = canonical(match.group(1)), [line]
    if current_name is not None:
        yield current_name, "".join(current)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock")
    parser.add_argument("--main", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("names", nargs="+")
    args = parser.parse_args(argv)
    wanted = {canonical(n) for n in args.names}
    with open(args.lock, encoding="utf-8") as f:
        parts = list(entries(f.read()))
    missing = wanted - {name for name, _ in parts}
    if missing:
        print(f"split_lock: not in {args.lock}: {', '.join(sorted(missing))}", file=sys.stderr)
        return 1
    with open(args.main, "w", encoding="utf-8") as main_f, open(args.source, "w", encoding="utf-8") as src_f:
        for name, text in parts:
            (src_f if name in wanted else main_f).write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
