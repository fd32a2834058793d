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
``y_t = h_t . C_t``: the full [B, L, D, N] state tensor is never materialised. Backward recomputes
one chunk at a time, so activation memory is bounded by one chunk's states, not the sequence's:

* ``impl="fused"`` (default): a custom autograd Function that saves only the inputs and the state at
  each chunk start, and in backward recomputes each chunk's states and runs the adjoint recurrence
  as a reverse scan, all in a few preallocated buffers reused across chunks;
* ``impl="checkpoint"``: the same chunk maths in plain autograd, each chunk wrapped in
  ``torch.utils.checkpoint.checkpoint(use_reentrant=False)`` when grad is enabled. Simpler, but on
  CPU its many fresh allocations made it slower and, through allocator growth, far larger in RSS
  (bench/mamba_backends.py).

:func:`selective_scan_ref` is the naive per-timestep reference (tests and benchmark only).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
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
    y = (b * C.unsqueeze(2)).sum(-1)  # B×T×D×N · B×T×1×N -> B×T×D
    return y, b[:, -1]


class _ChunkedScanFn(torch.autograd.Function):
    """Chunked selective scan (without the D·x skip) with a hand-written backward.

    Forward keeps only the inputs and the state at each chunk start (nC×B×D×N); backward walks the
    chunks in reverse, recomputes that chunk's states from its start state (per-chunk recomputation,
    as with activation checkpointing), and runs the adjoint recurrence
    g_t = dL/dh_t = dy_t C_t + a_{t+1} g_{t+1} as a reverse Hillis-Steele scan. All per-chunk work
    happens in a few preallocated B×T×D×N buffers reused across chunks and layers of the loop (fresh
    large allocations page-fault on every op; that dominated the plain-autograd version on CPU).
    """

    @staticmethod
    def _scan(a, b, a_bufs, b_bufs, reverse: bool = False):
        """Inclusive scan over dim 1 of b_t <- a_t·b_{t-1} + b_t (reverse: a_t·b_{t+1} + b_t).

        a, b: B×n×D×N; b must be ``b_bufs[0][:, :n]`` or ``b_bufs[1][:, :n]``; ``a`` is read only.
        Ping-pongs between the buffers (one fused addcmul per step, no temporaries); returns the
        result view (in one of ``b_bufs``). a_bufs: two scratch buffers for the window products.
        """
        n = a.shape[1]
        bi = 0 if b.data_ptr() == b_bufs[0].data_ptr() else 1
        ai = -1  # -1: still reading the caller's a
        s = 1
        while s < n:
            m = n - s
            src_b, dst_b = b_bufs[bi][:, :n], b_bufs[1 - bi][:, :n]
            src_a = a if ai < 0 else a_bufs[ai][:, :n]
            if reverse:  # t in [0, m) reads t + s; [m, n) unchanged
                dst_b[:, m:].copy_(src_b[:, m:])
                torch.addcmul(src_b[:, :m], src_a[:, :m], src_b[:, s:], out=dst_b[:, :m])
            else:  # t in [s, n) reads t - s; [0, s) unchanged
                dst_b[:, :s].copy_(src_b[:, :s])
                torch.addcmul(src_b[:, s:], src_a[:, s:], src_b[:, :m], out=dst_b[:, s:])
            bi = 1 - bi
            if 2 * s < n:  # window products for the next step (not needed after the last)
                ao = 0 if ai != 0 else 1
                dst_a = a_bufs[ao][:, :n]
                if reverse:
                    dst_a[:, m:].copy_(src_a[:, m:])
                    torch.mul(src_a[:, :m], src_a[:, s:], out=dst_a[:, :m])
                else:
                    dst_a[:, :s].copy_(src_a[:, :s])
                    torch.mul(src_a[:, s:], src_a[:, :m], out=dst_a[:, s:])
                ai = ao
            s *= 2
        return b_bufs[bi][:, :n]

    @staticmethod
    def _chunk_states(delta_c, u_c, A, B_c, h0, a, b_bufs, a_bufs):
        """Chunk states: a <- exp(delta_t A) (kept), returns h (B×n×D×N view into b_bufs)."""
        n = delta_c.shape[1]
        torch.mul(delta_c.unsqueeze(-1), A, out=a)
        a.exp_()  # a_t = exp(delta_t A): B×n×D×N, in (0, 1]
        b = b_bufs[0][:, :n]
        torch.mul(u_c.unsqueeze(-1), B_c.unsqueeze(2), out=b)  # b_t = delta_t x_t B_t: B×n×D×N
        b[:, 0].addcmul_(a[:, 0], h0)  # fold the carried state into step 0
        return _ChunkedScanFn._scan(a, b, a_bufs, b_bufs)

    @staticmethod
    def forward(ctx, x, delta, A, B, C, chunk_size: int):
        Bsz, L, Dn = x.shape
        N = A.shape[1]
        T = min(chunk_size, L)
        u = delta * x  # B×L×D
        a = x.new_empty(Bsz, T, Dn, N)
        a_bufs = [x.new_empty(Bsz, T, Dn, N) for _ in range(2)]
        b_bufs = [x.new_empty(Bsz, T, Dn, N) for _ in range(2)]
        h = x.new_zeros(Bsz, Dn, N)  # B×D×N
        starts = []
        y = x.new_empty(Bsz, L, Dn)  # B×L×D
        for t0 in range(0, L, T):
            t1 = min(t0 + T, L)
            n = t1 - t0
            starts.append(h)
            hc = _ChunkedScanFn._chunk_states(delta[:, t0:t1], u[:, t0:t1], A, B[:, t0:t1], h, a[:, :n], b_bufs, a_bufs)
            y[:, t0:t1] = torch.matmul(hc, C[:, t0:t1].unsqueeze(-1)).squeeze(-1)  # y_t = h_t·C_t: B×n×D
            h = hc[:, -1].clone()  # B×D×N
        ctx.chunk = T
        ctx.save_for_backward(x, delta, A, B, C, torch.stack(starts))  # starts: nC×B×D×N
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, delta, A, B, C, starts = ctx.saved_tensors
        T = ctx.chunk
        Bsz, L, Dn = x.shape
        N = A.shape[1]
        gy = gy.contiguous()
        u = delta * x  # B×L×D
        a = x.new_empty(Bsz, T, Dn, N)
        a_bufs = [x.new_empty(Bsz, T, Dn, N) for _ in range(2)]
        b_bufs = [x.new_empty(Bsz, T, Dn, N) for _ in range(2)]
        g_bufs = [x.new_empty(Bsz, T, Dn, N) for _ in range(2)]
        scratch = x.new_empty(Bsz, T, Dn, N)  # with a_bufs[1]: window products of the reverse scan
        du, ddelta = torch.empty_like(x), torch.empty_like(x)  # B×L×D
        dB, dC = torch.empty_like(B), torch.empty_like(C)  # B×L×N
        dA = torch.zeros_like(A)  # D×N
        carry = x.new_zeros(Bsz, Dn, N)  # a_{t1}·g_{t1} from the chunk after this one
        for c in range(starts.shape[0] - 1, -1, -1):
            t0 = c * T
            t1 = min(t0 + T, L)
            n = t1 - t0
            ac = a[:, :n]
            d_c, u_c, B_c, C_c, gy_c = delta[:, t0:t1], u[:, t0:t1], B[:, t0:t1], C[:, t0:t1], gy[:, t0:t1]
            hc = _ChunkedScanFn._chunk_states(d_c, u_c, A, B_c, starts[c], ac, b_bufs, a_bufs)  # B×n×D×N
            dC[:, t0:t1] = torch.matmul(hc.transpose(-1, -2), gy_c.unsqueeze(-1)).squeeze(-1)  # sum_d dy h: B×n×N
            # adjoint g_t = dy_t C_t + a_{t+1} g_{t+1}; the chunk's last step gets the carry
            g0 = g_bufs[0][:, :n]
            torch.mul(gy_c.unsqueeze(-1), C_c.unsqueeze(2), out=g0)  # B×n×D×N
            g0[:, -1].add_(carry)
            ap = a_bufs[0][:, :n]  # ap_t = a_{t+1}; the last one is never read by the reverse scan
            ap[:, : n - 1].copy_(ac[:, 1:])
            ap[:, n - 1].zero_()
            gc = _ChunkedScanFn._scan(ap, g0, [a_bufs[1], scratch], g_bufs, reverse=True)  # B×n×D×N
            carry = ac[:, 0] * gc[:, 0]  # B×D×N, for the previous chunk
            # db_t = g_t -> du_t = sum_n g B_t ; dB_t = sum_d g u_t
            du[:, t0:t1] = torch.matmul(gc, B_c.unsqueeze(-1)).squeeze(-1)
            dB[:, t0:t1] = torch.matmul(gc.transpose(-1, -2), u_c.unsqueeze(-1)).squeeze(-1)
            # w_t = d(delta_t A) = g_t h_{t-1} a_t  (h_{t-1} built in the spare g buffer)
            w = g_bufs[1] if gc.data_ptr() == g_bufs[0].data_ptr() else g_bufs[0]
            w = w[:, :n]
            w[:, 1:].copy_(hc[:, :-1])
            w[:, 0].copy_(starts[c])
            w.mul_(gc).mul_(ac)  # B×n×D×N
            ddelta[:, t0:t1] = torch.mul(w, A, out=a_bufs[0][:, :n]).sum(-1)  # sum_n w A: B×n×D
            w.mul_(d_c.unsqueeze(-1))
            dA += w.sum(dim=(0, 1))  # D×N
        dx = du * delta
        ddelta += du * x
        return dx, ddelta, dA, dB, dC, None


SCAN_IMPLS = ("fused", "checkpoint")
SCANS = (*SCAN_IMPLS, "naive")


def selective_scan(x, delta, A, B, C, D, chunk_size: int = 32, impl: str = "fused", use_checkpoint: bool | None = None):
    """Chunked selective scan; same maths and signature as :func:`selective_scan_ref`.

    x, delta: B×L×D; A: D×N; B, C: B×L×N; D: D -> y: B×L×D. Chunks of ``chunk_size`` tokens carry
    the state; within a chunk the states come from a parallel (Hillis-Steele) scan and are reduced to
    y at once, so the full B×L×D×N state tensor never exists. Memory: O(B·chunk_size·D·N).

    impl="fused" (default): :class:`_ChunkedScanFn`, one autograd node with a hand-written backward
    that recomputes each chunk's states (per-chunk recomputation, like checkpointing, in reused buffers).
    impl="checkpoint": plain autograd per chunk, each chunk wrapped in
    ``torch.utils.checkpoint.checkpoint(use_reentrant=False)`` when grad is enabled (``use_checkpoint``
    overrides); reference for the fused version and for double-backward.
    Computed in float32 (float64 if given); the result has x's dtype.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if impl not in SCAN_IMPLS:
        raise ValueError(f"impl must be one of {SCAN_IMPLS}, got {impl!r}")
    # the scan runs in float32 (float64 if given) even under autocast: exp/products of many decays
    # lose too much in bf16/fp16
    with torch.autocast(device_type=x.device.type, enabled=False):
        return _selective_scan(x, delta, A, B, C, D, chunk_size, impl, use_checkpoint)


def _selective_scan(x, delta, A, B, C, D, chunk_size, impl, use_checkpoint):
    out_dtype = x.dtype
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, delta, A, B, C, D = (t.to(work) for t in (x, delta, A, B, C, D))
    Bsz, L, Dn = x.shape
    if L == 0:
        return (D * x).to(out_dtype)
    if impl == "fused":
        y = _ChunkedScanFn.apply(x.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(), chunk_size)
        return (y + D * x).to(out_dtype)  # B×L×D
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
    y = torch.cat(ys, dim=1)  # B×L×D
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
        scan: str = "fused",
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.chunk_size = chunk_size
        if scan not in SCANS:
            raise ValueError(f"scan must be one of {SCANS}, got {scan!r}")
        self.scan = scan  # "fused" (default) | "checkpoint" | "naive" (tests/benchmarks only)

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
            y = selective_scan(x, delta, A, Bm, Cm, self.D.float(), chunk_size=self.chunk_size, impl=self.scan)  # B×L×E
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
    "SCANS",
    "MambaLayer",
    "MambaTorch",
    "make_mixer",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
]
