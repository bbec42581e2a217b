"""GPT-2 and Llama models of the ``transformers`` package, built from small configs with random
weights (nothing is downloaded), traced through torch.export: FFN neurons and attention heads
are units, removed exactly (against masked twins, hooks, a naive MRP loop, AdamW twins), and
the pruned models still generate with the key/value cache."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")

from pruners import mask_units, prepare_for, remove_units, trace  # noqa: E402
from saliency import SCORERS  # noqa: E402
from saliency.hf import Logits, linear_from_conv1d  # noqa: E402

V, T = 40, 9
LLAMA = "model.model.layers"
GPT2 = "model.transformer.h"


pytestmark = pytest.mark.usefixtures("float64")


def llama(tie: bool = False, bias: bool = True) -> Logits:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=32, intermediate_size=24, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, attention_bias=bias, mlp_bias=False,
        tie_word_embeddings=tie, bos_token_id=0, eos_token_id=None, pad_token_id=0)
    return _randomized(Logits(transformers.LlamaForCausalLM(cfg).eval()))


def gpt2() -> Logits:
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        vocab_size=V, n_embd=32, n_layer=2, n_head=4, n_inner=24, n_positions=32,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=None,
        pad_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    linear_from_conv1d(model)
    return _randomized(Logits(model))


def _randomized(model: Logits) -> Logits:
    """Weights of unit scale (the configs' initialisation is tiny) and non-zero biases, so
    every removal and fold changes the logits measurably."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.uniform_(-0.5, 0.5)
            elif p.dim() == 2 and "wte" not in name and "embed" not in name and "wpe" not in name:
                p.normal_(0, p.shape[1] ** -0.5)
    return model


def batch(seed: int, n: int = 4):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (n, T), generator=g), torch.randint(0, V, (n, T), generator=g)


def token_loss(out, y, reduction="mean"):
    return F.cross_entropy(out.transpose(1, 2), y, reduction=reduction)


def logits(model, ids):
    with torch.no_grad():
        return model.eval()(ids)


#: per model: a build function, FFN neurons and heads to remove (a whole key/value group of
#: Llama's layer 0, one query head per group of its layer 1)
CASES = {
    "llama": (llama, {f"{LLAMA}.0.mlp.gate_proj": [1, 5, 9], f"{LLAMA}.1.mlp.gate_proj": [0],
                      f"{LLAMA}.0.self_attn": [2, 3], f"{LLAMA}.1.self_attn": [0, 3]}),
    "llama-tied": (lambda: llama(tie=True, bias=False),
                   {f"{LLAMA}.1.mlp.gate_proj": [2, 7], f"{LLAMA}.0.self_attn": [0, 1]}),
    "gpt2": (gpt2, {f"{GPT2}.0.mlp.c_fc": [1, 5, 9], f"{GPT2}.1.mlp.c_fc": [3],
                    f"{GPT2}.0.attn": [2], f"{GPT2}.1.attn": [0, 1]}),
}


def test_the_graphs_have_ffn_neurons_and_heads_and_refuse_the_residual_stream():
    g = trace(llama(), batch(0)[0])
    assert g.prunable == [f"{LLAMA}.0.mlp.gate_proj", f"{LLAMA}.1.mlp.gate_proj"]
    assert g.groups[f"{LLAMA}.0.mlp.gate_proj"].members == [f"{LLAMA}.0.mlp.gate_proj",
                                                             f"{LLAMA}.0.mlp.up_proj"]
    assert g.prunable_heads == [f"{LLAMA}.0.self_attn", f"{LLAMA}.1.self_attn"]
    h = g.heads[f"{LLAMA}.0.self_attn"]
    assert (h.num_heads, h.num_kv_heads, h.head_dim) == (4, 2, 8)
    stream = g.group_of(f"{LLAMA}.1.mlp.down_proj")
    assert not stream.prunable and "are not units" in stream.reason
    g = trace(gpt2(), batch(0)[0])
    assert g.prunable == [f"{GPT2}.0.mlp.c_fc", f"{GPT2}.1.mlp.c_fc"]
    assert g.prunable_heads == [f"{GPT2}.0.attn", f"{GPT2}.1.attn"]
    stream = g.group_of(f"{GPT2}.1.mlp.c_proj")
    assert not stream.prunable and "are not units" in stream.reason


def test_the_rmsnorm_of_transformers_mixes_channels_like_nn_rmsnorm():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    net = nn.Sequential(nn.Linear(4, 6), LlamaRMSNorm(6), nn.Linear(6, 3))
    g = trace(net, torch.randn(2, 4))
    assert not g.groups["0"].prunable
    assert "LlamaRMSNorm mixes them" in g.groups["0"].reason


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("replacement", [pytest.param(None, marks=pytest.mark.slow),
                                         pytest.param("zero", marks=pytest.mark.slow), "mean"])
def test_masked_equals_removed(case, replacement):
    build, units = CASES[case]
    model = build()
    twin = copy.deepcopy(model)
    kw = {"data": [batch(1), batch(2)]} if replacement == "mean" else \
        {"example_input": batch(1)[0]}
    remove_units(model, units, replacement=replacement, **kw)
    mask_units(twin, units, replacement=replacement, **kw)
    ids = batch(3)[0]
    assert float((logits(model, ids) - logits(twin, ids)).abs().max()) <= 1e-10
    assert float((logits(model, ids) - logits(build(), ids)).abs().max()) > 1e-3


def test_removed_counts_are_written_on_each_layer():
    model = llama()
    remove_units(model, CASES["llama"][1], replacement="mean", data=[batch(1)])
    a0, a1 = (model.model.model.layers[i].self_attn for i in range(2))
    assert (a0.num_heads, a0.num_key_value_heads, a0.num_key_value_groups) == (2, 1, 2)
    assert (a1.num_heads, a1.num_key_value_heads, a1.num_key_value_groups) == (2, 2, 1)
    assert (a0.q_proj.out_features, a0.k_proj.out_features, a0.o_proj.in_features) == \
        (16, 8, 16)
    assert model.model.config.num_attention_heads == 4  # the shared config is left alone
    model = gpt2()
    remove_units(model, CASES["gpt2"][1], replacement="mean", data=[batch(1)])
    a1 = model.model.transformer.h[1].attn
    assert (a1.num_heads, a1.split_size, a1.c_attn.out_features) == (2, 16, 48)


@pytest.mark.parametrize("case", ["llama", "gpt2"])
def test_head_mean_replacement_equals_a_hook_on_the_output_projection(case):
    build, units = CASES[case]
    model = build()
    heads = {n: v for n, v in units.items() if n.endswith("attn")}
    data = [batch(1), batch(2)]
    outs = {n: f"{n}.{'o_proj' if case == 'llama' else 'c_proj'}" for n in heads}
    sums = {n: [] for n in heads}
    hs = [model.get_submodule(o).register_forward_pre_hook(
        lambda m, a, n=n: sums[n].append(a[0].reshape(-1, a[0].shape[-1])))
        for n, o in outs.items()]
    for x, _ in data:
        logits(model, x)
    for h in hs:
        h.remove()
    means = {n: torch.cat(v).mean(0) for n, v in sums.items()}

    def hold(n):
        cols = [j * 8 + d for j in heads[n] for d in range(8)]

        def hook(m, a):
            c = a[0].clone()
            c[..., cols] = means[n][cols]
            return (c,)
        return hook

    hs = [model.get_submodule(o).register_forward_pre_hook(hold(n)) for n, o in outs.items()]
    ids = batch(3)[0]
    expect = logits(model, ids)
    for h in hs:
        h.remove()
    remove_units(model, heads, replacement="mean", data=data)
    assert float((logits(model, ids) - expect).abs().max()) <= 1e-9


@pytest.mark.slow
@pytest.mark.parametrize("case", ["llama", "gpt2"])
def test_exact_mrp_equals_a_naive_removal_loop(case):
    build, units = CASES[case]
    model = build()
    data = [batch(1, n=3)]
    names = list(units)[::3] if case == "llama" else [f"{GPT2}.1.mlp.c_fc", f"{GPT2}.0.attn"]
    got = SCORERS["mrp"](layers=names).score(model, data, token_loss)
    x, y = data[0]
    base = token_loss(logits(model, x), y, "none").mean(1)
    for name in names:
        size = got[name].numel()
        for i in range(0, size, max(1, size // 3)):
            naive = (token_loss(held(model, name, i, data, x), y, "none").mean(1)
                     - base).abs().sum()
            assert abs(float(got[name][i]) - float(naive)) <= 1e-8, (name, i)


def held(model, name: str, i: int, data, x):
    """The logits on ``x`` with unit or head ``i`` of ``name`` held at its mean: a removal
    with mean replacement from a copy, or, for one query head of a grouped-query layer (which
    cannot be removed alone), a hook holding its slice of the output projection's input."""
    if not (name.endswith("self_attn") and model.get_submodule(name).num_key_value_groups > 1):
        twin = copy.deepcopy(model)
        remove_units(twin, {name: [i]}, replacement="mean", data=data)
        return logits(twin, x)
    o = model.get_submodule(f"{name}.o_proj")
    seen = []
    hd = o.register_forward_pre_hook(lambda m, a: seen.append(a[0][..., 8 * i:8 * i + 8]))
    for xb, _ in data:
        logits(model, xb)
    hd.remove()
    mean = torch.cat([s.reshape(-1, 8) for s in seen]).mean(0)

    def hold(m, a):
        c = a[0].clone()
        c[..., 8 * i:8 * i + 8] = mean
        return (c,)
    hd = o.register_forward_pre_hook(hold)
    try:
        return logits(model, x)
    finally:
        hd.remove()


@pytest.mark.parametrize("case", ["llama", "gpt2"])
def test_twenty_adamw_steps_after_removal_equal_a_masked_twin(case):
    build, units = CASES[case]
    twins = [build(), build()]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.1) for m in twins]
    x, y = batch(1)
    for m, o in zip(twins, opts):  # optimizer state before the surgery
        for _ in range(3):
            o.zero_grad()
            token_loss(m.train()(x), y).backward()
            o.step()
    remove_units(twins[0], units, replacement="mean", data=[batch(2)], optimizer=opts[0])
    mask_units(twins[1], units, replacement="mean", data=[batch(2)], optimizer=opts[1])
    for step in range(20):
        xb, yb = batch(10 + step)
        for m, o in zip(twins, opts):
            o.zero_grad()
            token_loss(m.train()(xb), yb).backward()
            o.step()
    ids = batch(3)[0]
    assert float((logits(twins[0], ids) - logits(twins[1], ids)).abs().max()) <= 1e-6


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_the_pruned_model_generates_with_the_cache_as_without(case, attention):
    build, units = CASES[case]
    model = build()
    model.model.set_attn_implementation(attention)
    remove_units(model, units, replacement="mean", data=[batch(1)])
    hf = model.model
    prompt = batch(4, n=2)[0][:, :4]
    with torch.no_grad():
        cached = hf.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True)
        ids = prompt
        for _ in range(10):  # greedy decoding, every step from scratch
            step = hf(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, step], 1)
    assert cached.tolist() == ids.tolist()
    if case == "llama-tied":
        assert hf.lm_head.weight is hf.model.embed_tokens.weight


@pytest.mark.parametrize("name", ["norm", "mrs", "taylor", "dormancy", "random_unit",
                                  "group_norm", "switch"])
@pytest.mark.parametrize("case", ["llama", "gpt2"])
def test_every_unit_scorer_scores_neurons_and_heads(name, case):
    build, _ = CASES[case]
    scorer = SCORERS[name]()
    model = prepare_for(scorer, build(), example_input=batch(1)[0])  # switches: a traced copy
    scores = scorer.score(model, [batch(1)], token_loss)
    prefix, ffn, attn = (LLAMA, "mlp.gate_proj", "self_attn") if case == "llama" else \
        (GPT2, "mlp.c_fc", "attn")
    assert scores[f"{prefix}.0.{ffn}"].shape == (24,)
    assert scores[f"{prefix}.1.{attn}"].shape == (4,)
    assert all(torch.isfinite(v).all() for v in scores.values())


def test_linear_from_conv1d_keeps_the_function_the_parameters_and_adam_state():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=V, n_embd=16, n_layer=1, n_head=2,
                                  n_positions=16, resid_pdrop=0.0, embd_pdrop=0.0,
                                  attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    ids = batch(1)[0][:, :8]
    model(input_ids=ids).logits.sum().backward()
    opt.step()
    w = model.transformer.h[0].mlp.c_fc.weight                      # (16, 64): (in, out)
    moment = opt.state[w]["exp_avg"].clone()
    before = logits(Logits(model), ids)
    names = linear_from_conv1d(model, opt)
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj",
                     "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj"]
    fc = model.transformer.h[0].mlp.c_fc
    assert isinstance(fc, nn.Linear) and fc.weight is w and w.shape == (64, 16)
    assert torch.equal(opt.state[w]["exp_avg"], moment.t())
    assert float((logits(Logits(model), ids) - before).abs().max()) <= 1e-12
