"""pahcl.evaluate with a checkpoint that cannot be used: one line on stderr, exit 2, no traceback
(issue 15 item 7): truncated, empty, not a dict of state, weights of another model."""
from __future__ import annotations

import pytest
import torch

from pahcl.checkpoint import save_checkpoint
from pahcl.config import load_config
from pahcl.evaluate import main
from pahcl.models import PAHCL


def _state(cfg) -> dict:
    return {"format": "pahcl-checkpoint-v1", "config": cfg.to_dict(), "model": PAHCL(cfg.model).state_dict()}


@pytest.fixture
def good(tmp_path):
    cfg = load_config(preset="tiny", overrides={"training.device": "cpu"})
    return save_checkpoint(_state(cfg), tmp_path / "good.pt"), cfg


def _run(ckpt, capsys):
    rc = main(["--checkpoint", str(ckpt), "--train", "synthetic:4", "--test", "synthetic:4"])
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_a_dict", "other_model", "no_config"])
def test_unusable_checkpoint_is_one_line_exit_2(tmp_path, good, capsys, damage):
    path, cfg = good
    bad = tmp_path / f"{damage}.pt"
    if damage == "truncated":
        bad.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "not_a_dict":
        torch.save([1, 2, 3], bad)
    elif damage == "other_model":  # weights of a wider model under the tiny config
        wide = load_config(preset="tiny", overrides={"model.mamba_n_layers": cfg.model.mamba_n_layers + 1,
                                                     "model.mamba_d_state": cfg.model.mamba_d_state * 2})
        save_checkpoint({**_state(wide), "config": cfg.to_dict()}, bad)
    else:
        st = _state(cfg)
        del st["config"]
        save_checkpoint(st, bad)
    rc, err = _run(bad, capsys)
    assert rc == 2 and len(err) == 1 and err[0].startswith(f"error: checkpoint {bad}"), err


def test_missing_data_folder_is_one_line_exit_2(good, capsys):
    path, _ = good
    rc = main(["--checkpoint", str(path), "--train", "circor:/no/such", "--test", "circor:/no/such"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: data spec") and "does not exist" in err[-1]
