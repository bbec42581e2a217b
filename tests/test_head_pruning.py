"""Pruning methods on attention heads: scheduled unit pruning of heads (per layer and global,
grouped-query attention kept consistent, costs of a head), ShrinkNets switches per head, and the
FFN neurons of nn.TransformerEncoderLayer / nn.TransformerDecoderLayer.

Every check is against an independent reference in float64: selections of the lowest scores
written out here, the drop of ``count_params``/``count_macs`` when one head alone is removed,
the masked twin trained step for step, forward hooks, and brute-force statistics.
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction

import pytest
import torch
import torch.nn.functional as F
from test_heads import B, D, T, Attn, Block, MHANet, TwoBlocks, batch, encoder, out, token_loss
from torch import nn

from pruners import (
    UnitPruner,
    count_macs,
    count_params,
    mask_units,
    remove_units,
    trace,
)
from pruners.pruning import unit_costs
from saliency.base import UnitScorer
from saliency.layers import effective_tensor



pytestmark = pytest.mark.usefixtures("float64")  # tests/conftest.py


def frac_floor(f, n: int) -> int:
    return math.floor(Fraction(repr(f)) * n)


# --------------------------------------------------------------------------- a scorer


def q_out_l1(model, heads) -> torch.Tensor:
    """Reference score of each head: the L1 norm of its query rows and output columns
    (effective weights: a masked head scores 0, a live one as in its shrunk twin)."""
    d, h = heads.head_dim, heads.num_heads
    mod, tensors, start, _ = next(r for r in heads.rows if r[3] == "q")
    w = effective_tensor(model.get_submodule(mod), tensors[0]).detach()
    s = w[start:start + h * d].abs().reshape(h, -1).sum(1)
    o = effective_tensor(model.get_submodule(heads.out), "weight").detach()
    return s + o[:, :h * d].abs().reshape(o.shape[0], h, d).sum((0, 2))


def row_l1(model, name) -> torch.Tensor:
    return effective_tensor(model.get_submodule(name), "weight").detach().abs().sum(1)


class QOutL1(UnitScorer):
    """A data-free scorer: :func:`row_l1` of chain layers, :func:`q_out_l1` of heads."""

    needs_data = False

    def _score(self, model, data, loss_fn):
        _, layers = self.graph(model, data)
        return {n: row_l1(model, n) for n in layers}

    def _head_scores(self, model, graph, names, data, loss_fn):
        return {n: q_out_l1(model, graph.heads[n]) for n in names}


def expected_heads(scores, live, num_kv, k) -> set[int]:
    """Reference per-layer selection of ``k`` heads among the ``live`` query heads (a list
    of lists: the live heads of each key/value group): the ``k`` lowest when no group has
    two live heads or there is one group; else ``k // groups`` lowest of each group (each
    keeping one)."""
    groups = [g for g in live if g]
    flat = sorted((h for g in groups for h in g), key=lambda h: float(scores[h]))
    if len(groups) == 1 or max(len(g) for g in groups) == 1:
        return set(flat[:min(k, len(flat) - 1)])
    per = min(k // len(groups), min(len(g) for g in groups) - 1)
    return {h for g in groups for h in sorted(g, key=lambda h: float(scores[h]))[:per]}


MODELS = {
    "mha": (lambda: MHANet(), "mha"),
    "separate": (lambda: Block(h=6), "attn"),
    "fused": (lambda: Block(h=4, fused=True), "attn"),
    "gqa": (lambda: Block(h=6, kv=2), "attn"),
    "mqa": (lambda: Block(h=4, kv=1), "attn"),
    "encoder": (lambda: encoder(True), "0.self_attn"),
}


@pytest.mark.parametrize("remove", [True, False])
@pytest.mark.parametrize("case", list(MODELS))
def test_layer_scope_prunes_each_attention_module_by_its_fraction(case, remove):
    build, name = MODELS[case]
    model = build()
    x, y = batch()
    schedule = {1: 0.34, 2: 0.5, 3: 0.67, 4: 1.0}
    pruner = UnitPruner(QOutL1(layers=[name]), schedule, layers=[name], remove=remove,
                        replacement="mean", loss_fn=token_loss)
    h0 = model.get_submodule(name).num_heads
    kv0 = getattr(model.get_submodule(name), "num_kv_heads", h0)
    g0 = h0 // kv0
    live = [list(range(j * g0, (j + 1) * g0)) for j in range(kv0)]  # original indices
    for t, f in schedule.items():
        graph = trace(model, x[:1])
        heads = graph.heads[name]
        # live heads in the module's current indices
        if remove:
            order = sorted(h for g in live for h in g)
            cur = [[order.index(h) for h in g] for g in live]
        else:
            cur = live
        scores = q_out_l1(model, heads)
        k = frac_floor(f, h0) - (h0 - sum(len(g) for g in live))
        want = expected_heads(scores, cur, kv0, k)
        report = pruner.step(t, model, data=[(x, y)])
        got = set(report.removal.indices[name].tolist()) if report is not None and \
            name in report.removal.indices else set()
        if not remove:  # masked heads are masked again with the new ones
            got -= set(range(h0)) - {h for g in live for h in g}
        assert got == want, (t, got, want)
        back = {c: o for gc, go in zip(cur, live) for c, o in zip(gc, go)}
        live = [[h for h in g if not any(back.get(c) == h for c in want)] for g in live]
        left = sum(len(g) for g in live)
        assert left >= 1 and (report is None or report.remaining[name] == left)
        counts = {len(g) for g in live if g}
        assert len(counts) == 1  # every key/value group keeps the same number
        if remove:
            assert model.get_submodule(name).num_heads == left
    assert sum(len(g) for g in live) >= 1  # a fraction of 1 never empties the module


def test_never_every_head_and_min_units():
    model = Block(h=4)
    pruner = UnitPruner(QOutL1(), 1.0, layers=["attn"], replacement=None, min_units=2,
                        example_input=batch()[0])
    report = pruner.step(0, model)
    assert report.remaining == {"attn": 2} and model.attn.num_heads == 2
    model = TwoBlocks()
    UnitPruner(QOutL1(), 1.0, scope="global", replacement=None,
               example_input=batch()[0]).step(0, model)
    assert model.block.attn.num_heads == 2  # two groups of one: they stay consistent
    assert model.mha.mha.num_heads == 1


def expected_global(items_by_layer, k):
    """Reference global selection: every removal set of every layer, by key, while it fits."""
    flat = sorted(((key, n, tuple(chans)) for n, items in items_by_layer.items()
                   for chans, key in items), key=lambda t: t[0])
    chosen, left = {}, k
    for _, n, chans in flat:
        if len(chans) <= left:
            chosen.setdefault(n, set()).update(chans)
            left -= len(chans)
    return chosen


def reference_items(scores, cost, live_groups, cap, steps):
    """Removal sets of one layer with their keys (score over cost): single units, or for a
    grouped-query module one head of every group per step (keys non-decreasing)."""
    key = scores / cost
    if not steps:
        flat = sorted((h for g in live_groups for h in g), key=lambda h: float(key[h]))
        return [([h], float(key[h])) for h in flat][:cap]
    pools = [sorted(g, key=lambda h: float(key[h])) for g in live_groups]
    out, prev = [], -math.inf
    for j in range(min(len(p) for p in pools) - 1):
        chans = [p[j] for p in pools]
        prev = max(prev, float(sum(scores[c] for c in chans) / sum(cost[c] for c in chans)))
        out.append((sorted(chans), prev))
    return out


@pytest.mark.parametrize("cost", [None, "macs", "params"])
def test_global_scope_ranks_heads_with_the_other_units(cost):
    model = TwoBlocks()  # block.attn: 4 heads in 2 key/value groups; mha.mha: 3 heads
    with torch.no_grad():  # weak heads: 1 and 2 of block.attn (one per group), 0 of mha.mha
        for j in (1, 2):
            model.block.attn.q.weight[3 * j:3 * j + 3] *= 0.01
            model.block.attn.o.weight[:, 3 * j:3 * j + 3] *= 0.01
        model.mha.mha.in_proj_weight[0:4] *= 0.01
        model.mha.mha.out_proj.weight[:, 0:4] *= 0.01
    x, y = batch()
    pruner = UnitPruner(QOutL1(), {1: 0.3}, scope="global", cost=cost, replacement="mean",
                        loss_fn=token_loss)
    graph = trace(model, x[:1])
    costs = unit_costs(model, x[:1], cost=cost) if cost else {}
    items, total = {}, 0
    for n in graph.prunable + graph.prunable_heads:
        is_head = n in graph.heads
        s = q_out_l1(model, graph.heads[n]) if is_head else row_l1(model, n)
        s = s / s.norm()
        size = s.numel()
        total += size
        c = costs.get(n, torch.ones(size))
        if is_head and n == "block.attn":
            items[n] = reference_items(s, c, [[0, 1], [2, 3]], size - 1, steps=True)
        else:
            items[n] = reference_items(s, c, [list(range(size))], size - 1, steps=False)
    want = expected_global(items, frac_floor(0.3, total))
    report = pruner.step(1, model, data=[(x, y)])
    got = {n: set(i.tolist()) for n, i in report.removal.indices.items()}
    assert got == want
    assert {1, 2} <= got["block.attn"] and 0 in got["mha.mha"]  # ranked with the neurons
    assert got["block.fc1"]


@pytest.mark.parametrize("case", ["mha", "mha-seq-first", "mha-kdim", "separate", "fused",
                                  "gqa-step", "mqa", "encoder", "decoder"])
@pytest.mark.parametrize("kind", ["params", "macs"])
def test_the_cost_of_a_head_is_the_drop_when_it_alone_is_removed(case, kind):
    from test_heads import Decoder
    builds = {"mha": (MHANet, "mha"), "mha-seq-first": (lambda: MHANet(False), "mha"),
              "mha-kdim": (lambda: MHANet(kdim=6), "mha"),
              "separate": (lambda: Block(h=3), "attn"),
              "fused": (lambda: Block(h=4, fused=True), "attn"),
              "gqa-step": (lambda: Block(h=6, kv=2), "attn"),
              "mqa": (lambda: Block(h=4, kv=1), "attn"),
              "encoder": (lambda: encoder(False), "0.self_attn"),
              "decoder": (Decoder, "layer.multihead_attn")}
    build, name = builds[case]
    model = build()
    x = batch()[0]
    costs = unit_costs(model, x, cost=kind, layers=[name])[name]
    measure = count_params if kind == "params" else (lambda m: count_macs(m, x))
    before = measure(model)
    h = model.get_submodule(name).num_heads
    sets = [[j, j + 3] for j in range(3)] if case == "gqa-step" else [[j] for j in range(h)]
    for heads in sets:
        twin = copy.deepcopy(model)
        remove_units(twin, {name: heads}, example_input=x)
        assert before - measure(twin) == pytest.approx(float(costs[heads].sum()), abs=1e-9)


def test_removal_equals_the_masked_twin_step_for_step_while_training():
    model = TwoBlocks()
    with torch.no_grad():  # six heads in two key/value groups: several rounds of steps
        model.block.attn = Attn(h=6, kv=2)
    data = [batch(1, 8)]
    twins = [model, copy.deepcopy(model)]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in twins]
    schedule = {3: 0.34, 8: 0.5, 13: 0.67}
    pruners = [UnitPruner("mrs", schedule, remove=r, replacement="mean", loss_fn=token_loss)
               for r in (True, False)]
    x, y = batch(4)
    chosen = []
    for step in range(20):
        reports = [p.step(step, m, o, data=data) for p, m, o in zip(pruners, twins, opts)]
        if reports[0] is not None:
            assert reports[0].pruned == reports[1].pruned
            assert reports[0].remaining == reports[1].remaining
            chosen.append(reports[0].pruned)
        for m, o in zip(twins, opts):
            o.zero_grad()
            token_loss(m.train()(x), y).backward()
            o.step()
    assert len(chosen) == 3
    assert twins[0].block.attn.num_heads < 6 and twins[0].mha.mha.num_heads < 3
    diff = float((out(twins[0], x) - out(twins[1], x)).abs().max())
    assert diff <= 1e-6


def test_the_cost_of_an_ffn_neuron_counts_its_tokens():
    model = Block()
    x = batch()[0]
    costs = unit_costs(model, x, cost="macs", layers=["fc1"])["fc1"]
    twin = copy.deepcopy(model)
    remove_units(twin, {"fc1": [3]}, example_input=x)
    assert count_macs(model, x) - count_macs(twin, x) == float(costs[3]) == T * 2 * D


# --------------------------------------------------------------------------- switches per head


SWITCHED = {
    "two-blocks": (TwoBlocks, ["block.attn", "mha.mha"]),
    "encoder-post": (lambda: encoder(False), ["0.self_attn"]),
    "encoder-pre": (lambda: encoder(True), ["0.self_attn"]),
    "fused": (lambda: Block(h=4, fused=True), ["attn"]),
}


def switched(case, parametrization="signed", init="normal", heads_only=False):
    """The model, a copy with switches (every group and head, or the heads only), the
    attention modules."""
    from pruners.shrinknets import insert_switches
    build, names = SWITCHED[case]
    model = build()
    x = batch()[0]
    gm = insert_switches(model, x, parametrization=parametrization, init=init,
                         layers=names if heads_only else None)
    return model, gm, names


def a_step(model, name):
    """Head 1 of every key/value group (a consistent removal)."""
    m = model.get_submodule(name)
    g = m.num_heads // getattr(m, "num_kv_heads", m.num_heads)
    return [1] if g == 1 else [j * g + 1 for j in range(m.num_heads // g)]


@pytest.mark.parametrize("case", list(SWITCHED))
def test_a_switch_per_head_gates_each_heads_output(case):
    from pruners.shrinknets import switches
    from saliency import SCORERS
    from saliency.switch import HeadSwitch
    model, gm, names = switched(case, heads_only=True)
    x = batch()[0]
    sw = switches(gm)
    assert len(sw) == len(names)
    for n in names:
        s = sw[f"switches.{n.replace('.', '_')}_heads"]
        heads = trace(model, x).heads[n]
        assert isinstance(s, HeadSwitch) and s.num_channels == heads.num_heads
        # reference: the original model with the output projection's input gated by a hook
        gate = s.weight.detach().repeat_interleave(heads.head_dim)
        attn = model.get_submodule(n)
        if isinstance(attn, nn.MultiheadAttention):
            from saliency.attention import PrunedMultiheadAttention
            PrunedMultiheadAttention.convert(attn)  # calls out_proj (same function)
        hook = model.get_submodule(heads.out).register_forward_pre_hook(
            lambda m, a, gate=gate: (a[0] * gate,))
    assert float((out(gm, x) - out(model, x)).abs().max()) <= 1e-12
    scores = SCORERS["switch"](layers=names).score(gm, [batch()])
    assert sorted(scores) == sorted(names)
    for n in names:
        s = sw[f"switches.{n.replace('.', '_')}_heads"]
        assert torch.equal(scores[n], s.weight.detach().abs())
    hook.remove()


@pytest.mark.parametrize("parametrization,init", [("signed", "normal"), ("relu", "uniform")])
@pytest.mark.parametrize("case", list(SWITCHED))
def test_fold_switches_is_exact_on_heads(case, parametrization, init):
    from pruners.shrinknets import fold_switches, switches
    _, gm, names = switched(case, parametrization, init)
    x = batch(3)[0]
    with torch.no_grad():
        for s in switches(gm).values():
            s.weight.copy_(torch.randn(s.weight.shape))  # signs of both kinds
    folded = fold_switches(gm, x)
    assert not switches(folded)
    assert float((out(folded, x) - out(gm, x)).abs().max()) <= 1e-10
    # and after heads are masked (the switch's gates masked with them)
    masked = copy.deepcopy(gm)
    mask_units(masked, {n: a_step(gm, n) for n in names}, replacement="mean", data=[batch()])
    assert float((out(fold_switches(masked, x), x) - out(masked, x)).abs().max()) <= 1e-10


@pytest.mark.parametrize("case", list(SWITCHED))
def test_removing_switched_heads_slices_the_switch_and_equals_the_masked_twin(case):
    from pruners.shrinknets import switches
    _, gm, names = switched(case)
    x, y = batch()
    units = {n: a_step(gm, n) for n in names}
    twin = copy.deepcopy(gm)
    opt = torch.optim.AdamW(gm.parameters(), lr=1e-2)
    token_loss(gm(x), y).backward()
    opt.step()
    twin.load_state_dict(gm.state_dict())
    remove_units(gm, units, replacement="mean", data=[(x, y)], optimizer=opt)
    mask_units(twin, units, replacement="mean", data=[(x, y)])
    assert float((out(gm, x) - out(twin, x)).abs().max()) <= 1e-10
    for n in names:
        s = switches(gm)[f"switches.{n.replace('.', '_')}_heads"]
        assert s.num_channels == s.weight.numel() == gm.get_submodule(n).num_heads
        assert opt.state[s.weight]["exp_avg"].shape == s.weight.shape


def test_garbage_collection_removes_heads_whose_switch_died():
    from pruners.shrinknets import GarbageCollector, Threshold, switches
    model = TwoBlocks()
    with torch.no_grad():
        model.block.attn = Attn(h=6, kv=2)
    from pruners.shrinknets import insert_switches
    x = batch()[0]
    gm = insert_switches(model, x, init="constant")
    with torch.no_grad():  # heads 0 and 4 dead (one per key/value group), 1 too; mha head 2
        switches(gm)["switches.block_attn_heads"].weight[[0, 1, 4]] = 0.0
        switches(gm)["switches.mha_mha_heads"].weight[2] = 0.0
    twin = copy.deepcopy(gm)
    collectors = [GarbageCollector(Threshold(0.0), remove=r, example_input=x)
                  for r in (True, False)]
    r0 = collectors[0].step(0, gm)
    r1 = collectors[1].step(0, twin)
    # even within the key/value groups: one step (the weakest dead head of each group)
    assert r0.pruned["block.attn"] == r1.pruned["block.attn"] == 2
    assert r0.pruned["mha.mha"] == 1 and gm.block.attn.num_heads == 4
    assert set(r0.removal.indices["block.attn"].tolist()) in ({0, 4}, {1, 4})
    assert float((out(gm, x) - out(twin, x)).abs().max()) <= 1e-10


def test_a_module_that_cannot_host_a_switch_per_head_is_refused_by_name():
    from pruners.shrinknets import insert_switches

    class Twice(Attn):
        """Calls its output projection twice (a head switch would gate both)."""

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = (m(x).view(b, t, self.num_heads, -1).transpose(1, 2)
                       for m in (self.q, self.k, self.v))
            y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)
            return (self.o(y) + self.o(y)) / 2

    x = batch()[0]
    net = nn.Sequential(nn.LayerNorm(D), Twice(), nn.Linear(D, 5))
    assert trace(net, x).prunable_heads == ["1"]
    with pytest.raises(ValueError, match=r"attention '1' cannot host a switch per head: its "
                       r"output projection '1.o' is called 2 times in 1 calls"):
        insert_switches(net, x)
    mha = nn.MultiheadAttention(D, 3, batch_first=True, add_bias_kv=True)
    net = MHANet()
    net.mha = mha
    with pytest.raises(ValueError, match=r"attention 'mha' cannot host a switch per head: its "
                       r"heads are not units \(it has bias_k"):
        insert_switches(net, x, layers=["mha"])


# --------------------------------------------------------------------------- FFN neurons of
# nn.TransformerEncoderLayer / nn.TransformerDecoderLayer


class Layers(nn.Module):
    """An embedding, a transformer encoder or decoder layer (padding and causal masks), a
    linear head; the memory of the decoder is a LayerNorm of the input."""

    def __init__(self, kind="encoder", norm_first=False, activation="relu"):
        super().__init__()
        self.kind = kind
        self.embed = nn.Linear(D, D)
        cls = nn.TransformerEncoderLayer if kind == "encoder" else nn.TransformerDecoderLayer
        self.layer = cls(D, 3, 16, dropout=0.1, activation=activation, batch_first=True,
                         norm_first=norm_first)
        self.norm = nn.LayerNorm(D)
        self.head = nn.Linear(D, 5)
        self.register_buffer("causal", torch.ones(T, T, dtype=torch.bool).triu(1))
        self.register_buffer("padding", torch.zeros(B, T, dtype=torch.bool))
        self.padding[0, -2:] = True

    def forward(self, x):
        h = self.embed(x)
        pad = self.padding
        if self.kind == "encoder":
            h = self.layer(h, src_mask=self.causal, src_key_padding_mask=pad)
        else:
            h = self.layer(h, self.norm(x), tgt_mask=self.causal, tgt_is_causal=True,
                           memory_key_padding_mask=pad)
        return self.head(h)


def seq_loss(out, y, reduction="mean"):
    """Per-sample losses (the mean of each sample's token losses), whatever the toolkit's
    convention for per-token losses."""
    loss = F.cross_entropy(out.transpose(1, 2), y, reduction="none").mean(1)
    return {"none": loss, "sum": loss.sum(), "mean": loss.mean()}[reduction]


LAYERS = [(k, nf, act) for k in ("encoder", "decoder") for nf in (False, True)
          for act in ("relu", "gelu")] + [("encoder", True, F.silu), ("decoder", False, nn.GELU())]
LAYER_IDS = [f"{k}-{'pre' if nf else 'post'}-"
             f"{a if isinstance(a, str) else getattr(a, '__name__', type(a).__name__)}"
             for k, nf, a in LAYERS]
FFN = [1, 4, 9, 10]


def layers(kind, norm_first, act):
    torch.manual_seed(0)
    model = Layers(kind, norm_first, act)
    with torch.no_grad():  # biases away from zero: every mean and fold is non-trivial
        model.layer.linear1.bias.uniform_(-1, 1)
    return model


@pytest.mark.parametrize("kind,norm_first,act", LAYERS, ids=LAYER_IDS)
def test_the_ffn_neurons_of_a_transformer_layer_are_units(kind, norm_first, act):
    model = layers(kind, norm_first, act)
    x, y = batch()
    graph = trace(model, x)
    assert "layer.linear1" in graph.prunable and graph.groups["layer.linear1"].size == 16
    assert set(graph.prunable_heads) == ({"layer.self_attn"} if kind == "encoder" else
                                         {"layer.self_attn", "layer.multihead_attn"})
    for replacement in (None, "zero", "mean"):
        removed, masked = copy.deepcopy(model), copy.deepcopy(model)
        units = {"layer.linear1": FFN, "layer.self_attn": [1]}
        rep = remove_units(removed, units, replacement=replacement, data=[(x, y)])
        mask_units(masked, units, replacement=replacement, data=[(x, y)])
        assert removed.layer.linear1.out_features == 12 == removed.layer.linear2.in_features
        assert rep.removed == {"layer.linear1": 4, "layer.self_attn": 1}
        for inp in (x, batch(5)[0]):
            assert float((out(removed, inp) - out(masked, inp)).abs().max()) <= 1e-10
        assert float((out(removed, x) - out(model, x)).abs().max()) > 1e-6
    # the layer's own forward still runs it (it is not replaced by the toolkit's)
    assert type(removed.layer) is type(model.layer)


@pytest.mark.parametrize("kind,norm_first,act", LAYERS[:4], ids=LAYER_IDS[:4])
def test_ffn_mean_replacement_equals_a_hook_on_linear2s_input(kind, norm_first, act):
    """Each removed neuron's linear1 output held at its mean over batch and tokens (as on
    every chain): linear2 reads activation(mean) in its place."""
    model = layers(kind, norm_first, act)
    data = [batch(1), batch(2)]
    seen = []
    hd = model.layer.linear1.register_forward_hook(lambda m, i, o: seen.append(o.reshape(-1, 16)))
    with torch.no_grad():
        for xb, _ in data:
            model.eval()(xb)
    hd.remove()
    mean = torch.cat(seen).mean(0)
    held = model.layer.activation(mean)
    reference = copy.deepcopy(model)

    def hold(m, args):
        a = args[0].clone()
        a[..., FFN] = held[FFN]
        return (a,)
    reference.layer.linear2.register_forward_pre_hook(hold)
    remove_units(model, {"layer.linear1": FFN}, replacement="mean", data=data)
    assert model.layer.linear2.bias is not None
    for xb in (batch(3)[0], batch(1)[0]):
        assert float((out(model, xb) - out(reference, xb)).abs().max()) <= 1e-9


@pytest.mark.parametrize("kind,norm_first,act", [LAYERS[0], LAYERS[7]], ids=[LAYER_IDS[0],
                                                                           LAYER_IDS[7]])
def test_exact_mrp_of_ffn_neurons_equals_a_naive_removal_loop(kind, norm_first, act):
    from saliency import SCORERS
    model = layers(kind, norm_first, act)
    data = [batch(1), batch(2)]
    scores = SCORERS["mrp"](layers=["layer.linear1"]).score(model, data, seq_loss)
    base = [seq_loss(out(model, xb), yb, "none") for xb, yb in data]
    naive = []
    for i in range(16):
        twin = copy.deepcopy(model)
        remove_units(twin, {"layer.linear1": [i]}, replacement="mean", data=data)
        naive.append(sum(float((seq_loss(out(twin, xb), yb, "none") - b).abs().sum())
                         for (xb, yb), b in zip(data, base)))
    assert torch.allclose(scores["layer.linear1"], torch.tensor(naive), atol=1e-8, rtol=0)


@pytest.mark.parametrize("kind,norm_first,act", [LAYERS[1], LAYERS[6]], ids=[LAYER_IDS[1],
                                                                           LAYER_IDS[6]])
def test_ffn_scorers_equal_a_brute_force_over_batch_and_tokens(kind, norm_first, act):
    from saliency import SCORERS
    model = layers(kind, norm_first, act).eval()
    data = [batch(1), batch(2)]
    hs, gs, acts = [], [], []
    for xb, yb in data:
        seen = {}

        def keep(m, i, o, seen=seen):
            o.retain_grad()
            seen["h"] = o
        handles = [model.layer.linear1.register_forward_hook(keep),
                   model.layer.linear2.register_forward_pre_hook(
                       lambda m, a, seen=seen: seen.__setitem__("a", a[0]))]
        seq_loss(model(xb), yb, "sum").backward()
        for hd in handles:
            hd.remove()
        hs.append(seen["h"].detach())
        gs.append(seen["h"].grad.detach())
        acts.append(seen["a"].detach())
    model.zero_grad()
    h, g, a = torch.cat(hs), torch.cat(gs), torch.cat(acts)  # (N, T, 16)
    mu = h.mean((0, 1))
    ref = {"mrs": ((mu - h) * g).sum(1).abs().sum(0),
           "taylor": (h * g).mean((0, 1)).abs(),
           "dormancy": a.abs().mean((0, 1)) / a.abs().mean((0, 1)).mean(),
           "norm": model.layer.linear1.weight.detach().abs().sum(1)}
    for name, want in ref.items():
        got = SCORERS[name](layers=["layer.linear1"]).score(model, data, seq_loss)
        assert torch.allclose(got["layer.linear1"], want, rtol=1e-10, atol=1e-12), name


def test_a_transformer_layer_whose_forward_differs_stays_one_call():
    from saliency.attention import transformer_layer_reason

    class Custom(nn.TransformerEncoderLayer):
        def forward(self, src, *args, **kwargs):
            return super().forward(src, *args, **kwargs) * 2

    model = nn.Sequential(Custom(D, 3, 16, dropout=0.0, batch_first=True), nn.Linear(D, 5))
    x = batch()[0]
    graph = trace(model, x)
    assert graph.prunable == [] and graph.prunable_heads == ["0.self_attn"]  # a subclass
    model = nn.Sequential(nn.TransformerEncoderLayer(D, 3, 16, dropout=0.0, batch_first=True),
                          nn.Linear(D, 5))
    model[0].forward = lambda src, *a, **k: src  # an instance whose forward is not PyTorch's
    graph = trace(model, x)
    assert "0.linear1" not in graph.prunable
    assert transformer_layer_reason(model[0]) == ("its forward written out does not give "
                                                  "what its own forward gives")


# --------------------------------------------------------------------------- losses over tokens


def test_a_samples_loss_is_the_mean_over_its_tokens_padding_excluded():
    import functools

    from pruners.pruning import mean_loss
    from saliency.base import per_sample_loss, summing_loss
    g = torch.Generator().manual_seed(0)
    out_ = torch.randn(3, 5, 7, generator=g)
    y = torch.randint(0, 7, (3, 5), generator=g)
    y[0, 3:] = -100   # padding: F.cross_entropy's ignore_index
    y[2, :] = -100    # a sample of padding only: loss 0
    per_token = F.cross_entropy(out_.transpose(1, 2), y.clamp_min(0), reduction="none")
    want = torch.stack([per_token[0, :3].mean(), per_token[1].mean(), torch.tensor(0.0)])
    got = per_sample_loss(token_loss, out_, y)
    assert torch.allclose(got, want, atol=1e-14, rtol=0)
    # another ignore_index, given to the loss by functools.partial
    y0 = y.clamp_min(0)
    y0[1, 4] = 0
    loss0 = functools.partial(lambda o, t, reduction="mean", ignore_index=-100: F.cross_entropy(
        o.transpose(1, 2), t, reduction=reduction, ignore_index=ignore_index), ignore_index=0)
    keep = y0 != 0
    pt = F.cross_entropy(out_.transpose(1, 2), y0, reduction="none")
    want0 = (pt * keep).sum(1) / keep.sum(1).clamp_min(1)
    assert torch.allclose(per_sample_loss(loss0, out_, y0), want0, atol=1e-14, rtol=0)
    # unchanged: one loss per sample, and elementwise losses (shaped like the output) summed
    flat = torch.randn(4, 3, generator=g)
    labels = torch.randint(0, 3, (4,), generator=g)
    assert torch.equal(per_sample_loss(F.cross_entropy, flat, labels),
                       F.cross_entropy(flat, labels, reduction="none"))
    target = torch.randn(4, 3, generator=g)
    assert torch.allclose(per_sample_loss(F.mse_loss, flat, target),
                          ((flat - target) ** 2).sum(1), atol=1e-14, rtol=0)
    total = {"loss": 0.0}
    per_sample_loss(summing_loss(token_loss, total), out_, y)
    assert abs(total["loss"] - float(want.sum())) <= 1e-12
    net = nn.Identity()
    assert abs(mean_loss(net, [(out_, y)], token_loss) - float(want.mean())) <= 1e-12


def test_scorers_average_each_samples_token_losses_without_padding():
    """Exact MRP of heads and neurons against a naive loop whose sample losses are the
    means over the tokens that are not padding; MRS against autograd of that loss."""
    from saliency import SCORERS
    model = Block(h=4, kv=2, causal=True)
    x, y = batch(1)
    y[0, 2:] = -100
    y[3, 4] = -100
    data = [(x, y)]

    def losses(m):
        pt = token_loss(out(m, x), y, "none")
        keep = y != -100
        return (pt * keep).sum(1) / keep.sum(1)

    base = losses(model)
    mrp = SCORERS["mrp"](layers=["fc1"]).score(model, data, token_loss)["fc1"]
    naive = []
    for i in range(16):
        twin = copy.deepcopy(model)
        remove_units(twin, {"fc1": [i]}, replacement="mean", data=data)
        naive.append(float((losses(twin) - base).abs().sum()))
    assert torch.allclose(mrp, torch.tensor(naive), atol=1e-10, rtol=0)
    heads = SCORERS["mrp"](layers=["attn"]).score(model, data, token_loss)["attn"]
    hooked = copy.deepcopy(model)  # head 2 alone held at its mean by a hook: its MRP
    ctx = []
    hd = hooked.attn.o.register_forward_pre_hook(lambda m, a: ctx.append(a[0]))
    out(hooked, x)
    hd.remove()
    mean = ctx[0].reshape(-1, D).mean(0)

    def hold(m, a):
        c = a[0].clone()
        c[..., 6:9] = mean[6:9]
        return (c,)
    hooked.attn.o.register_forward_pre_hook(hold)
    assert abs(float((losses(hooked) - base).abs().sum()) - float(heads[2])) <= 1e-10
    # MRS of fc1 by hand: the gradient of sum_k mean over the kept tokens of sample k
    seen = {}

    def keep(m, i, o):
        o.retain_grad()
        seen["h"] = o
    hd = model.fc1.register_forward_hook(keep)
    model.eval()
    pt = token_loss(model(x), y, "none")
    mask = y != -100
    ((pt * mask).sum(1) / mask.sum(1)).sum().backward()
    hd.remove()
    h, g = seen["h"].detach(), seen["h"].grad
    mu = h.mean((0, 1))  # statistics: every token position (padding too)
    want = ((mu - h) * g).sum(1).abs().sum(0)
    model.zero_grad()
    got = SCORERS["mrs"](layers=["fc1"]).score(model, data, token_loss)["fc1"]
    assert torch.allclose(got, want, atol=1e-12, rtol=0)
