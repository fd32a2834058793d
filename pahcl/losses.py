"""Contrastive losses (pure functions; no state, no model imports).

Every function returns logits with the positive at column 0, so top-1 accuracy is
``(logits.argmax(1) == 0).float().mean()`` for all of them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["info_nce", "nt_xent", "substructure_loss", "hierarchical_loss", "top1_accuracy"]


def _ce_label0(logits: torch.Tensor) -> torch.Tensor:
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)  # positive at index 0
    return F.cross_entropy(logits, labels)


def top1_accuracy(logits: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose largest logit is the positive (column 0); detached scalar."""
    return (logits.detach().argmax(dim=1) == 0).float().mean()


def info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float):
    """MoCo InfoNCE. q, k: N×C (normalised); queue: C×K negatives (normalised columns).

    Returns (loss, logits N×(1+K)) with the positive q·k at index 0. The queue is detached and
    cloned here, so enqueueing into the model's queue before ``backward`` is safe.
    """
    queue = queue.detach().clone().to(q.dtype)  # C×K
    l_pos = (q * k.detach()).sum(dim=1, keepdim=True)  # N×1
    l_neg = q @ queue  # N×K
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature  # N×(1+K)
    return _ce_label0(logits), logits


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float):
    """SimCLR NT-Xent, symmetric over both views. z1, z2: N×C (normalised), row i of z1 pairs with row i of z2.

    Each of the 2N anchors has its partner as positive and the other 2N−2 embeddings as negatives.
    Returns (loss, logits 2N×(2N−1)) with the positive at index 0 (mean over the 2N anchors).
    """
    n = z1.shape[0]
    if n < 2:
        raise ValueError(f"nt_xent needs at least 2 pairs (got {n}): no negatives otherwise")
    z = torch.cat([z1, z2], dim=0)  # 2N×C
    sim = z @ z.T / temperature  # 2N×2N
    idx = torch.arange(2 * n, device=z.device)
    partner = (idx + n) % (2 * n)  # 2N
    pos = sim[idx, partner].unsqueeze(1)  # 2N×1
    keep = torch.ones(2 * n, 2 * n, dtype=torch.bool, device=z.device)
    keep[idx, idx] = False
    keep[idx, partner] = False
    neg = sim[keep].view(2 * n, 2 * n - 2)  # 2N×(2N−2)
    logits = torch.cat([pos, neg], dim=1)  # 2N×(2N−1)
    return _ce_label0(logits), logits


def substructure_loss(sub1: torch.Tensor, sub2: torch.Tensor, temperature: float):
    """NT-Xent over the N·S substructure embeddings (sub*: N×S×Cs, S = 4): each substructure of each
    cycle is its own instance; its positive is the same substructure of the same cycle in the other view."""
    n, s, c = sub1.shape
    return nt_xent(sub1.reshape(n * s, c), sub2.reshape(n * s, c), temperature)


def hierarchical_loss(out: dict, loss_cfg, queue: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """λ_cycle · cycle + λ_sub · substructure.

    Cycle level: ``info_nce(q, k, queue)`` when ``"k" in out`` (MoCo; pass ``model.queue``), else
    ``nt_xent(q, z2)``. Returns dict(loss, loss_cycle, loss_sub, cycle_acc) as tensors
    (cycle_acc detached: top-1 accuracy of the cycle-level logits).
    """
    t = loss_cfg.temperature
    if "k" in out:
        if queue is None:
            raise ValueError("hierarchical_loss: out has a MoCo key 'k' but no queue was given (pass model.queue)")
        loss_cycle, logits = info_nce(out["q"], out["k"], queue, t)
    else:
        loss_cycle, logits = nt_xent(out["q"], out["z2"], t)
    loss_sub, _ = substructure_loss(out["sub1"], out["sub2"], t)
    loss = loss_cfg.lambda_cycle * loss_cycle + loss_cfg.lambda_sub * loss_sub
    return {"loss": loss, "loss_cycle": loss_cycle, "loss_sub": loss_sub, "cycle_acc": top1_accuracy(logits)}
