"""PA-HCL models: CNN + Mamba encoder, projection heads, the PAHCL module (MoCo optional)."""
from .encoder import CNNMambaEncoder, boundaries_to_tokens, span_mean_pool, token_spans
from .heads import ProjectionMLP
from .mamba import (
    MambaBackendError,
    MambaLayer,
    MambaTorch,
    make_mixer,
    resolve_backend,
    selective_scan,
    selective_scan_ref,
)
from .pahcl import PAHCL

__all__ = [
    "CNNMambaEncoder",
    "MambaBackendError",
    "MambaLayer",
    "MambaTorch",
    "PAHCL",
    "ProjectionMLP",
    "boundaries_to_tokens",
    "make_mixer",
    "resolve_backend",
    "selective_scan",
    "selective_scan_ref",
    "span_mean_pool",
    "token_spans",
]
