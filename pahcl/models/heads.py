"""Projection heads (no batch statistics: LayerNorm, safe for single-device MoCo)."""
from __future__ import annotations

import torch
import torch.nn as nn


class ProjectionMLP(nn.Module):
    """Linear -> LayerNorm -> GELU -> Linear: ...×in_dim -> ...×out_dim (any leading dims)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, norm: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.LayerNorm(hidden_dim) if norm else nn.Identity(),
            nn.GELU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
