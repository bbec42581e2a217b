"""Padding: statistics over tokens leave out the positions a batch's token mask marks.

A causal language-model block in float64 (attention heads, a ReLU FFN whose ``fc1`` is a
chain, a SwiGLU FFN held at its product) on right-padded batches ``(x, y, mask)``: padded
inputs are noise, padded targets are ``ignore_index``. Every statistic is checked against a
brute force written out from hooks and autograd over the real tokens only, the removal with
``replacement="mean"`` against hooks that hold the removed units and heads at the means of
the real tokens, and exact MRP against a naive loop of removals. Each check also shows that
the padding would change the result, so it cannot pass by ignoring the mask.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruners import remove_units
from saliency import MRP, MRS, Dormancy, UnitTaylor, UnitTracker, find_dead_units, unit_means
from saliency.unit_stats import unit_statistics
from saliency.tracing import trace

B, T, D_IN, D, H, FF, V = 5, 6, 4, 8, 2, 6, 7
HD = D // H


class CausalAttention(nn.Module):
    """Separate q/k/v/o projections, scaled_dot_product_attention with a causal mask."""

    def __init__(self):
        super().__init__()
        self.num_heads, self.head_dim = H, HD
        self.q, self.k, self.v, self.o = (nn.Linear(D, D) for _ in range(4))

    def forward(self, x):
        b, t, _ = x.shape
        h, hd = self.num_heads, self.head_dim
        q, k, v = (p(x).view(b, t, h, hd).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(b, t, h * hd))


class PaddedLM(nn.Module):
    """Embedding, causal attention, a ReLU FFN and a SwiGLU FFN on a residual stream,
    per-token logits."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(D_IN, D)
        self.attn = CausalAttention()
        self.fc1, self.fc2 = nn.Linear(D, FF), nn.Linear(FF, D)
        self.gate, self.up, self.down = nn.Linear(D, FF), nn.Linear(D, FF), nn.Linear(FF, D)
        self.head = nn.Linear(D, V)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.attn(x)
        x = x + self.fc2(F.relu(self.fc1(x)))
        x = x + self.down(F.silu(self.gate(x)) * self.up(x))
        return self.head(x)


def token_loss(out, y, reduction="mean"):
    return F.cross_entropy(out.transpose(1, 2), y, reduction=reduction)


@pytest.fixture
def model():
    torch.manual_seed(0)
    net = PaddedLM().double().eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.bias.uniform_(-0.5, 0.5)
    return net


def padded_batch(seed: int, lengths: list[int]):
    """Right-padded: noise of scale 5 at the padding (far from the real tokens' values), its
    targets ignore_index."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), T, D_IN, generator=g, dtype=torch.float64)
    y = torch.randint(0, V, (len(lengths), T), generator=g)
    mask = torch.arange(T)[None] < torch.tensor(lengths)[:, None]
    x = torch.where(mask[..., None], x, 5 * x + 3)
    return x, y.masked_fill(~mask, -100), mask


@pytest.fixture
def data():
    return [padded_batch(1, [6, 3, 4, 1, 5]), padded_batch(2, [2, 6, 6, 4, 3])]


def unmasked(data):
    return [(x, y) for x, y, _ in data]


# --------------------------------------------------------------------------- the reference


def brute_force(net: PaddedLM, data) -> dict[str, dict[str, torch.Tensor]]:
    """Per site (``fc1``: its output and the ReLU after it; ``gate``: the product the down
    projection reads; ``heads``: what the output projection reads, per head), written out
    from hooks and autograd: ``h``, ``g = dL/dh`` with ``L`` the sum over samples of the mean
    token loss over real tokens, then means over the real tokens only."""
    seen: dict[str, list] = {"fc1": [], "gate": [], "heads": [], "g_fc1": [], "g_gate": [],
                             "g_heads": [], "mask": []}

    def keep_output(key):
        def hook(_m, _i, out):
            out.retain_grad()
            cur[key] = out
        return hook

    def keep_input(key):
        def hook(_m, args):
            args[0].retain_grad()
            cur[key] = args[0]
        return hook

    handles = [net.fc1.register_forward_hook(keep_output("fc1")),
               net.down.register_forward_pre_hook(keep_input("gate")),
               net.attn.o.register_forward_pre_hook(keep_input("heads"))]
    try:
        for x, y, mask in data:
            cur: dict[str, torch.Tensor] = {}
            per_token = token_loss(net(x), y, "none")
            loss = (per_token * mask).sum(1) / mask.sum(1)
            loss.sum().backward()
            for key in ("fc1", "gate", "heads"):
                seen[key].append(cur[key].detach())
                seen["g_" + key].append(cur[key].grad.detach())
            seen["mask"].append(mask)
    finally:
        for hd in handles:
            hd.remove()
        net.zero_grad()
    mask = torch.cat(seen["mask"])
    out = {}
    for key in ("fc1", "gate", "heads"):
        h, g = torch.cat(seen[key]), torch.cat(seen["g_" + key])  # (N, T, C)
        if key == "heads":
            h, g = h.reshape(*h.shape[:2], H, HD), g.reshape(*g.shape[:2], H, HD)
        real = h[mask]
        mu = real.mean(0)
        first = ((mu - h) * g).sum(1)                      # every position: removal holds them
        hg = (h * g).sum((0, 1))
        if key == "heads":
            first, hg = first.sum(-1), hg.sum(-1)
        out[key] = {"mean": mu, "mrs": first.abs().sum(0), "taylor": hg.abs() / mask.sum(),
                    "mean_all": h.reshape(-1, *h.shape[2:]).mean(0)}
        a = F.relu(real) if key == "fc1" else real
        mean_abs = a.abs().mean(0)
        if key == "heads":
            mean_abs = mean_abs.mean(-1)
        out[key]["dormancy"] = mean_abs / mean_abs.mean()
        if key == "fc1":
            out[key]["apoz"] = (a == 0).double().mean(0)
            out[key]["out_var"] = real.var(0, unbiased=False)
    return out


# --------------------------------------------------------------------------- the tests


def test_the_padding_changes_every_mean(model, data):
    """Without this, the tests below could pass with the mask ignored."""
    ref = brute_force(model, data)
    for key in ("fc1", "gate", "heads"):
        assert (ref[key]["mean"] - ref[key]["mean_all"]).abs().max() > 0.05, key
    plain = unit_means(model, unmasked(data), ["fc1"])["fc1"]
    assert torch.allclose(plain, ref["fc1"]["mean_all"], rtol=1e-12)


def test_means_leave_the_padding_out(model, data):
    ref = brute_force(model, data)
    assert torch.allclose(unit_means(model, data, ["fc1"])["fc1"], ref["fc1"]["mean"],
                          rtol=1e-12, atol=1e-14)
    graph = trace(model, data[0][0])
    stats = unit_statistics(model, graph, ["fc1", "gate"], data, token_loss,
                            stats=["mean", "apoz", "out_var"])
    assert torch.allclose(stats["mean"]["fc1"], ref["fc1"]["mean"], rtol=1e-12, atol=1e-14)
    assert torch.allclose(stats["mean"]["gate"], ref["gate"]["mean"], rtol=1e-12, atol=1e-14)
    assert torch.allclose(stats["apoz"]["fc1"], ref["fc1"]["apoz"], atol=1e-14)
    assert torch.allclose(stats["out_var"]["fc1"], ref["fc1"]["out_var"], rtol=1e-10,
                          atol=1e-13)


@pytest.mark.parametrize("name,scorer", [("mrs", MRS), ("taylor", UnitTaylor),
                                         ("dormancy", Dormancy)])
def test_scores_of_units_and_heads_equal_the_brute_force(model, data, name, scorer):
    ref = brute_force(model, data)
    got = scorer().score(model, data, token_loss)
    for site, key in (("fc1", "fc1"), ("gate", "gate"), ("heads", "attn")):
        assert torch.allclose(got[key], ref[site][name], rtol=1e-10, atol=1e-13), (name, site)
    unmasked_scores = scorer().score(model, unmasked(data), token_loss)
    assert not torch.allclose(unmasked_scores["fc1"], got["fc1"], rtol=1e-6), name


def test_the_dead_unit_report_leaves_the_padding_out(model, data):
    ref = brute_force(model, data)
    report = find_dead_units(model, data, loss_fn=token_loss, layers=["fc1"])
    assert torch.allclose(report.stats["mean"]["fc1"], ref["fc1"]["mean"], rtol=1e-12)
    assert torch.allclose(report.stats["apoz"]["fc1"], ref["fc1"]["apoz"], atol=1e-14)
    relu = F.relu(torch.cat([_fc1(model, x)[m] for x, _, m in data]))
    assert torch.allclose(report.stats["act_mean"]["fc1"], relu.mean(0), rtol=1e-12)
    assert torch.allclose(report.stats["act_var"]["fc1"], relu.var(0, unbiased=False),
                          rtol=1e-10, atol=1e-13)


def _fc1(model, x):
    with torch.no_grad():
        h = model.embed(x)
        h = h + model.attn(h)
        return model.fc1(h)


def held_reference(model, data, x, units: dict[str, list[int]], heads: list[int]):
    """The output on ``x`` with fc1's units, the SwiGLU product's channels and the heads held
    at the real tokens' means (forward hooks, independent of the toolkit)."""
    ref = brute_force(model, data)

    def hold_output(mu, idx):
        def hook(_m, _i, out):
            out = out.clone()
            out[..., idx] = mu[idx]
            return out
        return hook

    def hold_input(mu, idx):
        def hook(_m, args):
            c = args[0].clone()
            c[..., idx] = mu[idx]
            return (c,)
        return hook

    head_cols = [j * HD + d for j in heads for d in range(HD)]
    handles = [model.fc1.register_forward_hook(hold_output(ref["fc1"]["mean"], units["fc1"])),
               model.down.register_forward_pre_hook(hold_input(ref["gate"]["mean"],
                                                               units["gate"])),
               model.attn.o.register_forward_pre_hook(hold_input(ref["heads"]["mean"].reshape(-1),
                                                            head_cols))]
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for hd in handles:
            hd.remove()


def test_mean_replacement_holds_units_and_heads_at_the_real_tokens_means(model, data):
    units = {"fc1": [0, 3], "gate": [1, 4]}
    x = padded_batch(9, [6, 6, 2, 5, 1])[0]
    expect = held_reference(model, data, x, units, [1])
    attn = "attn"
    pruned = copy.deepcopy(model)
    remove_units(pruned, {**units, attn: [1]}, replacement="mean", data=data)
    with torch.no_grad():
        got = pruned(x)
    assert float((got - expect).abs().max()) <= 1e-9
    plain = copy.deepcopy(model)
    remove_units(plain, {**units, attn: [1]}, replacement="mean", data=unmasked(data))
    with torch.no_grad():
        assert float((plain(x) - expect).abs().max()) > 1e-3


def test_exact_mrp_with_padding_equals_a_naive_removal_loop(model, data):
    got = MRP().score(model, data, token_loss)

    def total_loss(net):
        with torch.no_grad():
            return torch.stack([
                (token_loss(net(x), y, "none") * m).sum(1) / m.sum(1) for x, y, m in data])

    base = total_loss(model)
    attn = "attn"
    for name, size in (("fc1", FF), ("gate", FF), (attn, H)):
        naive = []
        for i in range(size):
            twin = copy.deepcopy(model)
            remove_units(twin, {name: [i]}, replacement="mean", data=data)
            naive.append((total_loss(twin) - base).abs().sum())
        assert torch.allclose(got[name], torch.stack(naive), rtol=1e-8, atol=1e-12), name


def test_bad_masks_are_refused_with_the_batch_and_what_was_expected(model, data):
    x, y, mask = data[0]
    with pytest.raises(TypeError, match=r"batch 0: the third element \(the token mask\) is a "
                                        r"torch.float64 tensor.*bool"):
        unit_means(model, [(x, y, mask.double())], ["fc1"])
    with pytest.raises(ValueError, match=r"batch 0: the token mask has shape \(5,\)"):
        unit_means(model, [(x, y, mask[:, 0])], ["fc1"])
    wide = torch.ones(B, T + 1, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"does not fit layer 'fc1'.*positions \(6,\)"):
        unit_means(model, [(x, y, wide)], ["fc1"])


def test_the_unit_tracker_measures_on_the_real_tokens(model, data):
    tracker = UnitTracker(model, {"fc1": [0, 2, 5]}, data, loss_fn=token_loss,
                          quantities=["mrp", "mrs"])
    row = tracker.measure()["layers"]["fc1"]
    ref = brute_force(model, data)
    mrp = MRP(layers=["fc1"]).score(model, data, token_loss)["fc1"]
    assert torch.allclose(torch.tensor(row["mrp"], dtype=torch.float64), mrp[[0, 2, 5]],
                          rtol=1e-12, atol=0)
    assert torch.allclose(torch.tensor(row["mrs"], dtype=torch.float64),
                          ref["fc1"]["mrs"][[0, 2, 5]], rtol=1e-10, atol=1e-13)
