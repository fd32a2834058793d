"""The pretrain CLI as users type it: resume on the checkpoint's data, refusal of other data, batch x
accumulation that the data cannot hold, hardware the config asks for, bad data specs (issue 15 items 1, 3, 7).

Tiny preset, 2 kHz windows, 1 optimizer step per epoch; every run in-process through ``main(argv)``.
"""
from __future__ import annotations

import csv

import pytest
import torch

from pahcl.checkpoint import load_checkpoint, save_checkpoint
from pahcl.config import ConfigError
from pahcl.pretrain import main
from pahcl.train import plan_batches

FAST = ["--preset", "tiny", "--no-progress", "--set", "training.device=cpu", "--set", "data.sample_rate=2000",
        "--set", "training.max_steps_per_epoch=1", "--set", "training.warmup_epochs=1",
        "--set", "model.queue_size=16"]


def _rows(out) -> list[dict]:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run1(tmp_path_factory):
    """One epoch on synthetic:6 (not the CLI's default data)."""
    out = tmp_path_factory.mktemp("run") / "r"
    assert main(["--data", "synthetic:6", "--out", str(out), "--set", "training.num_epochs=1", *FAST]) == 0
    return out


def test_checkpoint_records_the_absolute_data_spec_and_fingerprint(run1):
    data = load_checkpoint(run1 / "checkpoint_last.pt")["data"]
    assert data["spec"] == "synthetic:6" and len(data["fingerprint"]) == 64


def test_resume_without_data_continues_on_the_checkpoints_data(run1, capsys):
    assert main(["--out", str(run1), "--resume", *FAST, "--set", "training.num_epochs=2"]) == 0
    err = capsys.readouterr().err
    assert "config and data (synthetic:6) from the checkpoint" in err
    assert "data synthetic:6:" in err and "data synthetic: " not in err  # never the CLI's default data
    assert [float(r["epoch"]) for r in _rows(run1)] == [1.0, 2.0]
    assert load_checkpoint(run1 / "checkpoint_last.pt")["data"]["spec"] == "synthetic:6"


@pytest.mark.parametrize("change, needle", [
    (["--data", "synthetic"], "the checkpoint was trained on synthetic:6"),
    (["--set", "data.bandpass_high=300"], "the data.* settings changed"),
])
def test_resume_on_other_data_is_refused_and_nothing_is_appended(run1, capsys, change, needle):
    before = _rows(run1)
    assert main(["--out", str(run1), "--resume", *FAST, "--set", "training.num_epochs=9", *change]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and needle in err[-1] and "--allow-data-change" in err[-1]
    assert _rows(run1) == before


def test_allow_data_change_resumes_on_the_new_data(run1, tmp_path, capsys):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(run1, out)
    n = len(_rows(out))
    assert main(["--out", str(out), "--resume", "--data", "synthetic:7", "--allow-data-change", *FAST,
                 "--set", f"training.num_epochs={n + 1}"]) == 0
    assert load_checkpoint(out / "checkpoint_last.pt")["data"]["spec"] == "synthetic:7"


def test_old_checkpoint_without_data_record_needs_data(run1, tmp_path, capsys):
    import shutil

    out = tmp_path / "old"
    shutil.copytree(run1, out)
    state = load_checkpoint(out / "checkpoint_last.pt")
    del state["data"]
    save_checkpoint(state, out / "checkpoint_last.pt")
    assert main(["--out", str(out), "--resume", *FAST]) == 2
    assert "does not record its data spec" in capsys.readouterr().err


def test_plan_batches_refuses_what_the_data_cannot_hold():
    assert plan_batches(44, 8, 2) == (2, 2)  # 5 micro-batches: 2 steps of 2, the trailing one dropped
    assert plan_batches(44, 8, 1, max_steps=3) == (1, 3)
    with pytest.raises(ConfigError, match=r"^training\.batch_size: 65536 is larger than the 44 training cycles"):
        plan_batches(44, 65536, 1)
    with pytest.raises(ConfigError, match=r"^training\.gradient_accumulation_steps: 1024 .* set it <= 5"):
        plan_batches(44, 8, 1024)


def test_smoke_with_batch_larger_than_data_is_one_line_exit_2_and_writes_no_run(tmp_path, capsys):
    out = tmp_path / "big"
    rc = main(["--smoke-test", "--out", str(out), "--cache-dir", str(tmp_path / "cache"),
               "--set", "training.batch_size=65536", "--set", "training.gradient_accumulation_steps=1024"])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: training.batch_size: 65536")
    assert not out.exists()  # no config.yaml claiming a batch that never ran


@pytest.mark.parametrize("argv, needle", [
    (["--data", "circor:/no/such/folder"], "does not exist"),
    (["--data", "nosuchkind:x"], "unknown kind"),
    (["--data", "wav:{empty}"], "no usable recordings"),
    (["--set", "model.mamba_backend=mamba_ssm"], "model.mamba_backend"),
    (["--set", "training.device=cuda"], "training.device is 'cuda'"),
])
def test_user_errors_are_one_line_exit_2_without_output(tmp_path, capsys, argv, needle):
    if "training.device=cuda" in argv and torch.cuda.is_available():
        pytest.skip("CUDA is available here: the device exists")
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{empty}", str(tmp_path / "empty")) for a in argv]
    out = tmp_path / "out"
    rc = main(["--out", str(out), "--preset", "tiny", "--no-progress", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("error: ") and needle in err[-1], err
    assert not out.exists()
