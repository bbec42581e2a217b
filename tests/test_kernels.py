"""saliency.kernels: the engine's fast max pooling equals PyTorch's, value for value."""

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from saliency.kernels import call_function, call_module, max_pool

CASES = [(nd, k, s, p, d) for nd in (1, 2)
         for k, s, p, d in itertools.product([1, 2, 3], [None, 1, 2, 3], [0, 1], [1, 2])
         if p <= k // 2]


@pytest.mark.parametrize("nd,k,s,p,d", CASES)
def test_max_pool_equals_pytorch(nd, k, s, p, d):
    g = torch.Generator().manual_seed(nd * 1000 + k * 100 + (s or 0) * 10 + p + d)
    x = torch.randn((3, 4) + (11,) * nd, dtype=torch.float64, generator=g)
    x[0, 1, ..., 3] = float("nan")  # NaN propagates as in PyTorch
    x[1, 2] = -float("inf")
    ref = (F.max_pool1d if nd == 1 else F.max_pool2d)(x, k, s, p, d)
    got = max_pool(x, nd, k, s, p, d)
    assert got.shape == ref.shape and got.is_contiguous()
    assert torch.equal(got.isnan(), ref.isnan())
    assert torch.equal(torch.nan_to_num(got), torch.nan_to_num(ref))


def test_unbatched_and_rectangular_windows():
    x = torch.randn(4, 9, 10)
    assert torch.equal(max_pool(x, 2, (2, 3), (1, 2)), F.max_pool2d(x, (2, 3), (1, 2)))


def test_uncovered_calls_fall_back_to_pytorch():
    x = torch.randn(2, 3, 7, 7)
    assert max_pool(x, 2, 2, ceil_mode=True) is None
    assert max_pool(x, 2, 2, return_indices=True) is None
    assert max_pool(x.long(), 2, 2) is None
    out, idx = call_module(nn.MaxPool2d(2, return_indices=True), (x,))
    ref, ref_idx = F.max_pool2d(x, 2, return_indices=True)
    assert torch.equal(out, ref) and torch.equal(idx, ref_idx)
    assert torch.equal(call_module(nn.MaxPool2d(2, ceil_mode=True), (x,)),
                       F.max_pool2d(x, 2, ceil_mode=True))
    assert torch.equal(call_function(F.max_pool2d, (x, 3), {"stride": 2, "padding": 1}),
                       F.max_pool2d(x, 3, 2, 1))
    assert torch.equal(call_function(torch.relu, (x,)), torch.relu(x))
    with pytest.raises(RuntimeError):  # PyTorch's own error for an invalid padding
        call_function(F.max_pool2d, (x, 2), {"padding": 2})


def test_hooked_modules_run_themselves():
    calls = []
    pool = nn.MaxPool2d(2)
    pool.register_forward_hook(lambda *a: calls.append(1))
    call_module(pool, (torch.randn(1, 1, 4, 4),))
    assert calls == [1]
