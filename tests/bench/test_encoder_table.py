"""bench/encoder_table.py: which overrides name a new checkpoint folder (the trained weights) and which only
change the frozen read-out (scored on the same checkpoints)."""
from __future__ import annotations

from encoder_table import READOUT_ONLY, run_tag

E1 = ["model.queue_size=256", "model.embed_pool=cycle", "training.num_epochs=30"]


def test_read_out_only_overrides_reuse_the_checkpoints_and_training_overrides_do_not():
    base = run_tag("yaseen:d", "small", E1)
    assert READOUT_ONLY == ("model.embed_subs",)
    assert run_tag("yaseen:d", "small", [*E1, "model.embed_subs=true"]) == base
    assert run_tag("yaseen:d", "small", [*E1, " model.embed_subs = false"]) == base
    # everything that PAHCL.forward or the loop sees is a new folder
    assert run_tag("yaseen:d", "small", ["model.queue_size=256", "training.num_epochs=30"]) != base
    assert run_tag("yaseen:d", "small", [*E1, "loss.temperature=0.2"]) != base
    assert run_tag("yaseen:other", "small", E1) != base and run_tag("yaseen:d", "tiny", E1) != base


def _cell(d, f, p, mean, n=3):
    return {"direction": d, "features": f, "protocol": p, "cv": {"n": n, "mean": 0.9, "std": 0.0},
            "test": {"n": n, "mean": mean, "std": 0.01}}


def test_headline_counts_the_cells_where_the_encoder_is_above_random_init_and_pcg():
    import run_all

    d1, d2 = "1-50:51-100", "51-100:1-50"
    summary = [_cell(d1, "pretrained", "knn", 0.96), _cell(d1, "random_init", "knn", 0.90), _cell(d1, "pcg", "knn", 0.95, 1),
               _cell(d1, "pretrained", "linear", 0.94), _cell(d1, "random_init", "linear", 0.90),
               _cell(d1, "pcg", "linear", 0.945, 1),  # below pcg: not counted
               _cell(d2, "pretrained", "knn", 0.85), _cell(d2, "random_init", "knn", 0.86),  # below random init
               _cell(d2, "pcg", "knn", 0.78, 1)]  # d2 linear has no rows: not a cell
    line = run_all.encoder_headline({"summary": summary})
    assert "mean of 3 seeds" in line and "above both in 1 of the 3 direction x protocol cells" in line
    assert "1-50 → 51-100 kNN **0.960** (random init 0.900, pcg 0.950)" in line
