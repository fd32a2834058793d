"""Mamba blocks: a pure-PyTorch block with mamba-ssm's parameter names, a chunked selective
scan, and backend selection.

Backends (``model.mamba_backend``):

* ``"mamba_ssm"`` -- ``mamba_ssm.modules.mamba_simple.Mamba`` (fused CUDA kernels). Needs CUDA
  and the ``mamba-ssm`` package (``pip install .[cuda]``). ``mamba_ssm`` is imported lazily and only
  when ``torch.cuda.is_available()``: on a CPU-only torch the import itself fails.
* ``"torch"`` -- :class:`MambaTorch`, pure PyTorch. Same parameter names, shapes and init as
  ``mamba_ssm``'s block (and ``mambapy.mamba.MambaBlock``), so a state dict moves between backends
  with ``load_state_dict(strict=True)``.
* ``"auto"`` -- ``"mamba_ssm"`` when CUDA is available and ``import mamba_ssm`` works, else ``"torch"``.

The torch backend's selective scan (:func:`selective_scan`) loops over chunks of ``chunk_size``
tokens carrying the state ``h`` [B, D, N]; within a chunk all states are computed in parallel with a
Hillis-Steele scan over ``(a_t, b_t) = (exp(delta_t A), delta_t B_t x_t)`` (products of factors in
(0, 1]: no exponential of a positive cumulative sum, so no overflow), and immediately reduced to
``y_t = h_t . C_t``: the full [B, L, D, N] state tensor is never materialised. With grad enabled each
chunk runs under ``torch.utils.checkpoint`` (non-reentrant), so backward recomputes one chunk at a
time and activation memory is bounded by one chunk's states instead of the whole sequence's.
:func:`selective_scan_ref` is the naive per-timestep reference (tests and benchmark only).
"""
from __future__ import annotations

import math
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

BACKENDS = ("auto", "torch", "mamba_ssm")


class MambaBackendError(RuntimeError):
    """The requested ``model.mamba_backend`` cannot run here."""


# ----------------------------------------------------------------------------- selective scan


def selective_scan_ref(x, delta, A, B, C, D):
    """Naive sequential selective scan (one Python step per timestep; keeps every state for backward).

    x, delta: B×L×D (delta already softplus'd); A: D×N (negative); B, C: B×L×N; D: D.
    Returns y: B×L×D with h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t, y_t = h_t . C_t + D x_t.
    """
    dA = torch.exp(delta.unsqueeze(-1) * A)  # B×L×D×N
    dBx = (delta * x).unsqueeze(-1) * B.unsqueeze(2)  # B×L×D×N
    h = x.new_zeros(x.shape[0], x.shape[2], A.shape[1])  # B×D×N
    ys = []
    # unbind (not x[:, t]) so backward is O(L), not O(L^2)
    for a_t, b_t, c_t in zip(dA.unbind(1), dBx.unbind(1), C.unbind(1)):
        h = a_t * h + b_t  # B×D×N
        ys.append(torch.matmul(h, c_t.unsqueeze(-1)).squeeze(-1))  # B×D
    y = torch.stack(ys, dim=1)  # B×L×D
    return y + D * x


def _scan_chunk(x, delta, A, B, C, h0):
    """One chunk: x, delta B×T×D; A D×N; B, C B×T×N; h0 B×D×N -> (y B×T×D, h_T B×D×N)."""
    a = torch.exp(delta.unsqueeze(-1) * A)  # B×T×D×N, entries in (0, 1]
    b = (delta * x).unsqueeze(-1) * B.unsqueeze(2)  # B×T×D×N
    # fold the carried state into step 0: h_0 = a_0 h_prev + b_0
    b = torch.cat([torch.addcmul(b[:, :1], a[:, :1], h0.unsqueeze(1)), b[:, 1:]], dim=1)
    T = a.shape[1]
    s = 1
    while s < T:  # Hillis-Steele inclusive scan, log2(T) steps: (a, b)[t] <- (a[t] a[t-s], a[t] b[t-s] + b[t])
        b = torch.cat([b[:, :s], torch.addcmul(b[:, s:], a[:, s:], b[:, :-s])], dim=1)
        if 2 * s < T:  # the last step does not need the products any more
            a = torch.cat([a[:, :s], a[:, s:] * a[:, :-s]], dim=1)
        s *= 2
    y = torch.matmul(b, C.unsqueeze(-1)).squeeze(-1)  # (B×T×D×N) @ (B×T×N×1) -> B×T×D
    return y, b[:, -1]


def selective_scan(x, delta, A, B, C, D, chunk_size: int = 32, use_checkpoint: bool | None = None):
    """Chunked selective scan; same maths and signature as :func:`selective_scan_ref`.

    Memory: O(B·chunk_size·D·N) for the states (per chunk, recomputed in backward when
    ``use_checkpoint``; default: whenever grad is enabled and an input requires grad).
    Computed in float32 (or float64 if given); the result has x's dtype.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out_dtype = x.dtype
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, delta, A, B, C, D = (t.to(work) for t in (x, delta, A, B, C, D))
    Bsz, L, Dn = x.shape
    if use_checkpoint is None:
        use_checkpoint = torch.is_grad_enabled() and any(t.requires_grad for t in (x, delta, A, B, C))
    h = x.new_zeros(Bsz, Dn, A.shape[1])  # B×D×N
    ys = []
    # torch.split (not x[:, i:j]) so backward is a single concat, not one full-size zero grad per chunk
    for xc, dc, bc, cc in zip(*(torch.split(t, chunk_size, dim=1) for t in (x, delta, B, C))):
        if use_checkpoint:
            y, h = checkpoint(_scan_chunk, xc, dc, A, bc, cc, h, use_reentrant=False, preserve_rng_state=False)
        else:
            y, h = _scan_chunk(xc, dc, A, bc, cc, h)
        ys.append(y)  # B×T×D
    y = torch.cat(ys, dim=1) if ys else x.new_zeros(x.shape)  # B×L×D
    return (y + D * x).to(out_dtype)


# ----------------------------------------------------------------------------- block


class MambaTorch(nn.Module):
    """Pure-PyTorch Mamba mixer, a drop-in for ``mamba_ssm.modules.mamba_simple.Mamba``.

    Parameter names, shapes and initialisation follow mamba_ssm (d_inner = expand·d_model,
    dt_rank = ceil(d_model/16)): in_proj [2·d_inner, d_model] (no bias), conv1d depthwise
    [d_inner, 1, d_conv] (bias), x_proj [dt_rank + 2·d_state, d_inner] (no bias), dt_proj
    [d_inner, dt_rank] (bias = softplus⁻¹ of dt ~ logU(dt_min, dt_max)), A_log [d_inner, d_state]
    (A = 1..d_state per channel), D [d_inner], out_proj [d_model, d_inner] (no bias).
    forward: B×L×d_model -> B×L×d_model (causal).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init: str = "random",
        dt_scale: float = 1.0,
        dt_init_floor: float = 1e-4,
        conv_bias: bool = True,
        bias: bool = False,
        chunk_size: int = 32,
        scan: str = "chunked",
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.chunk_size = chunk_size
        if scan not in ("chunked", "naive"):
            raise ValueError(f"scan must be 'chunked' or 'naive', got {scan!r}")
        self.scan = scan  # "naive" only for tests/benchmarks

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner, self.d_inner, kernel_size=d_conv, groups=self.d_inner, padding=d_conv - 1, bias=conv_bias
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)

        dt_init_std = self.dt_rank**-0.5 * dt_scale
        if dt_init == "constant":
            nn.init.constant_(self.dt_proj.weight, dt_init_std)
        elif dt_init == "random":
            nn.init.uniform_(self.dt_proj.weight, -dt_init_std, dt_init_std)
        else:
            raise NotImplementedError(dt_init)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        ).clamp(min=dt_init_floor)
        inv_dt = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
        with torch.no_grad():
            self.dt_proj.bias.copy_(inv_dt)
        self.dt_proj.bias._no_reinit = True

        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1).contiguous()  # d_inner×N
        self.A_log = nn.Parameter(torch.log(A))
        self.A_log._no_weight_decay = True
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.D._no_weight_decay = True
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        L = hidden_states.shape[1]
        xz = self.in_proj(hidden_states)  # B×L×2E
        x, z = xz.chunk(2, dim=-1)  # B×L×E each
        x = self.conv1d(x.transpose(1, 2))[..., :L].transpose(1, 2)  # causal depthwise conv: B×L×E
        x = F.silu(x)
        dt, Bm, Cm = torch.split(self.x_proj(x), [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.softplus(self.dt_proj(dt))  # B×L×E
        A = -torch.exp(self.A_log.float())  # E×N
        if self.scan == "naive":
            y = selective_scan_ref(x, delta, A, Bm, Cm, self.D.float())  # B×L×E
        else:
            y = selective_scan(x, delta, A, Bm, Cm, self.D.float(), chunk_size=self.chunk_size)  # B×L×E
        y = y.to(x.dtype) * F.silu(z)
        return self.out_proj(y)  # B×L×d_model


# ----------------------------------------------------------------------------- backend selection


def _import_mamba_ssm():
    """mamba_ssm's Mamba class, or the reason it is unavailable (never imports without CUDA)."""
    if not torch.cuda.is_available():
        return None, "torch.cuda.is_available() is False (mamba_ssm's fused kernels need CUDA)"
    try:
        from mamba_ssm.modules.mamba_simple import Mamba  # noqa: PLC0415  (lazy on purpose)
    except Exception as e:  # ImportError, or a CUDA extension failing to load
        return None, f"`import mamba_ssm` failed ({type(e).__name__}: {e}); install with `pip install .[cuda]`"
    return Mamba, None


def resolve_backend(name: str) -> str:
    """``"auto"`` -> ``"mamba_ssm"`` if usable else ``"torch"``; checks explicit requests."""
    if name not in BACKENDS:
        raise MambaBackendError(f"model.mamba_backend: {name!r} is not allowed; allowed values: {list(BACKENDS)}")
    if name == "torch":
        return "torch"
    cls, why = _import_mamba_ssm()
    if name == "mamba_ssm" and cls is None:
        raise MambaBackendError(
            f"model.mamba_backend='mamba_ssm' cannot be used: {why}. "
            "Use model.mamba_backend=auto (falls back to the pure-PyTorch block) or model.mamba_backend=torch."
        )
    return "mamba_ssm" if cls is not None else "torch"


def make_mixer(
    backend: str, d_model: int, d_state: int, d_conv: int, expand: int, chunk_size: int = 32
) -> nn.Module:
    """One Mamba mixer (B×L×d_model -> B×L×d_model) for a resolved or unresolved backend name."""
    backend = resolve_backend(backend)
    if backend == "mamba_ssm":
        cls, _ = _import_mamba_ssm()
        return cls(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand)
    return MambaTorch(d_model=d_model, d_state=d_state, d_conv=d_conv, expand=expand, chunk_size=chunk_size)


class MambaLayer(nn.Module):
    """Pre-norm residual block: x + mixer(LayerNorm(x)). B×L×d -> B×L×d."""

    def __init__(self, d_model: int, mixer: nn.Module):
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer = mixer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mixer(self.norm(x))


__all__ = [
    "BACKENDS",
    "MambaBackendError",
    "MambaLayer",
    "MambaTorch",
    "make_mixer",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
]
