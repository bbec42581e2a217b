"""Parameter-wise scorers of thesis Table 2.1, the HVP and the exact loss change.

Every number is checked against an independent reference: ``torch.func.hessian``
of the loss of the flattened parameters, ``torch.autograd.grad`` of the mean
loss, and a naive loop that zeroes one entry of the model at a time.
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from helpers_snapshot import assert_unchanged, take
from torch.func import functional_call
from zoo import build, randomize_bn, thesis_cnn

import saliency.hvp
import saliency.loss_change
import saliency.magnitude
import saliency.random_scores
import saliency.taylor
from saliency.hvp import grad_and_hvp, gradient, hvp
from saliency.loss_change import LossChange
from saliency.magnitude import Magnitude
from saliency.random_scores import RandomParameter, RandomUnit
from saliency.taylor import Hessian, Taylor1, Taylor2

# torch.func.hessian (the reference only) warns about torch.jit internals
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

DATA_SCORERS = [
    lambda: Taylor1(),
    lambda: Taylor2(),
    lambda: Hessian(absolute=True),
    lambda: Taylor2(lam=0.3, delta="sensitivity", epsilon=0.1),
    lambda: LossChange(),
]
IDS = ["taylor1", "taylor2", "hessian_abs", "taylor2_sensitivity", "loss_change"]


def make_data(shape, n=20, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n,) + tuple(shape), generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


def splits(x, y, cuts):
    edges = [0, *cuts, len(x)]
    return [(x[a:b], y[a:b]) for a, b in zip(edges[:-1], edges[1:])]


def classes_of(model, shape):
    with torch.no_grad():
        return model.eval()(torch.zeros((1,) + tuple(shape), dtype=torch.float64)).shape[1]


def mean_loss(model, x, y, loss_fn=F.cross_entropy):
    with torch.no_grad():
        return loss_fn(model(x), y, reduction="none").reshape(len(x), -1).sum(1).mean().item()


# ---------------------------------------------------------------- references


def flat_loss(model, names, x, y, loss_fn=F.cross_entropy):
    """The mean loss as a function of the selected parameters, flattened."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [math.prod(s) for s in shapes]

    def f(flat):
        chunks = torch.split(flat, sizes)
        repl = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        out = functional_call(model, repl, (x,))
        return loss_fn(out, y, reduction="none").reshape(len(x), -1).sum(1).mean()

    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    return f, flat, sizes, shapes


def unflatten(vec, names, sizes, shapes):
    return {n: c.reshape(s) for n, c, s in zip(names, torch.split(vec, sizes), shapes)}


def reference_grad_hessian(model, names, x, y, loss_fn=F.cross_entropy):
    f, flat, sizes, shapes = flat_loss(model, names, x, y, loss_fn)
    g = torch.func.grad(f)(flat)
    h = torch.func.hessian(f)(flat)
    return flat, g, h, sizes, shapes


def naive_loss_change(model, x, y, name, entries=None):
    """Zero entry e of parameter ``name`` in the model, evaluate, restore."""
    p = dict(model.named_parameters())[name]
    base = mean_loss(model, x, y)
    entries = range(p.numel()) if entries is None else entries
    out = []
    for e in entries:
        with torch.no_grad():
            old = p.view(-1)[e].clone()
            try:
                p.view(-1)[e] = 0.0
                out.append(mean_loss(model, x, y) - base)
            finally:
                p.view(-1)[e] = old
    return torch.tensor(out, dtype=torch.float64)


# ---------------------------------------------------------------- Hessian-vector product


METHODS = ["double_backward", "forward_over_reverse"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ["mlp", "mlp_bn", "cnn"])
def test_hvp_equals_the_hessian_times_v_for_any_batching(arch, method):
    model, shape = build(arch)
    model.eval()
    x, y = make_data(shape, n=14, classes=classes_of(model, shape), seed=1)
    names = [n for n, _ in model.named_parameters()]
    if arch == "cnn":  # keep the dense reference Hessian small
        names = ["conv1.weight", "bn1.bias", "conv2.bias", "fc2.weight"]
    flat, g_ref, h_ref, sizes, shapes = reference_grad_hessian(model, names, x, y)
    v_flat = torch.randn(flat.numel(), generator=torch.Generator().manual_seed(2),
                         dtype=torch.float64)
    hv_ref = unflatten(h_ref @ v_flat, names, sizes, shapes)
    g_ref = unflatten(g_ref, names, sizes, shapes)
    v = unflatten(v_flat, names, sizes, shapes)
    params = {n: dict(model.named_parameters())[n] for n in names}
    for cuts in ([5], [1, 2, 9]):
        hv = hvp(model, params, v, splits(x, y, cuts), method=method)
        g, hv2 = grad_and_hvp(model, params, v, splits(x, y, cuts), method=method)
        g1 = gradient(model, params, splits(x, y, cuts))
        assert set(hv) == set(names)
        assert not any(t.requires_grad for d in (hv, g, hv2, g1) for t in d.values())
        for n in names:
            torch.testing.assert_close(hv[n], hv_ref[n], rtol=0, atol=1e-8)
            torch.testing.assert_close(hv2[n], hv_ref[n], rtol=0, atol=1e-8)
            torch.testing.assert_close(g[n], g_ref[n], rtol=0, atol=1e-10)
            torch.testing.assert_close(g1[n], g_ref[n], rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_hvp_with_other_loss_and_multi_dimensional_targets(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    x = torch.randn(9, 3, dtype=torch.float64)
    y = torch.randn(9, 2, dtype=torch.float64)
    names = ["0.weight", "2.bias"]
    flat, _, h, sizes, shapes = reference_grad_hessian(model, names, x, y, F.smooth_l1_loss)
    v = torch.randn(flat.numel(), dtype=torch.float64)
    params = {n: dict(model.named_parameters())[n] for n in names}
    hv = hvp(model, params, unflatten(v, names, sizes, shapes), splits(x, y, [4]),
             F.smooth_l1_loss, method=method)
    ref = unflatten(h @ v, names, sizes, shapes)
    for n in names:
        torch.testing.assert_close(hv[n], ref[n], rtol=0, atol=1e-8)


class Shared(nn.Module):
    """Parameters entering through sums: autograd returns expanded (zero-stride) gradients."""

    def __init__(self):
        super().__init__()
        self.p = nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.float64).reshape(3, 2))
        self.q = nn.Parameter(torch.tensor([0.5, -2.0], dtype=torch.float64))
        self.r = nn.Parameter(torch.tensor([0.3], dtype=torch.float64))

    def forward(self, x):
        return x * self.p.sum() + (self.q * self.q).sum() + self.r


@pytest.mark.parametrize("method", METHODS)
def test_hvp_when_gradients_are_expanded_views(method):
    model = Shared()
    x = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    y = torch.randn(7, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    names = ["p", "q", "r"]
    flat, g_ref, h_ref, sizes, shapes = reference_grad_hessian(model, names, x, y, F.mse_loss)
    v = torch.arange(1.0, flat.numel() + 1, dtype=torch.float64)
    params = dict(model.named_parameters())
    for cuts in ([], [3], [1, 4]):
        g, hv = grad_and_hvp(model, params, unflatten(v, names, sizes, shapes),
                             splits(x, y, cuts), F.mse_loss, method=method)
        for n, ref in unflatten(g_ref, names, sizes, shapes).items():
            torch.testing.assert_close(g[n], ref, rtol=0, atol=1e-12)
        for n, ref in unflatten(h_ref @ v, names, sizes, shapes).items():
            torch.testing.assert_close(hv[n], ref, rtol=0, atol=1e-10)
        assert not any(t.requires_grad for t in (*g.values(), *hv.values()))


def test_hvp_leaves_the_model_alone_and_checks_its_arguments():
    model, shape = build("mlp_bn")
    model.train()
    model.fc1.weight.grad = torch.ones_like(model.fc1.weight)
    before = take(model)
    x, y = make_data(shape)
    params = dict(model.named_parameters())
    v = {k: torch.ones_like(p) for k, p in params.items()}
    hvp(model, params, v, [(x, y)])
    assert_unchanged(before, model)
    with pytest.raises(ValueError, match="keys of params"):
        hvp(model, params, {"fc1.weight": v["fc1.weight"]}, [(x, y)])
    with pytest.raises(ValueError, match="shape"):
        hvp(model, params, {**v, "fc1.bias": torch.ones(3, dtype=torch.float64)}, [(x, y)])
    with pytest.raises(ValueError, match="not a parameter"):
        hvp(model, {"w": nn.Parameter(torch.ones(2))}, {"w": torch.ones(2)}, [(x, y)])
    with pytest.raises(ValueError, match="empty"):
        hvp(model, params, v, [])
    with pytest.raises(ValueError, match="method"):
        hvp(model, params, v, [(x, y)], method="newton")
    bad = x.clone()
    bad[3, 1] = float("inf")
    for method in METHODS:
        hvp(model, params, v, [(x, y)], method=method)
        with pytest.raises(FloatingPointError, match="finite"):
            hvp(model, params, v, [(x, y), (bad, y)], method=method)
    assert_unchanged(before, model)


# ---------------------------------------------------------------- Taylor-type scorers


@pytest.mark.parametrize("arch", ["mlp", "mlp_bn", "cnn"])
def test_taylor_scores_equal_their_formulas(arch):
    model, shape = build(arch)
    model.eval()
    x, y = make_data(shape, n=12, classes=classes_of(model, shape), seed=3)
    data = splits(x, y, [5])
    names = [n for n, _ in model.named_parameters()]
    if arch == "cnn":
        names = ["conv1.weight", "conv1.bias", "bn1.weight", "fc2.weight"]
    flat, g, h, sizes, shapes = reference_grad_hessian(model, names, x, y)

    for delta, eps in (("prune", None), ("prune", 0.5), ("sensitivity", None),
                       ("sensitivity", 0.05)):
        if delta == "prune":
            dw = -(1.0 if eps is None else eps) * flat
        else:
            dw = -(1e-3 if eps is None else eps) * torch.sign(flat)
        hdw = h @ dw
        expect = {
            "taylor1": unflatten(dw * g, names, sizes, shapes),
            "hessian": unflatten(dw * hdw, names, sizes, shapes),
            "taylor2": unflatten(dw * (g + 1.0 * hdw), names, sizes, shapes),
            "taylor2_lam": unflatten(dw * (g + 0.25 * hdw), names, sizes, shapes),
        }
        kw = dict(delta=delta, epsilon=eps, params=names)
        for absolute in (False, True):
            got = {
                "taylor1": Taylor1(absolute=absolute, **kw).score(model, data),
                "hessian": Hessian(absolute=absolute, **kw).score(model, data),
                "taylor2": Taylor2(absolute=absolute, **kw).score(model, data),
                "taylor2_lam": Taylor2(lam=0.25, absolute=absolute, **kw).score(model, data),
            }
            for key, scores in got.items():
                assert list(scores) == names
                for n in names:
                    ref = expect[key][n].abs() if absolute else expect[key][n]
                    torch.testing.assert_close(scores[n], ref, rtol=1e-9, atol=1e-12,
                                               msg=f"{key} {delta} {eps} {absolute} {n}")


def test_taylor1_equals_delta_times_the_autograd_gradient():
    model, shape = build("cnn")
    model.eval()
    x, y = make_data(shape, n=16, classes=classes_of(model, shape), seed=4)
    params = [p for _, p in model.named_parameters()]
    loss = F.cross_entropy(model(x), y)  # the mean over all samples
    grads = torch.autograd.grad(loss, params)
    scores = Taylor1().score(model, splits(x, y, [3, 11]))
    for (n, p), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(scores[n], (-p * g).detach(), rtol=1e-9, atol=1e-14)
    sens = Taylor1(delta="sensitivity", epsilon=0.01).score(model, [(x, y)])
    for (n, p), g in zip(model.named_parameters(), grads):
        torch.testing.assert_close(sens[n], (-0.01 * torch.sign(p) * g).detach(),
                                   rtol=1e-9, atol=1e-14)


def quadratic_problem(whiten: bool, seed: int = 0):
    """nn.Linear with squared loss: the loss is exactly quadratic in the parameters."""
    g = torch.Generator().manual_seed(seed)
    n, d, k = 24, 4, 3
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    if whiten:  # centred, orthogonal columns: H is diagonal
        x = x - x.mean(0)
        q, _ = torch.linalg.qr(x)
        x = q * math.sqrt(n) * torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)
    y = torch.randn(n, k, generator=g, dtype=torch.float64)
    torch.manual_seed(seed)
    model = nn.Linear(d, k).double()
    return model, x, y


def test_taylor2_half_is_the_exact_loss_change_of_a_quadratic_loss():
    """eq. 2.3 with lam=1/2 is exact per entry when the Hessian is diagonal ..."""
    model, x, y = quadratic_problem(whiten=True)
    flat, _, h, _, _ = reference_grad_hessian(model, ["weight", "bias"], x, y, F.mse_loss)
    off = h - torch.diag(torch.diag(h))
    assert off.abs().max() < 1e-12 and torch.diag(h).min() > 0.1  # H is diagonal
    data = splits(x, y, [7, 15])
    t2 = Taylor2(lam=0.5).score(model, data, F.mse_loss)
    lc = LossChange().score(model, data, F.mse_loss)
    for n in ("weight", "bias"):
        torch.testing.assert_close(t2[n], lc[n], rtol=0, atol=1e-8)
    # the naive loop agrees too (with mse as the loss)
    p = model.weight
    with torch.no_grad():
        base = F.mse_loss(model(x), y, reduction="none").sum(1).mean()
        old = p[1, 2].clone()
        p[1, 2] = 0
        after = F.mse_loss(model(x), y, reduction="none").sum(1).mean()
        p[1, 2] = old
    assert abs(float(lc["weight"][1, 2]) - float(after - base)) < 1e-12


def test_taylor2_half_sums_to_the_loss_change_of_zeroing_everything_at_once():
    """... and in general the row sums add the pairwise terms: the scores sum to
    the exact change of the quadratic loss when all selected entries are zeroed."""
    model, x, y = quadratic_problem(whiten=False, seed=1)
    data = splits(x, y, [10])
    t2 = Taylor2(lam=0.5).score(model, data, F.mse_loss)
    total = sum(float(s.sum()) for s in t2.values())
    base = F.mse_loss(model(x), y, reduction="none").sum(1).mean().item()
    zero = F.mse_loss(torch.zeros_like(y), y, reduction="none").sum(1).mean().item()
    assert abs(total - (zero - base)) < 1e-10
    # with a non-diagonal Hessian single-entry changes differ from the row sums
    lc = LossChange().score(model, data, F.mse_loss)
    assert (t2["weight"] - lc["weight"]).abs().max() > 1e-3
    # the thesis's lam=1 counts the quadratic term twice
    t1 = Taylor1().score(model, data, F.mse_loss)
    t2_one = Taylor2().score(model, data, F.mse_loss)
    first = sum(float(s.sum()) for s in t1.values())
    second = sum(float(s.sum()) for s in t2_one.values())
    assert abs((second - first) - 2 * (total - first)) < 1e-10


# ---------------------------------------------------------------- exact loss change


def test_loss_change_equals_a_naive_loop_on_an_mlp():
    model, shape = build("mlp")
    model.eval()
    x, y = make_data(shape, n=18, seed=5)
    scores = LossChange().score(model, splits(x, y, [6]))
    assert list(scores) == [n for n, _ in model.named_parameters()]
    for n, p in model.named_parameters():
        ref = naive_loss_change(model, x, y, n)
        torch.testing.assert_close(scores[n].reshape(-1), ref, rtol=0, atol=1e-10)
    assert (scores["fc1.weight"] < 0).any() and (scores["fc1.weight"] > 0).any()


def thesis_cnn64(seed=0):
    torch.manual_seed(seed)
    model = thesis_cnn(batchnorm=True).double()
    randomize_bn(model, torch.Generator().manual_seed(seed))
    return model.eval()


def test_loss_change_equals_a_naive_loop_on_the_thesis_cnn():
    model = thesis_cnn64()
    x, y = make_data((1, 28, 28), n=10, classes=10, seed=6)
    names = ["conv1.weight", "conv1.bias", "bn1.weight", "bn1.bias", "conv2.weight",
             "conv2.bias", "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    scorer = LossChange(params=names)
    graph, fast, loop = scorer._plan(model, scorer.selected(model), x[:1])
    assert set(loop) == {"bn1.weight", "bn1.bias"}  # the fallback is exercised
    scores = scorer.score(model, splits(x, y, [4]))
    g = torch.Generator().manual_seed(0)
    for n in names:
        numel = scores[n].numel()
        entries = (torch.arange(numel) if numel <= 300
                   else torch.randperm(numel, generator=g)[:150]).tolist()
        ref = naive_loss_change(model, x, y, n, entries)
        torch.testing.assert_close(scores[n].reshape(-1)[entries], ref, rtol=0, atol=1e-10,
                                   msg=n)


class Awkward(nn.Module):
    """Layouts the fast path must get right, or leave to the loop."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, stride=2, padding=2, dilation=2, padding_mode="reflect")
        self.g = nn.Conv2d(4, 4, 3, padding=1, groups=2)  # grouped: no graph of units
        self.c1d = nn.Conv1d(4, 3, 3, padding="same", padding_mode="circular")
        self.fc = nn.Linear(3 * 25, 6)
        self.out = nn.Linear(6, 3)
        self.out2 = nn.Linear(6, 3)
        self.out2.weight = self.out.weight  # tied: the loop

    def forward(self, x):  # (B, 2, 9, 9)
        h = torch.relu(self.c1(x))  # (B, 4, 5, 5)
        h = h + torch.tanh(self.g(h))  # residual
        h = F.gelu(self.c1d(h.flatten(2)))  # (B, 3, 25)
        z = torch.relu(self.fc(h.flatten(1)))
        return self.out(z) + 0.5 * self.out2(z)


def test_loss_change_on_awkward_layouts_and_untraceable_graphs():
    torch.manual_seed(0)
    model = Awkward().double().eval()
    x, y = make_data((2, 9, 9), n=9, seed=7)
    scorer = LossChange()
    _, fast, loop = scorer._plan(model, scorer.selected(model), x[:1])
    assert {"c1.weight", "g.weight", "c1d.weight", "fc.bias"} <= set(fast)
    assert "out.weight" in loop
    scores = scorer.score(model, splits(x, y, [4]))
    for n, p in model.named_parameters():
        ref = naive_loss_change(model, x, y, n)
        torch.testing.assert_close(scores[n].reshape(-1), ref, rtol=0, atol=1e-10, msg=n)


def test_loss_change_of_zero_entries_and_the_absolute_variant():
    model, shape = build("cnn")
    model.eval()
    with torch.no_grad():
        model.conv1.weight[1, 0, 1, 2] = 0.0
        model.fc1.bias[3] = 0.0
    x, y = make_data(shape, n=10, classes=4, seed=8)
    s = LossChange().score(model, [(x, y)])
    assert float(s["conv1.weight"][1, 0, 1, 2]) == 0.0 and float(s["fc1.bias"][3]) == 0.0
    a = LossChange(absolute=True).score(model, [(x, y)])
    for n in s:
        assert torch.equal(a[n], s[n].abs())


def test_pruned_tensors_score_under_their_base_name():
    model, shape = build("mlp")
    model.eval()
    prune.random_unstructured(model.fc1, "weight", amount=0.4)
    mask = model.fc1.weight_mask.bool()
    x, y = make_data(shape, n=12, seed=9)
    data = splits(x, y, [5])
    mag = Magnitude().score(model)
    assert "fc1.weight" in mag and "fc1.weight_orig" not in mag
    assert torch.equal(mag["fc1.weight"], (model.fc1.weight_orig * model.fc1.weight_mask).abs())
    lc = LossChange().score(model, data)
    t1, t2 = Taylor1().score(model, data), Taylor2().score(model, data)
    for s in (lc, t1, t2):
        assert (s["fc1.weight"][~mask] == 0).all() and (s["fc1.weight"][mask] != 0).all()
    # the loss change of the pruned model, entry by entry
    w = model.fc1.weight_orig
    base = mean_loss(model, x, y)
    for e in torch.nonzero(mask.reshape(-1))[:10, 0].tolist():
        with torch.no_grad():
            old = w.view(-1)[e].clone()
            w.view(-1)[e] = 0
            after = mean_loss(model, x, y)
            w.view(-1)[e] = old
        assert abs(float(lc["fc1.weight"].reshape(-1)[e]) - (after - base)) < 1e-10
    # Taylor1 = dw * dL/dw_effective on the kept entries
    eff = (w * model.fc1.weight_mask).detach().requires_grad_()
    out = functional_call(model, {"fc1.weight_orig": eff}, (x,))
    g = torch.autograd.grad(F.cross_entropy(out, y), eff)[0]
    torch.testing.assert_close(t1["fc1.weight"], -eff.detach() * g * model.fc1.weight_mask,
                               rtol=1e-9, atol=1e-14)


# ---------------------------------------------------------------- data-free scorers


def test_magnitude_is_the_absolute_value():
    model, _ = build("cnn")
    scores = Magnitude().score(model)
    assert list(scores) == [n for n, _ in model.named_parameters()]
    for n, p in model.named_parameters():
        assert torch.equal(scores[n], p.detach().abs())
    assert list(Magnitude(params=["fc2.bias"]).score(model)) == ["fc2.bias"]
    assert Magnitude.needs_data is False


def test_random_parameter_scores():
    model, _ = build("cnn")
    a = RandomParameter(seed=3).score(model)
    b = RandomParameter(seed=3).score(model)
    c = RandomParameter(seed=4).score(model)
    for n, p in model.named_parameters():
        assert a[n].shape == p.shape and a[n].dtype == p.dtype
        assert torch.equal(a[n], b[n]) and not torch.equal(a[n], c[n])
        assert ((a[n] >= 0) & (a[n] < 1)).all()
    assert not torch.equal(a["conv2.bias"][:4], a["conv1.bias"][:4])
    # a tensor's scores do not depend on which others are selected
    only = RandomParameter(seed=3, params=["fc1.weight"]).score(model)
    assert torch.equal(only["fc1.weight"], a["fc1.weight"])
    flat = torch.cat([v.reshape(-1) for v in a.values()])
    assert 0.4 < float(flat.mean()) < 0.6  # uniform on [0, 1)
    torch.manual_seed(0)
    u = RandomParameter(seed=None).score(model)
    torch.manual_seed(0)
    assert torch.equal(RandomParameter(seed=None).score(model)["fc1.bias"], u["fc1.bias"])
    with pytest.raises(TypeError, match="seed"):
        RandomParameter(seed=1.5)


def test_random_unit_scores():
    model, shape = build("cnn")
    ex = torch.zeros((1,) + shape, dtype=torch.float64)
    with pytest.raises(ValueError, match="example_input"):
        RandomUnit().score(model)
    a = RandomUnit(seed=1, example_input=ex).score(model)
    assert list(a) == ["conv1", "conv2", "fc1"]
    for n, v in a.items():
        assert v.shape == (model.get_submodule(n).weight.shape[0],)
        assert ((v >= 0) & (v < 1)).all()
    assert all(torch.equal(a[n], v) for n, v in
               RandomUnit(seed=1, example_input=ex).score(model).items())
    assert not torch.equal(RandomUnit(seed=2, example_input=ex).score(model)["fc1"], a["fc1"])
    mlp, _ = build("mlp")
    assert set(RandomUnit(layers=["fc2"]).score(mlp)) == {"fc2"}  # traced without data
    x, y = make_data(shape, n=4, classes=4)
    assert set(RandomUnit(seed=1).score(model, [(x, y)])) == set(a)  # traced with data


# ---------------------------------------------------------------- the contract


@pytest.mark.parametrize("make", DATA_SCORERS, ids=IDS)
@pytest.mark.parametrize("arch", ["mlp_bn", "cnn"])
def test_batching_invariance_and_the_model_is_untouched(make, arch):
    model, shape = build(arch)
    x, y = make_data(shape, n=15, classes=classes_of(model, shape), seed=10)
    model.train()
    model.fc1.weight.grad = torch.full_like(model.fc1.weight, 0.25)
    before = take(model)
    a = make().score(model, splits(x, y, [6]))
    b = make().score(model, iter(splits(x, y, [1, 2, 10])))  # a one-pass iterator
    assert_unchanged(before, model)
    assert model.training and model.fc2.weight.grad is None
    assert a.keys() == dict(model.named_parameters()).keys()
    for n, p in model.named_parameters():
        assert a[n].shape == p.shape and a[n].dtype == p.dtype
        assert torch.isfinite(a[n]).all()
        torch.testing.assert_close(b[n], a[n], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("make", DATA_SCORERS, ids=IDS)
def test_errors(make):
    model, shape = build("mlp")
    x, y = make_data(shape)
    before = take(model)
    with pytest.raises(ValueError, match="empty"):
        make().score(model, [])
    with pytest.raises(ValueError, match="needs data"):
        make().score(model, None)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="finite"):
        make().score(model, [(x[:5], y[:5]), (bad, y)])
    with pytest.raises(ValueError, match="unknown parameter"):
        type(make())(params=["nope"]).score(model, [(x, y)])
    assert_unchanged(before, model)


def test_float32_models_get_float32_scores():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 2))
    x, y = torch.randn(6, 1, 6, 6), torch.randint(0, 2, (6,))
    for make in DATA_SCORERS:
        for s in make().score(model, [(x, y)]).values():
            assert s.dtype == torch.float32


def test_hyperparameters_are_validated():
    with pytest.raises(ValueError, match="delta"):
        Taylor1(delta="shrink")
    with pytest.raises(ValueError, match="epsilon"):
        Taylor2(delta="sensitivity", epsilon=0)
    with pytest.raises(ValueError, match="epsilon"):
        Hessian(epsilon=float("nan"))
    with pytest.raises(ValueError, match="lam"):
        Taylor2(lam=float("inf"))
    with pytest.raises(ValueError, match="budget"):
        LossChange(budget=0)
    assert Taylor1().step == 1.0 and Taylor1(delta="sensitivity").step == 1e-3
    assert Taylor1.approximates == "loss_change" and not Magnitude.needs_data
    assert "lam=0.5" in repr(Taylor2(lam=0.5))


@pytest.mark.parametrize("module", [saliency.hvp, saliency.taylor, saliency.magnitude,
                                    saliency.loss_change, saliency.random_scores])
def test_docstring_examples(module):
    torch.manual_seed(0)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
