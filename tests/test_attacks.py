"""Learning-rate attacks (pruners.attacks): the update of exactly the chosen entries is
scaled by m, for any optimizer; m = 1 leaves training bit-identical."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from helpers_snapshot import assert_unchanged, same_bits, take
from zoo import thesis_cnn

from pruners import LRAttack, attack_steps, remove_units


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 6), nn.Tanh(),
                         nn.Linear(6, 3)).double()


def _data(seed=1, n=24, d=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,),
                                                                               generator=g)


OPTIMIZERS = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.05),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True,
                                               weight_decay=1e-3),
    "adam": lambda ps: torch.optim.Adam(ps, lr=0.01),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
}


def test_schedule_is_start_plus_repeats_times_interval():
    assert attack_steps(2000, repeats=10, interval=10) == list(range(2000, 2100, 10))
    assert attack_steps(3, steps=3, repeats=2, interval=5) == [3, 4, 5, 8, 9, 10]
    assert attack_steps(0) == [0]
    assert attack_steps(7, steps=2) == [7, 8]
    with pytest.raises(ValueError, match="overlap"):
        attack_steps(0, steps=3, repeats=2, interval=2)
    for bad in (dict(start=-1), dict(start=0, steps=0), dict(start=0, repeats=0),
                dict(start=1.5), dict(start=True)):
        with pytest.raises(ValueError):
            attack_steps(**bad)


def _expected_masks(net, layer_rows, bias, outgoing):
    """Hand-built masks of the attacked entries of the 5-7-6-3 MLP."""
    masks = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in net.named_parameters()}
    consumer = {"0": "2", "2": "4"}
    for layer, rows in layer_rows.items():
        masks[f"{layer}.weight"][rows] = True
        if bias:
            masks[f"{layer}.bias"][rows] = True
        if outgoing:
            masks[f"{consumer[layer]}.weight"][:, rows] = True
    return masks


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("bias,outgoing", [(True, False), (False, False), (True, True)])
def test_attack_scales_exactly_the_chosen_updates(opt_name, bias, outgoing):
    x, y = _data()
    net = _mlp()
    opt = OPTIMIZERS[opt_name](net.parameters())
    for _ in range(3):  # warm up: momentum buffers and Adam moments are not trivial
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    twin = copy.deepcopy(net)
    twin_opt = OPTIMIZERS[opt_name](twin.parameters())
    twin_opt.load_state_dict(copy.deepcopy(opt.state_dict()))  # no shared buffers
    units = {"0": [1, 4], "2": [2]}   # unit 2 of layer "2" also crosses column 1, 4 of "2"
    m = 37.0
    attack = LRAttack(net, units, m, start=3, bias=bias, outgoing=outgoing)
    old = {n: p.detach().clone() for n, p in net.named_parameters()}
    for model, o in ((net, opt), (twin, twin_opt)):
        o.zero_grad()
        F.cross_entropy(model(x), y).backward()
    with attack.step(3) as attacked:
        opt.step()
    twin_opt.step()
    assert attacked and attack.applied == [3]
    masks = _expected_masks(net, units, bias, outgoing)
    twin_p = dict(twin.named_parameters())
    for name, p in net.named_parameters():
        mask = masks[name]
        expected = old[name] + m * (twin_p[name].detach() - old[name])
        assert torch.allclose(p[mask], expected[mask], rtol=1e-12, atol=1e-15), name
        assert same_bits(p.detach()[~mask], twin_p[name].detach()[~mask]), name
        if mask.any():  # the attack really moved these entries
            assert not torch.equal(p[mask], twin_p[name][mask])
    assert attack.parameters() == {n: int(v.sum()) for n, v in masks.items() if v.any()}
    # the optimizer's state is what the optimizer computed, untouched by the attack
    for (p, s), (q, t) in zip(opt.state.items(), twin_opt.state.items()):
        for k in s:
            assert same_bits(s[k], t[k]), k


def test_adam_attack_is_not_a_gradient_attack():
    """Scaling Adam's gradient by m barely changes its step; the attack scales the step."""
    x, y = _data()
    nets = [_mlp(), _mlp(), _mlp()]  # attacked, gradient scaled, plain
    opts = [torch.optim.Adam(n.parameters(), lr=0.01) for n in nets]
    attack = LRAttack(nets[0], {"0": [0]}, 100.0, start=0, bias=False)
    w0 = nets[0][0].weight.detach().clone()
    for model, o in zip(nets, opts):
        o.zero_grad()
        F.cross_entropy(model(x), y).backward()
    nets[1][0].weight.grad[0] *= 100.0  # the gradient attack
    with attack.step(0):
        opts[0].step()
    opts[1].step()
    opts[2].step()
    attacked, grad_scaled, plain = ((n[0].weight[0] - w0[0]).detach() for n in nets)
    assert torch.allclose(attacked, 100 * plain, rtol=1e-12, atol=0)
    assert torch.allclose(grad_scaled, plain, rtol=1e-4, atol=0)  # Adam: ~lr * sign(g)


def test_conv_outgoing_weights_are_the_flattened_column_blocks():
    torch.manual_seed(0)
    net = thesis_cnn().double()
    attack = LRAttack(net, {"conv2": [3]}, 2.0, start=0, outgoing=True,
                      example_input=torch.zeros(1, 1, 28, 28, dtype=torch.float64))
    assert attack.parameters() == {"conv2.weight": 8 * 25, "conv2.bias": 1,
                                   "fc1.weight": 64 * 16}  # 4x4 map per channel
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    F.cross_entropy(net(x), torch.tensor([0, 1, 2, 3])).backward()
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    with attack.step(0):
        opt.step()
    cols = torch.zeros(256, dtype=torch.bool)
    cols[3 * 16:4 * 16] = True
    for name, p in net.named_parameters():
        scale = torch.ones_like(p)
        if name == "conv2.weight":
            scale[3] = 2.0
        elif name == "conv2.bias":
            scale[3] = 2.0
        elif name == "fc1.weight":
            scale[:, cols] = 2.0
        assert torch.allclose(p, before[name] - 0.1 * scale * grads[name], rtol=0, atol=1e-15), name


def test_bad_arguments_leave_everything_unchanged():
    net = _mlp()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    snap = take(net, opt)
    cases = [
        (dict(units={"9": [0]}), "unknown layer '9'"),
        (dict(units={"1": [0]}), "is a ReLU"),
        (dict(units={"0": [7]}), "index 7 is out of range"),
        (dict(units={"0": [1, 1]}), "index 1 is given more than once"),
        (dict(units={"0": [-1]}), "out of range"),
        (dict(units={"0": []}), "no unit index"),
        (dict(units={"0": [0.5]}), "not an integer"),
        (dict(units={}), "non-empty"),
        (dict(multiplier=float("nan")), "finite number"),
        (dict(multiplier=True), "finite number"),
        (dict(units={"4": [0]}, outgoing=True), "no outgoing weights"),
        (dict(steps=2, repeats=3, interval=1), "overlap"),
    ]
    for kw, msg in cases:
        args = dict(units={"0": [0]}, multiplier=2.0, start=0)
        args.update(kw)
        with pytest.raises(ValueError, match=msg):
            LRAttack(net, args.pop("units"), args.pop("multiplier"), **args)
    assert_unchanged(snap, net, opt)


def test_removed_units_make_the_attack_refuse_clearly():
    net = _mlp()
    x, y = _data()
    attack = LRAttack(net, {"2": [0]}, 3.0, start=0)
    remove_units(net, {"0": [1]})
    with pytest.raises(RuntimeError, match=r"0\.weight is now shaped|2\.weight is now shaped"):
        attack.before_step(0)
    attack = LRAttack(net, {"2": [0]}, 3.0, start=0)
    F.cross_entropy(net(x), y).backward()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(ZeroDivisionError):  # an error in the step: nothing is scaled after
        with attack.step(0):
            raise ZeroDivisionError
    assert attack.applied == []
    before = net[2].weight.detach().clone()
    attack.after_step()  # nothing pending: no-op
    assert torch.equal(net[2].weight, before)


def test_state_dict_round_trip():
    net = _mlp()
    a = LRAttack(net, {"0": [0]}, 2.0, start=1, repeats=3, interval=2)
    for t in range(6):
        a.before_step(t)
        a.after_step()
    assert a.applied == [1, 3, 5]
    b = LRAttack(net, {"0": [0]}, 2.0, start=1, repeats=3, interval=2)
    b.load_state_dict(a.state_dict())
    assert b.applied == a.applied and b.last_step == 5 and b.is_attacked(3)
    assert not b.is_attacked(2)
