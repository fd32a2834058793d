"""Losses against plain reference computations (explicit loops over anchors, numpy log-sum-exp)."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pahcl.losses import hierarchical_loss, info_nce, nt_xent, substructure_loss


def _unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def _ce0(row: np.ndarray) -> float:
    """-log softmax(row)[0]"""
    m = row.max()
    return float(-(row[0] - m - np.log(np.exp(row - m).sum())))


def test_info_nce_matches_reference():
    N, C, K, t = 5, 8, 11, 0.07
    q, k = _unit(N, C, seed=1), _unit(N, C, seed=2)
    queue = _unit(K, C, seed=3).T.contiguous()  # C×K, unit columns
    loss, logits = info_nce(q, k, queue, t)
    assert logits.shape == (N, 1 + K)
    qn, kn, Qn = q.numpy(), k.numpy(), queue.numpy()
    losses = []
    for i in range(N):
        row = np.array([qn[i] @ kn[i]] + [qn[i] @ Qn[:, j] for j in range(K)]) / t
        np.testing.assert_allclose(logits[i].numpy(), row, rtol=1e-12)
        assert logits[i, 0] == pytest.approx(qn[i] @ kn[i] / t)  # positive at index 0
        losses.append(_ce0(row))
    assert loss.item() == pytest.approx(np.mean(losses), rel=1e-10)


def test_info_nce_grads_flow_to_q_only():
    q = _unit(4, 6).requires_grad_()
    k = _unit(4, 6, seed=1).requires_grad_()
    queue = _unit(9, 6, seed=2).T.contiguous().requires_grad_()
    loss, _ = info_nce(q, k, queue, 0.2)
    loss.backward()
    assert q.grad is not None and k.grad is None and queue.grad is None


def _nt_xent_ref(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    z = np.concatenate([z1, z2])
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        negs = [z[i] @ z[m] for m in range(n2) if m not in (i, j)]
        assert len(negs) == n2 - 2
        total += _ce0(np.array([z[i] @ z[j]] + negs) / t)
    return total / n2


@pytest.mark.parametrize("N", [2, 3, 7])
def test_nt_xent_matches_reference(N):
    z1, z2, t = _unit(N, 5, seed=4), _unit(N, 5, seed=5), 0.1
    loss, logits = nt_xent(z1, z2, t)
    assert logits.shape == (2 * N, 2 * N - 1)  # positive + 2N-2 negatives
    torch.testing.assert_close(logits[:N, 0], (z1 * z2).sum(1) / t)
    torch.testing.assert_close(logits[N:, 0], (z1 * z2).sum(1) / t)
    assert loss.item() == pytest.approx(_nt_xent_ref(z1.numpy(), z2.numpy(), t), rel=1e-10)
    # symmetric in the views
    assert nt_xent(z2, z1, t)[0].item() == pytest.approx(loss.item(), rel=1e-12)


def test_nt_xent_needs_two_pairs():
    with pytest.raises(ValueError, match="at least 2"):
        nt_xent(_unit(1, 4), _unit(1, 4, seed=1), 0.1)


def test_substructure_loss_treats_each_substructure_as_instance():
    N, S, C, t = 3, 4, 6, 0.5
    s1, s2 = _unit(N, S, C, seed=6), _unit(N, S, C, seed=7)
    loss, logits = substructure_loss(s1, s2, t)
    assert logits.shape == (2 * N * S, 2 * N * S - 1)
    ref = _nt_xent_ref(s1.reshape(N * S, C).numpy(), s2.reshape(N * S, C).numpy(), t)
    assert loss.item() == pytest.approx(ref, rel=1e-10)
    # positive of (cycle 1, substructure 2) in view 1 is (cycle 1, substructure 2) in view 2
    assert logits[1 * S + 2, 0].item() == pytest.approx((s1[1, 2] @ s2[1, 2]).item() / t)


def test_hierarchical_loss_moco_and_simclr():
    cfg = SimpleNamespace(temperature=0.2, lambda_cycle=0.7, lambda_sub=1.3)
    N, C, Cs, K = 4, 8, 3, 16
    out = {
        "q": _unit(N, C, seed=1),
        "z2": _unit(N, C, seed=2),
        "sub1": _unit(N, 4, Cs, seed=3),
        "sub2": _unit(N, 4, Cs, seed=4),
    }
    sub, _ = substructure_loss(out["sub1"], out["sub2"], 0.2)
    # SimCLR (no key): nt_xent(q, z2)
    r = hierarchical_loss(out, cfg)
    cyc, logits = nt_xent(out["q"], out["z2"], 0.2)
    assert r["loss_cycle"].item() == pytest.approx(cyc.item())
    assert r["loss"].item() == pytest.approx(0.7 * cyc.item() + 1.3 * sub.item())
    assert r["cycle_acc"].item() == pytest.approx((logits.argmax(1) == 0).double().mean().item())
    # MoCo: info_nce(q, k, queue)
    out["k"] = out["q"].clone()  # perfect keys -> accuracy 1 against a random queue (very likely)
    queue = _unit(K, C, seed=5).T.contiguous()
    with pytest.raises(ValueError, match="queue"):
        hierarchical_loss(out, cfg)
    r = hierarchical_loss(out, cfg, queue=queue)
    cyc, logits = info_nce(out["q"], out["k"], queue, 0.2)
    assert r["loss_cycle"].item() == pytest.approx(cyc.item())
    assert r["loss"].item() == pytest.approx(0.7 * cyc.item() + 1.3 * sub.item())
    assert r["cycle_acc"].item() == pytest.approx((logits.argmax(1) == 0).double().mean().item())
    assert not r["cycle_acc"].requires_grad
