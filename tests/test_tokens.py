"""Token-shaped layers and FFN neurons: a Linear on (batch, tokens, channels) inputs.

A transformer FFN block ``x + fc2(gelu(fc1(LayerNorm(x))))`` and its gated form
``x + down(silu(gate(h)) * up(h))`` (SwiGLU; gate and up coupled into one group, held at the
product) on (B, T, D) inputs, in float64. Every check is against an independent reference:
a masked twin, forward hooks that hold the removed neurons at their means, a naive loop of
copies for exact MRP, statistics written out from hooks and autograd over batch and tokens,
and a masked twin trained step for step.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruners import UnsupportedArchitecture, mask_units, remove_units, trace
from saliency import MRP, MRS, Dormancy, Norm, UnitTaylor

B, T, D_IN, D, FF, CLASSES = 4, 5, 5, 8, 12, 3


class FFNBlock(nn.Module):
    """An embedding, one pre-norm FFN block on the residual stream, per-token logits averaged
    over the tokens. ``gated``: SwiGLU, ``down(silu(gate(h)) * up(h))``."""

    def __init__(self, gated: bool = False, bias: bool = True):
        super().__init__()
        self.gated = gated
        self.embed = nn.Linear(D_IN, D)
        self.norm = nn.LayerNorm(D)
        if gated:
            self.gate, self.up = nn.Linear(D, FF), nn.Linear(D, FF, bias=False)
            self.down = nn.Linear(FF, D, bias=bias)
        else:
            self.fc1, self.fc2 = nn.Linear(D, FF), nn.Linear(FF, D, bias=bias)
        self.head = nn.Linear(D, CLASSES)

    @property
    def first(self) -> str:
        return "gate" if self.gated else "fc1"

    @property
    def consumer(self) -> nn.Linear:
        return self.down if self.gated else self.fc2

    def forward(self, x):
        x = self.embed(x)
        h = self.norm(x)
        if self.gated:
            x = x + self.down(F.silu(self.gate(h)) * self.up(h))
        else:
            x = x + self.fc2(F.gelu(self.fc1(h)))
        return self.head(x).mean(1)


def build(gated: bool, bias: bool = True, seed: int = 0) -> FFNBlock:
    torch.manual_seed(seed)
    net = FFNBlock(gated, bias).double().eval()
    with torch.no_grad():  # biases away from zero: every mean and fold is non-trivial
        for m in net.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.uniform_(-0.5, 0.5)
    return net


def batch(n: int = B, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, T, D_IN, generator=gen, dtype=torch.float64)
    return x, torch.randint(0, CLASSES, (n,), generator=gen)


CASES = [(g, b) for g in (False, True) for b in (True, False)]
IDS = [f"{'swiglu' if g else 'mlp'}-{'bias' if b else 'nobias'}" for g, b in CASES]
REMOVE = [1, 4, 7, 10]


def ffn_input(net: FFNBlock, x: torch.Tensor) -> torch.Tensor:
    """What the down projection reads: gelu(fc1(h)), or silu(gate(h)) * up(h)."""
    seen = {}
    handle = net.consumer.register_forward_pre_hook(lambda m, a: seen.__setitem__("a", a[0]))
    try:
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    return seen["a"]


# --------------------------------------------------------------------------- the graph


@pytest.mark.parametrize("gated", [False, True])
def test_ffn_neurons_are_the_units_and_the_residual_stream_is_not(gated):
    net = build(gated)
    graph = trace(net, batch()[0])
    assert graph.prunable == [net.first]
    group = graph.groups[net.first]
    assert group.size == FF
    assert [c.name for c in group.consumers] == ["down" if gated else "fc2"]
    if gated:
        assert group.members == ["gate", "up"] and group.nodes[group.held].kind == "product"
    else:
        assert group.members == ["fc1"] and group.held is None
    assert graph.producers[net.first].channel_last
    stream = graph.groups["embed"]
    assert stream.members == ["embed", "down" if gated else "fc2"]
    assert not stream.prunable
    assert stream.reason.startswith("node 'norm' (call_module norm) normalizes over the "
                                    "channels (LayerNorm mixes them")


# --------------------------------------------------------------------------- (a) masked = removed


@pytest.mark.parametrize("gated,bias", CASES, ids=IDS)
@pytest.mark.parametrize("replacement", [None, "zero", "mean"])
def test_masked_equals_removed(gated, bias, replacement):
    x, y = batch()
    net = build(gated, bias)
    removed, masked = copy.deepcopy(net), copy.deepcopy(net)
    units = {net.first: REMOVE}
    remove_units(removed, units, replacement=replacement, data=[(x, y)])
    mask_units(masked, units, replacement=replacement, data=[(x, y)])
    with torch.no_grad():
        assert (removed(x) - masked(x)).abs().max() <= 1e-10
        assert (removed(x) - net(x)).abs().max() > 1e-6  # the removal did something
    left = FF - len(REMOVE)
    producers = ["gate", "up"] if gated else ["fc1"]
    for p in producers:
        assert removed.get_submodule(p).weight.shape == (left, D)
        assert removed.get_submodule(p).out_features == left
    assert removed.consumer.weight.shape == (D, left) and removed.consumer.in_features == left
    assert (removed.consumer.bias is not None) == (bias or replacement == "mean")


# --------------------------------------------------------------------------- (b) mean replacement


@pytest.mark.parametrize("gated,bias", CASES, ids=IDS)
def test_mean_replacement_equals_a_hook_reference(gated, bias):
    """The removed neurons held at their means over batch and tokens (measured on the
    unmodified model): an MLP neuron's fc1 output (the layer's output before its
    non-linearity, as for every chain), a gated neuron's product (what down reads)."""
    x, y = batch()
    x2, _ = batch(3, seed=2)
    net = build(gated, bias)
    idx = torch.tensor(REMOVE)
    reference = copy.deepcopy(net)
    if gated:
        mean = ffn_input(net, x).reshape(-1, FF).mean(0)

        def hold(_m, args):
            a = args[0].clone()
            a[..., idx] = mean[idx]
            return (a,)
        reference.down.register_forward_pre_hook(hold)
    else:
        seen = {}
        handle = net.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("h", o))
        with torch.no_grad():
            net(x)
        handle.remove()
        mean = seen["h"].reshape(-1, FF).mean(0)

        def hold(_m, _i, out):
            out = out.clone()
            out[..., idx] = mean[idx]
            return out
        reference.fc1.register_forward_hook(hold)
    report = remove_units(net, {net.first: REMOVE}, replacement="mean", data=[(x, y)])
    assert torch.allclose(report.constants[net.first], mean[idx], rtol=0, atol=1e-12)
    with torch.no_grad():
        for inp in (x, x2):  # also on data the means were not measured on
            assert (net(inp) - reference(inp)).abs().max() <= 1e-9


def test_a_constant_gated_neuron_is_removed_exactly():
    """up's row of neuron 3 zero and its bias 0.7: the product is silu(gate) * 0.7, not
    constant; with gate's row zero too, silu(b_gate) * 0.7 is, and removing it with mean
    replacement changes nothing."""
    x, y = batch()
    net = FFNBlock(gated=True).double().eval()
    with torch.no_grad():
        net.up.weight[3] = 0
        net.gate.weight[3] = 0
        net.up.bias = nn.Parameter(torch.zeros(FF, dtype=torch.float64))
        net.up.bias[3] = 0.7
    before = net(x).detach()
    remove_units(net, {"up": [3]}, replacement="mean", data=[(x, y)])
    assert (net(x) - before).abs().max() <= 1e-10


# --------------------------------------------------------------------------- (c) exact MRP


@pytest.mark.parametrize("gated,bias", CASES[:1] + CASES[2:3], ids=IDS[:1] + IDS[2:3])
def test_exact_mrp_equals_a_naive_loop(gated, bias):
    x, y = batch()
    data = [(x[:2], y[:2]), (x[2:], y[2:])]  # two batches: the means span both
    net = build(gated, bias)
    scores = MRP().score(net, data)[net.first]
    base = torch.cat([F.cross_entropy(net(a), b, reduction="none") for a, b in data]).detach()
    naive = torch.zeros(FF, dtype=torch.float64)
    for i in range(FF):
        twin = copy.deepcopy(net)
        remove_units(twin, {net.first: [i]}, replacement="mean", data=data)
        after = torch.cat([F.cross_entropy(twin(a), b, reduction="none") for a, b in data])
        naive[i] = (after.detach() - base).abs().sum()
    assert (scores - naive).abs().max() <= 1e-8
    signed = MRP(absolute=False, reduction="mean").score(net, data)[net.first]
    assert signed.abs().max() > 0


# --------------------------------------------------------------------------- (d) statistics


def brute_force(net: FFNBlock, data) -> dict[str, torch.Tensor]:
    """MRS, Taylor and ReDo dormancy written out from hooks and autograd: ``h`` is fc1's
    output (a chain) or the product (a gated group), ``g = dL/dh`` with L the summed
    per-sample loss, means over batch and tokens; ``a`` is what the down projection reads."""
    hs, gs, acts = [], [], []
    for x, y in data:
        seen = {}
        if net.gated:
            def pre(_m, args, seen=seen):
                args[0].retain_grad()
                seen["h"] = seen["a"] = args[0]
            handles = [net.down.register_forward_pre_hook(pre)]
        else:
            def out(_m, _i, o, seen=seen):
                o.retain_grad()
                seen["h"] = o
            handles = [net.fc1.register_forward_hook(out),
                       net.fc2.register_forward_pre_hook(
                           lambda m, a, seen=seen: seen.__setitem__("a", a[0]))]
        loss = F.cross_entropy(net(x), y, reduction="sum")
        loss.backward()
        for hd in handles:
            hd.remove()
        hs.append(seen["h"].detach())
        gs.append(seen["h"].grad.detach())
        acts.append(seen["a"].detach())
    net.zero_grad()
    h, g, a = torch.cat(hs), torch.cat(gs), torch.cat(acts)  # (N, T, FF)
    mu = h.mean((0, 1))
    mrs = ((mu - h) * g).sum(1).abs().sum(0)
    taylor = (h * g).mean((0, 1)).abs()
    mean_abs = a.abs().mean((0, 1))
    return {"mrs": mrs, "taylor": taylor, "dormancy": mean_abs / mean_abs.mean()}


@pytest.mark.parametrize("gated", [False, True])
def test_statistics_equal_a_brute_force_over_batch_and_tokens(gated):
    x, y = batch(6)
    data = [(x[:4], y[:4]), (x[4:], y[4:])]
    net = build(gated)
    ref = brute_force(net, data)
    got = {"mrs": MRS().score(net, data), "taylor": UnitTaylor().score(net, data),
           "dormancy": Dormancy().score(net, data)}
    for key, scores in got.items():
        assert torch.allclose(scores[net.first], ref[key], rtol=1e-10, atol=1e-12), key
    rows = [net.get_submodule(p).weight.detach().abs().sum(1)
            for p in (["gate", "up"] if gated else ["fc1"])]
    assert torch.allclose(Norm().score(net, data)[net.first], sum(rows), rtol=1e-12)


# --------------------------------------------------------------------------- (e) training goes on


@pytest.mark.parametrize("gated", [False, True])
def test_twenty_adamw_steps_after_removal_equal_a_masked_twin(gated):
    x, y = batch(8)
    nets = [build(gated, bias=False), build(gated, bias=False)]
    opts = [torch.optim.AdamW(n.parameters(), lr=1e-2, weight_decay=0.01) for n in nets]
    for _ in range(3):  # optimizer state before the removal
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            F.cross_entropy(net(x), y).backward()
            opt.step()
    units = {nets[0].first: REMOVE}
    remove_units(nets[0], units, replacement="mean", data=[(x, y)], optimizer=opts[0])
    mask_units(nets[1], units, replacement="mean", data=[(x, y)], optimizer=opts[1])
    assert opts[0].state[nets[0].consumer.weight]["exp_avg"].shape == (D, FF - len(REMOVE))
    for step in range(20):
        losses = []
        for net, opt in zip(nets, opts):
            opt.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert abs(losses[0] - losses[1]) <= 1e-6, step
    with torch.no_grad():
        assert (nets[0](x) - nets[1](x)).abs().max() <= 1e-6


@pytest.mark.parametrize("opt_cls, kw", [(torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
                                         (torch.optim.Adam, {"lr": 1e-2})])
def test_optimizer_state_is_sliced(opt_cls, kw):
    x, y = batch()
    net = build(True)
    opt = opt_cls(net.parameters(), **kw)
    F.cross_entropy(net(x), y).backward()
    opt.step()
    key = "momentum_buffer" if opt_cls is torch.optim.SGD else "exp_avg"
    before = opt.state[net.up.weight][key].clone()
    remove_units(net, {"gate": REMOVE}, optimizer=opt, example_input=x)
    keep = [i for i in range(FF) if i not in REMOVE]
    assert torch.equal(opt.state[net.up.weight][key], before[keep])
    assert opt.state[net.down.weight][key].shape == (D, len(keep))


# --------------------------------------------------------------------------- (f) refusals


def test_the_residual_width_through_layernorm_is_refused_with_the_reason():
    x, y = batch()
    net = build(False)
    before = copy.deepcopy(net.state_dict())
    for name in ("embed", "fc2"):
        with pytest.raises(ValueError, match=r"not prunable: node 'norm' \(call_module norm\) "
                                             r"normalizes over the channels \(LayerNorm mixes "
                                             r"them"):
            remove_units(net, {name: [0]}, replacement="mean", data=[(x, y)])
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])


class RMSBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.norm = nn.Linear(D_IN, D), nn.RMSNorm(D)
        self.fc1, self.fc2, self.head = nn.Linear(D, FF), nn.Linear(FF, D), nn.Linear(D, 3)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.fc2(F.relu(self.fc1(self.norm(x))))
        return self.head(x.mean(1))


def test_the_residual_width_through_rmsnorm_is_not_prunable():
    graph = trace(RMSBlock().double(), batch()[0])
    assert graph.prunable == ["fc1"]
    assert "RMSNorm mixes them" in graph.groups["embed"].reason


class Reshaped(nn.Module):
    """fc1's neurons through a reshape or a transpose before fc2."""

    def __init__(self, how: str):
        super().__init__()
        self.how = how
        self.fc1 = nn.Linear(D_IN, FF)
        self.fc2 = nn.Linear(T * FF if how == "merge" else (T if how == "transpose" else FF), 3)

    def forward(self, x):  # (B, T, D_IN), or (B, 1, T, D_IN) for "tokens"
        h = F.relu(self.fc1(x))
        if self.how == "merge":  # (B, T, FF) -> (B, T * FF): the channels are not kept whole
            return self.fc2(h.reshape(h.shape[0], -1))
        if self.how == "transpose":  # (B, FF, T): a Linear over the tokens
            return self.fc2(h.transpose(1, 2)).mean(1)
        # (B, 1, T, FF) -> (B, T, FF): the batch first, every channel whole and last
        return self.fc2(h.flatten(1, 2)).mean(1)


def test_a_reshape_that_does_not_keep_the_channels_whole_is_refused():
    x = batch()[0]
    with pytest.raises(UnsupportedArchitecture, match=(
            r"node 'reshape' \(call_method reshape\) reshapes a \(4, 5, 12\) tensor whose "
            r"channels are its last dimension into \(4, 60\).*\[reached from producer 'fc1'\]")):
        trace(Reshaped("merge").double(), x)
    with pytest.raises(UnsupportedArchitecture, match=(
            r"node 'fc2' \(call_module fc2\): Linear applied to a 3-D tensor \(4, 12, 5\) would "
            r"mix positions.*\[reached from producer 'fc1'\]")):
        trace(Reshaped("transpose").double(), x)


def test_a_reshape_that_keeps_the_channels_whole_is_traced():
    x, y = batch()
    x = x.unsqueeze(1)  # (B, 1, T, D_IN)
    torch.manual_seed(0)
    net = Reshaped("tokens").double().eval()
    assert trace(net, x).prunable == ["fc1"]
    masked = copy.deepcopy(net)
    remove_units(net, {"fc1": [0, 5]}, replacement="mean", data=[(x, y)])
    mask_units(masked, {"fc1": [0, 5]}, replacement="mean", data=[(x, y)])
    with torch.no_grad():
        assert (net(x) - masked(x)).abs().max() <= 1e-10


class SharedFactor(nn.Module):
    """up's output reaches a consumer both through the product and on its own."""

    def __init__(self):
        super().__init__()
        self.gate, self.up = nn.Linear(D_IN, FF), nn.Linear(D_IN, FF)
        self.down, self.side = nn.Linear(FF, 3), nn.Linear(FF, 3)

    def forward(self, x):
        u = self.up(x)
        return (self.down(F.silu(self.gate(x)) * u) + self.side(u)).mean(1)


def test_a_product_whose_factor_is_read_elsewhere_is_refused():
    with pytest.raises(UnsupportedArchitecture, match=(
            r"node 'mul' \(call_function mul\) multiplies channels that also reach 'side' "
            r"without the product")):
        trace(SharedFactor().double(), batch()[0])


# --------------------------------------------------------------------------- (g) 2-D unchanged


class GLU2d(nn.Module):
    """A gated unit on (B, C) inputs: the same group as on tokens."""

    def __init__(self):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(D_IN, 6), nn.Linear(D_IN, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.down(torch.sigmoid(self.gate(x)) * self.up(x))


def test_linear_on_2d_inputs_is_unchanged_and_gated_2d_units_are_a_group():
    x, y = batch()
    x = x[:, 0]
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(D_IN, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    graph = trace(net, x)
    assert graph.prunable == ["0"] and not graph.producers["0"].channel_last
    assert graph.groups["0"].nodes[0].channel_last is False
    glu = GLU2d().double()
    g = trace(glu, x)
    assert g.groups["gate"].members == ["gate", "up"]
    masked = copy.deepcopy(glu)
    remove_units(glu, {"gate": [1, 2]}, replacement="mean", data=[(x, y)])
    mask_units(masked, {"gate": [1, 2]}, replacement="mean", data=[(x, y)])
    with torch.no_grad():
        assert (glu(x) - masked(x)).abs().max() <= 1e-10
