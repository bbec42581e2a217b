"""Attention heads as units: masked equals removed, mean replacement against independent
references, exact MRP against a naive loop, the optimizer carried through removal, reload of
pruned models, clear errors, MACs of attention, every unit scorer on heads (float64)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pruners import count_macs, mask_units, remove_units
from saliency import (
    SCORERS,
    PrunedMultiheadAttention,
    UnsupportedArchitecture,
    describe_attention,
    fit_attention,
    trace,
)

D, T, B = 12, 5, 4


class Attn(nn.Module):
    """Hand-written attention: separate or fused q/k/v, grouped-query, causal, sdpa or by
    hand."""

    def __init__(self, d=D, h=3, kv=None, fused=False, causal=False, sdpa=True):
        super().__init__()
        self.num_heads, self.head_dim = h, d // h
        self.num_kv_heads = kv or h
        kvd = self.num_kv_heads * self.head_dim
        self.fused, self.causal, self.sdpa = fused, causal, sdpa
        if fused:
            self.qkv = nn.Linear(d, d + 2 * kvd)
        else:
            self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, kvd), nn.Linear(d, kvd)
        self.o = nn.Linear(h * self.head_dim, d)

    def forward(self, x):
        b, t, _ = x.shape
        hd = self.head_dim
        if self.fused:
            q, k, v = self.qkv(x).split([self.num_heads * hd, self.num_kv_heads * hd,
                                         self.num_kv_heads * hd], dim=-1)
        else:
            q, k, v = self.q(x), self.k(x), self.v(x)
        q = q.view(b, t, self.num_heads, hd).transpose(1, 2)
        k = k.view(b, t, self.num_kv_heads, hd).transpose(1, 2)
        v = v.view(b, t, self.num_kv_heads, hd).transpose(1, 2)
        if self.num_kv_heads != self.num_heads:
            r = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
        if self.sdpa:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            a = q @ k.transpose(-2, -1) / math.sqrt(hd)
            if self.causal:
                a = a.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
            y = a.softmax(-1) @ v
        return self.o(y.transpose(1, 2).reshape(b, t, self.num_heads * hd))


class Block(nn.Module):
    """Pre-norm block: attention and a GELU FFN on a residual stream, a linear head."""

    def __init__(self, ff=16, **kw):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = Attn(**kw)
        self.fc1, self.fc2 = nn.Linear(D, ff), nn.Linear(ff, D)
        self.head = nn.Linear(D, 5)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(x)


class MHANet(nn.Module):
    """nn.MultiheadAttention on batch-first inputs (transposed when not batch_first)."""

    def __init__(self, batch_first=True, kdim=None, need_weights=False, causal=False):
        super().__init__()
        self.batch_first, self.need_weights, self.causal = batch_first, need_weights, causal
        self.mha = nn.MultiheadAttention(D, 3, batch_first=batch_first, kdim=kdim, vdim=kdim)
        self.kproj = nn.Sequential(nn.Linear(D, kdim), nn.LayerNorm(kdim)) if kdim else None
        self.head = nn.Linear(D, 5)

    def forward(self, x):
        if not self.batch_first:
            x = x.transpose(0, 1)
        kv = self.kproj(x) if self.kproj is not None else x
        mask = torch.ones(T, T, dtype=torch.bool).triu(1) if self.causal else None
        y = self.mha(x, kv, kv, need_weights=self.need_weights, attn_mask=mask)[0]
        if not self.batch_first:
            y = y.transpose(0, 1)
        return self.head(y)


class Decoder(nn.Module):
    """nn.TransformerDecoderLayer with a causal mask over a memory from a Linear."""

    def __init__(self, norm_first=False):
        super().__init__()
        self.mem = nn.Linear(D, D)
        self.layer = nn.TransformerDecoderLayer(D, 3, 16, dropout=0.0, batch_first=True,
                                                norm_first=norm_first)
        self.head = nn.Linear(D, 5)

    def forward(self, x):
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)
        return self.head(self.layer(x, self.mem(x), tgt_mask=mask, tgt_is_causal=True))


def encoder(norm_first):
    return nn.Sequential(nn.TransformerEncoderLayer(D, 3, 16, dropout=0.0, batch_first=True,
                                                    norm_first=norm_first), nn.Linear(D, 5))


CASES = {
    "encoder-post": (lambda: encoder(False), "0.self_attn", [1]),
    "encoder-pre": (lambda: encoder(True), "0.self_attn", [0, 2]),
    "decoder-self": (lambda: Decoder(), "layer.self_attn", [2]),
    "decoder-cross": (lambda: Decoder(True), "layer.multihead_attn", [0]),
    "mha-batch-first": (lambda: MHANet(True, need_weights=True), "mha", [1]),
    "mha-seq-first": (lambda: MHANet(False), "mha", [0, 2]),
    "mha-kdim": (lambda: MHANet(True, kdim=6), "mha", [2]),
    "mha-causal": (lambda: MHANet(True, causal=True), "mha", [0]),
    "separate": (lambda: Block(), "attn", [1]),
    "fused": (lambda: Block(fused=True), "attn", [0, 2]),
    "gqa-groups": (lambda: Block(h=4, kv=2), "attn", [2, 3]),
    "gqa-even": (lambda: Block(h=4, kv=2), "attn", [1, 3]),
    "causal-by-hand": (lambda: Block(causal=True, sdpa=False), "attn", [1]),
    "causal-sdpa": (lambda: Block(h=4, causal=True), "attn", [0, 3]),
}


pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def batch(seed=1, n=B):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, T, D, generator=g), torch.randint(0, 5, (n, T), generator=g)


def token_loss(out, y, reduction="mean"):
    return F.cross_entropy(out.transpose(1, 2), y, reduction=reduction)


def out(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("replacement", [None, "mean"])
def test_masked_equals_removed(case, replacement):
    build, name, heads = CASES[case]
    model = build()
    x, y = batch()
    data = [(x, y)]
    removed, masked = copy.deepcopy(model), copy.deepcopy(model)
    rep = remove_units(removed, {name: heads}, replacement=replacement, data=data)
    mask_units(masked, {name: heads}, replacement=replacement, data=data)
    assert rep.removed == {name: len(heads)}
    a, b = out(removed, x), out(masked, x)
    assert float((a - b).abs().max()) <= 1e-10
    assert float((a - out(model, x)).abs().max()) > 1e-6  # the heads mattered
    left = removed.get_submodule(name).num_heads
    assert left == rep.remaining[name] == {
        "gqa-groups": 2, "gqa-even": 2}.get(case, model.get_submodule(name).num_heads - len(heads))
    x2, _ = batch(7)  # and on other inputs
    assert float((out(removed, x2) - out(masked, x2)).abs().max()) <= 1e-10


def test_removed_mha_is_the_pruned_module_and_a_gqa_group_takes_its_kv_head():
    model = MHANet()
    remove_units(model, {"mha": [1]}, example_input=batch()[0])
    assert isinstance(model.mha, PrunedMultiheadAttention)
    assert model.mha.in_proj_weight.shape == (24, D) and model.mha.out_proj.weight.shape == (D, 8)
    block = Block(h=4, kv=2)
    remove_units(block, {"attn": [0, 1]}, example_input=batch()[0])
    assert (block.attn.num_heads, block.attn.num_kv_heads) == (2, 1)
    assert block.attn.k.weight.shape == (3, D) and block.attn.q.weight.shape == (6, D)


def hooked_reference(model, name, heads, data, x):
    """The output projection's input with the heads' slices at their means (a forward
    pre-hook on the output projection, independent of the toolkit)."""
    attn = model.get_submodule(name)
    hd = attn.head_dim
    sums = []

    def record(m, args):
        sums.append(args[0].reshape(-1, args[0].shape[-1]))

    h = attn.o.register_forward_pre_hook(record)
    with torch.no_grad():
        for xb, _ in data:
            model.eval()(xb)
    h.remove()
    mean = torch.cat(sums).mean(0)

    def hold(m, args):
        c = args[0].clone()
        for j in heads:
            c[..., j * hd:(j + 1) * hd] = mean[j * hd:(j + 1) * hd]
        return (c,)

    h = attn.o.register_forward_pre_hook(hold)
    try:
        return out(model, x)
    finally:
        h.remove()


@pytest.mark.parametrize("case", ["separate", "fused", "gqa-groups", "gqa-even",
                                  "causal-by-hand"])
def test_mean_replacement_equals_a_hooked_reference(case):
    build, name, heads = CASES[case]
    model = build()
    data = [batch(1), batch(2)]
    x = batch(3)[0]
    expect = hooked_reference(model, name, heads, data, x)
    remove_units(model, {name: heads}, replacement="mean", data=data)
    assert float((out(model, x) - expect).abs().max()) <= 1e-9


def mha_by_hand(m, x, hold=None):
    """nn.MultiheadAttention (batch first, self-attention, no mask) computed by hand, the
    heads' outputs ``(B, T, E)`` optionally replaced: ``hold = (heads, means)``."""
    e, h = m.embed_dim, m.num_heads
    d = e // h
    q, k, v = F.linear(x, m.in_proj_weight, m.in_proj_bias).split(e, dim=-1)
    q, k, v = (t.reshape(B, T, h, d).transpose(1, 2) for t in (q, k, v))
    ctx = ((q @ k.transpose(-2, -1) / math.sqrt(d)).softmax(-1) @ v).transpose(1, 2)
    ctx = ctx.reshape(B, T, e)
    if hold is not None:
        ctx = ctx.clone()
        for j in hold[0]:
            ctx[..., j * d:(j + 1) * d] = hold[1][j * d:(j + 1) * d]
    return ctx, F.linear(ctx, m.out_proj.weight, m.out_proj.bias)


def test_mha_mean_replacement_equals_its_functional_definition():
    model = MHANet()
    data = [batch(1), batch(2)]
    x = batch(3)[0]
    with torch.no_grad():
        _, y0 = mha_by_hand(model.mha, x)
        ref, _ = F.multi_head_attention_forward(
            x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1), D, 3,
            model.mha.in_proj_weight, model.mha.in_proj_bias, None, None, False, 0.0,
            model.mha.out_proj.weight, model.mha.out_proj.bias, training=False,
            need_weights=False)
        assert float((ref.transpose(0, 1) - y0).abs().max()) <= 1e-12  # the hand computation
        mean = torch.cat([mha_by_hand(model.mha, xb)[0].reshape(-1, D) for xb, _ in data]).mean(0)
        expect = model.head(mha_by_hand(model.mha, x, ([0, 2], mean))[1])
    remove_units(model, {"mha": [0, 2]}, replacement="mean", data=data)
    assert float((out(model, x) - expect).abs().max()) <= 1e-9


@pytest.mark.parametrize("case", ["separate", "mha-batch-first", "encoder-pre"])
def test_a_constant_head_is_removed_exactly(case):
    build, name, _ = CASES[case]
    model = build()
    attn = model.get_submodule(name)
    hd = attn.head_dim
    with torch.no_grad():
        if isinstance(attn, nn.MultiheadAttention):
            rows = slice(2 * D + hd, 2 * D + 2 * hd)  # value rows of head 1
            attn.in_proj_weight[rows] = 0
            attn.in_proj_bias[rows] = torch.linspace(-1, 1, hd)
        else:
            attn.v.weight[hd:2 * hd] = 0
            attn.v.bias[hd:2 * hd] = torch.linspace(-1, 1, hd)
    x = batch(3)[0]
    before = out(model, x)
    remove_units(model, {name: [1]}, replacement="mean", data=[batch(1)])
    assert float((out(model, x) - before).abs().max()) <= 1e-10


@pytest.mark.parametrize("case", ["gqa-even", "mha-seq-first", "encoder-post"])
def test_exact_mrp_on_heads_equals_a_naive_removal_loop(case):
    build, name, _ = CASES[case]
    model = build()
    data = [batch(1), batch(2)]
    scores = SCORERS["mrp"](layers=[name]).score(model, data, token_loss)[name]
    naive = []
    h = model.get_submodule(name).num_heads
    g = getattr(model.get_submodule(name), "num_kv_heads", h)
    for j in range(h):
        if g != h:  # a single query head of a group is not a consistent removal on its own:
            continue  # checked against the hook reference below instead
        twin = copy.deepcopy(model)
        remove_units(twin, {name: [j]}, replacement="mean", data=data)
        naive.append(sum(float((token_loss(out(twin, xb), yb, "none").mean(1)
                                - token_loss(out(model, xb), yb, "none").mean(1)).abs().sum())
                         for xb, yb in data))
    if g != h:  # grouped-query: hold each head at its mean by a hook
        for j in range(h):
            total = 0.0
            for xb, yb in data:
                ref = hooked_reference(model, name, [j], data, xb)
                total += float((token_loss(ref, yb, "none").mean(1)
                                - token_loss(out(model, xb), yb, "none").mean(1)).abs().sum())
            naive.append(total)
    assert torch.allclose(scores, torch.tensor(naive), atol=1e-8, rtol=0)


class TwoBlocks(nn.Module):
    """A block of hand-written attention and an encoder layer of nn.MultiheadAttention."""

    def __init__(self):
        super().__init__()
        self.block = Block(h=4, kv=2)
        self.mha = MHANet()

    def forward(self, x):
        return self.block(x) + self.mha(x)


def test_twenty_adamw_steps_after_removal_equal_a_masked_twin():
    model = TwoBlocks()
    units = {"block.attn": [1, 3], "block.fc1": [0, 5, 9], "mha.mha": [2]}
    data = [batch(1)]
    twins = [model, copy.deepcopy(model)]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in twins]
    for m, o in zip(twins, opts):  # some state before the surgery
        for _ in range(3):
            o.zero_grad()
            token_loss(m.train()(data[0][0]), data[0][1]).backward()
            o.step()
    remove_units(twins[0], units, replacement="mean", data=data, optimizer=opts[0])
    mask_units(twins[1], units, replacement="mean", data=data, optimizer=opts[1])
    x, y = batch(4)
    for _ in range(20):
        for m, o in zip(twins, opts):
            o.zero_grad()
            token_loss(m.train()(x), y).backward()
            o.step()
    diff = float((out(twins[0], x) - out(twins[1], x)).abs().max())
    assert diff <= 1e-6
    assert float((out(twins[0], x) - out(model, batch(5)[0])).abs().max()) > 0


@pytest.mark.parametrize("build", [lambda: encoder(True), lambda: Block(h=4, kv=2), Decoder])
def test_pruned_models_save_and_reload_with_weights_only(build):
    model = build()
    names = [n for n in trace(model, batch()[0]).prunable_heads]
    units = {n: [0, 1] if isinstance(model.get_submodule(n), Attn) else [1] for n in names}
    remove_units(model, units, replacement="mean", data=[batch(1)])
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    fresh = build()
    fit_attention(fresh, state)  # head counts (the harness's fit_to_state_dict calls it)
    for key, value in state.items():  # tensor shapes, as fit_to_state_dict resizes them
        mod, _, t = key.rpartition(".")
        m = fresh.get_submodule(mod)
        if t in m._parameters:
            m._parameters[t] = nn.Parameter(torch.empty_like(value))
    fresh.load_state_dict(state)
    x = batch(3)[0]
    assert torch.equal(out(fresh, x), out(model, x))


def test_bad_selections_raise_clear_errors_and_change_nothing():
    model = TwoBlocks()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    token_loss(model(batch()[0]), batch()[1]).backward()
    opt.step()
    state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    cases = [({"block.attn": [4]}, (r"'block.attn': head index 4 is out of range \(it has 4 "
                                     r"heads, indices 0..3\)")),
             ({"mha.mha": [0, 1, 2]}, (r"'mha.mha': removing heads \[0, 1, 2\] of 3 would "
                                      r"leave 0")),
             ({"block.attn": [1]}, (r"grouped-query attention .* leaves \[1, 2\] query "
                                   r"heads per group.* Remove the same number")),
             ({"block.attn": [1, 1]}, "head 1 is given more than once"),
             ({"block.attn": [0.5]}, "not an integer")]
    for units, match in cases:
        with pytest.raises(ValueError, match=match):
            remove_units(model, units, optimizer=opt, replacement="mean", data=[batch()])
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state) and state.keys() == after.keys()
    assert str(opt.state_dict()) == str(opt_state)
    assert isinstance(model.mha.mha, nn.MultiheadAttention) and model.block.attn.num_heads == 4


def test_an_attention_module_of_another_layout_is_refused_until_described():
    class Interleaved(Attn):
        """q, k and v of a head side by side in one fused projection (per-head blocks)."""

        def __init__(self):
            super().__init__(fused=True)

        def forward(self, x):
            b, t, _ = x.shape
            qkv = self.qkv(x).view(b, t, self.num_heads, 3 * self.head_dim)
            q, k, v = qkv.transpose(1, 2).chunk(3, dim=-1)
            y = F.scaled_dot_product_attention(q, k, v)
            return self.o(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))

    net = nn.Sequential(nn.LayerNorm(D), Interleaved(), nn.Linear(D, 5))
    with pytest.raises(ValueError, match=r"attention module '1'.*not laid out as"):
        trace(net, batch()[0])
    graph = trace(net, batch()[0], exclude=["1"])
    assert graph.prunable_heads == []

    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.h = 3
            self.wq, self.wk, self.wv, self.proj = (nn.Linear(D, D) for _ in range(4))

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = (m(x).view(b, t, self.h, -1).transpose(1, 2)
                       for m in (self.wq, self.wk, self.wv))
            y = F.scaled_dot_product_attention(q, k, v)
            return self.proj(y.transpose(1, 2).reshape(b, t, -1))

    net = nn.Sequential(Mine(), nn.Linear(D, 5))
    with pytest.raises(UnsupportedArchitecture, match="reshapes"):  # not recognised
        trace(net, batch()[0])
    describe_attention(Mine, q="wq", k="wk", v="wv", out="proj", num_heads="h")
    graph = trace(net, batch()[0])
    assert graph.prunable_heads == ["0"]
    twin = copy.deepcopy(net)
    remove_units(net, {"0": [1]}, example_input=batch()[0])
    mask_units(twin, {"0": [1]}, example_input=batch()[0])
    x = batch()[0]
    assert float((out(net, x) - out(twin, x)).abs().max()) <= 1e-10 and net[0].h == 2


def test_count_macs_counts_projections_and_both_attention_products():
    x = batch()[0]
    mha = MHANet()
    proj = 4 * T * D * D        # q, k, v and output projections, per sample
    products = 2 * T * T * D    # Q K^T and A V over 3 heads of 4
    assert count_macs(mha, x) == proj + products + T * D * 5
    remove_units(mha, {"mha": [0]}, example_input=x)
    assert count_macs(mha, x) == 4 * T * D * 8 + 2 * T * T * 8 + T * D * 5
    block = Block(h=4, kv=2)
    kv = 2 * 3
    linears = T * (D * D + 2 * D * kv + D * D + D * 16 + 16 * D + D * 5)
    assert count_macs(block, x) == linears + 2 * T * T * D


@pytest.mark.parametrize("name", ["mrs", "taylor", "dormancy", "norm", "random_unit", "mrp",
                                  "group_norm"])
def test_every_unit_scorer_scores_heads(name):
    model = TwoBlocks()
    data = [batch(1)]
    scores = SCORERS[name]().score(model, data, token_loss)
    assert scores["block.attn"].shape == (4,) and scores["mha.mha"].shape == (3,)
    assert scores["block.fc1"].shape == (16,)
    assert torch.isfinite(scores["block.attn"]).all()


def test_head_norm_and_group_norm_are_the_heads_weights():
    block = Block(h=4, kv=2)
    a = block.attn
    x = batch()[0]
    s = SCORERS["norm"](layers=["attn"], example_input=x).score(block)["attn"]
    g = SCORERS["group_norm"](layers=["attn"], example_input=x).score(block)["attn"]
    for j in range(4):
        q, kv = slice(3 * j, 3 * j + 3), slice(3 * (j // 2), 3 * (j // 2) + 3)
        l1 = (a.q.weight[q].abs().sum() + (a.k.weight[kv].abs().sum()
              + a.v.weight[kv].abs().sum()) / 2 + a.o.weight[:, q].abs().sum())
        sq = (a.q.weight[q].pow(2).sum() + a.q.bias[q].pow(2).sum()
              + (a.k.weight[kv].pow(2).sum() + a.k.bias[kv].pow(2).sum()
                 + a.v.weight[kv].pow(2).sum() + a.v.bias[kv].pow(2).sum()) / 2
              + a.o.weight[:, q].pow(2).sum())
        assert abs(float(s[j] - l1.detach())) <= 1e-12
        assert abs(float(g[j] - sq.detach().sqrt())) <= 1e-12


def test_taylor_and_mrs_of_a_head_are_their_formulas():
    model = Block()
    x, y = batch(1)
    data = [(x, y)]
    ctx = {}

    def keep(m, args):
        args[0].retain_grad()
        ctx["c"] = args[0]

    h = model.attn.o.register_forward_pre_hook(keep)
    model.eval()
    token_loss(model(x), y, "none").mean(1).sum().backward()  # a sample: its tokens' mean
    h.remove()
    c, g = ctx["c"].detach().reshape(B, T, 3, 4), ctx["c"].grad.reshape(B, T, 3, 4)
    mu = c.mean((0, 1))
    taylor = ((c * g).sum((1, 3)) / T).mean(0).abs()
    mrs = ((mu[None, None] - c) * g).sum((1, 3)).abs().sum(0)
    model.zero_grad()
    assert torch.allclose(SCORERS["taylor"](layers=["attn"]).score(model, data, token_loss)
                          ["attn"], taylor, atol=1e-12)
    assert torch.allclose(SCORERS["mrs"](layers=["attn"]).score(model, data, token_loss)
                          ["attn"], mrs, atol=1e-12)


class GatedBlock(nn.Module):
    """Attention and a gated FFN (``down(silu(gate(x)) * up(x))``, a group held at the
    product): the unit statistics pass runs the traced graph to read the product."""

    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = Attn(h=4, kv=2)
        self.gate, self.up, self.down = nn.Linear(D, 8), nn.Linear(D, 8), nn.Linear(8, D)
        self.head = nn.Linear(D, 5)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        z = self.ln2(x)
        x = x + self.down(F.silu(self.gate(z)) * self.up(z))
        return self.head(x)


ONE_PASS = {"two-blocks": TwoBlocks, "gated": GatedBlock, "encoder": lambda: encoder(True)}
ONE_PASS_SCORERS = {"mrs": {}, "taylor": {}, "dormancy": {}, "apoz": {"statistic": "apoz"}}


@pytest.mark.parametrize("scorer", list(ONE_PASS_SCORERS))
@pytest.mark.parametrize("case", list(ONE_PASS))
def test_heads_and_units_in_one_pass_equal_their_separate_passes(case, scorer):
    model = ONE_PASS[case]()
    data = [batch(1), batch(2)]
    s = SCORERS["dormancy" if scorer == "apoz" else scorer](**ONE_PASS_SCORERS[scorer])
    together = s.score(model, data, token_loss)
    graph, layers = s.graph(model, data)
    heads = graph.prunable_heads
    assert heads and layers
    model.eval()
    separate = {**s._score(model, data, token_loss),
                **s._head_scores(model, graph, heads, data, token_loss)}
    assert set(together) == set(separate) == set(layers) | set(heads)
    for k, v in separate.items():
        assert together[k].dtype == v.dtype == torch.float64
        assert (together[k] - v).abs().max() <= 1e-12, k


@pytest.mark.parametrize("case", list(ONE_PASS))
def test_mrs_of_heads_and_units_is_one_forward_and_one_backward_per_batch(case, monkeypatch):
    model = ONE_PASS[case]()
    data = [batch(1), batch(2), batch(3)]
    s = SCORERS["mrs"]()
    s.graph(model, data)  # tracing runs the model once; count the scoring alone
    calls = {m: 0 for m in model.modules()}
    handles = [m.register_forward_pre_hook(lambda m, a: calls.__setitem__(m, calls[m] + 1))
               for m in model.modules()]
    backward = {"n": 0}
    grad, tensor_backward = torch.autograd.grad, torch.Tensor.backward

    def counted_grad(*args, **kwargs):
        backward["n"] += 1
        return grad(*args, **kwargs)

    def counted_backward(*args, **kwargs):
        backward["n"] += 1
        return tensor_backward(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted_grad)
    monkeypatch.setattr(torch.Tensor, "backward", counted_backward)
    try:
        scores = s.score(model, data, token_loss)
    finally:
        for hd in handles:
            hd.remove()
    graph = s.graph(model, data)[0]
    assert set(graph.prunable_heads) <= set(scores) and set(graph.prunable) <= set(scores)
    # every module (the model's own forward too, unless the traced graph runs its modules)
    # runs once per batch, and there is one backward pass per batch
    ran = {n: calls[m] for n, m in model.named_modules() if calls[m]}
    assert set(ran.values()) == {len(data)}, ran
    assert all(n in ran for n, m in model.named_modules()
               if n and not any(True for _ in m.children()))
    assert backward["n"] == len(data)


# --------------------------------------------------------------------------- a timm-style ViT


class TimmAttention(nn.Module):
    """The timm layout: one fused qkv projection reshaped to (3, B, H, T, head_dim)."""

    def __init__(self, d=D, h=3):
        super().__init__()
        self.num_heads, self.head_dim = h, d // h
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        b, t, _ = x.shape
        qkv = self.qkv(x).reshape(b, t, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(b, t, self.num_heads * self.head_dim))


class ClassTokenViT(nn.Module):
    """Patches, a class token concatenated along the tokens, a learned position embedding
    added, a pre-norm block, the class token's logits."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Linear(7, D)
        self.cls = nn.Parameter(torch.randn(1, 1, D))
        self.pos = nn.Parameter(torch.randn(1, T + 1, D))
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.attn = TimmAttention()
        self.fc1, self.fc2 = nn.Linear(D, 16), nn.Linear(16, D)
        self.head = nn.Linear(D, 5)

    def forward(self, x):
        x = self.patch(x)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        x = x + self.attn(self.ln1(x))
        x = x + self.fc2(F.gelu(self.fc1(self.ln2(x))))
        return self.head(x[:, 0])


def vit_batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, 7, generator=g), torch.randint(0, 5, (B,), generator=g)


def test_a_class_token_and_position_embedding_leave_heads_and_neurons_prunable():
    model = ClassTokenViT().eval()
    x = vit_batch(1)[0]
    graph = trace(model, x)
    assert graph.prunable == ["fc1"] and graph.prunable_heads == ["attn"]
    assert not graph.groups["patch"].prunable
    assert "LayerNorm mixes them" in graph.groups["patch"].reason
    data = [vit_batch(2), vit_batch(3)]
    expect = hooked_reference_timm(model, data, x, heads=[1], neurons=[0, 9])
    remove_units(model, {"attn": [1], "fc1": [0, 9]}, replacement="mean", data=data)
    assert (model.attn.num_heads, model.attn.qkv.out_features, model.fc1.out_features) == \
        (2, 3 * 8, 14)
    assert float((out(model, x) - expect).abs().max()) <= 1e-9


def hooked_reference_timm(model, data, x, heads, neurons):
    """The output with the heads' slices of the projection's input and fc1's neurons held at
    their means over the data (forward hooks)."""
    ins, outs = [], []
    hs = [model.attn.proj.register_forward_pre_hook(
              lambda m, a: ins.append(a[0].reshape(-1, D))),
          model.fc1.register_forward_hook(lambda m, a, o: outs.append(o.reshape(-1, 16)))]
    with torch.no_grad():
        for xb, _ in data:
            model(xb)
    for h in hs:
        h.remove()
    mu_c, mu_h = torch.cat(ins).mean(0), torch.cat(outs).mean(0)
    cols = [j * 4 + d for j in heads for d in range(4)]

    def hold_c(m, a):
        c = a[0].clone()
        c[..., cols] = mu_c[cols]
        return (c,)

    def hold_h(m, a, o):
        o = o.clone()
        o[..., neurons] = mu_h[neurons]
        return o

    hs = [model.attn.proj.register_forward_pre_hook(hold_c),
          model.fc1.register_forward_hook(hold_h)]
    try:
        return out(model, x)
    finally:
        for h in hs:
            h.remove()


class ClassTokenMLP(nn.Module):
    """Patches, a class token concatenated along the tokens, then a token-wise MLP: the
    patches' channels reach a Linear through the concatenation, no normalization between."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Linear(7, D)
        self.cls = nn.Parameter(torch.randn(1, 1, D))
        self.fc = nn.Linear(D, 5)

    def forward(self, x):
        x = self.patch(x)
        return self.fc(torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1)).mean(1)


def test_a_class_token_reaching_a_layer_without_normalization_is_still_refused():
    model = ClassTokenMLP().eval()
    with pytest.raises(UnsupportedArchitecture, match=r"node 'cat' .*concatenates along "
                                                      r"dimension 1.*\[reached from producer "
                                                      r"'patch'"):
        trace(model, vit_batch(1)[0])
