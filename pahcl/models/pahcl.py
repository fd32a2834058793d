"""PAHCL: query encoder + cycle/substructure projectors, and (MoCo) an EMA key encoder + queue.

Contract (docs/architecture.md):

    out = model(x1, b1, x2, b2)   # x: N×1×L float, b: N×5 long sample boundaries
    out["q"], out["z2"]           # N×C  normalised cycle embeddings of view 1 / view 2 (query encoder)
    out["k"]                      # N×C  normalised key of view 2 (key encoder, no grad; MoCo only)
    out["sub1"], out["sub2"]      # N×4×Cs normalised substructure embeddings
    loss = hierarchical_loss(out, cfg.loss, queue=model.queue if moco else None)["loss"]
    loss.backward(); opt.step(); model.momentum_update()    # after every optimizer step
    model.dequeue_and_enqueue(out["k"])                     # after each micro-batch's loss

No batch statistics anywhere (GroupNorm/LayerNorm): single-device MoCo needs no shuffle-BN.
Devices follow the inputs / ``model.to(device)``; nothing here calls ``.cuda()``.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

from pahcl.config import ModelConfig

from .encoder import CNNMambaEncoder, span_mean_pool, token_spans
from .heads import ProjectionMLP


class PAHCL(nn.Module):
    def __init__(self, model_cfg: ModelConfig):
        super().__init__()
        cfg = model_cfg
        self.cfg = cfg
        self.use_moco = bool(cfg.use_moco)
        self.momentum = float(cfg.moco_momentum)
        self.encoder = CNNMambaEncoder(cfg)
        self.projector = ProjectionMLP(cfg.mamba_d_model, cfg.proj_hidden_dim, cfg.proj_output_dim)
        self.sub_projector = ProjectionMLP(cfg.mamba_d_model, cfg.sub_proj_hidden_dim, cfg.sub_proj_output_dim)
        if self.use_moco:
            self.encoder_k = copy.deepcopy(self.encoder)
            self.projector_k = copy.deepcopy(self.projector)
            for p in self._key_params():
                p.requires_grad_(False)
            C, K = cfg.proj_output_dim, cfg.queue_size
            self.register_buffer("queue", F.normalize(torch.randn(C, K), dim=0))  # C×K, unit columns
            self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))  # next slot to write
            self.register_buffer("queue_count", torch.zeros(1, dtype=torch.long))  # slots written since init (<= K)

    # ------------------------------------------------------------------ helpers

    @property
    def token_stride(self) -> int:
        return self.encoder.token_stride

    def _query_params(self):
        return [*self.encoder.parameters(), *self.projector.parameters()]

    def _key_params(self):
        return [*self.encoder_k.parameters(), *self.projector_k.parameters()]

    def _pool_subs(self, h: torch.Tensor, bounds: torch.Tensor) -> torch.Tensor:
        """h: N×T×D tokens, bounds: N×5 samples -> N×4×D span means."""
        start, end = token_spans(bounds.to(h.device), h.shape[1], self.token_stride)  # N×4 each
        return span_mean_pool(h, start, end)  # N×4×D

    # ------------------------------------------------------------------ forward

    def _pool_cycle(self, h: torch.Tensor, bounds: torch.Tensor | None) -> torch.Tensor:
        """h: N×T×D tokens -> N×D cycle embedding: mean over all T tokens (``model.embed_pool: window``, or
        no bounds), or over the cycle's own tokens, S1 onset to next S1 onset (``cycle``)."""
        if self.cfg.embed_pool == "window" or bounds is None:
            return h.mean(dim=1)  # N×D
        b = bounds.to(h.device).long()
        start = torch.div(b[:, :1], self.token_stride, rounding_mode="floor").clamp(0, h.shape[1] - 1)  # N×1
        end = torch.div(b[:, 4:] + self.token_stride - 1, self.token_stride, rounding_mode="floor")  # N×1 (ceil)
        end = torch.maximum(end, start + 1).clamp(max=h.shape[1])  # at least one token
        return span_mean_pool(h, start, end)[:, 0]  # N×1×D -> N×D

    def embed(self, x: torch.Tensor, bounds: torch.Tensor | None = None) -> torch.Tensor:
        """Frozen features, no projector, under the caller's grad mode: the pooled cycle embedding N×D
        (``bounds`` N×5 samples, used by ``model.embed_pool: cycle``), followed with ``model.embed_subs`` by the
        S1, systole, S2 and diastole span means (the hierarchy the sub-level loss trains): N×5D. Without bounds
        (views with no cycle marks, e.g. ``val/align``) the window mean N×D, whatever the settings."""
        h = self.encoder(x)  # N×T×D
        c = self._pool_cycle(h, bounds)  # N×D
        if not self.cfg.embed_subs or bounds is None:
            return c
        return torch.cat([c, self._pool_subs(h, bounds).flatten(1)], dim=1)  # N×D ++ N×4D -> N×5D

    def forward(self, x1, b1, x2, b2) -> dict[str, torch.Tensor]:
        n = x1.shape[0]
        # both views in one pass: exact, since no normalisation mixes samples
        h = self.encoder(torch.cat([x1, x2], dim=0))  # 2N×T×D
        b = torch.cat([b1, b2], dim=0)  # 2N×5
        z = F.normalize(self.projector(self._pool_cycle(h, b)), dim=-1)  # 2N×C
        subs = self._pool_subs(h, b)  # 2N×4×D
        s = F.normalize(self.sub_projector(subs), dim=-1)  # 2N×4×Cs
        out = {"q": z[:n], "z2": z[n:], "sub1": s[:n], "sub2": s[n:]}  # q, z2: N×C; sub*: N×4×Cs
        if self.use_moco:
            with torch.no_grad():
                k = self.projector_k(self._pool_cycle(self.encoder_k(x2), b2))  # N×C
                out["k"] = F.normalize(k, dim=-1).detach()  # N×C
        return out

    # ------------------------------------------------------------------ MoCo

    def _require_moco(self, what: str):
        if not self.use_moco:
            raise RuntimeError(f"PAHCL.{what}: model.use_moco is false (no key encoder / queue)")

    @torch.no_grad()
    def momentum_update(self) -> None:
        """θk <- m·θk + (1−m)·θq for encoder + projector params; buffers copied."""
        self._require_moco("momentum_update")
        m = self.momentum
        for pq, pk in zip(self._query_params(), self._key_params()):
            pk.mul_(m).add_(pq.detach() * (1.0 - m))
        for mq, mk in ((self.encoder, self.encoder_k), (self.projector, self.projector_k)):
            for bq, bk in zip(mq.buffers(), mk.buffers()):
                bk.copy_(bq)

    @torch.no_grad()
    def dequeue_and_enqueue(self, keys: torch.Tensor) -> None:
        """Write keys (n×C) into the C×K ring buffer at queue_ptr; wraps; n > K keeps the last K."""
        self._require_moco("dequeue_and_enqueue")
        keys = keys.detach().to(self.queue.dtype)
        n, K = keys.shape[0], self.queue.shape[1]
        if n == 0:
            return
        m = min(n, K)
        ptr = int(self.queue_ptr.item())
        idx = (ptr + torch.arange(n - m, n, device=self.queue.device)) % K  # m distinct slots
        self.queue[:, idx] = keys[n - m :].T  # C×m
        self.queue_ptr[0] = (ptr + n) % K
        self.queue_count[0] = min(int(self.queue_count.item()) + m, K)

    def queue_fill(self) -> float:
        """Fraction of queue slots written since init (1.0 once the queue has wrapped)."""
        self._require_moco("queue_fill")
        return float(self.queue_count.item()) / self.queue.shape[1]

    def warn_if_queue_exceeds(self, num_train_cycles: int) -> bool:
        """Warn (and return True) when K > number of training cycles: the queue then holds stale keys
        of the query's own cycle as negatives."""
        if not self.use_moco:
            return False
        K = self.queue.shape[1]
        if K > num_train_cycles:
            warnings.warn(
                f"model.queue_size={K} exceeds the number of training cycles ({num_train_cycles}): the queue "
                "will hold stale keys of each query's own cycle as negatives; use a queue_size below the "
                "training-set size",
                stacklevel=2,
            )
            return True
        return False

    @torch.no_grad()
    def drift(self) -> dict[str, float]:
        """||θq−θk||₂ / ||θq||₂ over encoder+projector params, overall and per part ({} without MoCo)."""
        if not self.use_moco:
            return {}
        parts = {
            "drift/cnn": (self.encoder.cnn, self.encoder_k.cnn),
            "drift/mamba": (nn.ModuleList([self.encoder.mamba, self.encoder.norm_f]),
                            nn.ModuleList([self.encoder_k.mamba, self.encoder_k.norm_f])),
            "drift/projector": (self.projector, self.projector_k),
        }
        sums = []  # per part: (||θq−θk||², ||θq||²), reduced on the device, one transfer at the end
        for mq, mk in parts.values():
            pq, pk = list(mq.parameters()), list(mk.parameters())
            num = torch.stack([(a.float() - b.float()).pow(2).sum() for a, b in zip(pq, pk)]).sum()
            den = torch.stack([a.float().pow(2).sum() for a in pq]).sum()
            sums.append(torch.stack([num, den]))
        vals = torch.stack(sums).double().cpu().tolist()  # parts×2
        out = {name: (n / d) ** 0.5 if d > 0 else 0.0 for name, (n, d) in zip(parts, vals)}
        num_all, den_all = sum(v[0] for v in vals), sum(v[1] for v in vals)
        return {"drift": (num_all / den_all) ** 0.5 if den_all > 0 else 0.0, **out}
