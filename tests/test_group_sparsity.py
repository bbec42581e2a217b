"""Proximal group sparsity (pruners.group_sparsity) against independent references.

* the closed-form proximal operator against a numerical minimisation of its
  defining objective with scipy (L-BFGS-B on a smooth split of the L1 term,
  which knows nothing of the closed form);
* alpha = 1 against torch's own soft shrinkage, alpha = 0 against the group
  lasso's whole-group rule;
* the penalty against a hand computation and a loop over groups in numpy;
* prox-SGD keeping a zero group exactly zero while its gradient is under the
  threshold, and releasing it when it is not;
* removal of zero groups against the model before removal (float64, eval
  mode), against a freshly built narrower model, with the optimizer going on;
* the step size of every layer taken from its param group's learning rate;
* every bad input leaving model and optimizer bit for bit as they were.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers_snapshot import assert_unchanged, take
from scipy import optimize
from zoo import build

from pruners import (GROUPINGS, ProximalGroupSparsity, group_layout, group_norms,
                     group_sparsity_penalty, prox_sparse_group_lasso, remove_zero_groups,
                     soft_threshold, zero_groups)
from saliency import SCORERS
from saliency.group_norm import GroupNormScorer
from saliency.unit_scorers import Norm

ALPHAS = [0.0, 0.5, 1.0]


# --------------------------------------------------------------------------- references


def objective(x, v, t, beta, alpha, p):
    """(1 / 2t) ||x - v||^2 + (1 - alpha) beta sqrt(P) ||x||_2 + alpha beta ||x||_1."""
    return (0.5 / t) * np.sum((x - v) ** 2) + (1 - alpha) * beta * math.sqrt(p) * \
        np.linalg.norm(x) + alpha * beta * np.sum(np.abs(x))


def scipy_prox(v, t, beta, alpha, p):
    """Minimise the objective numerically with L-BFGS-B, knowing nothing of the closed form.

    The L1 term is made smooth by the split x = u - w (u, w >= 0, bounds);
    the group norm is smooth everywhere but at x = 0, so the minimiser is
    either 0 or the limit of L-BFGS-B started at v (the problem is strongly
    convex): the better of the two is returned.
    """
    n = v.size
    c, a = (1 - alpha) * beta * math.sqrt(p), alpha * beta

    def f(z):
        x = z[:n] - z[n:]
        nx = np.linalg.norm(x)
        gx = (x - v) / t + (c * x / nx if nx > 0 else 0.0)
        val = (0.5 / t) * np.sum((x - v) ** 2) + c * nx + a * np.sum(z)
        return val, np.concatenate([gx + a, -gx + a])

    z0 = np.concatenate([np.maximum(v, 0), np.maximum(-v, 0)])
    res = optimize.minimize(f, z0, jac=True, method="L-BFGS-B", bounds=[(0, None)] * (2 * n),
                            options={"ftol": 1e-300, "gtol": 1e-13, "maxiter": 10000,
                                     "maxcor": 30})
    x = res.x[:n] - res.x[n:]
    zero = np.zeros(n)
    return zero if objective(zero, v, t, beta, alpha, p) <= objective(x, v, t, beta, alpha, p) \
        else x


# --------------------------------------------------------------------------- the operator


@pytest.mark.parametrize("alpha", ALPHAS)
def test_prox_equals_numerical_minimisation_of_its_objective(alpha):
    rng = np.random.default_rng(int(alpha * 10))
    checked = zero = 0
    for trial in range(30):
        n, p = int(rng.integers(1, 5)), int(rng.integers(1, 8))
        v = rng.normal(size=(n, p)) * rng.choice([0.2, 1.0, 3.0], size=(n, 1))
        t, beta = float(rng.uniform(0.05, 1.0)), float(rng.uniform(0.05, 2.0))
        got = prox_sparse_group_lasso(torch.tensor(v), t, beta, alpha).numpy()
        for row_v, row in zip(v, got):
            ref = scipy_prox(row_v, t, beta, alpha, p)
            assert np.abs(row - ref).max() <= 1e-6, (trial, row, ref)
            # the closed form is a minimiser: no feasible point the solver found is lower
            assert objective(row, row_v, t, beta, alpha, p) <= \
                objective(ref, row_v, t, beta, alpha, p) + 1e-12
            checked += 1
            zero += not row.any()
    assert checked >= 60 and 0 < zero < checked  # both regimes were exercised


def test_prox_group_size_enters_as_sqrt_p():
    v = torch.tensor([[3.0, 4.0]], dtype=torch.float64)  # ||v|| = 5
    # thr = t beta sqrt(P): P = 2 -> 1 * 1 * sqrt(2); P = 9 -> 3
    torch.testing.assert_close(prox_sparse_group_lasso(v, 1.0, 1.0),
                               v * (1 - math.sqrt(2) / 5), rtol=0, atol=1e-15)
    torch.testing.assert_close(prox_sparse_group_lasso(v, 1.0, 1.0, group_size=9),
                               v * (1 - 3 / 5), rtol=0, atol=1e-15)
    assert torch.equal(prox_sparse_group_lasso(v, 1.0, 1.0, group_size=25), torch.zeros_like(v))


def test_alpha0_zeroes_whole_groups_and_only_shrinks_the_others():
    g = torch.Generator().manual_seed(1)
    v = torch.randn(200, 6, generator=g, dtype=torch.float64) * \
        torch.rand(200, 1, generator=g, dtype=torch.float64) * 2
    t, beta = 0.3, 1.2
    thr = t * beta * math.sqrt(6)
    out = prox_sparse_group_lasso(v, t, beta, 0.0)
    norms = v.norm(dim=1)
    dead = norms <= thr
    assert 0 < int(dead.sum()) < 200
    assert torch.equal(out[dead], torch.zeros_like(out[dead]))  # exactly zero, whole groups
    alive = out[~dead]
    assert bool((alive != 0).all())  # no entry of a surviving group is zeroed
    expected = v[~dead] * (1 - thr / norms[~dead])[:, None]  # same direction, shrunk norm
    torch.testing.assert_close(alive, expected, rtol=0, atol=1e-14)


def test_alpha1_is_elementwise_soft_thresholding():
    g = torch.Generator().manual_seed(2)
    v = torch.randn(50, 7, generator=g, dtype=torch.float64)
    t, beta = 0.4, 1.5
    out = prox_sparse_group_lasso(v, t, beta, 1.0)
    assert torch.equal(out, F.softshrink(v, t * beta))  # torch's own implementation
    assert torch.equal(out, soft_threshold(v, t * beta))
    # no group scaling at all: the group norm plays no role
    assert torch.equal(prox_sparse_group_lasso(v, t, beta, 1.0, group_size=10 ** 6), out)


def test_zero_norm_gives_exact_zeros_and_no_nan():
    z = torch.zeros(3, 4, dtype=torch.float64)
    for beta in (0.0, 1.0):
        for alpha in ALPHAS:
            out = prox_sparse_group_lasso(z, 0.1, beta, alpha)
            assert torch.equal(out, z) and not out.isnan().any()
    small = torch.full((2, 3), 0.01, dtype=torch.float64)  # S(v, 0.1 * 1 * 1) = 0 exactly
    out = prox_sparse_group_lasso(small, 0.1, 1.0, 1.0)
    assert torch.equal(out, torch.zeros_like(small))
    out = prox_sparse_group_lasso(small, 0.1, 1.0, 0.5)
    assert torch.equal(out, torch.zeros_like(small)) and not out.isnan().any()
    v = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    assert torch.equal(prox_sparse_group_lasso(v, 0.1, 0.0, 0.3), v)  # beta = 0: identity


def test_prox_validates_its_arguments():
    v = torch.ones(2, 2)
    for kw, msg in (({"t": 0.0}, "step size"), ({"t": float("nan")}, "finite"),
                    ({"strength": -1.0}, ">= 0"), ({"alpha": 1.5}, r"\[0, 1\]"),
                    ({"alpha": -0.1}, r"\[0, 1\]"), ({"group_size": 0}, "group_size")):
        args = {"t": 0.1, "strength": 1.0, "alpha": 0.0, **kw}
        with pytest.raises(ValueError, match=msg):
            prox_sparse_group_lasso(v, **args)
    with pytest.raises(TypeError):
        prox_sparse_group_lasso(torch.ones(2, 2, dtype=torch.long), 0.1, 1.0)


# --------------------------------------------------------------------------- groups and penalty


def small_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 3), nn.Tanh(),
                        nn.Linear(3, 1)).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[3.0, 0.0], [1.0, 2.0]]))
        net[0].bias.copy_(torch.tensor([4.0, 2.0]))
        net[2].weight.copy_(torch.tensor([[1.0, -1.0], [0.0, 0.0], [2.0, 0.5]]))
        net[2].bias.copy_(torch.tensor([1.0, 0.0, -2.0]))
    return net


def test_penalty_equals_a_hand_computation():
    net = small_net()
    # layer 0: groups [3, 0, 4] (norm 5) and [1, 2, 2] (norm 3), P = 3, ||theta_0||_1 = 12
    # layer 2: groups [1, -1, 1] (norm sqrt 3), [0, 0, 0] (0), [2, 0.5, -2] (norm 2.87228...),
    #          P = 3, ||theta_2||_1 = 3 + 0 + 4.5 = 7.5
    b0, b2, a = 0.5, 0.25, 0.2
    hand = ((1 - a) * b0 * math.sqrt(3) * (5 + 3) + a * b0 * 12
            + (1 - a) * b2 * math.sqrt(3) * (math.sqrt(3) + math.sqrt(8.25)) + a * b2 * 7.5)
    pen = group_sparsity_penalty(net, {"0": b0, "2": b2}, a)
    assert pen.dtype == torch.float64 and abs(float(pen.detach()) - hand) <= 1e-12
    assert list(group_layout(net)) == ["0", "2"]  # the prunable producers; '4' is the output
    # group lasso, one strength: 0.5 * sqrt(3) * (8 + sqrt 3 + sqrt 8.25)
    assert abs(float(group_sparsity_penalty(net, 0.5).detach()) -
               0.5 * math.sqrt(3) * (8 + math.sqrt(3) + math.sqrt(8.25))) <= 1e-12
    # columns of layer 4 (its weight is 1 x 3: three groups of P = 1)
    w4 = net[4].weight.detach().numpy()[0]
    assert abs(float(group_sparsity_penalty(net, 2.0, groups={"4": "columns"}).detach())
               - 2.0 * np.abs(w4).sum()) <= 1e-12
    norms = group_norms(net)
    torch.testing.assert_close(norms["0"], torch.tensor([5.0, 3.0], dtype=torch.float64))
    assert {k: v.tolist() for k, v in zero_groups(net).items()} == {"0": [], "2": [1]}


def test_penalty_equals_a_loop_over_groups_on_a_cnn():
    model, shape = build("cnn")
    groups = {"conv1": "units", "conv2": "in_channels", "fc1": "columns", "fc2": "units"}
    betas = {"conv1": 0.3, "conv2": 0.2, "fc1": 0.1, "fc2": 0.7}
    alpha = 0.35
    ref = 0.0
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    for layer, kind in groups.items():
        w = sd[f"{layer}.weight"]
        if kind == "units":
            rows = [np.concatenate([w[n].ravel(), [sd[f"{layer}.bias"][n]]])
                    for n in range(w.shape[0])]
        else:
            rows = [w[:, j].ravel() for j in range(w.shape[1])]
        p = len(rows[0])
        ref += (1 - alpha) * betas[layer] * math.sqrt(p) * sum(np.linalg.norm(r) for r in rows)
        ref += alpha * betas[layer] * sum(np.abs(r).sum() for r in rows)
    got = group_sparsity_penalty(model, betas, alpha, groups)
    assert abs(float(got.detach()) - ref) <= 1e-10 * ref
    sizes = {n: lg.group_size(model) for n, lg in group_layout(model, groups).items()}
    assert sizes == {"conv1": 1 * 9 + 1, "conv2": 5 * 9, "fc1": 6, "fc2": 6 + 1}


def test_penalty_gradient_is_the_subgradient():
    net = small_net()
    beta, alpha = 0.7, 0.4
    net.zero_grad()
    group_sparsity_penalty(net, beta, alpha).backward()
    for name in ("0", "2"):
        m = net.get_submodule(name)
        rows = torch.cat([m.weight.detach(), m.bias.detach()[:, None]], 1)
        norm = rows.norm(dim=1, keepdim=True)
        c = (1 - alpha) * beta * math.sqrt(rows.shape[1])
        expect = c * torch.where(norm > 0, rows / norm.clamp_min(1e-300), 0.0) \
            + alpha * beta * torch.sign(rows)
        got = torch.cat([m.weight.grad, m.bias.grad[:, None]], 1)
        torch.testing.assert_close(got, expect, rtol=0, atol=1e-14)
    assert torch.equal(net[2].weight.grad[1], torch.zeros(2, dtype=torch.float64))  # zero group


def test_groupings_registry_and_layout_errors():
    assert {"units", "columns", "in_channels"} <= set(GROUPINGS)
    model, shape = build("cnn")
    with pytest.raises(ValueError, match="unknown layer 'nope'"):
        group_layout(model, {"nope": "units"})
    with pytest.raises(ValueError, match="unknown grouping 'rows'"):
        group_layout(model, {"fc1": "rows"})
    with pytest.raises(ValueError, match="layer 'conv1': 'columns' groups the input columns"):
        group_layout(model, {"conv1": "columns"})
    with pytest.raises(ValueError, match="layer 'bn1'.*not a producer"):
        group_layout(model, {"bn1": "units"})

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    with pytest.raises(ValueError, match="also grouped by layer 'a'; groups must not overlap"):
        group_layout(Tied(), {"a": "units", "b": "units"})


# --------------------------------------------------------------------------- the step


def two_group_optimizer(model, lr1, lr2, opt=torch.optim.SGD):
    return opt([{"params": model.fc1.parameters(), "lr": lr1},
                {"params": [p for n, p in model.named_parameters() if not n.startswith("fc1")],
                 "lr": lr2}])


def test_each_layer_uses_its_param_groups_learning_rate_and_schedulers_count():
    model, shape = build("mlp")
    opt = two_group_optimizer(model, 0.3, 0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    prox = ProximalGroupSparsity(model, {"fc1": 0.4, "fc2": 0.9}, alpha=0.25)
    layout = prox.layout
    for t1, t2 in ((0.3, 0.05), (0.15, 0.025)):
        assert prox.step_sizes(opt) == {"fc1": t1, "fc2": t2}
        before = {n: lg.matrix(model).detach().clone() for n, lg in layout.items()}
        prox.step(opt)
        for name, t in (("fc1", t1), ("fc2", t2)):
            want = prox_sparse_group_lasso(before[name], t, prox.strengths[name], 0.25,
                                           group_size=before[name].shape[1])
            assert torch.equal(layout[name].matrix(model).detach(), want), name
        opt.step()  # no gradients: nothing moves; the scheduler wants an optimizer step first
        sched.step()
    # fc3 (the output layer) is not grouped: untouched by every step
    model2, _ = build("mlp")
    assert torch.equal(model.fc3.weight, model2.fc3.weight)


def test_step_writes_in_place_and_keeps_parameter_identity():
    model, _ = build("cnn")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = {n: (id(p), p.data_ptr()) for n, p in model.named_parameters()}
    ProximalGroupSparsity(model, 0.2, example_input=torch.zeros(1, 1, 12, 12,
                                                                dtype=torch.float64)).step(opt)
    assert {n: (id(p), p.data_ptr()) for n, p in model.named_parameters()} == ids
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_a_zero_group_stays_zero_under_prox_sgd_while_its_gradient_is_under_threshold(alpha):
    """y = A x with input 3 irrelevant; its column starts at 0.

    For a zero group the gradient step gives theta_hat = -t g, and the prox
    returns 0 iff ||S(g, alpha beta)||_2 <= (1 - alpha) beta sqrt(P). At every
    mini-batch of prox-SGD, for every column that was exactly 0 before the
    step: it is exactly 0 after it if and only if its gradient satisfied that
    condition. The irrelevant column stays 0 all along; the relevant input 0,
    also started at 0, has a gradient over the threshold and comes back at once.
    """
    g = torch.Generator().manual_seed(3)
    x = torch.randn(512, 5, generator=g, dtype=torch.float64)
    coef = torch.randn(4, 5, generator=g, dtype=torch.float64)
    coef[:, 3] = 0.0
    y = x @ coef.T + 0.1 * torch.randn(512, 4, generator=g, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(5, 4)).double()
    beta = 0.4
    with torch.no_grad():
        model[0].weight.copy_(coef + 0.05 * torch.randn(4, 5, generator=g, dtype=torch.float64))
        model[0].weight[:, 3] = 0.0
        model[0].weight[:, 0] = 0.0
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    prox = ProximalGroupSparsity(model, beta, alpha, groups={"0": "columns"})
    thr = (1 - alpha) * beta * math.sqrt(4)
    held = released = held3 = 0
    for step in range(300):
        idx = torch.randint(0, 512, (32,), generator=g)
        opt.zero_grad()
        F.mse_loss(model(x[idx]), y[idx]).backward()
        w = model[0].weight
        was_zero = [(j, float(soft_threshold(w.grad[:, j], alpha * beta).norm()) <= thr)
                    for j in range(5) if bool((w[:, j] == 0).all())]
        opt.step()
        prox.step(opt)
        for j, under in was_zero:
            assert bool((w[:, j] == 0).all()) == under, (step, j)
            held += under
            released += not under
            if j == 3:
                assert under, step  # the irrelevant input's gradient never beats it
                held3 += 1
            if j == 0:
                assert step == 0 and not under  # the relevant one leaves 0 at the first step
    assert held3 == 300 and held > held3 and released >= 1  # both outcomes were checked
    assert torch.equal(model[0].weight[:, 3], torch.zeros(4, dtype=torch.float64))
    zero = zero_groups(model, {"0": "columns"})["0"].tolist()
    assert 3 in zero and 0 not in zero


# --------------------------------------------------------------------------- removal


STRENGTHS = {"mlp": {"fc1": 0.03, "fc2": 0.03},
             "mlp_bn": {"fc1": 0.03, "fc2": 0.03},
             "cnn": {"conv1": 0.025, "conv2": 0.01, "fc1": 0.015}}
#: Adam moves every coordinate by about lr per step, so its groups need more pull to reach 0
ADAM_STRENGTHS = {"mlp": {"fc1": 0.48, "fc2": 0.48},
                  "mlp_bn": {"fc1": 0.24, "fc2": 0.24},
                  "cnn": {"conv1": 0.2, "conv2": 0.08, "fc1": 0.12}}


def trained_with_prox(arch, opt_cls=torch.optim.SGD, steps=80, lr=0.1, groups=None,
                      strength=None):
    model, shape = build(arch)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((48,) + shape, generator=g, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)  # labels the network can fit: its own initial predictions
    model.train()
    opt = opt_cls(model.parameters(), lr=lr)
    prox = ProximalGroupSparsity(model, STRENGTHS[arch] if strength is None else strength,
                                 groups=groups, example_input=x[:1])
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        prox.step(opt)
    return model, opt, prox, x, y


@pytest.mark.parametrize("arch", ["mlp", "mlp_bn", "cnn"])
@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_removing_zero_groups_keeps_the_function_exactly(arch, opt_cls):
    adam = opt_cls is torch.optim.Adam
    model, opt, prox, x, y = trained_with_prox(
        arch, opt_cls, lr=0.05 if adam else 0.1, steps=100 if adam else 80,
        strength=ADAM_STRENGTHS[arch] if adam else STRENGTHS[arch])
    zeros = prox.zero_groups()
    widths = {n: lg.num_groups(model) for n, lg in prox.layout.items()}
    assert any(z.numel() for z in zeros.values()), zeros  # the training made zero groups
    assert all(z.numel() < widths[n] for n, z in zeros.items())
    model.eval()
    with torch.no_grad():
        before = model(x)
    report = prox.remove_zero_groups(opt)
    with torch.no_grad():
        after = model(x)
    assert float((after - before).abs().max()) <= 1e-10
    assert report.removed == {n: int(z.numel()) for n, z in zeros.items() if z.numel()}
    for n, z in zeros.items():
        assert model.get_submodule(n).weight.shape[0] == widths[n] - z.numel()
    assert all(z.numel() == 0 for z in prox.zero_groups().values())
    # an independent reference: the architecture built at the new widths takes the state dict
    narrow, _ = build(arch, {n: widths[n] - int(z.numel()) for n, z in zeros.items()})
    for key, value in model.state_dict().items():  # biases created by the fold (mlp_bn's fc2)
        mod, _, attr = key.rpartition(".")
        if attr == "bias" and narrow.get_submodule(mod).bias is None:
            narrow.get_submodule(mod).bias = nn.Parameter(torch.zeros_like(value))
    narrow.load_state_dict(model.state_dict(), strict=True)
    narrow.eval()
    with torch.no_grad():
        assert torch.equal(narrow(x), after)
    # the optimizer's state follows and training goes on with the same optimizer
    for p in model.parameters():
        for v in opt.state.get(p, {}).values():
            if isinstance(v, torch.Tensor) and v.dim():
                assert v.shape == p.shape
    model.train()
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        prox.step(opt)
    model.eval()
    with torch.no_grad():
        before = model(x)
    prox.remove_zero_groups(opt)  # again, on the shrunk model (None if nothing is zero)
    with torch.no_grad():
        assert float((model(x) - before).abs().max()) <= 1e-10


def test_zero_input_columns_remove_the_units_that_feed_them():
    model, opt, prox, x, y = trained_with_prox("mlp", groups={"fc2": "columns"},
                                               strength=0.06)
    dead = prox.zero_groups()["fc2"]
    assert 0 < dead.numel() < 7
    model.eval()
    with torch.no_grad():
        before = model(x)
    report = prox.remove_zero_groups(opt)
    assert report.removed == {"fc1": dead.numel()} and report.indices["fc1"].tolist() == \
        dead.tolist()
    assert model.fc1.out_features == model.fc2.in_features == 7 - dead.numel()
    with torch.no_grad():
        assert float((model(x) - before).abs().max()) <= 1e-10


def test_zero_conv_input_channels_remove_their_filters_through_batchnorm():
    model, shape = build("cnn")
    x = torch.randn((16,) + shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        model.conv2.weight[:, [0, 2]] = 0.0  # conv1 filters 0 and 2 are read by nobody
    model.eval()
    with torch.no_grad():
        before = model(x)
    groups = {"conv2": "in_channels"}
    assert zero_groups(model, groups)["conv2"].tolist() == [0, 2]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = remove_zero_groups(model, groups, example_input=x[:1])
    assert report.removed == {"conv1": 2}
    assert model.conv1.out_channels == model.bn1.num_features == 2
    with torch.no_grad():
        assert float((model(x) - before).abs().max()) <= 1e-10


def test_all_units_zero_keeps_min_units():
    model, shape = build("mlp")
    x = torch.randn((8,) + shape, dtype=torch.float64)
    with torch.no_grad():
        model.fc2.weight.zero_()
        model.fc2.bias.zero_()
    model.eval()
    with torch.no_grad():
        before = model(x)
    report = remove_zero_groups(model, {"fc2": "units"}, min_units=2)
    assert report.removed == {"fc2": 3} and report.indices["fc2"].tolist() == [2, 3, 4]
    assert model.fc2.out_features == 2
    with torch.no_grad():
        assert float((model(x) - before).abs().max()) <= 1e-12
    assert remove_zero_groups(model, {"fc2": "units"}, min_units=2) is None  # nothing more


# --------------------------------------------------------------------------- bad input


def adam_after_a_step(model, x, y, **kw):
    opt = torch.optim.Adam(model.parameters(), lr=0.01, **kw)
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    return opt


def test_bad_input_leaves_model_and_optimizer_unchanged():
    model, shape = build("mlp")
    x = torch.randn((8,) + shape, dtype=torch.float64)
    y = torch.randint(0, 3, (8,))
    opt = adam_after_a_step(model, x, y)
    snap = take(model, opt)
    bad_ctor = [
        (dict(strength=0.1, groups={"fc9": "units"}), "unknown layer 'fc9'"),
        (dict(strength=0.1, alpha=1.5), r"alpha must be in \[0, 1\]"),
        (dict(strength=0.1, alpha=-0.5), r"alpha must be in \[0, 1\]"),
        (dict(strength=-0.1), "strengths must be >= 0"),
        (dict(strength={"fc1": 0.1, "fc2": -1.0}), r"strengths must be >= 0, got \{'fc2'"),
        (dict(strength={"fc1": 0.1, "fc2": 0.1, "fc3": 0.1}), r"without groups: \['fc3'\]"),
        (dict(strength={"fc1": 0.1}), r"no value for layers \['fc2'\]"),
        (dict(strength=float("inf")), "finite"),
    ]
    for kw, msg in bad_ctor:
        with pytest.raises(ValueError, match=msg):
            ProximalGroupSparsity(model, **kw)
        assert_unchanged(snap, model, opt)

    prox = ProximalGroupSparsity(model, 0.1)
    # fc2 not in the optimizer: fc1, which comes first, must not be written either
    partial = torch.optim.SGD(model.fc1.parameters(), lr=0.5)
    with pytest.raises(ValueError, match="layer 'fc2': parameter 'fc2.weight' is not in the "
                                         "optimizer"):
        prox.step(partial)
    assert_unchanged(snap, model, opt)
    split = torch.optim.SGD([{"params": [model.fc1.weight, model.fc2.weight,
                                         model.fc2.bias], "lr": 0.1},
                             {"params": [model.fc1.bias], "lr": 0.2}])
    with pytest.raises(ValueError, match="layer 'fc1': the parameters of one group have "
                                         "different learning rates"):
        prox.step(split)
    assert_unchanged(snap, model, opt)
    zero_lr = torch.optim.SGD(model.parameters(), lr=0.0)
    with pytest.raises(ValueError, match="not a positive number"):
        prox.step(zero_lr)
    with pytest.raises(TypeError):
        prox.step(None)
    assert_unchanged(snap, model, opt)
    # a non-finite parameter in the last layer: nothing written in the first
    with torch.no_grad():
        saved = model.fc2.bias[0].item()
        model.fc2.bias[0] = float("nan")
    snap_nan = take(model, opt)
    with pytest.raises(ValueError, match="layer 'fc2': parameters are not finite"):
        prox.step(opt)
    assert_unchanged(snap_nan, model, opt)
    with torch.no_grad():
        model.fc2.bias[0] = saved
    assert_unchanged(snap, model, opt)

    # zero input columns of a layer that reads the model's input cannot be removed
    with torch.no_grad():
        model.fc1.weight[:, 1] = 0.0
    snap = take(model, opt)
    with pytest.raises(ValueError, match="layer 'fc1': its zero input groups cannot be "
                                         "removed.*model's input"):
        remove_zero_groups(model, {"fc1": "columns", "fc2": "units"}, optimizer=opt)
    with pytest.raises(ValueError, match=r"layers \['fc3'\] have no groups"):
        remove_zero_groups(model, {"fc1": "columns"}, layers=["fc3"])
    assert_unchanged(snap, model, opt)
    with torch.no_grad():  # the output layer's unit groups: no unit to remove there
        model.fc3.weight[0] = 0.0
        model.fc3.bias[0] = 0.0
    snap = take(model, opt)
    with pytest.raises(ValueError, match="layer 'fc3': its zero unit groups cannot be removed"):
        remove_zero_groups(model, {"fc3": "units"}, optimizer=opt)
    assert_unchanged(snap, model, opt)


def test_masked_parameters_are_refused():
    import torch.nn.utils.prune as prune

    model, _ = build("mlp")
    prune.l1_unstructured(model.fc1, "weight", amount=0.3)
    with pytest.raises(ValueError, match="layer 'fc1': 'weight' is masked"):
        ProximalGroupSparsity(model, 0.1)


# --------------------------------------------------------------------------- the scorer


def test_group_norm_scorer_is_registered_and_measures_the_unit_groups():
    assert SCORERS["group_norm"] is GroupNormScorer
    model, opt, prox, x, y = trained_with_prox("cnn")
    scores = GroupNormScorer(example_input=x[:1]).score(model)
    norms = prox.norms()
    assert list(scores) == list(norms)
    for n in scores:
        torch.testing.assert_close(scores[n], norms[n], rtol=0, atol=1e-15)
        zero = prox.zero_groups()[n]
        assert torch.equal(scores[n][zero], torch.zeros(zero.numel(), dtype=torch.float64))
        p = prox.layout[n].group_size(model)
        normalized = GroupNormScorer(example_input=x[:1], normalize=True).score(model)[n]
        torch.testing.assert_close(normalized, scores[n] / math.sqrt(p), rtol=1e-15, atol=0)
        no_bias = GroupNormScorer(example_input=x[:1], bias=False).score(model)[n]
        l2 = Norm(p="l2", example_input=x[:1]).score(model)[n]  # ||W_n||^2, bias excluded
        torch.testing.assert_close(no_bias ** 2, l2, rtol=1e-13, atol=1e-15)
