"""A real browser on a real ``mlflow ui``: what a search prints opens its trials, readable, in the
model-training view.

Debian's ``chromium`` (``apt-get install chromium``; ``.ci/run`` installs it) is driven by Playwright
(``requirements/tools.lock``; ``executable_path`` points at Debian's chromium, Playwright never downloads a
browser). A tiny search (tiny preset, 4 trials x 3 epochs, ASHA grace 1 / rf 2) writes a local sqlite
store; the ``mlflow ui`` command the search printed serves it, in its own process group, ended as a
group at the end. Every wait is bounded. Outside CI a missing chromium or Playwright skips the test; with
CI set it fails.

    .venv/bin/python -m pytest -q tests/tune/test_mlflow_ui_browser.py
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess

import pytest

from tune_helpers import wait_for_health

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
PAGE_TIMEOUT_MS = 240_000  # a first render on a loaded 2-core machine took ~50 s; bounded all the same


def _missing_tool(msg: str):
    if os.environ.get("CI"):
        pytest.fail(msg + "; CI must install it")
    pytest.skip(msg)


def _browser_tools():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing_tool("playwright is not installed (requirements/tools.lock; make setup installs it)")
    path = shutil.which("chromium") or CHROMIUM
    if not os.path.exists(path):
        _missing_tool("chromium not found (apt-get install chromium; .ci/run does)")
    return sync_playwright, path


@contextlib.contextmanager
def _mlflow_ui(command: list[str], port: int):
    """The printed command, on 127.0.0.1:PORT with one worker, in its own process group; the whole group
    is ended afterwards (SIGTERM, then SIGKILL) and must be gone."""
    from tune.mlflow_utils import stop_ui

    proc = subprocess.Popen(command + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env=dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true"))
    try:
        wait_for_health(f"http://127.0.0.1:{port}", proc, timeout=300)
        yield proc
    finally:
        stop_ui(proc)
        with pytest.raises(ProcessLookupError):
            os.killpg(proc.pid, 0)  # no process of the group is left


def test_printed_urls_open_the_trials_in_a_real_browser(ray_session, space_file, tmp_path, free_port, monkeypatch):
    sync_playwright, chromium = _browser_tools()
    monkeypatch.delenv("PAHCL_MLFLOW_UI_URL", raising=False)
    from mlflow.tracking import MlflowClient

    from tune.run_search import main

    space = space_file(num_samples=4, max_epochs=3)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        res = main(["--space", str(space), "--results-dir", str(tmp_path / "results")])
    assert res["exit_code"] == 0
    client = MlflowClient(res["tracking_uri"])
    parent = client.get_run(res["parent_run_id"])
    kids = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(kids) == 4
    knn = {k.info.run_name: k.data.metrics["val/knn_acc"] for k in kids}
    assert not any(n.startswith("train_pahcl_") for n in knn), knn  # named by their parameters, not Ray's ids
    assert all(k.info.status == "FINISHED" for k in kids), [k.info.status for k in kids]  # ASHA stops included

    from tune.mlflow_utils import parse_compare_trials_message

    printed = parse_compare_trials_message(out.getvalue())
    assert {"command", "trials", "charts", "parent run"} <= set(printed), out.getvalue()[-3000:]
    command = shlex.split(printed["command"])
    assert command[1:] == ["ui", "--backend-store-uri", res["tracking_uri"]]
    for key in ("trials", "charts", "parent run"):
        assert printed[key].startswith("http://127.0.0.1:5000/#/experiments/"), printed
        assert "workflowType=machine_learning" in printed[key], printed

    with _mlflow_ui(command, free_port), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 900})
            page.set_default_timeout(PAGE_TIMEOUT_MS)
            at = f"127.0.0.1:{free_port}"

            # 1. the trials: the model-training runs view, the parent and its trials, val/knn_acc for each
            page.goto(printed["trials"].replace("127.0.0.1:5000", at))
            page.get_by_text("matching runs").first.wait_for()
            assert "/runs" in page.url and "workflowType=machine_learning" in page.url, page.url
            page.get_by_text(parent.info.run_name, exact=True).first.wait_for()
            header = page.locator('[role="columnheader"]', has_text="val/knn_acc")
            header.first.wait_for()
            for name, value in knn.items():
                page.get_by_text(name, exact=True).first.wait_for()
                index = page.locator('[role="row"]', has_text=name).first.get_attribute("row-index")
                cells = page.locator(f'[role="row"][row-index="{index}"]')
                text = " ".join(cells.nth(i).inner_text() for i in range(cells.count()))
                shown = [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)]  # 0.0 is shown as "0"
                assert any(abs(x - value) < 1e-6 for x in shown), (name, value, text)
            assert page.get_by_text("No data available").count() == 0  # not the GenAI traces overview

            # 2. the parent run: its description holds the verdict and the ranked table of named trials
            page.goto(printed["parent run"].replace("127.0.0.1:5000", at))
            page.get_by_text("Verdict:").first.wait_for()
            more = page.get_by_text("Show more", exact=True)
            if more.count():
                more.first.click()
            for name in knn:  # links to the trials' runs in the ranked table
                page.locator('[data-testid="note-editor-preview-content"] a', has_text=name).first.wait_for()
        finally:
            browser.close()
