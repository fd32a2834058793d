#!/usr/bin/env python
"""Screenshots of the MLflow UI for README.md and docs/search.md, taken from a real search (not a benchmark;
bench/run_all.py does not run it).

Exact commands (from the repository root):

    # the default search (moco_stage2; on a CPU-only machine its synthetic_cpu budget) into a temporary
    # results dir, then docs/img/mlflow_trials_table.png and docs/img/mlflow_trials_charts.png
    .venv/bin/python bench/mlflow_screenshots.py

    # shoot the store of searches that already ran (results/mlflow.db), no new search
    .venv/bin/python bench/mlflow_screenshots.py --results-dir results

    # a minimal end-to-end check: the smoke search, screenshots into a temporary dir (docs/img untouched)
    .venv/bin/python bench/mlflow_screenshots.py --smoke-test

Needs Debian's chromium (apt-get install chromium) and Playwright (requirements/tools.lock, `make setup`);
Playwright drives /usr/bin/chromium and never downloads a browser. `mlflow ui` runs in its own process
group and is ended as a group (tune.mlflow_utils.stop_ui). The PNGs are reduced to a 64-colour palette.
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from tune.mlflow_utils import (
    EXPERIMENT_NAME, _client, local_tracking_uri, parse_compare_trials_message, start_ui, stop_ui, trials_url,
)

IMG = REPO / "docs" / "img"
VIEWPORT = {"width": 1500, "height": 860}


def run_search(results: Path, smoke: bool) -> dict[str, str]:
    """Run the search as a user would; returns the printed command and URLs."""
    cmd = [sys.executable, str(REPO / "tune" / "run_search.py"), "--space", "moco_stage2", "--results-dir", str(results)]
    cmd += ["--smoke-test"] if smoke else []
    print("[shots] " + " ".join(cmd), flush=True)
    lines = []
    with subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:  # the search's own output, as it comes
            print(line, end="", flush=True)
            lines.append(line)
    if proc.returncode != 0:
        sys.exit(f"[shots] the search failed (exit {proc.returncode})")
    printed = parse_compare_trials_message("".join(lines))
    if not {"trials", "charts"} <= set(printed):
        sys.exit("[shots] the search printed no trials URLs")
    return printed


def existing_store(results: Path) -> dict[str, str]:
    uri = local_tracking_uri(results)
    if not (results / "mlflow.db").exists():
        sys.exit(f"[shots] --results-dir {results}: no mlflow.db there; run a search first or omit --results-dir")
    exp = _client(uri).get_experiment_by_name(EXPERIMENT_NAME)
    if exp is None:
        sys.exit(f"[shots] {uri}: no experiment {EXPERIMENT_NAME!r}; run a search first")
    return {"trials": trials_url(uri, exp.experiment_id), "charts": trials_url(uri, exp.experiment_id, charts=True)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(base: str, proc, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    sys.exit("[shots] mlflow ui did not start")


def _save(page, path: Path) -> None:
    from PIL import Image

    page.screenshot(path=str(path))
    Image.open(path).convert("RGB").quantize(colors=64).save(path, optimize=True)
    print(f"[shots] wrote {path} ({path.stat().st_size // 1024} KiB)", flush=True)


def shoot(uri: str, urls: dict[str, str], out_dir: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    port = _free_port()
    proc = start_ui(uri, port, Path(sys.executable).with_name("mlflow"))
    at = f"127.0.0.1:{port}"
    try:
        _wait_health(f"http://{at}", proc)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            try:
                page = browser.new_page(viewport=VIEWPORT)
                page.set_default_timeout(240_000)
                page.goto(urls["trials"].replace("127.0.0.1:5000", at))
                page.locator('[role="row"]', has_text="#").first.wait_for()  # trial names end in #N
                page.locator('button[aria-label="Close"]').last.click()  # the assistant panel
                page.wait_for_timeout(2000)
                table = out_dir / "mlflow_trials_table.png"
                _save(page, table)
                page.goto(urls["charts"].replace("127.0.0.1:5000", at))
                page.get_by_text("grad_norm", exact=True).first.wait_for()
                page.wait_for_timeout(5000)  # let the line charts draw
                charts = out_dir / "mlflow_trials_charts.png"
                _save(page, charts)
            finally:
                browser.close()
    finally:
        stop_ui(proc)
    return [table, charts]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results-dir", default=None, help="shoot this results dir's store instead of running a search")
    p.add_argument("--smoke-test", action="store_true", help="smoke search; screenshots into a temporary dir")
    p.add_argument("--out", default=None, help=f"where the PNGs go (default {IMG.relative_to(REPO)})")
    a = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="pahcl-shots-"))
    results = Path(a.results_dir).resolve() if a.results_dir else tmp / "results"
    urls = existing_store(results) if a.results_dir else run_search(results, a.smoke_test)
    out_dir = Path(a.out) if a.out else (tmp if a.smoke_test else IMG)
    out_dir.mkdir(parents=True, exist_ok=True)
    shoot(local_tracking_uri(results), urls, out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
