"""CNN+Mamba encoder: shapes, no batch statistics, token boundaries, span pooling, heads."""
import pytest
import torch
import torch.nn as nn

from pahcl.config import load_config
from pahcl.models import CNNMambaEncoder, ProjectionMLP, boundaries_to_tokens, span_mean_pool, token_spans


@pytest.fixture(scope="module")
def tiny_cfg():
    return load_config(preset="tiny").model


def test_encoder_shapes_and_stride(tiny_cfg):
    torch.manual_seed(0)
    enc = CNNMambaEncoder(tiny_cfg)
    assert enc.token_stride == 16 and enc.backend == "torch"
    for L in (800, 801, 5000):
        h = enc(torch.randn(3, 1, L))
        assert h.shape == (3, enc.num_tokens(L), tiny_cfg.mamba_d_model)
    assert enc.num_tokens(5000) == 313
    assert enc(torch.randn(2, 800)).shape == (2, 50, 16)  # N×L accepted too
    assert isinstance(enc.mamba, nn.ModuleList) and len(enc.mamba) == tiny_cfg.mamba_n_layers


def test_no_batch_statistics_and_batch_independence(tiny_cfg):
    torch.manual_seed(0)
    enc = CNNMambaEncoder(tiny_cfg)
    bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.InstanceNorm1d)
    assert not any(isinstance(m, bn) for m in enc.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in enc.cnn.modules())
    x = torch.randn(4, 1, 640)
    with torch.no_grad():
        full = enc(x)
        single = torch.cat([enc(x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-5)  # each sample sees only itself


def test_boundaries_to_tokens_floor_clip_and_min_one_token():
    T, stride = 20, 16
    b = torch.tensor(
        [
            [0, 100, 160, 200, 319],  # ordinary: floor division
            [0, 5, 10, 12, 15],  # all in token 0 -> forced to distinct tokens
            [-40, 2000, 3000, 4000, 5000],  # out of range -> clipped, then spread at the end
            [0, 318, 319, 319, 320],  # crowded at the end
        ]
    )
    t = boundaries_to_tokens(b, T, stride)
    assert t[0].tolist() == [0, 6, 10, 12, 19]
    assert t.shape == (4, 5)
    assert (t >= 0).all() and (t <= T).all()
    assert (t[:, 1:] > t[:, :-1]).all()  # every substructure spans >= 1 token
    start, end = token_spans(b, T, stride)
    assert ((end - start) >= 1).all() and (start >= 0).all() and (end <= T).all()


def test_token_spans_when_fewer_than_four_tokens():
    start, end = token_spans(torch.tensor([[0, 10, 20, 30, 40]]), 2, 16)
    assert ((end - start) >= 1).all() and (start >= 0).all() and (end <= 2).all()


def test_span_mean_pool_matches_loop():
    torch.manual_seed(0)
    feats = torch.randn(3, 12, 5)
    start = torch.tensor([[0, 2, 5, 9], [0, 1, 2, 3], [3, 4, 10, 11]])
    end = torch.tensor([[2, 5, 9, 12], [1, 2, 3, 12], [4, 10, 11, 12]])
    pooled = span_mean_pool(feats, start, end)
    assert pooled.shape == (3, 4, 5)
    for n in range(3):
        for s in range(4):
            torch.testing.assert_close(pooled[n, s], feats[n, start[n, s] : end[n, s]].mean(0))


def test_projection_mlp():
    mlp = ProjectionMLP(16, 32, 8)
    assert mlp(torch.randn(5, 16)).shape == (5, 8)
    assert mlp(torch.randn(5, 4, 16)).shape == (5, 4, 8)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in mlp.modules())
