"""GPU variant of the OOM reliability test (skipped without CUDA): a REAL CUDA out-of-memory error,
raised by the caching allocator inside the real optimizer step (``testkit.faults`` ``oom`` with
``real: true`` asks for a 1 PiB tensor in the forward pass), is retried a bounded number of times with the
failed attempt's memory released, then fails with ``StepOutOfMemoryError``; allocated memory is back at
(or below) its level after the last good step, and the next run on the same GPU trains normally.
The CPU path (injected ``torch.OutOfMemoryError`` in real Ray trials) is
tests/tune/test_reliability_faults.py::test_oom_bounded_retries_then_clear_failure_and_next_trial_runs.
"""
import gc

import pytest
import torch

from pahcl.config import load_config
from pahcl.train import Callback, StepOutOfMemoryError, Trainer, prepare_data

pytestmark = pytest.mark.gpu


class _Mem(Callback):
    def __init__(self):
        self.after_step = {}

    def on_step_end(self, trainer, m):
        torch.cuda.synchronize()
        self.after_step[trainer.global_step] = torch.cuda.memory_allocated()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_cuda_oom_bounded_retries_memory_released_next_run_trains(tmp_path):
    from testkit.faults import FaultInjector, count

    cfg = load_config(preset="tiny", overrides={
        "training.device": "cuda", "training.max_steps_per_epoch": 2, "training.num_epochs": 2,
        "training.warmup_epochs": 1, "data.sample_rate": 2000, "model.queue_size": 32})
    train, val = prepare_data(cfg, "synthetic:8", cache_dir=tmp_path / "cache", log=lambda m: None)
    marker = tmp_path / "oom.count"
    spec = {"faults": [{"kind": "oom", "at_step": 1, "times": 3, "real": True, "marker": str(marker)}]}
    mem, logs = _Mem(), []
    inj = FaultInjector(spec, "gpu-trial-1")
    trainer = Trainer(cfg, train, val, callbacks=[mem, inj], log=logs.append)
    with pytest.raises(StepOutOfMemoryError, match="out of memory at optimizer step 1 after 2 retries") as ei:
        trainer.fit()
    assert "CUDA out of memory" in str(ei.value) or "Tried to allocate" in str(ei.value), str(ei.value)
    assert count(marker) == 3 and trainer.oom_retries == 3 and trainer.global_step == 1
    assert sum("memory released, retrying" in m for m in logs) == 2
    gc.collect()
    torch.cuda.synchronize()
    after_fail = torch.cuda.memory_allocated()
    # the failed attempts' activations and gradients are gone: no more than after the last good step
    # (which still held that step's gradients)
    assert after_fail <= mem.after_step[1], (after_fail, mem.after_step)
    print(f"allocated after step 1: {mem.after_step[1] / 2**20:.1f} MiB; after 3 failed attempts of step 2: "
          f"{after_fail / 2**20:.1f} MiB; reserved {torch.cuda.memory_reserved() / 2**20:.1f} MiB")
    del trainer, inj
    gc.collect()
    torch.cuda.empty_cache()
    # the next trial on the same GPU: the fault is exhausted (marker), training completes
    t2 = Trainer(cfg, train, val, callbacks=[FaultInjector(spec, "gpu-trial-2")], log=lambda m: None)
    last = t2.fit()
    assert t2.epoch == 2 and t2.oom_retries == 0 and last["epoch"] == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_cuda_oom_once_is_recovered(tmp_path):
    from testkit.faults import FaultInjector

    cfg = load_config(preset="tiny", overrides={
        "training.device": "cuda", "training.max_steps_per_epoch": 2, "training.num_epochs": 1,
        "training.warmup_epochs": 1, "data.sample_rate": 2000, "model.queue_size": 32})
    train, val = prepare_data(cfg, "synthetic:8", cache_dir=tmp_path / "cache", log=lambda m: None)
    spec = {"faults": [{"kind": "oom", "at_step": 1, "times": 1, "real": True, "marker": str(tmp_path / "m")}]}
    tr = Trainer(cfg, train, val, callbacks=[FaultInjector(spec, "t")], log=lambda m: None)
    tr.fit()
    assert tr.global_step == 2 and tr.oom_retries == 1
