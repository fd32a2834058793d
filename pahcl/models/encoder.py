"""CNN front end + Mamba stack: raw PCG window N×1×L -> token features N×T×d_model.

Normalisation uses no batch statistics anywhere (GroupNorm in the CNN, LayerNorm in the Mamba
stack): with MoCo on one device, BatchNorm would let the query and key see each other's batch
statistics, an information leak the contrastive task can exploit ("cheating" through BN). With
GroupNorm/LayerNorm every sample's features depend on that sample alone, so concatenating the two
views into one batch is also exact.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from pahcl.config import ModelConfig

from .mamba import MambaLayer, make_mixer, resolve_backend

KERNEL_SIZE = 7


def _groups(channels: int, max_groups: int = 8) -> int:
    """Largest divisor of ``channels`` not above ``max_groups`` (GroupNorm needs groups | channels)."""
    return max(g for g in range(1, min(max_groups, channels) + 1) if channels % g == 0)


class ConvBlock(nn.Sequential):
    """Conv1d(k=7, stride s, padding 3, no bias) + GroupNorm + GELU: N×C_in×L -> N×C_out×ceil(L/s)."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel_size: int = KERNEL_SIZE):
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.GroupNorm(_groups(c_out), c_out),
            nn.GELU(),
        )


def boundaries_to_tokens(bounds: torch.Tensor, num_tokens: int, token_stride: int) -> torch.Tensor:
    """Sample boundaries N×5 (S1, systole, S2, diastole, next-S1 onsets) -> token boundaries N×5.

    ``floor(b / token_stride)`` clipped to [0, T]; then adjusted so each of the four substructures
    [t_i, t_{i+1}) spans at least one token (strictly increasing, t_0 >= 0, t_4 <= T) when T >= 4.
    With T < 4 spans cannot be disjoint; each still gets >= 1 token (spans may then overlap, and
    the N×5 form is not monotone) -- use :func:`token_spans` for pooling.
    """
    t = torch.div(bounds.long(), token_stride, rounding_mode="floor").clamp(0, num_tokens)  # N×5
    if num_tokens < 4:
        return t
    cols = list(t.unbind(1))
    for i in range(1, 5):  # push forward: t_i >= t_{i-1} + 1
        cols[i] = torch.maximum(cols[i], cols[i - 1] + 1)
    for i in range(4, -1, -1):  # pull back into range: t_i <= T - (4 - i); keeps strict increase
        cols[i] = torch.minimum(cols[i], torch.full_like(cols[i], num_tokens - (4 - i)))
    return torch.stack(cols, dim=1)  # N×5


def token_spans(bounds: torch.Tensor, num_tokens: int, token_stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(start N×4, end N×4) token spans of the substructures, each 0 <= start < end <= T."""
    t = boundaries_to_tokens(bounds, num_tokens, token_stride)  # N×5
    start = t[:, :4].clamp(max=num_tokens - 1)
    end = torch.maximum(t[:, 1:], start + 1).clamp(max=num_tokens)
    return start, end


def span_mean_pool(feats: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Masked mean of N×T×D features over token spans [start, end) (N×S each) -> N×S×D (vectorised)."""
    pos = torch.arange(feats.shape[1], device=feats.device)  # T
    mask = (pos >= start.unsqueeze(-1)) & (pos < end.unsqueeze(-1))  # N×S×T
    mask = mask.to(feats.dtype)
    summed = torch.bmm(mask, feats)  # (N×S×T) @ (N×T×D) -> N×S×D
    return summed / mask.sum(-1, keepdim=True).clamp(min=1)


class CNNMambaEncoder(nn.Module):
    """N×1×L waveform -> N×T×d_model token features (T = ceil-divided L by each stride in turn).

    ``.cnn``: 4 ConvBlocks (GroupNorm, no batch statistics); ``.mamba``: ModuleList of pre-norm
    residual MambaLayers (LayerNorm); ``.norm_f``: final LayerNorm. ``.backend``: resolved Mamba
    backend ("torch" or "mamba_ssm"); parameter names are the same for both.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.cnn_channels[-1] != cfg.mamba_d_model:
            raise ValueError(
                f"model.mamba_d_model ({cfg.mamba_d_model}) must equal model.cnn_channels[-1] ({cfg.cnn_channels[-1]})"
            )
        self.backend = resolve_backend(cfg.mamba_backend)
        self.strides = list(cfg.cnn_strides)
        self.token_stride = math.prod(self.strides)
        self.d_model = cfg.mamba_d_model
        chans = [1, *cfg.cnn_channels]
        self.cnn = nn.Sequential(*(ConvBlock(chans[i], chans[i + 1], s) for i, s in enumerate(self.strides)))
        self.mamba = nn.ModuleList(
            MambaLayer(
                cfg.mamba_d_model,
                make_mixer(
                    self.backend, cfg.mamba_d_model, cfg.mamba_d_state, cfg.mamba_d_conv, cfg.mamba_expand,
                    chunk_size=cfg.mamba_chunk_size,
                ),
            )
            for _ in range(cfg.mamba_n_layers)
        )
        self.norm_f = nn.LayerNorm(cfg.mamba_d_model)

    def num_tokens(self, num_samples: int) -> int:
        """T for an input of ``num_samples`` samples (each block: floor((L - 1)/s) + 1)."""
        t = num_samples
        for s in self.strides:
            t = (t - 1) // s + 1
        return t

    def token_boundaries(self, bounds: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """Sample boundaries N×5 -> token boundaries N×5 (see :func:`boundaries_to_tokens`)."""
        return boundaries_to_tokens(bounds, num_tokens, self.token_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # N×L -> N×1×L
            x = x.unsqueeze(1)
        h = self.cnn(x)  # N×C×T
        h = h.transpose(1, 2)  # N×T×d_model
        for layer in self.mamba:
            h = layer(h)  # N×T×d_model
        return self.norm_f(h)  # N×T×d_model
