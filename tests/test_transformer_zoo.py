"""The zoo's transformers (``vit_tiny``, ``decoder_lm``), the character-level text data set
split by document (``fortunes``) and the per-token language-model loss.

Exactness is checked in float64 against independent references: ``F.unfold`` for the patches,
attention written out with explicitly repeated key/value heads and a causal mask, hooks that
zero a head's slice of the output projection's input, and the model before a checkpoint.
Text files are generated in ``tmp_path``; one slow test reads Debian's ``fortunes`` when it
is installed.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments.harness import datasets as ds
from experiments.harness.checkpoint import (
    fit_to_state_dict,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from experiments.harness.datasets import DatasetError, DatasetNotFoundError, sources
from experiments.harness.datasets.text import DOCUMENT_END, UNKNOWN
from experiments.harness.models import SelfAttention, build_model, decoder_lm, vit_tiny
from experiments.harness.training import (
    TrainConfig,
    Trainer,
    evaluate,
    token_cross_entropy,
)
from pruners import mask_units, remove_units, trace

FORTUNES_DEBIAN = Path("/usr/share/games/fortunes")


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def images(n: int = 3, seed: int = 0, channels: int = 1, side: int = 28) -> torch.Tensor:
    return torch.rand(n, channels, side, side, generator=torch.Generator().manual_seed(seed),
                      dtype=torch.float64)


def tokens(n: int = 3, t: int = 12, vocab: int = 20, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def small_vit(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    kw = {"depth": 2, "width": 32, "heads": 4, "ffn": 48, **kw}
    return vit_tiny(**kw).double().eval()


def small_decoder(seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    kw = {"vocab_size": 20, "context": 16, "depth": 2, "width": 32, "heads": 4, "kv_heads": 2,
          "ffn": 40, **kw}
    return decoder_lm(**kw).double().eval()


def attention_exclusions(model: nn.Module, x: torch.Tensor) -> list[str]:
    """The layers the graph leaves out (attention projections, until heads are units)."""
    return trace(model, x, on_unsupported="exclude").unsupported_layers


# --------------------------------------------------------------------------- shapes, arguments


def test_shapes_and_sizes():
    vit = vit_tiny()
    assert vit(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert n_params(vit) == 204_938  # the docstring's count
    assert vit.patch_embed.num_patches == 16 and vit_tiny(patch_size=4).patch_embed.num_patches == 49
    assert [b.fc1.out_features for b in vit.blocks] == [256] * 4
    rgb = vit_tiny(in_channels=3, image_size=32, patch_size=8, num_classes=5)
    assert rgb(torch.zeros(1, 3, 32, 32)).shape == (1, 5)
    lm = decoder_lm()
    assert n_params(lm) == 775_296
    assert n_params(decoder_lm(tie_embeddings=True)) == 775_296 - 128 * 128
    net = decoder_lm(vocab_size=30, context=16, depth=1, width=32, heads=4, kv_heads=1, ffn=24)
    assert net(torch.zeros(2, 16, dtype=torch.long)).shape == (2, 16, 30)
    assert net(torch.zeros(2, 5, dtype=torch.long)).shape == (2, 5, 30)  # shorter than context
    attn = net.blocks[0].attn
    assert (attn.num_heads, attn.num_kv_heads, attn.head_dim) == (4, 1, 8)
    assert attn.k_proj.out_features == 8 and attn.q_proj.bias is None
    tied = decoder_lm(vocab_size=30, tie_embeddings=True)
    assert tied.head.weight is tied.embed.weight
    assert build_model("vit_tiny", depth=1).blocks[0].attn.num_heads == 4
    assert build_model("decoder_lm", vocab_size=7).head.out_features == 7


@pytest.mark.parametrize("factory,kwargs,match", [
    (vit_tiny, {"patch_size": 5}, "patch_size \\(5\\) must divide image_size \\(28\\)"),
    (vit_tiny, {"width": 30, "heads": 4}, "width \\(30\\) must be a multiple of heads"),
    (vit_tiny, {"depth": 0}, "depth must be a positive integer"),
    (vit_tiny, {"ffn": 0}, "ffn must be a positive integer"),
    (vit_tiny, {"heads": True}, "heads must be a positive integer"),
    (decoder_lm, {"heads": 4, "kv_heads": 3}, "heads \\(4\\) must be a multiple of kv_heads"),
    (decoder_lm, {"vocab_size": 0}, "vocab_size must be a positive integer"),
    (decoder_lm, {"context": 1.5}, "context must be a positive integer"),
    (decoder_lm, {"tie_embeddings": "yes"}, "tie_embeddings must be True or False"),
])
def test_bad_arguments(factory, kwargs, match):
    with pytest.raises(ValueError, match=match):
        factory(**kwargs)


def test_patches_equal_unfold():
    for p, c, side in ((7, 1, 28), (4, 1, 28), (4, 3, 12)):
        net = vit_tiny(patch_size=p, in_channels=c, image_size=side, width=16, heads=2,
                       depth=1).double()
        x = images(2, seed=p, channels=c, side=side)
        reference = F.unfold(x, p, stride=p).transpose(1, 2)  # (B, N, C*p*p)
        assert torch.equal(net.patch_embed.patches(x), reference)
        # the projection of [patch, one-hot position] = W_pix patch + b + pos_embed[n]
        proj = net.patch_embed.proj
        pixels = proj.weight[:, :c * p * p]
        expected = reference @ pixels.T + proj.bias + net.patch_embed.pos_embed
        assert (net.patch_embed(x) - expected).abs().max() <= 1e-12


# --------------------------------------------------------------------------- attention


def reference_attention(attn: SelfAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """Multi-head attention written out, the key/value heads repeated explicitly."""
    b, t, _ = x.shape
    hd, h, hkv = attn.head_dim, attn.num_heads, attn.num_kv_heads
    q = attn.q_proj(x).reshape(b, t, h, hd).permute(0, 2, 1, 3)
    k = attn.k_proj(x).reshape(b, t, hkv, hd).permute(0, 2, 1, 3)
    v = attn.v_proj(x).reshape(b, t, hkv, hd).permute(0, 2, 1, 3)
    k, v = k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if causal:
        future = torch.ones(t, t, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    out = scores.softmax(-1) @ v  # (b, h, t, hd)
    return attn.out_proj(out.permute(0, 2, 1, 3).reshape(b, t, h * hd))


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (6, 2), (4, 1)])
@pytest.mark.parametrize("causal", [False, True])
def test_attention_equals_explicit_repeated_heads(heads, kv_heads, causal):
    torch.manual_seed(heads + kv_heads)
    attn = SelfAttention(24, heads, kv_heads, causal=causal).double()
    with torch.no_grad():
        for m in attn.modules():
            if isinstance(m, nn.Linear):
                m.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 7, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (attn(x) - reference_attention(attn, x, causal)).abs().max() <= 1e-12


def test_decoder_is_causal():
    net = small_decoder()
    x = tokens(2, 12)
    with torch.no_grad():
        base = net(x)
        for t in (0, 5, 10):
            changed = x.clone()
            changed[:, t + 1:] = (changed[:, t + 1:] + 7) % 20  # every later token differs
            out = net(changed)
            assert torch.equal(out[:, :t + 1], base[:, :t + 1])
            assert (out[:, t + 1:] - base[:, t + 1:]).abs().max() > 1e-3


# --------------------------------------------------------------------------- graph of units

#: why the residual stream is not prunable: the norm that reads it, or (where the stream's
#: first producer is an attention module's output projection) that output's channels
STREAM_REASONS = {
    norm: (f"normalizes over the channels ({norm} mixes them", "an attention module's output")
    for norm in ("LayerNorm", "RMSNorm")}


def test_vit_graph_ffn_neurons_are_units_and_the_stream_is_not():
    net = small_vit()
    graph = trace(net, images(2), on_unsupported="exclude")
    ffn = [g for g in graph.prunable if g.endswith("fc1")]
    assert ffn == ["blocks.0.fc1", "blocks.1.fc1"]
    for i in range(2):
        group = graph.group_of(f"blocks.{i}.fc1")
        assert group.members == [f"blocks.{i}.fc1"] and group.size == 48
        assert [c.name for c in group.consumers] == [f"blocks.{i}.fc2"]
    stream = graph.group_of("blocks.1.fc2")
    assert {"patch_embed.proj", "blocks.0.fc2", "blocks.1.fc2"} <= set(stream.members)
    assert all(any(m.startswith(f"blocks.{i}.attn") for m in stream.members) for i in range(2))
    assert not stream.prunable
    assert any(reason in stream.reason for reason in STREAM_REASONS["LayerNorm"])
    # whatever the graph leaves out is inside the attention modules
    assert all(".attn" in name for name in graph.unsupported_layers)


@pytest.mark.parametrize("tie", [False, True])
def test_decoder_graph_swiglu_groups_are_units_and_the_stream_is_not(tie):
    net = small_decoder(tie_embeddings=tie)
    graph = trace(net, tokens(2), on_unsupported="exclude")
    assert [g for g in graph.prunable if g.endswith("gate")] == ["blocks.0.gate",
                                                                 "blocks.1.gate"]
    for i in range(2):
        group = graph.group_of(f"blocks.{i}.up")
        assert group.members == [f"blocks.{i}.gate", f"blocks.{i}.up"] and group.size == 40
        assert group.nodes[group.held].kind == "product"
        assert [c.name for c in group.consumers] == [f"blocks.{i}.down"]
    stream = graph.group_of("blocks.1.down")
    assert not stream.prunable
    assert any(reason in stream.reason for reason in STREAM_REASONS["RMSNorm"])
    left_out = set(graph.unsupported_layers)
    assert all(".attn" in name for name in left_out)
    # the head, tied to the embedding or not, reaches the output: not prunable for that reason
    # (that a tied head shares its weight with the embedding is then beside the point)
    assert graph.groups["head"].reason == "its output is the model's output"


# --------------------------------------------------------------------------- checkpoints


def zero_heads(net: nn.Module, block: int, heads: list[int]):
    """A hook zeroing query heads' slices of an attention's output-projection input."""
    attn = net.blocks[block].attn
    hd = attn.head_dim

    def hook(module, args):
        a = args[0].clone()
        for h in heads:
            a[..., h * hd:(h + 1) * hd] = 0
        return (a,)

    return attn.out_proj.register_forward_pre_hook(hook)


def drop_heads(state: dict, prefix: str, hd: int, q_heads: list[int], kv_heads: list[int],
               n_q: int, n_kv: int) -> dict:
    """Slice a state dict as head removal would: q/k/v rows, out_proj columns."""
    sd = dict(state)
    keep_q = torch.tensor([c for h in range(n_q) if h not in q_heads
                           for c in range(h * hd, (h + 1) * hd)])
    keep_kv = torch.tensor([c for h in range(n_kv) if h not in kv_heads
                            for c in range(h * hd, (h + 1) * hd)])
    for name, keep in (("q_proj", keep_q), ("k_proj", keep_kv), ("v_proj", keep_kv)):
        for t in ("weight", "bias"):
            if f"{prefix}.{name}.{t}" in sd:
                sd[f"{prefix}.{name}.{t}"] = sd[f"{prefix}.{name}.{t}"][keep]
    sd[f"{prefix}.out_proj.weight"] = sd[f"{prefix}.out_proj.weight"][:, keep_q]
    return sd


def test_vit_checkpoint_with_pruned_ffn_and_heads(tmp_path):
    net = small_vit()
    x = images(4)
    kwargs = {"depth": 2, "width": 32, "heads": 4, "ffn": 48}
    exclude = attention_exclusions(net, x)
    remove_units(net, {"blocks.0.fc1": [0, 5, 9], "blocks.1.fc1": list(range(0, 48, 2))},
                 replacement="mean", data=[(x, None)], exclude=exclude)
    # a head removed by slicing the state dict, as head removal leaves it
    sd = drop_heads(net.state_dict(), "blocks.1.attn", 8, [2], [2], 4, 4)
    shrunk = fit_to_state_dict(vit_tiny(**kwargs).double(), sd)
    shrunk.load_state_dict(sd)
    path = tmp_path / "vit.pt"
    save_checkpoint(path, shrunk, {"model": "vit_tiny", "kwargs": kwargs})
    assert torch.load(path, weights_only=True)["arch"]["model"] == "vit_tiny"
    loaded = model_from_checkpoint(load_checkpoint(path)).eval()
    assert [b.fc1.out_features for b in loaded.blocks] == [45, 24]
    assert [b.fc2.in_features for b in loaded.blocks] == [45, 24]
    assert [b.attn.num_heads for b in loaded.blocks] == [4, 3]
    assert loaded.blocks[1].attn.out_proj.in_features == 24
    with torch.no_grad():  # checkpoints load into float32 parameters
        assert torch.equal(loaded(x.float()), copy.deepcopy(shrunk).float().eval()(x.float()))
        handle = zero_heads(net, 1, [2])
        try:
            reference = net(x)
        finally:
            handle.remove()
        assert (shrunk.eval()(x) - reference).abs().max() <= 1e-12


@pytest.mark.parametrize("tie", [False, True])
def test_decoder_checkpoint_with_pruned_ffn_and_a_kv_group(tie, tmp_path):
    net = small_decoder(tie_embeddings=tie)
    x = tokens(4)
    kwargs = {"vocab_size": 20, "context": 16, "depth": 2, "width": 32, "heads": 4,
              "kv_heads": 2, "ffn": 40, "tie_embeddings": tie}
    exclude = attention_exclusions(net, x)
    remove_units(net, {"blocks.0.gate": [1, 2, 30], "blocks.1.gate": list(range(10))},
                 replacement="mean", data=[(x, None)], exclude=exclude)
    assert net.blocks[0].down.bias is not None  # the means were folded into a new bias
    # key/value head 0 of block 0 removed with its query group (query heads 0 and 1)
    sd = drop_heads(net.state_dict(), "blocks.0.attn", 8, [0, 1], [0], 4, 2)
    shrunk = fit_to_state_dict(decoder_lm(**kwargs).double(), sd)
    shrunk.load_state_dict(sd)
    path = tmp_path / "lm.pt"
    save_checkpoint(path, shrunk, {"model": "decoder_lm", "kwargs": kwargs})
    loaded = model_from_checkpoint(load_checkpoint(path)).eval()
    attn = loaded.blocks[0].attn
    assert (attn.num_heads, attn.num_kv_heads) == (2, 1)
    assert [(b.gate.out_features, b.up.out_features, b.down.in_features)
            for b in loaded.blocks] == [(37, 37, 37), (30, 30, 30)]
    assert (loaded.head.weight is loaded.embed.weight) == tie
    with torch.no_grad():  # checkpoints load into float32 parameters
        assert torch.equal(loaded(x), copy.deepcopy(shrunk).float().eval()(x))
        handle = zero_heads(net, 0, [0, 1])
        try:
            reference = net(x)
        finally:
            handle.remove()
        assert (shrunk.eval()(x) - reference).abs().max() <= 1e-12


# --------------------------------------------------------------------------- the loss


def test_token_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 7, (3, 5), generator=gen)
    per_token = F.cross_entropy(out.transpose(1, 2), y, reduction="none")  # (3, 5)
    assert torch.equal(token_cross_entropy(out, y, reduction="none"), per_token)
    assert abs(float(token_cross_entropy(out, y)) - float(per_token.mean())) <= 1e-14
    assert abs(float(token_cross_entropy(out, y, reduction="sum")) - float(per_token.sum())) \
        <= 1e-12
    flat = torch.randn(4, 7, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 7, (4,), generator=gen)
    assert torch.equal(token_cross_entropy(flat, labels), F.cross_entropy(flat, labels))
    with pytest.raises(ValueError, match="targets shaped like"):
        token_cross_entropy(out, y[:, :4])
    with pytest.raises(ValueError, match="reduction must be"):
        token_cross_entropy(out, y, reduction="avg")


def test_evaluate_is_per_token_for_language_models():
    net = small_decoder()
    x = tokens(5, 8, seed=3)
    y = tokens(5, 8, seed=4)
    res = evaluate(net, torch.utils.data.TensorDataset(x, y), batch_size=2,
                   loss_fn=token_cross_entropy)
    with torch.no_grad():
        out = net(x)
    assert abs(res["loss"] - float(token_cross_entropy(out, y))) <= 1e-12
    assert res["acc"] == float((out.argmax(-1) == y).double().mean())
    # classifiers are unchanged: per sample
    vit = small_vit()
    xi, yi = images(5).double(), torch.tensor([0, 1, 2, 3, 4])
    res = evaluate(vit, torch.utils.data.TensorDataset(xi, yi), batch_size=2)
    with torch.no_grad():
        out = vit(xi)
    assert abs(res["loss"] - float(F.cross_entropy(out, yi))) <= 1e-12
    assert res["acc"] == float((out.argmax(1) == yi).double().mean())


# --------------------------------------------------------------------------- the text data


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No environment variable, no system directory, an empty private cache."""
    for var in sources.ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(sources, "SYSTEM_DIRS", {k: [] for k in sources.SYSTEM_DIRS})
    monkeypatch.setattr(sources, "CACHE_ROOT", tmp_path / "cache")


def document(i: int) -> str:
    """Document i: unique text, and one character (chr(0x100 + i)) no other document has."""
    return f"Quote number {i}: the {'cat' if i % 2 else 'dog'} sat.{chr(0x100 + i)}\n\t-- Author {i}"


def write_corpus(folder: Path, n: int = 40) -> list[str]:
    """Two fortune files plus files the loader must skip; returns the documents in order."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = [document(i) for i in range(n)]
    half = n // 2
    (folder / "alpha").write_text("\n%\n".join(docs[:half]) + "\n%\n", encoding="utf-8")
    (folder / "beta").write_text("\n\n" + "\n%\n".join(docs[half:]) + "\n", encoding="utf-8")
    (folder / "alpha.dat").write_bytes(b"\x00\x00\x00\x02binary index")
    (folder / "alpha.u8").write_text("SKIPPED u8\n%\n", encoding="utf-8")
    (folder / ".hidden").write_text("SKIPPED hidden\n", encoding="utf-8")
    (folder / "off").mkdir(exist_ok=True)
    (folder / "off" / "rude").write_text("SKIPPED off\n%\n", encoding="utf-8")
    return docs


def test_read_documents(tmp_path):
    docs = write_corpus(tmp_path / "corpus")
    assert ds.read_documents(tmp_path / "corpus") == docs
    assert ds.read_documents(tmp_path / "corpus" / "beta") == docs[20:]
    assert ds.read_documents(tmp_path / "corpus", documents="file") == \
        ["\n%\n".join(docs[:20]) + "\n%", "\n%\n".join(docs[20:])]
    (tmp_path / "latin").mkdir()
    (tmp_path / "latin" / "a").write_bytes(b"caf\xe9 au lait\r\n%\r\nna\xefve\r\n")
    assert ds.read_documents(tmp_path / "latin") == ["caf\u00e9 au lait", "na\u00efve"]
    (tmp_path / "latin" / "b").write_bytes(b"text\x00more")
    with pytest.raises(DatasetError, match="b: not a text file"):
        ds.read_documents(tmp_path / "latin")
    with pytest.raises(ValueError, match="documents must be"):
        ds.read_documents(tmp_path / "corpus", documents="lines")


def test_fortunes_splits_by_document_into_shifted_windows(tmp_path, offline):
    docs = write_corpus(tmp_path / "corpus")
    data = ds.fortunes(tmp_path / "corpus", context=16, val_size=0.2, test_size=6, seed=3)
    idx = {k: data.indices[k].tolist() for k in ("train", "val", "test")}
    assert [len(idx[k]) for k in ("train", "val", "test")] == [26, 8, 6]
    assert sorted(idx["train"] + idx["val"] + idx["test"]) == list(range(40))  # disjoint, all
    assert data.info["documents"] == {"train": 26, "val": 8, "test": 6}
    vocab = data.info["vocab"]
    assert vocab[0] == UNKNOWN and data.num_classes == len(vocab)
    assert data.input_shape == (16,) and data.name == "fortunes"
    train_text = "".join(docs[i] + DOCUMENT_END for i in idx["train"])
    assert vocab[1:] == sorted(set(train_text))  # the training characters, sorted
    for split in ("train", "val", "test"):
        x, y = getattr(data, split).tensors
        assert x.dtype == y.dtype == torch.long and x.shape[1] == y.shape[1] == 16
        assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the inputs shifted by one
        stream = "".join(docs[i] + DOCUMENT_END for i in idx[split])
        assert x.shape[0] == (len(stream) - 1) // 16
        # consecutive windows tile the stream: their text is the split's documents
        text = ds.decode(torch.cat([x.reshape(-1), y[-1, -1:]]), vocab)
        expected = "".join(c if c in vocab[1:] else UNKNOWN for c in stream[:len(text)])
        assert text == expected
        assert data.info["characters"][split] == len(stream)
        for i in range(40):  # a document is in its split's windows only
            assert (f"Quote number {i}:" in text) == (i in idx[split])
            assert (chr(0x100 + i) in text) == (split == "train" and i in idx[split])
    # every validation document's own character is unknown (it is not in training)
    unknown = {k: data.info["unknown"][k] for k in ("train", "val", "test")}
    assert unknown["train"] == 0.0
    val_chars = data.info["characters"]["val"]
    assert unknown["val"] == pytest.approx(8 / val_chars, abs=1e-12)
    for i in idx["val"]:
        assert chr(0x100 + i) not in vocab
    # the same seed gives the same split, another seed another one
    again = ds.fortunes(tmp_path / "corpus", context=16, val_size=0.2, test_size=6, seed=3)
    assert torch.equal(again.val.tensors[0], data.val.tensors[0])
    other = ds.fortunes(tmp_path / "corpus", context=16, val_size=0.2, test_size=6, seed=4)
    assert other.indices["val"].tolist() != idx["val"]


def test_fortunes_options(tmp_path, offline):
    write_corpus(tmp_path / "corpus")
    base = ds.fortunes(tmp_path / "corpus", context=8, seed=0)
    rare = ds.fortunes(tmp_path / "corpus", context=8, seed=0, min_count=2)
    assert all(chr(0x100 + i) not in rare.info["vocab"] for i in range(40))
    assert len(base.info["vocab"]) - len(rare.info["vocab"]) == len(base.indices["train"])
    dense = ds.fortunes(tmp_path / "corpus", context=8, stride=2, seed=0)
    n = base.info["characters"]["train"]
    assert len(dense.train) == (n - 9) // 2 + 1 and len(base.train) == (n - 9) // 8 + 1
    assert len(dense.val) == len(base.val)  # validation windows never overlap
    small = ds.fortunes(tmp_path / "corpus", context=8, seed=0, limit=5)
    assert small.sizes() == {"train": 5, "val": 5, "test": 5}
    files = ds.fortunes(tmp_path / "corpus", context=8, seed=0, documents="file",
                        val_size=0, test_size=0)
    assert files.info["documents"] == {"train": 2, "val": 0, "test": 0}
    assert len(files.val) == 0
    via_registry = ds.get_dataset("fortunes", data_dir=tmp_path / "corpus", context=8)
    assert torch.equal(via_registry.train.tensors[0], base.train.tensors[0])
    for kwargs, match in (({"context": 0}, "context must be"), ({"stride": 0}, "stride must"),
                          ({"val_size": 1.5}, "val_size as a fraction"),
                          ({"val_size": 30, "test_size": 10}, "leave none for training"),
                          ({"documents": "x"}, "documents must be")):
        with pytest.raises(ValueError, match=match):
            ds.fortunes(tmp_path / "corpus", **kwargs)


def test_fortunes_missing_data_says_where_it_looked(tmp_path, offline, monkeypatch):
    monkeypatch.setitem(sources.SYSTEM_DIRS, "fortunes", [tmp_path / "games"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        ds.fortunes(tmp_path / "empty")
    msg = str(err.value)
    assert msg.startswith("Fortunes not found. Looked in:")
    for piece in (f"argument: {tmp_path / 'empty'} (no text files)",
                  "$FORTUNES_DIR: not set",
                  f"system directory: {tmp_path / 'games'} (does not exist)",
                  f"cache: {tmp_path / 'cache' / 'fortunes'} (does not exist)",
                  "download: not available for this data set",
                  "sudo apt-get install fortunes", "set FORTUNES_DIR="):
        assert piece in msg, piece
    write_corpus(tmp_path / "env")
    monkeypatch.setenv("FORTUNES_DIR", str(tmp_path / "env"))
    assert ds.fortunes(context=8).info["source"] == str(tmp_path / "env")


@pytest.mark.slow
@pytest.mark.skipif(not (FORTUNES_DEBIAN / "fortunes").exists(),
                    reason="Debian's fortunes is not installed")
def test_real_fortunes():
    data = ds.fortunes(FORTUNES_DEBIAN)
    docs = data.info["documents"]
    assert sum(docs.values()) > 10_000 and docs["val"] == docs["test"]
    assert not any("off/" in f or f.endswith((".dat", ".u8")) for f in data.info["files"])
    assert sum(data.info["characters"].values()) > 2_000_000
    assert 80 <= data.num_classes <= 200 and data.info["unknown"]["val"] < 1e-3
    x, y = data.train.tensors
    assert x.shape[1] == 128 and torch.equal(x[:, 1:], y[:, :-1])


# --------------------------------------------------------------------------- training


def test_a_few_steps_on_generated_text_lower_the_loss(tmp_path, offline):
    folder = tmp_path / "text"
    folder.mkdir()
    words = ["alpha", "beta", "gamma", "delta", "epsilon"]
    gen = torch.Generator().manual_seed(0)
    docs = [" ".join(words[int(j)] for j in torch.randint(0, 5, (12,), generator=gen))
            for _ in range(60)]
    (folder / "words").write_text("\n%\n".join(docs) + "\n", encoding="utf-8")
    data = ds.fortunes(folder, context=16, seed=0)
    torch.manual_seed(0)
    net = decoder_lm(vocab_size=data.num_classes, context=16, depth=1, width=32, heads=4,
                     kv_heads=2, ffn=32)
    before = evaluate(net, data.val, loss_fn=token_cross_entropy)
    assert before["loss"] == pytest.approx(math.log(data.num_classes), abs=0.05)
    trainer = Trainer(net, data.train, val_set=data.val, loss_fn=token_cross_entropy,
                      config=TrainConfig(epochs=3, batch_size=16, optimizer="adam", lr=1e-2,
                                         seed=0), progress=False)
    history = trainer.fit()
    # seeded: 2.891 (uniform, log 18 = 2.890) -> 0.970 -> 0.626 -> 0.583 per character
    assert [round(r["val_loss"], 2) for r in history] == pytest.approx([0.97, 0.63, 0.58],
                                                                       abs=0.03)
    assert history[-1]["val_acc"] == pytest.approx(0.777, abs=0.03)
    assert history[-1]["macs"] > 0  # counted on a (1, 16) window of tokens


# --------------------------------------------------------------------------- the whole models


def whole_model_units(model: nn.Module, x: torch.Tensor) -> dict[str, list[int]]:
    """Heads and FFN neurons of every block: two heads of each attention module (for the
    grouped-query decoder, the two query heads of one key/value group), and every third FFN
    unit."""
    graph = trace(model, x)
    units = {name: [0, 1] for name in graph.prunable_heads}
    for g in graph.prunable:
        units[g] = list(range(0, graph.groups[g].size, 3))
    assert len(graph.prunable_heads) == len(model.blocks)  # every block's heads are units
    assert sum(1 for g in graph.prunable) == len(model.blocks)  # and its FFN
    return units


CASES = {
    "vit": (small_vit, lambda seed: images(4, seed), lambda seed: torch.randint(
        0, 10, (4,), generator=torch.Generator().manual_seed(seed)), F.cross_entropy),
    "decoder": (small_decoder, lambda seed: tokens(4, 12, seed=seed),
                lambda seed: tokens(4, 12, seed=seed + 100), token_cross_entropy),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("replacement", [None, "mean"])
def test_whole_model_masked_equals_removed(case, replacement):
    """The zoo's ViT and decoder (causal, grouped-query) with heads and FFN neurons of every
    block removed equal their masked twins (float64), on the scoring batch and another."""
    build, xs, ys, _ = CASES[case]
    model = build()
    x = xs(0)
    units = whole_model_units(model, x)
    removed, masked = copy.deepcopy(model), copy.deepcopy(model)
    data = [(x, ys(0))]
    rep = remove_units(removed, units, replacement=replacement, data=data)
    mask_units(masked, units, replacement=replacement, data=data)
    assert rep.removed == {k: len(v) for k, v in units.items()}
    with torch.no_grad():
        for other in (x, xs(1)):
            assert float((removed(other) - masked(other)).abs().max()) <= 1e-10
        assert float((removed(x) - model(x)).abs().max()) > 1e-6  # the units mattered
    assert n_params(removed) < n_params(model)


def test_vit_twenty_adamw_steps_after_removal_equal_a_masked_twin():
    """Optimizer continuity on the ViT: AdamW's state is sliced with the heads and neurons,
    and 20 steps later the pruned ViT still equals its masked twin."""
    build, xs, ys, loss_fn = CASES["vit"]
    model = build()
    x, y = xs(0), ys(0)
    twins = [model, copy.deepcopy(model)]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in twins]
    for m, o in zip(twins, opts):  # state before the surgery
        for _ in range(3):
            o.zero_grad()
            loss_fn(m.train()(x), y).backward()
            o.step()
    units = whole_model_units(model, x)
    remove_units(twins[0], units, replacement="mean", data=[(x, y)], optimizer=opts[0])
    mask_units(twins[1], units, replacement="mean", data=[(x, y)], optimizer=opts[1])
    x2, y2 = xs(2), ys(2)
    for _ in range(20):
        for m, o in zip(twins, opts):
            o.zero_grad()
            loss_fn(m.train()(x2), y2).backward()
            o.step()
    with torch.no_grad():
        diff = float((twins[0].eval()(x2) - twins[1].eval()(x2)).abs().max())
    assert diff <= 1e-6
