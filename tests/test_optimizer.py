"""Optimizer continuity: training goes on with the same optimizer object.

A masked model (torch.nn.utils.prune masks: removed units' gradients are
zero) and the physically shrunk model are trained side by side from the same
state; their surviving parameters must agree.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers_snapshot import assert_unchanged, take
from zoo import build

from pruners import mask_units, remove_units
from pruners.optim_state import Journal, slice_param

OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd_nesterov": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2),
    "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True, weight_decay=1e-3),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5, centered=True),
    "adagrad": lambda p: torch.optim.Adagrad(p, lr=1e-2),
}

# per arch: units to remove, and for each parameter of the shrunk model the
# index map (dim -> kept indices) into the full-size masked model
CASES = {
    "mlp_bn": {"fc1": [0, 3, 4], "fc2": [1]},
    "cnn": {"conv1": [2], "conv2": [0, 3], "fc1": [5]},
}


def kept(n, removed):
    return torch.tensor([i for i in range(n) if i not in removed])


def expected_slices(arch, units, shape):
    """Hand-written index maps: which entries of each full parameter survive."""
    if arch == "mlp_bn":
        r1, r2 = kept(7, units["fc1"]), kept(5, units["fc2"])
        return {
            "fc1.weight": {0: r1}, "fc1.bias": {0: r1},
            "bn1.weight": {0: r1}, "bn1.bias": {0: r1}, "act1.weight": {0: r1},
            "fc2.weight": {0: r2, 1: r1}, "fc3.weight": {1: r2}, "fc3.bias": {},
        }
    r1, r2, r3 = kept(4, units["conv1"]), kept(5, units["conv2"]), kept(6, units["fc1"])
    cols = torch.cat([torch.arange(9) + 9 * c for c in r2.tolist()])  # flatten: 3x3 per channel
    return {
        "conv1.weight": {0: r1}, "conv1.bias": {0: r1}, "bn1.weight": {0: r1},
        "bn1.bias": {0: r1}, "conv2.weight": {0: r2, 1: r1}, "conv2.bias": {0: r2},
        "fc1.weight": {0: r3, 1: cols}, "fc1.bias": {0: r3}, "fc2.weight": {1: r3},
        "fc2.bias": {},
    }


def effective(model, name):
    mod_name, t = name.rsplit(".", 1)
    mod = model.get_submodule(mod_name)
    orig = mod._parameters.get(t + "_orig")
    return orig.detach() if orig is not None else getattr(mod, t).detach()


def train(model, opt, batches):
    model.train()
    losses = []
    for x, y in batches:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("replacement", [None, "mean"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("arch", list(CASES))
def test_masked_and_removed_train_alike(arch, opt_name, replacement):
    gen = torch.Generator().manual_seed(7)
    model, shape = build(arch)
    n_out = model(torch.zeros((2,) + shape, dtype=torch.float64)).shape[1]
    batches = [(torch.randn((16,) + shape, generator=gen, dtype=torch.float64),
                torch.randint(0, n_out, (16,), generator=gen)) for _ in range(25)]
    opt = OPTIMIZERS[opt_name](model.parameters())
    train(model, opt, batches[:5])  # the optimizer has state before the surgery

    units = CASES[arch]
    masked, opt_m = copy.deepcopy((model, opt))
    removed, opt_r = copy.deepcopy((model, opt))
    data = batches[:2]
    mask_units(masked, units, replacement=replacement, data=data, optimizer=opt_m)
    report = remove_units(removed, units, replacement=replacement, data=data, optimizer=opt_r)
    assert report.params_after < report.params_before

    # the state was sliced: same keys, shapes of the new parameters, scalars kept
    for group in opt_r.param_groups:
        for p in group["params"]:
            for key, val in opt_r.state.get(p, {}).items():
                if torch.is_tensor(val) and val.dim() > 0:
                    assert val.shape == p.shape, key

    losses_m = train(masked, opt_m, batches[5:])
    losses_r = train(removed, opt_r, batches[5:])
    assert max(abs(a - b) for a, b in zip(losses_m, losses_r)) <= 1e-6

    for name, dims in expected_slices(arch, units, shape).items():
        full = effective(masked, name)
        for dim, idx in dims.items():
            full = full.index_select(dim, idx)
        small = effective(removed, name)
        assert full.shape == small.shape, name
        assert (full - small).abs().max().item() <= 1e-6, name


def test_state_values_are_sliced_not_reset():
    model, shape = build("mlp")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn((8,) + shape, dtype=torch.float64)
    F.cross_entropy(model(x), torch.zeros(8, dtype=torch.long)).backward()
    opt.step()
    w = model.fc2.weight
    before = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state[w].items()}
    remove_units(model, {"fc1": [1, 4], "fc2": [0]}, optimizer=opt)
    after = opt.state[model.fc2.weight]
    assert model.fc2.weight is w  # same parameter object, the optimizer still holds it
    rows, cols = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 2, 3, 5, 6])
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(after[key], before[key][rows][:, cols])
    assert torch.equal(after["step"], before["step"])
    assert w.grad.shape == w.shape


def test_created_bias_joins_the_optimizer():
    model, shape = build("nobias")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn((4,) + shape, dtype=torch.float64)
    remove_units(model, {"conv1": [0]}, replacement="zero", data=[(x, None)], optimizer=opt)
    bias = model.conv2.bias
    assert bias is not None
    assert any(p is bias for p in opt.param_groups[0]["params"])
    before = bias.detach().clone()
    F.cross_entropy(model(x), torch.zeros(4, dtype=torch.long)).backward()
    opt.step()
    assert not torch.equal(bias.detach(), before)


# --------------------------------------------------------------------------- training goes on
# removal during training, and a failed removal rolled back with the optimizer state


def test_training_continues_while_an_old_graph_is_alive():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    w = net[0].weight
    losses = []
    for step in range(4):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)  # `loss` keeps the previous graph alive
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step == 0:
            remove_units(net, {"0": [2]}, optimizer=opt)
    assert net[0].weight is w and w.shape == (7, 4)
    assert opt.state[w]["momentum_buffer"].shape == (7, 4)
    assert losses[-1] < losses[1]


def test_journal_rolls_back_a_slice_with_optimizer_state():
    p = nn.Parameter(torch.arange(12.0).reshape(3, 4))
    opt = torch.optim.Adam([p])
    p.grad = torch.ones(3, 4)
    opt.step()
    state = {k: v.clone() for k, v in opt.state[p].items()}
    journal = Journal()
    slice_param(p, 0, torch.tensor([0, 2]), opt, journal)
    assert p.shape == (2, 4) and opt.state[p]["exp_avg"].shape == (2, 4)
    journal.rollback()
    assert p.shape == (3, 4) and p.grad.shape == (3, 4)
    for k, v in state.items():
        assert torch.equal(opt.state[p][k], v)


@pytest.mark.parametrize("fn", [remove_units, mask_units])
def test_failure_after_mutation_is_rolled_back(fn, monkeypatch):
    """If the shrunk model fails its check run, every change is undone."""
    import pruners.surgery as surgery

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(),
                          nn.Linear(6, 5, bias=False), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(8, 4)
    opt = torch.optim.Adam(model.parameters())
    F.cross_entropy(model(x), torch.zeros(8, dtype=torch.long)).backward()
    opt.step()
    mask_units(model, {"3": [4]})  # an existing prune mask must survive the rollback too
    before = take(model, opt)
    calls = {"n": 0}
    real = surgery.count_macs

    def failing(m, ex):
        calls["n"] += 1
        if calls["n"] == 2:  # the check run after the mutation
            raise RuntimeError("simulated failure")
        return real(m, ex)

    monkeypatch.setattr(surgery, "count_macs", failing)
    with pytest.raises(RuntimeError, match="undone.*simulated failure"):
        fn(model, {"0": [1, 3], "3": [0]}, replacement="zero", data=[(x, None)], optimizer=opt)
    assert_unchanged(before, model, opt)
