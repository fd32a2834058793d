"""bf16 autocast in the training step, exercised on CPU (torch's CPU autocast), as CUDA runs it.

On CUDA ``training.use_amp`` picks bf16 (or fp16 + GradScaler); the same ``_forward_loss`` autocast
block runs on CPU when the Trainer is asked for ``amp_dtype=torch.bfloat16``.
"""
import math

import pytest
import torch

import pahcl.train as T
from test_train import tiny as _loop_tiny  # the pretrain-loop tests' tiny config (tests/pahcl/test_train.py)


def tiny(**over):
    return _loop_tiny(**{"training.num_epochs": 1, **over})  # one epoch is enough here


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return T.prepare_data(tiny(), "synthetic:8", cache_dir=tmp_path_factory.mktemp("cache"), log=lambda m: None)


def test_amp_dtype_rules():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert T.amp_dtype_for(cpu, True) is None  # auto: fp32 on CPU
    assert T.amp_dtype_for(cpu, True, torch.bfloat16) == torch.bfloat16
    assert T.amp_dtype_for(cuda, False) is None and T.amp_dtype_for(cuda, True, None) is None
    with pytest.raises(ValueError, match="float16 autocast needs CUDA"):
        T.amp_dtype_for(cpu, True, torch.float16)
    with pytest.raises(ValueError, match="not allowed"):
        T.amp_dtype_for(cpu, True, "bf16")


@pytest.mark.parametrize("moco", [False, True], ids=["simclr", "moco"])
def test_bf16_autocast_step_on_cpu(data, moco):
    cfg = tiny(**{"model.use_moco": moco})
    seen = set()

    def hook(mod, inp, out):
        if torch.is_tensor(out) and mod.training:
            seen.add(out.dtype)

    losses = {}
    for dtype in (None, torch.bfloat16):
        tr = T.Trainer(cfg, data[0], data[1], log=None, amp_dtype=dtype)
        assert tr.amp_dtype == dtype and not tr.scaler.is_enabled()
        if dtype is not None:
            for m in tr.model.modules():
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d)):
                    m.register_forward_hook(hook)
        last = tr.fit()
        losses[dtype] = last["train/loss"]
        assert math.isfinite(last["train/loss"]) and "val/align" in last  # validation ran after the bf16 steps
        assert all(p.dtype == torch.float32 for p in tr.model.parameters())  # master weights stay fp32
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in tr.model.parameters())
    assert torch.bfloat16 in seen  # the convolutions / linear layers ran in bf16
    assert losses[torch.bfloat16] == pytest.approx(losses[None], rel=0.1)  # same step, bf16 rounding only
