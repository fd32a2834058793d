"""Run the CPU benchmarks and (re)write docs/benchmarks.md from their JSON results.

    python bench/run_all.py                          # every bench (~1 h on 2 cores), then the doc
    python bench/run_all.py --smoke-test             # every bench with --smoke-test (minutes); doc -> bench/results/smoke/
    python bench/run_all.py --only harness_overhead concurrency      # re-run some, keep the others' JSON
    python bench/run_all.py --skip search_efficiency search_efficiency_yaseen   # all but the longest two (~25 min)
    python bench/run_all.py --render-only            # just rewrite docs/benchmarks.md from bench/results/*.json

Raw results: bench/results/<bench>.json (not committed), logs in bench/results/logs/. The doc is
regenerated as a whole from the JSON files (each section names the exact command that produced
it, its date and the load average during it). Sections for results that are not re-run here are
rendered when their JSON exists: the Yaseen linear probe (``bench/linear_probe_yaseen.py --out
bench/results/linear_probe_yaseen.json`` after the 30-epoch pretraining of docs/training.md) and
the training-step throughput (``bench/train_throughput.py --out bench/results/train_throughput.json``), and
the GPU acceptance check (``make gpu-check``: ``bench/gpu_check.py``; "not run" without its JSON).
Text below the line ``<!-- KEEP BELOW: ... -->`` in docs/benchmarks.md is kept verbatim.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, RESULTS, cycles_note, fmt_spread, loadavg, machine, md_table, now_utc

KEEP_MARK = "<!-- KEEP BELOW: text after this line is kept verbatim by bench/run_all.py -->"

# name -> (script + arguments of the full run, arguments of the smoke run: they replace the full run's)
BENCHES: dict[str, tuple[list[str], list[str]]] = {
    "harness_overhead": (["bench/harness_overhead.py"], ["--smoke-test"]),
    "concurrency": (["bench/concurrency.py"], ["--smoke-test"]),
    "data_path": (["bench/data_path.py"], ["--smoke-test"]),
    "segmentation_f1": (["bench/segmentation_f1.py", "--heldout-summary"], []),
    "mamba_backends": (["bench/mamba_backends.py", "--skip-large", "--repeats", "3", "--only", "full fused b8,full naive b8,small"],
                       ["--smoke-test"]),
    "search_efficiency": (["bench/search_efficiency.py"], ["--smoke-test"]),
    "search_efficiency_yaseen": (["bench/search_efficiency.py", "--data", "yaseen:../shared/data/yaseen2018"],
                                 ["--smoke-test"]),
    "preprocess_throughput": (["bench/preprocess_throughput.py"], ["--smoke-test"]),
    "objective_noise": (["bench/objective_noise.py"], ["--smoke-test", "--data", "synthetic:40"]),
}


def run_bench(name: str, smoke: bool, out_dir: Path, timeout: float) -> dict:
    args, smoke_args = BENCHES[name]
    out = out_dir / f"{name}.json"
    cmd = [sys.executable, *([args[0], *smoke_args] if smoke else args), "--out", str(out.relative_to(REPO))]
    log = out_dir / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    l0, t0 = loadavg(), time.perf_counter()
    print(f"[run_all] {name}: {' '.join(cmd[1:])} (load {l0[0]:.2f})", flush=True)
    with open(log, "w") as f:
        try:
            p = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=timeout)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            rc = 124
    wall = time.perf_counter() - t0
    print(f"[run_all] {name}: rc {rc}, {wall:.0f} s, load {loadavg()[0]:.2f}; log {log.relative_to(REPO)}", flush=True)
    return {"name": name, "rc": rc, "wall_s": wall, "load_start": l0, "load_end": loadavg(), "log": str(log)}


# ----------------------------------------------------------------------------- rendering


def _load(d: Path, name: str) -> dict | None:
    p = d / f"{name}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _mtime(d: Path, name: str) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime((d / f"{name}.json").stat().st_mtime))
    except OSError:
        return "?"


def _when(j: dict) -> str:
    m = j.get("machine") or {}
    la, le = m.get("loadavg"), m.get("loadavg_end")
    s = f"{m.get('date', '?')}"
    if la:
        s += f"; load average (1/5/15 min) at start {la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}"
    if le:
        s += f", at end {le[0]:.2f}/{le[1]:.2f}/{le[2]:.2f}"
    return s


def _md(text: str) -> str:
    """A blank line between a table's last row and following text (older JSON lacks it)."""
    lines = text.splitlines()
    out = []
    for i, ln in enumerate(lines):
        if i and out and out[-1].startswith("|") and ln and not ln.startswith("|"):
            out.append("")
        out.append(ln)
    return "\n".join(out)


def _cmd(c: str) -> str:
    return f"```\n{c}\n```"


def sec_harness(j: dict | None) -> str:
    h = "## 1. Harness overhead: bare Trainer vs one Ray Tune trial with MLflow logging\n\n"
    if not j:
        return h + "Not run yet: `python bench/harness_overhead.py --out bench/results/harness_overhead.json`.\n"
    s = j["summary"]
    r = s["ratio_step_mean"]
    verdict = ("within" if r["median"] <= 1.03 else "above") + " the 1.03 target"
    return (h + _cmd(j["command"]) + f"\n\n{_when(j)}.\n\n"
            "Same optimizer steps (same config built the way `tune/trainable.py` builds it, same seed, same data "
            "cache, one torch thread, `cpus_per_trial: 1`) run by the bare `pahcl.train.Trainer` and by the "
            "service's trainable inside a one-trial search started through `tune.run_search.main` (Optuna searcher, "
            "ASHA, MLflow child run logging every step: the tiny preset's default `log_interval` 1, checkpoint + "
            "`tune.report` every epoch). Runs interleaved bare, ray, bare, ray, ...; each a fresh process. "
            "Timed region: intervals between consecutive optimizer steps of the same epoch, from a callback "
            "that stores `perf_counter()` after every step in both paths (in the trial right after the MLflow "
            "step callback, so its cost is inside the interval); Ray start-up, data loading and the epoch "
            "boundaries (validation, and in the trial the MLflow flush, checkpoint and report) are outside it "
            "and reported separately.\n\n"
            + _md(j["markdown"]) + "\n\n"
            f"**Step-time ratio trial / bare: {fmt_spread(r)} (median (min–max) over {r['n']} pairs), {verdict}**; "
            f"pooled over all runs (mean step of the trial runs / mean step of the bare runs) {_pooled(j):.3f}. "
            + (f"CPU time per step, which the load of other work on the machine disturbs less than wall time: training "
               f"thread {fmt_spread(s['ratio_thread_cpu'])}, whole trial process (incl. the MLflow flusher thread and "
               f"Ray's threads in the worker) {fmt_spread(s['ratio_process_cpu'])}. " if "ratio_thread_cpu" in s else "")
            + 
            f"End-to-end wall (Python start to exit) is dominated by start-up: "
            f"{fmt_spread(s['bare_e2e_s'], 1)} s bare vs {fmt_spread(s['ray_e2e_s'], 1)} s through Ray "
            f"(Ray start, worker start and imports, MLflow store and runs, results and plots).\n")


def _pooled(j: dict) -> float:
    runs = [r for r in j["runs"] if not r.get("warmup")]
    b = [r["step_s_mean"] for r in runs if r["kind"] == "bare"]
    y = [r["step_s_mean"] for r in runs if r["kind"] == "ray"]
    return (sum(y) / len(y)) / (sum(b) / len(b)) if b and y else float("nan")


def sec_search(J: dict) -> str:
    """Section 2: bench/search_efficiency.py, one run per data set (issue 12 item 7)."""
    from search_efficiency import RUNS, section

    return section({n: J.get(n) for n in RUNS})


def sec_concurrency(j: dict | None) -> str:
    h = "## 3. Concurrency and packing\n\n"
    if not j:
        return h + "Not run yet: `python bench/concurrency.py --out bench/results/concurrency.json`.\n"
    rows = j["cpu"]
    txt = h + "### CPU: 1 vs 2 concurrent trials\n\n" + _cmd(j["command"]) + f"\n\n{_when(j)}.\n\n"
    txt += ("Each trial is its own process running the real optimizer step (data loading from the Trainer's "
            "DataLoader included, validation not) on the synthetic training split; all processes are released "
            f"together after warm-up and train for {j['args']['seconds']:.0f} s. Preset tiny with the CPU search's "
            "batch 8 x 2 and queue 256.\n\n" + _md(j.get("cpu_markdown", "")) + "\n\n")
    by = {(r["preset"], r["trials"], r["threads_per_trial"]): r["aggregate_cycles_per_s"] for r in rows}
    for preset in dict.fromkeys(r["preset"] for r in rows):
        one, two, thr = by.get((preset, 1, 1)), by.get((preset, 2, 1)), by.get((preset, 1, 2))
        if one and two:
            txt += (f"**{preset}: 2 concurrent 1-thread trials give {two / one:.2f}x the aggregate throughput of one "
                    f"1-thread trial**" + (f" and {two / thr:.2f}x that of one 2-thread trial" if thr else "") + ".\n")
        if one and thr and thr < one:
            la = (j.get("machine") or {}).get("loadavg") or [0]
            txt += (f"\nOne process with 2 torch threads ran at {thr / one:.2f}x the speed of one with 1 thread (load "
                    f"{la[0]:.1f} at the start of this bench): an OpenMP team of 2 on a 2-core machine shared with other "
                    "processes waits at every parallel region for its descheduled thread. The CPU search already runs "
                    "1 thread per trial (`cpus_per_trial: 1`); a CPU `pahcl.pretrain` run uses torch's default (one "
                    "thread per core) and is exposed to this when the machine is shared (see also section 5).\n")
    txt += ("\n### GPU: peak memory per configuration, `auto` packing, packed vs alone\n\n"
            "Code path: `python bench/concurrency.py --gpu --no-cpu --out bench/results/concurrency_gpu.json` "
            "(runs by default when CUDA is present). Per stage space (full preset): one training step of every "
            "batch-size x queue-size configuration, peak memory read by `tune.resources.measure_peak_gpu_memory` "
            "(the probe `--gpus-per-trial auto` uses); the packing decision of `tune.resources.plan_resources` "
            "(trials per GPU, per-process memory cap); then aggregate cycles/s of k packed fractional trials "
            "(each capped with `torch.cuda.set_per_process_memory_fraction`, as the trainable does) vs one alone.\n\n")
    gj = _load(Path(j.get("_dir", RESULTS)), "concurrency_gpu")
    g = (gj or {}).get("gpu") or j.get("gpu") or {}
    if g.get("status") == "ok":
        txt += _cmd((gj or j)["command"]) + "\n\n" + (gj or j)["gpu_markdown"] + "\n"
    else:
        txt += ("**Not run: no GPU was lent to this task** (this machine has no CUDA device; "
                f"the bench recorded: \"{g.get('status', 'not run')}\"). No GPU figure is claimed here.\n")
    return txt


def _quote_only(cmd: str) -> str:
    """mamba_backends.py records its argv unquoted: quote the --only value so the command can be pasted."""
    import re

    return re.sub(r"--only (.+?) --", lambda m: f"--only '{m.group(1)}' --" if " " in m.group(1) else m.group(0), cmd)


def sec_mamba(j: dict | None) -> str:
    h = "## 4. Mamba backends (CPU)\n\n"
    if not j:
        return h + "Not run yet.\n"
    m = j["meta"]
    la = m.get("loadavg") or [0, 0, 0]
    rows = {r["spec"]["name"]: r["result"] for r in j["rows"]}
    txt = (h + _cmd(_quote_only(m["command"])) + f"\n\n{j.get('_date', '')}; load average at the end "
           f"{la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f}; {m.get('total_s', 0) / 60:.1f} min; torch {m['torch']}, "
           f"{m['cpu_count']} CPUs, 2 torch threads per configuration (each in its own process).\n\n"
           "Encoder forward + backward (one warm-up, median of the timed iterations) of the pure-PyTorch Mamba "
           "block: `fused` = chunked scan in a custom autograd Function with per-chunk recompute (the default), "
           "`naive` = per-timestep Python loop keeping every state (reference). Peak RSS per configuration "
           "(own subprocess).\n\n" + _md(j["markdown"]) + "\n")
    for a, b in (("full fused b8", "full naive b8"), ("small fused b32", "small naive b32")):
        ra, rb = rows.get(a, {}), rows.get(b, {})
        if ra.get("status") == "ok" and rb.get("status") == "ok":
            txt += (f"\n{a.split()[0]}: fused vs naive fwd+bwd {ra['step_s']:.2f} s vs {rb['step_s']:.2f} s "
                    f"({rb['step_s'] / ra['step_s']:.2f}x), peak RSS {ra['peak_rss_gb']:.2f} vs {rb['peak_rss_gb']:.2f} GB.")
    full = j.get("_full")
    if full and full["meta"].get("total_s") != m.get("total_s"):
        fm = full["meta"]
        fl = fm.get("loadavg") or [0, 0, 0]
        txt += ("\n\nThe complete configuration set (incl. the checkpoint scan and the full size at batch 64), from an "
                "earlier run of the same script on this machine (`bench/results/mamba_backends_full.json`; "
                f"{fm.get('total_s', 0) / 60:.1f} min, load average at its end {fl[0]:.2f}/{fl[1]:.2f}/{fl[2]:.2f}, "
                "i.e. a heavily loaded machine: compare its rows with each other, not with the table above):\n\n"
                + _cmd(fm["command"]) + "\n\n" + _md(full["markdown"]))
    txt += ("\n\nCUDA rows (`mamba_ssm` kernels vs the torch scan, fp32 vs bf16 autocast) are produced by the same "
            "command on a CUDA machine; **not run: no GPU was lent to this task.**\n")
    return txt


def sec_data(j: dict | None) -> str:
    h = "## 5. Data path: preprocessing, loader, training step\n\n"
    if not j:
        return h + "Not run yet: `python bench/data_path.py --out bench/results/data_path.json`.\n"
    share = j["loader_share_of_step"]
    ld, st = j["loader"][0], j["step"]
    return (h + _cmd(j["command"]) + f"\n\n{_when(j)}.\n\n"
            "Preprocessing = what `load_cycles` does per recording on a cache miss (resample to 5 kHz, band-pass, "
            "spike removal, normalise, cycles from annotations or the automatic segmenter, windows), single "
            "process; reading is timed separately. Loader = `ContrastiveCycleDataset` + `DataLoader` built by "
            "`Trainer._loader` with the small (CPU) preset's settings. Step = the small preset's optimizer step "
            "on pre-loaded batches.\n\n" + _md(j["markdown"]) + "\n\n"
            f"**The loader delivers {ld['cycles_per_s']:.0f} cycles/s in the training process, the small-preset step "
            f"consumes {st['cycles_per_s']:.1f} cycles/s (with {st.get('torch_threads', '?')} torch thread(s), the faster "
            f"setting here): loading is {100 * share:.2f} % of a serial step, so the "
            "loader is not the bottleneck** (no workers needed on CPU; the step is dominated by the encoder, see "
            "section 4). Preprocessing runs once per data set and is cached (`<cache>/cycles-<key>/`).\n")


def sec_seg(j: dict | None) -> str:
    h = "## 6. Segmentation F1 (CirCor tiny, annotations hidden)\n\n"
    if not j:
        return h + "Not run yet: `python bench/segmentation_f1.py --out bench/results/segmentation_f1.json`.\n"
    o = j["overall"]
    data = j["data"]
    kind, _, path = data.partition(":")
    if os.path.isabs(path):
        data = f"{kind}:{os.path.relpath(path, REPO)}"
    return (h + _cmd(j["command"]) + f"\n\n{j.get('_date', '')}: {j['recordings']} recordings of `{data}`, tolerance "
            f"{j['tolerance_s'] * 1000:.0f} ms, {j['seconds']:.1f} s. Method and discussion: docs/segmentation.md.\n\n"
            + _md(j["markdown"]) + "\n\n"
            f"**S1 F1 {o['S1']['f1']:.3f}** (precision {o['S1']['precision']:.3f}, recall {o['S1']['recall']:.3f}); "
            f"S2 F1 {o['S2']['f1']:.3f}.\n" + _seg_heldout(j))


def _seg_heldout(j: dict) -> str:
    if not j.get("heldout_summary"):
        return ""
    return ("\nS1 F1 of the untrained segmenter and of the trained emission models, each patient decoded by a model "
            "trained on the other patients (leave one patient out):\n\n" + _md(j["heldout_summary"]) + "\n")


PROBE_SUPERSEDED = ("One pretraining (the default configuration) on all 400 recordings, one split direction, the "
                    "cycles and the raw (not z-scored) features of its date: a record of where issue 13 started, "
                    "superseded by section 9 (both directions, 5 seeds, pretraining on the training side only).")


def sec_probe(j: dict | None) -> str:
    h = "## 7. Linear probe (and kNN) on Yaseen\n\n"
    cmd = ("python -m pahcl.pretrain --data yaseen:../shared/data/yaseen2018 --out runs/y --set training.num_epochs=30\n"
           "python bench/linear_probe_yaseen.py --checkpoint runs/y/checkpoint_last.pt --cache-dir runs/y/cache "
           "--out bench/results/linear_probe_yaseen.json")
    if not j:
        return (h + "Not re-run by `bench/run_all.py` (it needs the 30-epoch Yaseen pretraining of docs/training.md). "
                "Commands:\n\n" + _cmd(cmd) + "\n\nNo `bench/results/linear_probe_yaseen.json` was present when this "
                "file was generated; the measured table, when there is one, is in docs/training.md.\n")
    rows = j["rows"]
    classes = rows[0].get("classes", [])
    body = md_table(["protocol", "features", "dim", "C", "accuracy", "balanced acc."]
                    + [f"recall {c}" for c in classes] + ["n test"],
                    [[r.get("protocol", "linear"), r["features"], r["dim"], r.get("probe_c", "–"), f"{r['accuracy']:.3f}",
                      f"{r['balanced_accuracy']:.3f}"]
                     + [f"{r['per_class_recall'].get(c, float('nan')):.2f}" for c in classes] + [r["n"]] for r in rows])
    lengths = ""
    if j.get("cycle_lengths"):
        lengths = ("\n\nSegmented cycle length per class and split side (automatic segmentation; the encoder's "
                   "window holds one cycle, zero-padded, so features partly encode it):\n\n"
                   + md_table(["class", "recordings", "cycles", "median length s", "fraction < 0.45 s"],
                              [[r["label"], r["side"], r["n"], f"{r['median_s']:.2f}", f"{r['short_frac']:.2f}"]
                               for r in j["cycle_lengths"]]))
    return (h + "Not re-run by `bench/run_all.py`; rendered from `bench/results/linear_probe_yaseen.json` "
            f"({j.get('date')}; {j.get('machine')}; checkpoint `{j.get('checkpoint')}`, epoch "
            f"{j.get('checkpoint_epoch')}; pretraining run and its time: docs/training.md). Train: recordings 001-050 of each class, test: 051-100, recording level; "
            "linear-probe C chosen by 5-fold cross-validation on the training side, grouped by recording. "
            "Discussion: docs/training.md. " + PROBE_SUPERSEDED + " Commands:\n\n" + _cmd(cmd) + "\n\n" + body
            + lengths + "\n")


def sec_throughput(j: dict | None) -> str:
    if not j:
        return ""
    rows = [[r["preset"], r["mode"], f"{r['batch_size']} x {r['accum']}", f"{r['params'] / 1e6:.2f} M",
             f"{r['sec_per_step']:.2f}", f"{r['cycles_per_s']:.1f}"] for r in j["rows"]]
    load = ""
    if j.get("load_start") and j.get("load_end"):
        load = f"; 1-minute load average {j['load_start'][0]:.2f} at start, {j['load_end'][0]:.2f} at end"
    return ("## 8. Training-step throughput (SimCLR vs MoCo)\n\nRendered from `bench/results/train_throughput.json` "
            f"({j.get('date')}; {j.get('machine')}{load}). Discussion: docs/training.md.\n\n" + _cmd(j["command"]) + "\n\n"
            + md_table(["preset", "mode", "batch x accum", "params", "s/step", "cycles/s"], rows) + "\n")


def _gib(x) -> str:
    return "—" if x is None else f"{x:.2f}"


def _gpu_probe_rows(j: dict) -> list[list]:
    rows = []
    for r in j.get("probe") or []:
        if "ratio" not in r:
            rows.append([r.get("space"), r.get("skipped") or (r.get("probe") or {}).get("error") or
                         (r.get("trial") or {}).get("error"), "", "", "", "", ""])
            continue
        rows.append([r["space"], r["data"], _gib(r["predicted_need_gib"]), _gib(r["measured_gib"]), f"{r['ratio']:.2f}",
                     r.get("k_here", "—"), r["per_24gb_card"]])
    return rows


def sec_gpu(j: dict | None) -> str:
    h = "## 11. GPU acceptance (`make gpu-check`)\n\n"
    cmd = "make gpu-check   # = python bench/gpu_check.py --out bench/results/gpu_check.json"
    if not j or j.get("device") != "cuda":
        dry = ""
        if j and j.get("smoke"):
            dry = (f" A CPU dry run of the same script (`{j.get('command')}`, {j.get('date')}) exercised every part "
                   "at tiny sizes; its numbers are host memory on CPU and are not shown as GPU figures.")
        return (h + "**Not run**: no GPU was lent to this task. Command, for the day one is:\n\n" + _cmd(cmd) +
                "\n\nIt measures the CUDA tests (`-m gpu`), the memory probe's prediction vs the peak of a longer "
                "run with validation for each space's largest configuration, k processes packed under their "
                "caps vs one alone, bf16 vs fp32 step time at the full preset (batch 64, torch scan; mamba-ssm "
                "when importable)." + dry + "\n")
    m = j.get("machine") or {}
    out = [h + f"`{j['command']}` on {m.get('gpu')} ({j.get('date')}, {j.get('wall_s', 0):.0f} s; torch "
           f"{(m.get('versions') or {}).get('torch')}). Memory in GiB; need = peak reserve + CUDA context; "
           "the prediction adds the 10 % margin; \"per 24 GB card\" = floor(0.97 × 24e9 B / predicted need).", ""]
    t = j.get("cuda_tests") or {}
    out += [f"CUDA tests: `{t.get('command', '')}` -> {t.get('summary') or t.get('skipped') or t.get('error')}", ""]
    out += [md_table(["space", "data", "probe: predicted need", "measured (longer run + validation)",
                      "predicted / measured", "trials per GPU here", "per 24 GB card"], _gpu_probe_rows(j)), ""]
    p = j.get("packing") or {}
    if "aggregate_steps_per_s" in p:
        cap = "no cap" if p.get("cap_fraction") is None else f"cap {p['cap_fraction']:.3f} each"
        out.append(f"Packing (stage 2's largest configuration, {p['steps']} steps, {cap}): "
                   f"one alone {p['alone_steps_per_s']:.2f} steps/s; {p['k']} packed "
                   f"{p['aggregate_steps_per_s']:.2f} steps/s in aggregate ({p['speedup_vs_alone']:.2f}x).")
    else:
        out.append(f"Packing: {p.get('skipped') or p.get('errors')}")
    rows = [[r.get("backend"), r.get("amp") or "—", r.get("batch_size", ""), "—" if not r.get("median_step_s") else
             f"{r['median_step_s']:.3f}", _gib(r.get("peak_reserved_gib")), r.get("skipped") or r.get("error") or ""]
            for r in j.get("amp") or []]
    out += ["", md_table(["Mamba backend", "precision", "batch", "median s/step", "peak reserve GiB", "note"], rows)]
    return "\n".join(out) + "\n"


def sec_encoder_table(j: dict | None) -> str:
    """Section 9: bench/encoder_table.py (not re-run here: one pretraining per direction and seed)."""
    h = "## 9. Encoder vs baselines on Yaseen: both directions, seeds, recording level\n\n"
    cmd = ("nice -n 10 python bench/encoder_table.py --seeds 0 1 2 3 4 --epochs 30 --set training.warmup_epochs=1 "
           "--set model.embed_pool=cycle --set augmentation.prob_other_cycle=0.5 --set augmentation.prob_time_stretch=0.5 "
           "--set augmentation.prob_sub_gain=0.5 --set augmentation.prob_snr_noise=0.5 "
           "--set augmentation.prob_band_limit=0.3 --set model.embed_subs=true --jobs 2 "
           "--out bench/results/encoder_table.json")
    if not j:
        return (h + "Not re-run by `bench/run_all.py` (one pretraining per direction and seed). Command:\n\n"
                + _cmd(cmd) + "\n\nNo `bench/results/encoder_table.json` was present when this file was generated.\n")
    a = j["args"]
    sets = ", ".join(f"`{o}`" for o in a["overrides"])
    return (h + "Not re-run by `bench/run_all.py`; rendered from `bench/results/encoder_table.json`. Command:\n\n"
            + _cmd(j["command"]) + f"\n\n{j['date']}, {j['wall_s'] / 60:.0f} min, 1-minute load "
            f"{j['load_start'][0]:.1f} at start, {j['load_end'][0]:.1f} at end ({a['jobs']} runs at a time, "
            f"{a['threads']} torch thread each). Pretraining: preset `{a['preset']}`, {sets}; seeds {a['seeds']}; "
            "each encoder is pretrained on its TRAINING side only (the test recordings are never seen), "
            "recording level (mean of cycle scores); every feature set z-scored with the training side's statistics "
            "(`pahcl.evaluate.frozen_features`). *test*: fit on the training side, score the test side; *cv*: "
            "5-fold cross-validation inside the training side (grouped by recording, stratified by class), the "
            "number pretraining changes are decided by. Mean ± std over seeds (one value when one run). The "
            "baselines learn nothing, so they have one row per direction. Discussion: docs/training.md."
            + (" The encoders were trained by an earlier invocation with the same training configuration (the "
               "read-out-only overrides, `READOUT_ONLY` in the bench, aside) and their checkpoints reused (`reused` "
               "in the JSON): the wall time above is scoring only."
               if any(r.get("reused") for r in j["runs"]) else "") + " " + cycles_note(j) + "\n\n"
            + _md(j["markdown"]) + "\n")


def sec_preprocess(j: dict | None) -> str:
    """Section 10: bench/preprocess_throughput.py."""
    h = "## 10. Preprocessing throughput: 1 vs 2 processes, extrapolated to the full CirCor and PhysioNet 2016\n\n"
    if not j:
        return h + ("Not run yet: `python bench/preprocess_throughput.py --out "
                    "bench/results/preprocess_throughput.json`.\n")
    first = j["rows"][0]
    return (h + _cmd(j["command"]) + f"\n\n{j['date']}, {j['wall_s']:.0f} s, 1-minute load {j['load_start'][0]:.1f} "
            f"at start, {j['load_end'][0]:.1f} at end. `build_cycles(..., workers=N)` = `python -m pahcl.preprocess "
            "--workers N`, no cache, worker counts alternated within each repeat; median over repeats; process "
            "start-up included. CirCor is extrapolated at circor_tiny's rate per second of audio (its cycles come "
            "from the annotations), PhysioNet 2016 at Yaseen's (no annotations: the automatic segmenter runs on "
            "every recording). The extrapolation assumes the full sets' recordings last as long on average as "
            f"`{first['spec'].split(':')[0]}`'s ({first.get('assumed_mean_duration_s', float('nan')):.1f} s) and "
            "scales with the audio.\n\n" + _md(j["markdown"]) + "\n")


def sec_noise(j: dict | None) -> str:
    """Section 12: bench/objective_noise.py (issue 12 item 2)."""
    h = "## 12. Noise of the search objective against the differences it ranks\n\n"
    if not j:
        return h + "Not run yet: `python bench/objective_noise.py --out bench/results/objective_noise.json`.\n"
    from objective_noise import TRAIN_SEEDS, markdown

    def found(data: str, obj: str) -> dict | None:
        return next((r[obj] for r in j["summary"] if r["data"] == data and obj in r), None)

    def cell(data: str, obj: str) -> str:
        o = found(data, obj)
        if o is None:
            return "not measured"
        return (f"seed noise {o['seed_std']:.3f}, split noise {o['split_std']:.3f}, range {o['range']:.3f} "
                f"(seed noise alone: {o['null_range']:.3f}), noise / range **{o['noise_over_range']:.2f}**")

    y, full = "yaseen:../shared/data/yaseen2018", " [training.max_steps_per_epoch=0]"
    after = [o for o in (found("synthetic:480", "logo"), found(y, "logo")) if o]
    times = [o["range"] / o["null_range"] for o in after]
    after_note = ("" if not after else
                  f"The measured ranges are {min(times):.0f}-{max(times):.0f} times what seed noise alone would give, "
                  "so the differences are real, and one run's noise is "
                  + " and ".join(f"{o['noise_over_range']:.2f}" for o in after) + " of them. ")
    return (h + _cmd(j["command"].replace(" ; ", "\n")) + "\n\n" + markdown(j) + "\n\n" + cycles_note(j) + " "
            "moco_stage2's `synthetic_cpu` budget (tiny preset, 6 epochs x 6 optimizer steps unless a row says "
            f"otherwise), bare Trainer on the trial's exact config; training seeds {TRAIN_SEEDS[0]}-{TRAIN_SEEDS[-1]} "
            "with the split fixed, and the baseline with two more split seeds. Noise = the larger of the seed and "
            "split std of one run; range = the spread of the three configurations' means.\n\n"
            "**Before** (the search's metric `val/knn_acc` and the CPU default `synthetic:120`): "
            f"`synthetic:120`: {cell('synthetic:120', 'last')}; Yaseen: {cell(y, 'last')}. Which 5 patients validate "
            "moves `val/knn_acc` as much as the training seed does, and on `synthetic:120` the range is what seed "
            "noise alone gives: that ranking was noise.\n\n"
            "**After** (the shipped spaces' metric `val/logo_knn_acc`, leave-one-group-out kNN over training + "
            "validation cycles: every patient is scored against the others, so no choice of validation patients "
            "moves it; and the `synthetic_cpu` budgets on `synthetic:480`, 120 patients): "
            f"`synthetic:480`: {cell('synthetic:480', 'logo')}; Yaseen (the same budget, `--data`): {cell(y, 'logo')}. "
            + after_note + "At the shipped 36-step budget the leave-one-group-out "
            "objective has the smallest noise / range on every data set. Averaging the last 3 epochs changes nothing; recording-level kNN is "
            "noisier (fewer, correlated votes). `synthetic:480` costs about 3.7x the evaluation time of "
            "`synthetic:120` per trial (45 s vs 12 s, the training steps are the same), which the README's "
            "default-search time includes.\n\n"
            "**Tried and not adopted: longer trials** (full epochs instead of 6 capped steps, rows marked "
            "`max_steps_per_epoch=0`): the seed noise falls on Yaseen but the configurations converge, so the "
            f"ranking gets worse: Yaseen {cell(y + full, 'logo')}; `synthetic:120` {cell('synthetic:120' + full, 'logo')}. "
            "The learning rates of the space differ after 36 steps, not after 200-300.\n\n" + _paired_noise(j))


def _paired_noise(j: dict) -> str:
    """Section 12, second part: the paired differences (bench/objective_noise.py paired_markdown)."""
    from objective_noise import TRAIN_SEEDS, paired_findings, paired_markdown

    return ("Paired differences. Every trial of a search trains with the same seed and split (common random numbers), "
            "so the noise that decides the order of two configurations is the spread of their *paired* difference, not "
            "each one's own spread. Re-analysed from the same runs (`python bench/objective_noise.py --analyse "
            f"bench/results/objective_noise.json`, no training; mean ± std over training seeds {TRAIN_SEEDS[0]}-"
            f"{TRAIN_SEEDS[-1]} of the difference at equal seed, in brackets |mean| / std):\n\n" + paired_markdown(j)
            + "\n\n" + paired_findings(j) + f". With {len(TRAIN_SEEDS)} seeds each std is itself uncertain.\n")


def render(d: Path, run_info: dict | None = None, kept: str = "") -> str:
    m = machine()
    J = {n: _load(d, n) for n in ("harness_overhead", "search_efficiency", "search_efficiency_yaseen", "concurrency",
                                  "mamba_backends", "data_path", "segmentation_f1", "linear_probe_yaseen", "train_throughput",
                                  "encoder_table", "preprocess_throughput", "gpu_check", "objective_noise")}
    if J["concurrency"]:
        J["concurrency"]["_dir"] = str(d)
    if J["mamba_backends"]:
        J["mamba_backends"]["_full"] = _load(d, "mamba_backends_full")
    for n in ("mamba_backends", "segmentation_f1"):  # these two record no date: the file's time
        if J[n]:
            J[n]["_date"] = _mtime(d, n)
    v = m["versions"]
    head = ["# Benchmarks", "",
            "Generated by `python bench/run_all.py` from the JSON results in `bench/results/` (raw results are not "
            "committed; every section names the exact command that produced it, when, and the load average "
            "during it). Claims about speed in the other docs should point here.", "",
            "## Machine", "",
            md_table(["item", "value"], [
                ["CPU", f"{m['cpu_model']} ({m['arch']}), `nproc` = {m['nproc']}"],
                ["memory", f"{m['mem_gb']} GiB"],
                ["GPU", m["gpu"] or "none (no CUDA device; no GPU was lent to this task: every GPU row is marked not run)"],
                ["versions", f"Python {v['python']}, torch {v['torch']}, ray {v['ray']}, optuna {v['optuna']}, "
                             f"mlflow {v['mlflow']}, numpy {v['numpy']}, scipy {v['scipy']}"],
                ["rendered", m["date"]],
            ])]
    if run_info:
        for inv in run_info.get("invocations") or [run_info]:
            head += ["", f"`python bench/run_all.py {' '.join(inv['argv'])}` ran {inv['start']} – {inv['end']}; "
                         f"load average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in inv['load_start'])}, at end "
                         f"{'/'.join(f'{x:.2f}' for x in inv['load_end'])}."]
        head += ["", "The machine is shared (2 cores; other engineers' test runs were going on): each section states "
                     "the load average during its own run. Timings taken at a 1-minute load above ~1.5 carry that "
                     "noise; ratios from interleaved runs carry less of it than absolute times."]
        head += ["", md_table(["bench", "exit", "wall s", "load at start", "load at end"],
                              [[b["name"], b["rc"], f"{b['wall_s']:.0f}", f"{b['load_start'][0]:.2f}",
                                f"{b['load_end'][0]:.2f}"] for b in run_info["benches"]])]
    summary = headline(J)
    parts = ["\n".join(head), summary, findings(J), sec_harness(J["harness_overhead"]), sec_search(J),
             sec_concurrency(J["concurrency"]), sec_mamba(J["mamba_backends"]), sec_data(J["data_path"]),
             sec_seg(J["segmentation_f1"]), sec_probe(J["linear_probe_yaseen"])]
    tp = sec_throughput(J["train_throughput"])
    if tp:
        parts.append(tp)
    parts += [sec_encoder_table(J["encoder_table"]), sec_preprocess(J["preprocess_throughput"])]
    parts.append(sec_gpu(J["gpu_check"]))
    parts.append(sec_noise(J["objective_noise"]))
    parts.append("## Not run here\n\n* Every GPU figure (section 3's peak memory / `auto` packing / packed "
                 "throughput, section 4's CUDA rows, section 11): no GPU was lent to this task. The code paths exist "
                 "and run when CUDA is present; `make gpu-check` measures them in one command.\n* The 30-epoch Yaseen pretraining behind section 7 is not re-run by "
                 "`bench/run_all.py` (about 20 min on 2 idle cores): run separately, see docs/training.md.\n* The objective's "
                 "noise under the GPU budget (`synthetic_cuda`: full preset, `synthetic:3000`, 60 epochs): section 12 "
                 "measures the CPU budgets only (`bench/objective_noise.py` loads the `synthetic_cpu` budget; a GPU "
                 "measurement needs a CUDA machine and a budget option the bench does not have yet).")
    text = "\n\n".join(p.rstrip() for p in parts) + "\n\n" + KEEP_MARK + "\n"
    if kept.strip():
        text += "\n" + kept.lstrip("\n")  # exactly one blank line after the mark, however often re-rendered
    return text


def findings(J: dict) -> str:
    """What the numbers say for the service, with the figure each statement rests on."""
    out = []
    h = J["harness_overhead"]
    if h:
        s = h["summary"]
        r = s["ratio_step_mean"]
        pc = s.get("ratio_process_cpu")
        bare_cpu, ray_t, ray_p = (s.get("bare_thread_cpu_ms") or {}), (s.get("ray_thread_cpu_ms") or {}), \
            (s.get("ray_process_cpu_ms") or {})
        extra = ""
        if ray_t.get("n") and ray_p.get("n"):
            extra = (f" Inside the trial process the threads other than the training thread (MLflow's background "
                     f"flusher writing every step's 13 metrics to sqlite, Ray's worker threads) use "
                     f"{ray_p['median'] - ray_t['median']:.1f} ms of CPU per {ray_t['median']:.0f} ms step "
                     f"({100 * (ray_p['median'] - ray_t['median']) / ray_t['median']:.1f} %); on 2 cores with one "
                     "training thread this runs on the other core.")
        out.append(f"**Harness.** Per optimizer step a Ray trial with MLflow logging costs {fmt_spread(r)} x the bare "
                   f"Trainer's wall time (pooled over all runs {_pooled(h):.3f})" + (f" and {fmt_spread(pc)} x its CPU time" if pc else "") + "; nothing "
                   "Ray-specific runs per step (reporting, checkpointing and the synchronous MLflow flush happen at "
                   "epoch ends, see the epoch-boundary row)." + extra + (f" The spread of the ratio is run-to-run variation of the step itself, not harness work: the "
                   f"training thread's CPU time per step varies between runs of the same path (bare "
                   f"{bare_cpu['min']:.0f}–{bare_cpu['max']:.0f} ms, trial {ray_t['min']:.0f}–{ray_t['max']:.0f} ms) as much "
                   f"as between the paths (medians {bare_cpu['median']:.1f} vs {ray_t['median']:.1f} ms); more pairs "
                   "would narrow it. No change to `tune/` was made: no per-step harness cost above this noise was found to remove."
                   if bare_cpu.get("n") and ray_t.get("n") else "") + " Start-up is "
                   f"the visible cost: {fmt_spread(s['ray_e2e_s'], 0)} s end-to-end through the service vs "
                   f"{fmt_spread(s['bare_e2e_s'], 0)} s bare for the same steps.")
    from search_efficiency import RUNS, finding

    se = finding({n: J.get(n) for n in RUNS})
    if se:
        out.append(se)
    c = J["concurrency"]
    if c and c["cpu"]:
        by = {(r["preset"], r["trials"], r["threads_per_trial"]): r["aggregate_cycles_per_s"] for r in c["cpu"]}
        p = c["cpu"][0]["preset"]
        one, two, thr = by.get((p, 1, 1)), by.get((p, 2, 1)), by.get((p, 1, 2))
        if one and two:
            verdict = (": the CPU budget's `cpus_per_trial: 1`, 2 at a time, is the right packing here." if two >= 1.2 * one
                       else ". At the load of this run two trials did not gain over one (other work held the second "
                            "core); the 2-thread row shows that a single trial should not take both threads either.")
            out.append(f"**Concurrency.** On this 2-core machine 2 one-thread trials give {two / one:.2f}x the aggregate "
                       f"throughput of one" + (f" and {two / thr:.2f}x that of one trial with 2 threads" if thr else "")
                       + verdict)
    d = J["data_path"]
    if d:
        out.append(f"**Data.** The loader is ~{d['loader'][0]['cycles_per_s'] / max(d['step']['cycles_per_s'], 1e-9):.0f}x "
                   "faster than the small preset consumes cycles; DataLoader workers would only add process start-up "
                   "on CPU (`num_workers: 0` in the CPU presets is right). Preprocessing is a one-off per data set "
                   "and cached.")
    return "## Findings\n\n" + "\n\n".join(out) if out else ""


def encoder_headline(j: dict) -> str:
    """Section 9 in one line: the pretrained encoder's mean test accuracy per direction and protocol beside
    random init and the pcg baseline, and in how many of those cells it is above both."""
    by = {(c["direction"], c["features"], c["protocol"]): c["test"] for c in j["summary"]}
    cells, wins = [], 0
    for d in dict.fromkeys(c["direction"] for c in j["summary"]):
        for p, name in (("knn", "kNN"), ("linear", "linear")):
            pre, rnd, pcg = (by.get((d, f, p), {}).get("mean") for f in ("pretrained", "random_init", "pcg"))
            if pre is None or rnd is None or pcg is None:
                continue
            wins += pre > rnd and pre > pcg
            cells.append(f"{d.replace(':', ' → ')} {name} **{pre:.3f}** (random init {rnd:.3f}, pcg {pcg:.3f})")
    n = by.get((next(iter(by))[0], "pretrained", "knn"), {}).get("n", 0)
    return (f"Encoder vs baselines on unseen Yaseen recordings (section 9, mean of {n} seeds, recording level): "
            + "; ".join(cells) + f"; above both in {wins} of the {len(cells)} direction x protocol cells.")


def headline(J: dict) -> str:
    items = []
    h = J["harness_overhead"]
    if h:
        s = h["summary"]
        items.append(f"Harness overhead (step time in a Ray trial with MLflow logging / bare Trainer): "
                     f"**{fmt_spread(s['ratio_step_mean'])}** (median (min–max), {s['ratio_step_mean']['n']} pairs; "
                     f"pooled {_pooled(h):.3f}; target <= 1.03); end-to-end incl. start-up {fmt_spread(s['ray_e2e_s'], 1)} s vs "
                     f"{fmt_spread(s['bare_e2e_s'], 1)} s.")
    from search_efficiency import RUNS, headline as search_headline

    items += search_headline({n: J.get(n) for n in RUNS})
    n = J.get("objective_noise")
    if n:
        cells = {(r["data"], o): r[o]["noise_over_range"] for r in n["summary"] for o in ("last", "logo") if o in r}
        now = [f"`{d}` **{cells[(d, 'logo')]:.2f}**" for d in ("synthetic:480", "yaseen:../shared/data/yaseen2018")
               if (d, "logo") in cells]
        before = [f"`{d}` {cells[(d, 'last')]:.2f}" for d in ("synthetic:120", "yaseen:../shared/data/yaseen2018")
                  if (d, "last") in cells]
        if now:
            items.append("Search objective noise / range of configurations at the CPU budget (section 12): "
                         f"`val/logo_knn_acc` {', '.join(now)}; before, `val/knn_acc`: {', '.join(before)}.")
    c = J["concurrency"]
    if c and c["cpu"]:
        by = {(r["preset"], r["trials"], r["threads_per_trial"]): r["aggregate_cycles_per_s"] for r in c["cpu"]}
        p = c["cpu"][0]["preset"]
        if (p, 1, 1) in by and (p, 2, 1) in by:
            items.append(f"Concurrency ({p}): 1 trial x 1 thread {by[(p, 1, 1)]:.1f} cycles/s, 1 x 2 threads "
                         f"{by.get((p, 1, 2), float('nan')):.1f}, **2 concurrent trials {by[(p, 2, 1)]:.1f} "
                         f"({by[(p, 2, 1)] / by[(p, 1, 1)]:.2f}x)**. GPU packing: not run (no GPU).")
    d = J["data_path"]
    if d:
        items.append(f"Data path: loader **{d['loader'][0]['cycles_per_s']:.0f} cycles/s** vs small-preset step "
                     f"**{d['step']['cycles_per_s']:.1f} cycles/s** (loading = {100 * d['loader_share_of_step']:.2f} % "
                     "of a serial step).")
    mb = J["mamba_backends"]
    if mb:
        rows = {r["spec"]["name"]: r["result"] for r in mb["rows"]}
        a, b = rows.get("full fused b8", {}), rows.get("full naive b8", {})
        if a.get("status") == "ok" and b.get("status") == "ok":
            items.append(f"Mamba (full size, batch 8, CPU): fused chunked scan {a['step_s']:.1f} s fwd+bwd, "
                         f"{a['peak_rss_gb']:.2f} GB vs naive loop {b['step_s']:.1f} s, {b['peak_rss_gb']:.2f} GB.")
    sg = J["segmentation_f1"]
    if sg:
        items.append(f"Segmentation (CirCor tiny): S1 F1 {sg['overall']['S1']['f1']:.3f}, S2 F1 "
                     f"{sg['overall']['S2']['f1']:.3f}.")
    et = J["encoder_table"]
    if et:
        items.append(encoder_headline(et))
    lp = J["linear_probe_yaseen"]
    if lp and not et:  # section 7 (one split, one seed, the old protocol) is superseded by section 9
        acc = {(r.get("protocol", "linear"), r["features"].split()[0]): r["accuracy"] for r in lp["rows"]}
        for proto in ("linear", "knn"):
            if (proto, "pretrained") in acc:
                items.append(f"Yaseen {proto} probe (recording level, 001-050 vs 051-100, epoch "
                             f"{lp.get('checkpoint_epoch')}): pretrained **{acc[(proto, 'pretrained')]:.3f}**, "
                             f"random-init {acc.get((proto, 'random-init'), float('nan')):.3f}, log-spectrogram "
                             f"{acc.get((proto, 'log-spectrogram'), float('nan')):.3f}.")
    return "## Headline numbers\n\n" + "\n".join(f"* {x}" for x in items) if items else "## Headline numbers\n\n(none yet)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke-test", action="store_true", help="every bench with --smoke-test; results and doc "
                    "under bench/results/smoke/")
    ap.add_argument("--only", nargs="+", choices=list(BENCHES), default=None)
    ap.add_argument("--skip", nargs="+", choices=list(BENCHES), default=[])
    ap.add_argument("--render-only", action="store_true", help="no bench: rewrite the doc from existing JSON")
    ap.add_argument("--doc", default=None, help="default docs/benchmarks.md (smoke: bench/results/smoke/benchmarks.md)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per bench")
    a = ap.parse_args(argv)
    out_dir = RESULTS / "smoke" if a.smoke_test else RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = Path(a.doc) if a.doc else (out_dir / "benchmarks.md" if a.smoke_test else REPO / "docs" / "benchmarks.md")
    info = None
    if not a.render_only:
        names = [n for n in (a.only or BENCHES) if n not in a.skip]
        info = {"argv": sys.argv[1:] if argv is None else list(argv), "start": now_utc(), "load_start": loadavg(),
                "benches": []}
        for n in names:
            info["benches"].append(run_bench(n, a.smoke_test, out_dir, a.timeout))
        info.update(end=now_utc(), load_end=loadavg())
        prev = out_dir / "run_all.json"
        if prev.exists() and (a.only or a.skip):  # a partial re-run: keep the other benches' entries
            try:
                old = json.loads(prev.read_text())
                runs = old.get("invocations") or [{k: old[k] for k in ("argv", "start", "end", "load_start", "load_end")
                                                   if k in old}]
                mine = {b["name"] for b in info["benches"]}
                info["benches"] = [b for b in old.get("benches", []) if b["name"] not in mine] + info["benches"]
                info["invocations"] = runs + [{k: info[k] for k in ("argv", "start", "end", "load_start", "load_end")}]
            except (OSError, ValueError, KeyError):
                pass
        prev.write_text(json.dumps(info, indent=1))
    elif (out_dir / "run_all.json").exists():
        info = json.loads((out_dir / "run_all.json").read_text())
    kept = ""
    if doc.exists():
        old = doc.read_text()
        if KEEP_MARK in old:
            kept = old.split(KEEP_MARK, 1)[1]
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(render(out_dir, info, kept))
    print(f"[run_all] wrote {doc}")
    return 0 if not info or all(b["rc"] == 0 for b in info["benches"]) else 1


if __name__ == "__main__":
    sys.exit(main())
