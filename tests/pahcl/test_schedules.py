import math

import pytest

from pahcl.schedules import get_lr


def test_warmup_is_linear():
    lrs = [get_lr(s, 100, 10, 1.0, 0.01) for s in range(10)]
    assert lrs == pytest.approx([(s + 1) / 10 for s in range(10)])
    diffs = [b - a for a, b in zip(lrs, lrs[1:])]
    assert all(d == pytest.approx(0.1) for d in diffs)


def test_peak_then_cosine_to_min_lr():
    base, lo, total, warm = 2e-3, 1e-6, 200, 20
    assert get_lr(warm, total, warm, base, lo) == pytest.approx(base)
    assert get_lr(total - 1, total, warm, base, lo) == pytest.approx(lo)
    assert get_lr(total + 50, total, warm, base, lo) == pytest.approx(lo)
    mid = warm + (total - 1 - warm) / 2
    if mid.is_integer():
        assert get_lr(int(mid), total, warm, base, lo) == pytest.approx((base + lo) / 2)


def test_monotone_up_then_down():
    lrs = [get_lr(s, 300, 30, 1e-3, 1e-5) for s in range(300)]
    up, down = lrs[:31], lrs[30:]
    assert all(b >= a for a, b in zip(up, up[1:]))
    assert all(b <= a for a, b in zip(down, down[1:]))
    assert all(1e-5 <= v <= 1e-3 + 1e-15 for v in lrs)


def test_no_warmup_and_cosine_formula():
    total = 11
    for s in range(total):
        expect = 1e-6 + 0.5 * (1 + math.cos(math.pi * s / (total - 1))) * (1.0 - 1e-6)
        assert get_lr(s, total, 0, 1.0, 1e-6) == pytest.approx(expect)


def test_bad_arguments():
    with pytest.raises(ValueError):
        get_lr(0, 0, 0, 1.0, 0.0)
    with pytest.raises(ValueError):
        get_lr(0, 10, -1, 1.0, 0.0)
    with pytest.raises(ValueError):
        get_lr(0, 10, 1, 1.0, 2.0)
