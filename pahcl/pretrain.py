"""CLI: PA-HCL contrastive pretraining.

    # smoke test (tiny preset, synthetic:8, 2 epochs of a few steps; seconds)
    python -m pahcl.pretrain --out out/smoke --smoke-test

    # Yaseen on CPU (preset auto -> small on CPU, full on CUDA), 30 epochs
    python -m pahcl.pretrain --data yaseen:../shared/data/yaseen2018 --out runs/y --set training.num_epochs=30

    # resume the same run from runs/y/checkpoint_last.pt (config and data spec taken from the checkpoint;
    # --set still applies; other data is refused unless --allow-data-change)
    python -m pahcl.pretrain --out runs/y --resume

    # a complete config file (a search's results/<stage>/best_config.yaml, any config.yaml written here)
    # runs exactly as written: no preset is merged over it unless --preset is given
    python -m pahcl.pretrain --config results/moco_stage2/best_config.yaml --data circor:/data/circor --out runs/best

    # any config key: --set section.key=value (repeatable); --preset auto|full|small|tiny
    python -m pahcl.pretrain --config pahcl/configs/pretrain.yaml --preset small --set model.use_moco=false --out runs/simclr

Writes DIR/config.yaml, DIR/checkpoint_last.pt (every epoch), DIR/checkpoint_epoch{N}.pt (every
training.save_interval epochs and the last), DIR/metrics.csv (one row per epoch), the cycle cache in
DIR/cache (or --cache-dir), and prints a final one-line JSON summary on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import torch


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m pahcl.pretrain", description="PA-HCL contrastive pretraining")
    p.add_argument("--config", default=None, help="base YAML (default pahcl/configs/pretrain.yaml)")
    p.add_argument("--data", default=None, help="data spec KIND:PATH (synthetic, synthetic:N, wav:, circor:, yaseen:, "
                                                 "physionet2016:); default synthetic")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, repeatable (e.g. training.num_epochs=30)")
    p.add_argument("--preset", default=None, help="auto (full on CUDA, small on CPU) | full | small | tiny; default "
                   "auto, or none when --config is a complete config (e.g. a search's best_config.yaml)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--cache-dir", default=None, help="cycle cache directory (default OUT/cache)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint_last.pt (on the data the "
                   "checkpoint records; --data may only repeat it)")
    p.add_argument("--allow-data-change", action="store_true", help="with --resume: continue on data other than "
                   "the checkpoint's (files or data.* settings changed, or another --data)")
    p.add_argument("--smoke-test", action="store_true", help="tiny preset, synthetic:8, 2 epochs of <= 2 steps")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def resume_data_spec(given: str | None, recorded: dict | None, data_cfg, allow_change: bool = False) -> str:
    """The data spec a resumed run trains on: the checkpoint's own unless ``--data`` names other data,
    which is refused (``ConfigError``) unless ``allow_change``: one run, one data set."""
    from pahcl.config import ConfigError
    from pahcl.data.cycles import cache_key
    from pahcl.data.readers import absolute_spec, parse_spec

    rec_spec, rec_fp = (recorded or {}).get("spec") or "", (recorded or {}).get("fingerprint") or ""
    if given is None and not rec_spec:
        raise ConfigError("--data: the checkpoint does not record its data spec (written by an older version); "
                          "pass the --data it was trained on")
    spec = absolute_spec(given) if given is not None else rec_spec
    if allow_change or not rec_spec:
        return spec
    if spec != rec_spec:
        raise ConfigError(f"--data {given}: the checkpoint was trained on {rec_spec}; resuming on other data would "
                          "mix two data sets in one run. Resume without --data, or add --allow-data-change")
    if rec_fp and cache_key(parse_spec(spec), data_cfg)[0] != rec_fp:
        raise ConfigError(f"--data {spec}: its files or the data.* settings changed since the checkpoint was "
                          "written. Restore them, or add --allow-data-change to continue on the changed data")
    return spec


def _run_setup(args, overrides, preset, why, say):
    """(config, data spec, checkpoint state or None) for a new or resumed run; raises ConfigError /
    CheckpointError / DataSpecError before anything is written."""
    from pahcl.checkpoint import load_checkpoint
    from pahcl.config import build_config, load_config
    from pahcl.train import check_runtime

    ckpt_state = None
    if args.resume:
        ckpt = Path(args.out) / "checkpoint_last.pt"
        ckpt_state = load_checkpoint(ckpt)
        cfg = build_config(ckpt_state["config"], overrides)
        spec = resume_data_spec(args.data, ckpt_state.get("data"), cfg.data, args.allow_data_change)
        say(f"resuming from {ckpt} (epoch {ckpt_state['epoch']}, step {ckpt_state['step']}); config and data "
            f"({spec}) from the checkpoint")
    else:
        cfg = load_config(args.config, overrides, preset=preset)
        spec = args.data or ("synthetic:8" if args.smoke_test else "synthetic")
        say(f"preset: {preset or 'none'} ({why})")
    check_runtime(cfg)
    return cfg, spec, ckpt_state


def _preset_and_overrides(args) -> tuple[list[str], str | None, str]:
    """(overrides, preset, why): --smoke-test's tiny settings come first so --set still wins."""
    from pahcl.config import resolve_preset

    overrides = list(args.overrides)
    if args.smoke_test:
        return ["training.num_epochs=2", "training.max_steps_per_epoch=2", "training.warmup_epochs=1",
                "model.queue_size=32",  # below the ~44 training cycles of synthetic:8
                "training.device=cpu", *overrides], "tiny", "--smoke-test"
    if args.preset is None and args.config and _complete_file(args.config):
        return overrides, None, "--config is a complete config: no preset applied"
    if args.preset in (None, "auto"):
        why = "auto: CUDA available" if torch.cuda.is_available() else "auto: no CUDA, CPU default"
        return overrides, resolve_preset("auto"), why
    return overrides, args.preset, "--preset"

def _complete_file(path: str) -> bool:
    from pahcl.config import ConfigError, is_complete_config, read_yaml_mapping

    try:
        return is_complete_config(read_yaml_mapping(path))
    except ConfigError:
        return False  # load_config reports the file's problem below


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(argv)
    from pahcl.checkpoint import CheckpointError
    from pahcl.config import ConfigError, dump_config
    from pahcl.data.readers import DataSpecError, NoUsableRecordingsError
    from pahcl.train import Trainer, prepare_data

    out = Path(args.out)
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731  (stdout: the JSON summary only)
    overrides, preset, why = _preset_and_overrides(args)
    try:
        cfg, spec, ckpt_state = _run_setup(args, overrides, preset, why, say)
        cache = Path(args.cache_dir) if args.cache_dir else out / "cache"
        train, val = prepare_data(cfg, spec, cache_dir=cache, log=say)
        say(f"data {spec}: {len(train)} training cycles, {len(val)} validation cycles")
        trainer = Trainer(cfg, train, val, out_dir=out, log=say)  # checks batch x accumulation fit the data
    except (ConfigError, DataSpecError, NoUsableRecordingsError) as e:
        say(f"error: {e}")
        return 2
    except CheckpointError as e:
        say(f"cannot resume: {e}")
        return 2
    out.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, out / "config.yaml")
    if ckpt_state is not None:
        trainer.load_state_dict(ckpt_state)
    say(f"device {trainer.device}, {trainer.steps_per_epoch} optimizer steps/epoch x "
        f"{trainer.micro_per_step} micro-batches of {cfg.training.batch_size}, moco={cfg.model.use_moco}")

    bar = None
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        total = trainer.steps_per_epoch * cfg.training.num_epochs
        bar = tqdm(total=total, initial=trainer.global_step, file=sys.stderr, dynamic_ncols=True, unit="step")

        def progress(tr, m):  # noqa: F811
            bar.update(1)
            bar.set_postfix(epoch=f"{int(m['epoch']) + 1}/{cfg.training.num_epochs}", step=int(m["step"]),
                            loss=f"{m['loss']:.4f}", cyc_s=f"{m['cycles_per_s']:.0f}", refresh=False)

    class _EpochLine:  # one line per epoch, also with --no-progress (logs of nohup runs)
        def on_epoch_end(self, tr, m):
            line = " ".join(f"{k}={v:.4g}" for k, v in m.items())
            if bar is not None:
                bar.write(line)
            else:
                print(line, file=sys.stderr, flush=True)

    trainer.callbacks.append(_EpochLine())
    t0 = time.perf_counter()
    try:
        last = trainer.fit(progress=progress)
    finally:
        if bar is not None:
            bar.close()
    summary = {"out": str(out), "epochs": trainer.epoch, "steps": trainer.global_step,
               "seconds": round(time.perf_counter() - t0, 2), "preset": (preset or "none") if not args.resume else "checkpoint",
               "device": str(trainer.device), **last}
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
