"""PAHCL module: forward contract (MoCo on/off), key encoder, EMA, queue, drift, embed."""
import warnings

import pytest
import torch

from pahcl.config import load_config
from pahcl.losses import hierarchical_loss
from pahcl.models import PAHCL

L = 640  # samples per view: 40 tokens with the tiny preset (fast)


def _cfg(**over):
    return load_config(preset="tiny", overrides={f"model.{k}": v for k, v in over.items()})


def _batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x1, x2 = torch.randn(n, 1, L, generator=g), torch.randn(n, 1, L, generator=g)
    b = torch.tensor([0, 90, 250, 330, 600]).repeat(n, 1)
    return x1, b, x2, b + 5


@pytest.mark.parametrize("moco", [True, False])
def test_forward_contract_shapes(moco):
    torch.manual_seed(0)
    cfg = _cfg(use_moco=moco)
    m = PAHCL(cfg.model)
    out = m(*_batch())
    C, Cs = cfg.model.proj_output_dim, cfg.model.sub_proj_output_dim
    assert set(out) == ({"q", "z2", "k", "sub1", "sub2"} if moco else {"q", "z2", "sub1", "sub2"})
    for k in ("q", "z2") + (("k",) if moco else ()):
        assert out[k].shape == (6, C)
        torch.testing.assert_close(out[k].norm(dim=-1), torch.ones(6))
    for k in ("sub1", "sub2"):
        assert out[k].shape == (6, 4, Cs)
        torch.testing.assert_close(out[k].norm(dim=-1), torch.ones(6, 4))
    assert m.embed(_batch()[0]).shape == (6, cfg.model.mamba_d_model)
    if moco:
        assert not out["k"].requires_grad
        assert m.queue.shape == (C, cfg.model.queue_size) and m.queue_ptr.dtype == torch.long
        torch.testing.assert_close(m.queue.norm(dim=0), torch.ones(cfg.model.queue_size))
        res = hierarchical_loss(out, cfg.loss, queue=m.queue)
    else:
        for name in ("encoder_k", "projector_k", "queue", "queue_ptr"):
            assert not hasattr(m, name)
        assert m.drift() == {}
        res = hierarchical_loss(out, cfg.loss)
    assert set(res) == {"loss", "loss_cycle", "loss_sub", "cycle_acc"}
    res["loss"].backward()
    assert m.encoder.cnn[0][0].weight.grad is not None


def test_key_encoder_gets_no_grads_and_enqueue_before_backward_is_safe():
    torch.manual_seed(0)
    cfg = _cfg()
    m = PAHCL(cfg.model)
    assert all(not p.requires_grad for p in [*m.encoder_k.parameters(), *m.projector_k.parameters()])
    out = m(*_batch())
    res = hierarchical_loss(out, cfg.loss, queue=m.queue)
    m.dequeue_and_enqueue(out["k"])  # in-place queue write before backward: loss cloned the queue
    res["loss"].backward()
    assert all(p.grad is None for p in [*m.encoder_k.parameters(), *m.projector_k.parameters()])
    assert all(p.grad is not None for p in m.projector.parameters())
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    assert not any(n.startswith(("encoder_k.", "projector_k.")) for n in trainable)


def test_embed_follows_caller_grad_mode():
    m = PAHCL(_cfg().model)
    x = _batch()[0]
    assert m.embed(x).requires_grad
    with torch.no_grad():
        assert not m.embed(x).requires_grad


def test_momentum_update_is_exact_ema():
    torch.manual_seed(0)
    cfg = _cfg(moco_momentum=0.9)
    m = PAHCL(cfg.model)
    with torch.no_grad():  # make query and key differ
        for p in [*m.encoder.parameters(), *m.projector.parameters()]:
            p.add_(torch.randn_like(p) * 0.1)
    q = [p.detach().clone() for p in [*m.encoder.parameters(), *m.projector.parameters()]]
    k = [p.detach().clone() for p in [*m.encoder_k.parameters(), *m.projector_k.parameters()]]
    m.momentum_update()
    k_new = [*m.encoder_k.parameters(), *m.projector_k.parameters()]
    assert len(k_new) == len(q) > 0
    for kq, kk, kn in zip(q, k, k_new):
        assert torch.equal(kn, kk * 0.9 + kq * (1.0 - 0.9))
        torch.testing.assert_close(kn.double(), 0.9 * kk.double() + 0.1 * kq.double())


@pytest.mark.parametrize("K,n_batches,bs", [(10, 5, 4), (7, 3, 3), (5, 1, 8), (6, 4, 6)])
def test_queue_wraps_around(K, n_batches, bs):
    cfg = _cfg(queue_size=K)
    m = PAHCL(cfg.model)
    C = cfg.model.proj_output_dim
    expected = m.queue.clone()  # C×K
    ptr, written = 0, 0
    for i in range(n_batches):
        keys = torch.nn.functional.normalize(torch.randn(bs, C), dim=1)
        m.dequeue_and_enqueue(keys)
        for j in range(bs):  # reference: one key at a time into a ring buffer
            expected[:, (ptr + j) % K] = keys[j]
        ptr = (ptr + bs) % K
        written = min(written + bs, K)
        assert int(m.queue_ptr) == ptr
        torch.testing.assert_close(m.queue, expected)
        assert m.queue_fill() == pytest.approx(written / K)


def test_queue_fill_and_warning():
    m = PAHCL(_cfg(queue_size=64).model)
    assert m.queue_fill() == 0.0
    m.dequeue_and_enqueue(torch.randn(8, m.queue.shape[0]))
    assert m.queue_fill() == pytest.approx(8 / 64)
    with pytest.warns(UserWarning, match="queue_size=64 exceeds"):
        assert m.warn_if_queue_exceeds(50)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not m.warn_if_queue_exceeds(1000)


def test_drift_zero_at_init_positive_after_step():
    torch.manual_seed(0)
    cfg = _cfg()
    m = PAHCL(cfg.model)
    d = m.drift()
    assert set(d) == {"drift", "drift/cnn", "drift/mamba", "drift/projector"}
    assert all(v == 0.0 for v in d.values())
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    out = m(*_batch())
    hierarchical_loss(out, cfg.loss, queue=m.queue)["loss"].backward()
    opt.step()
    m.momentum_update()
    d = m.drift()
    assert all(v > 0 for v in d.values()), d
    assert all(v < 1 for v in d.values()), d


def test_state_dict_round_trip():
    torch.manual_seed(0)
    cfg = _cfg()
    a = PAHCL(cfg.model)
    a.dequeue_and_enqueue(torch.randn(3, cfg.model.proj_output_dim))
    b = PAHCL(cfg.model)
    b.load_state_dict(a.state_dict(), strict=True)
    assert int(b.queue_ptr) == 3 and b.queue_fill() == a.queue_fill()
    batch = _batch()
    with torch.no_grad():
        oa, ob = a(*batch), b(*batch)
    for k in oa:
        torch.testing.assert_close(oa[k], ob[k])


def test_cycle_pooling_averages_the_cycles_own_tokens():
    """model.embed_pool: cycle averages the tokens from the S1 onset to the next S1 onset (ceil), not the
    window's zero padding after it; without bounds (or with window pooling, the default) all tokens."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, L)
    x[:, :, 400:] = 0.0
    b = torch.tensor([[0, 90, 250, 330, 400], [16, 90, 250, 330, 401]])  # stride 16: tokens [0, 25) and [1, 26)
    cyc = PAHCL(_cfg(embed_pool="cycle").model).eval()
    win = PAHCL(_cfg().model).eval()
    win.load_state_dict(cyc.state_dict())
    with torch.no_grad():
        h = cyc.encoder(x)  # 2×40×D
        torch.testing.assert_close(cyc.embed(x, b), torch.stack([h[0, :25].mean(0), h[1, 1:26].mean(0)]))
        torch.testing.assert_close(win.embed(x, b), h.mean(1))
        torch.testing.assert_close(cyc.embed(x), h.mean(1))
        out = cyc(x, b, x, b)
        q = torch.nn.functional.normalize(cyc.projector(cyc.embed(x, b)), dim=-1)
    torch.testing.assert_close(out["q"], q)
    torch.testing.assert_close(out["k"], q)  # fresh model: key encoder = query encoder


def test_embed_subs_appends_the_four_substructure_span_means_and_leaves_training_alone():
    """model.embed_subs: embed() = [cycle embedding, S1, systole, S2, diastole span means] (N×5D), the spans the
    sub-level loss pools; forward() (everything training sees) is the same with or without it."""
    torch.manual_seed(0)
    x = torch.randn(2, 1, L)
    b = torch.tensor([[0, 90, 250, 330, 400], [16, 96, 256, 336, 401]])  # stride 16: floor -> tokens 0, 5, 15, 20, 25
    sub = PAHCL(_cfg(embed_pool="cycle", embed_subs=True).model).eval()
    cyc = PAHCL(_cfg(embed_pool="cycle").model).eval()
    cyc.load_state_dict(sub.state_dict())
    with torch.no_grad():
        h = sub.encoder(x)  # 2×40×D
        f = sub.embed(x, b)
        D = h.shape[-1]
        assert f.shape == (2, 5 * D)
        torch.testing.assert_close(f[:, :D], cyc.embed(x, b))
        torch.testing.assert_close(f[0, D:2 * D], h[0, 0:5].mean(0))  # S1 of cycle 0: samples [0, 90) -> tokens [0, 5)
        torch.testing.assert_close(f[1, 4 * D:], h[1, 21:25].mean(0))  # diastole of cycle 1: samples [336, 401)
        torch.testing.assert_close(f[:, D:].reshape(2, 4, D), sub._pool_subs(h, b))
        batch = (x, b, x, b)
        torch.manual_seed(1)
        a = sub(*batch)
        torch.manual_seed(1)
        c = cyc(*batch)
        torch.testing.assert_close(sub.embed(x), h.mean(1))  # no bounds (e.g. val/align's views): window mean
    for k in a:
        torch.testing.assert_close(a[k], c[k])  # training sees the same outputs
