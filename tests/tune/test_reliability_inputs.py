"""Bad input reaches the CLI as one clear error (exit 2, the key named on stderr) before anything starts;
unsafe YAML (space file AND the base config it names) is refused with no side effect.

Key-by-key validation of space files is in test_tune_spaces.py::test_bad_space_names_the_key (22 cases);
here the same classes of error go through the CLI entry point ``tune.run_search.cli`` (what
``python tune/run_search.py`` runs). Malicious checkpoint pickles: tests/pahcl/test_checkpoint.py (file
level) and test_reliability_faults.py::test_corrupt_newest_checkpoint_falls_back[malicious] (a real trial
resuming from one). Corrupt/empty/silent/too-short audio: tests/pahcl/data/test_data_readers.py::
test_bad_files_are_skipped_and_counted and ::test_all_bad_folder_raises.
"""
from __future__ import annotations

import pytest
import yaml

from tune_helpers import BASE_SPACE, write_space


def _space(tmp_path, **changes):
    sp = yaml.safe_load(yaml.safe_dump(BASE_SPACE))
    sp.update(changes)
    return write_space(tmp_path / "bad.yaml", sp)


def _params(**extra):
    p = dict(BASE_SPACE["params"])
    p.update(extra)
    return p


CASES = [
    ("unknown key", {"schedular": {"type": "asha"}}, "schedular"),
    ("wrong type", {"params": _params(**{"training.batch_size": {"type": "categorical", "choices": [8, "big"]}})},
     "params.training.batch_size"),
    ("empty choices", {"params": _params(**{"model.moco_momentum": {"type": "categorical", "choices": []}})},
     "params.model.moco_momentum.choices"),
    ("lr <= 0", {"params": _params(**{"training.learning_rate": {"type": "float", "low": -1e-3, "high": 1e-2}})},
     "params.training.learning_rate"),
    ("momentum outside (0,1)", {"params": _params(**{"model.moco_momentum": {"type": "categorical",
                                                                              "choices": [0.99, 1.5]}})},
     "params.model.moco_momentum"),
    ("queue_size <= 0", {"params": _params(**{"model.queue_size": {"type": "categorical", "choices": [-8]}}),
                         "fixed": {k: v for k, v in BASE_SPACE["fixed"].items() if k != "model.queue_size"}},
     "params.model.queue_size"),
    ("fixed lr <= 0", {"fixed": {**BASE_SPACE["fixed"], "training.learning_rate": 0.0},
                       "params": {"model.moco_momentum": {"type": "categorical", "choices": [0.99]}}},
     "training.learning_rate"),
]


@pytest.mark.parametrize("case,changes,key", CASES, ids=[c[0] for c in CASES])
def test_cli_bad_space_exit_2_names_the_key(case, changes, key, tmp_path, capsys):
    from tune.run_search import cli

    rc = cli(["--space", str(_space(tmp_path, **changes)), "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("error: ") and key in err, err
    assert err.count("\n") == 1  # one line, no traceback
    assert not (tmp_path / "r" / "mlflow.db").exists() and not (tmp_path / "r" / "test_stage").exists()


@pytest.mark.parametrize("where", ["space", "base_config"])
def test_unsafe_yaml_refused_without_side_effect(where, tmp_path, capsys):
    from tune.run_search import cli

    marker = tmp_path / "PWNED"
    evil = f"!!python/object/apply:os.system ['touch {marker}']"
    if where == "space":
        path = tmp_path / "evil.yaml"
        path.write_text(f"stage: evil\nnum_samples: {evil}\n")
    else:
        base = tmp_path / "evil_base.yaml"
        base.write_text(f"seed: {evil}\n")
        path = _space(tmp_path, base_config=str(base))
    rc = cli(["--space", str(path), "--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and "safe_load" in err, err
    assert not marker.exists()


def test_pretrain_config_with_python_tag_refused(tmp_path):
    from pahcl.config import ConfigError, load_config

    marker = tmp_path / "PWNED"
    p = tmp_path / "cfg.yaml"
    p.write_text(f"training: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError):
        load_config(p)
    assert not marker.exists()


def test_space_file_alias_bomb_and_huge_file_exit_2_one_line(tmp_path, capsys):
    """Issue 15 item 6 through the CLI: a 431-byte alias bomb (depth 9) and a 50 MB space file are refused
    with exit 2 and one short line, nothing created (before: MemoryError after 40 s / 7.9 GB)."""
    import time

    from tune.run_search import cli

    parts = ['&a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    parts += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("stage: bomb\nnum_samples: [" + ", ".join(parts) + "]\n")
    huge = tmp_path / "huge.yaml"
    with open(huge, "w") as f:
        f.write("stage: huge\ndescription: ")
        for _ in range(50):
            f.write("a" * (1 << 20))
    for path, why in ((bomb, "aliases"), (huge, "larger than")):
        t0 = time.perf_counter()
        rc = cli(["--space", str(path), "--results-dir", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert time.perf_counter() - t0 < 10, err[:300]
        assert rc == 2 and err.startswith(f"error: space file {path}: ") and why in err, err[:300]
        assert err.count("\n") == 1 and len(err) < 400, err[:300]
    assert not (tmp_path / "r" / "mlflow.db").exists()


def test_synthetic_cpu_message_says_what_runs(tmp_path):
    """Issue 15 item 8: `--data yaseen:... --budget synthetic_cpu` announced "No --data and no CUDA device:
    synthetic default data (yaseen:...)"."""
    from pahcl.data.readers import absolute_spec
    from tune.run_search import SYNTHETIC_CPU_TIME, parse_args, synthetic_cpu_message
    from tune.spaces import load_space

    yaseen = absolute_spec("yaseen:../shared/data/yaseen2018")  # specs are resolved once, in load_space
    for argv, starts, timing in (
            ([], "[search] No --data and no CUDA device: synthetic default data (synthetic:480) with", True),
            (["--budget", "synthetic_cpu"], "[search] --budget synthetic_cpu: data (synthetic:480) with", True),
            (["--data", "yaseen:../shared/data/yaseen2018", "--budget", "synthetic_cpu"],
             f"[search] --budget synthetic_cpu with --data: data ({yaseen}) with", False)):
        args = parse_args(["--space", "moco_stage2", *argv])
        space = load_space("moco_stage2", results_root=tmp_path, budget="synthetic_cpu",
                           cli={"data": args.data}, log=lambda m: None)
        msg = synthetic_cpu_message(args, space, 1)
        assert msg.startswith(starts), msg
        assert (SYNTHETIC_CPU_TIME in msg) == timing


def test_resume_hint_is_shell_quoted(tmp_path):
    """Issue 15 item 8: the printed --resume command broke on a results folder with spaces."""
    import shlex
    import sys

    from tune.run_search import parse_args, resume_hint

    results = tmp_path / "my results (v2)" / "it's here"
    args = parse_args(["--space", "moco_stage2", "--results-dir", str(results)])
    hint = resume_hint(args, results)
    assert shlex.split(hint) == [sys.executable, "tune/run_search.py", "--space", "moco_stage2", "--results-dir",
                                 str(results), "--resume"]
