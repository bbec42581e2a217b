"""Cost of every scorer as a multiple of one plain forward+backward pass.

``python -m experiments.bench.scorers [--quick] [--repeats N] [--models M ...] [--threads N]``

Models: an MLP 784-512-512-10 at batch 256, the thesis CNN (the CNN of U. Evci,
"Detecting Dead Weights and Units in Neural Networks", MS thesis, NYU 2018,
https://arxiv.org/abs/1806.06068, App. C.1; 20,522 parameters) at batch 1000, and ResNet-20
(:func:`experiments.harness.models.resnet20`, the zoo default: widths 16, 32, 64 on 1x28x28)
on one fixed batch of 256 synthetic Fashion-MNIST-shaped inputs; all inputs are random (cost
does not depend on the values). For each model the reference is one plain forward+backward
pass (``loss.backward()`` filling every parameter's ``.grad``), timed in the same run; each
scorer's time is divided by it. Each case is timed alternately with its reference, and the
fastest of the repeats of each is kept (the machine's speed drifts; alternating compares both
under the same load). Targets:

* ``mrs`` (with ``taylor`` and ``dormancy`` from the same pass): <= 1.3
* exact ``mrp`` for all units: <= 50 (a one-forward-per-unit loop costs ~200)
* one Hessian-vector product (what ``taylor2``/``hessian`` add): <= 3
* exact ``loss_change`` over the 200 weights of the thesis CNN's ``conv1``:
  >= 20x faster than one forward pass per weight

ResNet-20 has groups of coupled channels (the channels its residual adds sum: one group per
stage, 16 + 32 + 64 units) besides its nine inner chains (each block's first convolution):
448 units in 12 groups. Its cases, with their own targets:

* ``mrs_pass_resnet20``: the one-pass MRS of every unit and group: <= 1.3
* ``stats_pass_resnet20``: the same pass with ``taylor``, ``dormancy`` and APoZ (no target;
  a group's activation statistics are read on its consumers' inputs, extra work);
* ``mrp_all_units_resnet20``: exact signed ``mrp`` of every unit and group (no target)
* ``naive_per_unit_resnet20``: what ``mrp`` computes, done one unit at a time: a deep copy of
  the model, :func:`pruners.remove_units` with ``replacement="mean"`` on the copy, and a
  forward pass computing the loss. It is slow, so it is timed on a fixed subset of units
  (every 8th unit of every group, every 4th with ``--quick``) and its time per unit
  extrapolated to all units;
* ``mrp_speedup_resnet20``: that extrapolated loop's time over ``mrp``'s: >= 2.

``mrp``, the loop and the forward+backward reference are timed in turn in the same rounds.
The loop's loss changes also check ``mrp``: where the bias fold of the removal is exact (no
non-zero constant reaches a zero-padded convolution), removal computes exactly the model with
the unit held at its mean, and the two loss changes must agree (the maximum difference over
those units is printed); elsewhere removal differs at the padded borders and only the size of
that difference is reported, not agreement.

ViT-tiny (:func:`experiments.harness.models.vit_tiny`, the zoo default: patch 7, 16 tokens,
4 pre-norm blocks of width 64 with 4 heads of 16 and an FFN of 256 GELU neurons; 1,024 FFN
neurons and 16 heads) on one fixed batch of 256 random 1x28x28 inputs. Attention heads are units
addressed by their attention module (``blocks.i.attn``), FFN neurons by ``blocks.i.fc1``. Its
cases, with their own targets:

* ``mrs_pass_vit_tiny``: the MRS of every head and every FFN neuron, what
  ``SCORERS["mrs"]`` computes for them (without tracing the model): one forward and one
  backward pass for both kinds of unit (:func:`saliency.unit_stats.unit_statistics` with
  ``heads``, the heads' means accumulated in the same pass): <= 1.3. The two kinds scored
  apart are reported too (``mrs_ffn_neurons_vit_tiny``: the FFN neurons' one-pass
  statistics; ``mrs_heads_vit_tiny``: :func:`saliency.head_scores.head_statistics`, the
  heads' own forward and backward pass; no target);
* ``mrp_all_units_vit_tiny``: exact signed ``mrp`` of every head and neuron (no target), and
  ``mrp_heads_vit_tiny`` the heads' part alone (:func:`saliency.head_scores.head_mrp`: one
  forward pass per head; no target);
* ``naive_per_head_vit_tiny``, ``naive_per_neuron_vit_tiny``: the naive loop (a deep copy,
  :func:`pruners.remove_units` with ``replacement="mean"``, a forward pass computing the loss)
  per unit, timed on every head and on every 16th FFN neuron of every block (every 4th with
  ``--quick``);
* ``mrp_speedup_vit_tiny``: the loop over all heads and all neurons (the neurons' time per
  unit extrapolated) over ``mrp``'s time: >= 2; ``mrp_speedup_heads_vit_tiny``: the loop over
  every head (timed, not extrapolated) over ``mrp_heads``'s (no target).

``mrp``, its heads' part, the two loops and the forward+backward reference are timed in turn in
the same rounds. Every removal of a head or an FFN neuron is exact (no padding), so the loop's
loss changes must equal ``mrp``'s on every timed unit; the largest difference is printed, for
heads and neurons apart.

``hf_llama`` (:func:`experiments.harness.models.hf_llama`: the ``transformers`` package's
``LlamaForCausalLM``, RMSNorm, SwiGLU, rotary positions; 4 layers of width 64, 8 heads of 8,
176 SwiGLU neurons, a vocabulary of 114, needs the ``hf`` extra) on one fixed batch of 64
random windows of 64 tokens, the loss the mean per-token cross-entropy of a window: the same
cases as the ViT's, suffixed ``_hf_llama``, with the same targets (MRS pass <= 1.3, exact MRP
>= 2x faster than the loop). Its graph is built through ``torch.export``, so the loop's removal
traces each copy that way. The benchmark's Llama has as many key/value heads as query heads:
under grouped-query attention one query head cannot be removed alone, so the loop could not
remove heads one at a time (``mrp`` scores them all the same). The loop is timed on every
other head and every 44th neuron of every layer (``--quick``: 2 layers of width 16, one head in
4 and one neuron in 12).

Also prints how many CPUs other processes kept busy while each model was timed (a figure
above 0.25 marks noisy timings). Prints a table, then one JSON line last.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from experiments.harness.models import build_model, vit_tiny
from experiments.harness.tables import format_table
from experiments.harness.timing import BUSY_WARNING, alternating, cpu_mark, others_busy
from pruners import InexactReplacementWarning, prepare_for, remove_units
from saliency import SCORERS, trace
from saliency.base import iter_batches, preserved
from saliency.head_scores import head_mrp, head_statistics
from saliency.hvp import hvp
from saliency.unit_stats import is_chain, unit_statistics

TARGETS = {"mrs_pass": ("<=", 1.3), "mrp_all_units": ("<=", 50.0), "hvp": ("<=", 3.0),
           "loss_change_conv1_speedup": (">=", 20.0),
           "mrs_pass_resnet20": ("<=", 1.3), "mrp_speedup_resnet20": (">=", 2.0),
           "mrs_pass_vit_tiny": ("<=", 1.3), "mrp_speedup_vit_tiny": (">=", 2.0),
           "mrs_pass_hf_llama": ("<=", 1.3), "mrp_speedup_hf_llama": (">=", 2.0)}

MODELS = ("mlp", "thesis_cnn", "resnet20", "vit_tiny", "hf_llama")
#: the transformers: heads and FFN neurons
TRANSFORMERS = ("vit_tiny", "hf_llama")

#: ResNet-20 widths and samples of the full and the ``--quick`` setting
RESNET_FULL = {"widths": (16, 32, 64), "samples": 256, "stride": 8}
RESNET_QUICK = {"widths": (4, 8, 8), "samples": 32, "stride": 4}
#: ViT-tiny (keyword arguments of :func:`~experiments.harness.models.vit_tiny`), samples and
#: the FFN neurons' stride of the naive loop, in the full and the ``--quick`` setting (there:
#: 9 tokens of 12x12 inputs, 2 blocks of width 32, 4 heads of 8, FFN 64)
VIT_FULL = {"vit": {}, "samples": 256, "stride": 16}
VIT_QUICK = {"vit": {"patch_size": 4, "depth": 2, "width": 32, "heads": 4, "ffn": 64,
                     "image_size": 12}, "samples": 32, "stride": 4}
#: the Llama of ``transformers`` (keyword arguments of
#: :func:`~experiments.harness.models.hf_llama`), windows, tokens per window and the strides of
#: the naive loop (neurons, heads), full and ``--quick``
LLAMA_FULL = {"llama": {"vocab_size": 114, "context": 64, "depth": 4, "width": 64, "heads": 8,
                        "kv_heads": 8, "ffn": 176},
              "samples": 64, "tokens": 64, "stride": 44, "head_stride": 2}
LLAMA_QUICK = {"llama": {"vocab_size": 40, "context": 16, "depth": 2, "width": 16, "heads": 4,
                         "kv_heads": 4, "ffn": 24},
               "samples": 8, "tokens": 16, "stride": 12, "head_stride": 4}


def _paired(ref, case, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Best-of-``repeats`` times of ``ref`` and ``case``, measured alternately."""
    t_ref, t_case = alternating(ref, case, repeats, warmup)
    return min(t_ref), min(t_case)


def _setup(name: str, quick: bool):
    torch.manual_seed(0)
    if name == "mlp":
        model = build_model("mlp", widths=[784, 512, 512, 10])
        batch = 64 if quick else 256
    else:
        model = build_model("thesis_cnn")
        batch = 200 if quick else 1000
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    return model, [(x, y)]


def _reference_pass(model, x: torch.Tensor, y: torch.Tensor, repeats: int,
                    loss_fn: Callable = F.cross_entropy) -> tuple[Callable[[], None], float]:
    """The reference every figure is a multiple of: one forward and backward pass of the summed
    loss (cross-entropy) over ``(x, y)``; returns it and its best time (paired with itself),
    the gradients cleared afterwards."""
    def fwd_bwd():
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y, reduction="sum").backward()

    t_fb, _ = _paired(fwd_bwd, fwd_bwd, repeats)
    model.zero_grad(set_to_none=True)
    return fwd_bwd, t_fb


def measure(name: str, repeats: int, quick: bool) -> list[dict]:
    model, data = _setup(name, quick)
    x, y = data[0]
    model.eval()

    fwd_bwd, t_fb = _reference_pass(model, x, y, repeats)

    def fwd():
        with torch.no_grad():
            model(x)

    rows = [{"model": name, "case": "forward+backward", "seconds": t_fb, "ratio": 1.0}]

    def row(case, fn, reps, note="", ref=fwd_bwd):
        t_ref, t = _paired(ref, fn, reps)
        model.zero_grad(set_to_none=True)
        rows.append({"model": name, "case": case, "seconds": t, "ratio": t / t_ref,
                     "note": note})
        return t_ref, t

    graph = trace(model, x[:1])
    layers = graph.prunable

    def stats_pass():
        with preserved(model):
            unit_statistics(model, graph, layers, data, F.cross_entropy,
                            stats=["mrs", "taylor", "dormancy", "apoz"])

    row("mrs_pass", stats_pass, repeats, "mrs, taylor, dormancy, apoz, moments in one pass")
    for sname in sorted(SCORERS):
        cls = SCORERS[sname]
        kwargs = {}
        if sname == "loss_change":
            kwargs["params"] = ["fc3.weight"] if name == "mlp" else ["conv1.weight"]
        scorer = cls(**kwargs)
        scored = prepare_for(cls, model, x[:1])  # switches / tri-state ReLUs if it reads them
        reps = max(1, repeats // 2) if sname in ("mrp", "loss_change") else repeats
        row(f"scorer:{sname}", lambda: scorer.score(scored, data), reps)
        if sname == "mrp":
            units = sum(graph.producers[n].num_units for n in layers)
            rows.append(dict(rows[-1], case="mrp_all_units", note=f"{units} units"))
    params = {n: p for n, p in model.named_parameters()}
    vec = {n: torch.randn_like(p) for n, p in params.items()}
    row("hvp", lambda: hvp(model, params, vec, data, F.cross_entropy), repeats)
    if name == "thesis_cnn":
        n_w = model.conv1.weight.numel()
        lc = SCORERS["loss_change"](params=["conv1.weight"])
        t_f, t = _paired(fwd, lambda: lc.score(model, data), max(2, repeats // 2))
        rows.append({"model": name, "case": "loss_change_conv1_speedup", "seconds": t,
                     "ratio": n_w * t_f / t,
                     "note": f"{n_w} weights; one forward {t_f * 1e3:.2f} ms each"})
    return rows


# -- ResNet-20: groups of coupled channels ----------------------------------------------------


def resnet_setup(widths: Sequence[int] = (16, 32, 64), samples: int = 256,
                 dtype: torch.dtype = torch.float32, seed: int = 0):
    """ResNet-20 at ``widths`` (eval mode) and one fixed batch ``[(x, y)]`` of ``samples``
    random 1x28x28 inputs (Fashion-MNIST's shape) with random labels of 10 classes."""
    torch.manual_seed(seed)
    model = build_model("resnet20", widths=tuple(widths)).to(dtype).eval()
    x = torch.randn(samples, 1, 28, 28, dtype=dtype)
    y = torch.randint(0, 10, (samples,))
    return model, [(x, y)]


def unit_subset(graph, stride: int, head_stride: int = 1) -> list[tuple[str, int]]:
    """Every ``stride``-th unit (0, stride, 2 stride, ...) of every prunable group of
    ``graph``, as ``(group, unit)`` pairs in forward order, then every ``head_stride``-th head
    of every attention module with prunable heads, as ``(module, head)``."""
    return [(name, i) for name in graph.prunable
            for i in range(0, graph.groups[name].size, stride)] + \
        [(name, h) for name in graph.prunable_heads
         for h in range(0, graph.heads[name].num_heads, head_stride)]


def _mean_loss(model, data, loss_fn) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in iter_batches(data):
            total += float(loss_fn(model(x), y, reduction="sum"))
            count += x.shape[0]
    return total / count


def naive_loss_changes(model, data, units: Sequence[tuple[str, int]],
                       loss_fn: Callable = F.cross_entropy) -> list[tuple[float, bool]]:
    """The loss change of removing each unit with mean replacement, one unit at a time.

    Per ``(group, unit)``: a deep copy of ``model``, :func:`pruners.remove_units` on the copy
    with ``replacement="mean"`` and ``data`` (the group channel removed from every member of
    the group), and a forward pass over ``data`` computing the mean loss. Returns, per unit,
    ``(loss after - loss before, exact)``, where ``exact`` says that the removal's bias fold
    is exact (the removed model computes what the model with the unit held at its mean
    computes); an inexact fold differs at zero-padded borders.
    """
    base = _mean_loss(model, data, loss_fn)
    out = []
    for name, i in units:
        pruned = copy.deepcopy(model)
        with warnings.catch_warnings():
            # an inexact fold is expected on padded convolutions: recorded below
            warnings.simplefilter("ignore", InexactReplacementWarning)
            report = remove_units(pruned, {name: [i]}, replacement="mean", data=data)
        out.append((_mean_loss(pruned, data, loss_fn) - base, not report.inexact))
    return out


def mrp_loss_changes(model, data, loss_fn: Callable = F.cross_entropy
                     ) -> dict[str, torch.Tensor]:
    """Exact MRP, signed and averaged over samples, of every unit and group of ``model``:
    the loss change of holding each unit at its mean (``SCORERS["mrp"]`` with
    ``absolute=False, reduction="mean"``), ``{group: float64 tensor over its units}``."""
    return SCORERS["mrp"](absolute=False, reduction="mean").score(model, data, loss_fn)


def agreement(mrp: dict[str, torch.Tensor], units: Sequence[tuple[str, int]],
              naive: Sequence[tuple[float, bool]]) -> dict:
    """Compare :func:`mrp_loss_changes` with :func:`naive_loss_changes` on ``units``.

    Returns the number of units whose removal is exact and the largest absolute difference
    there (``max_abs_diff``: the two must agree), the same for the inexact ones
    (``max_abs_diff_inexact``: removal differs from holding the unit at its mean at
    zero-padded borders, so this is no agreement check), and the groups of the exact units.
    """
    exact = [abs(float(mrp[g][i]) - d) for (g, i), (d, ok) in zip(units, naive) if ok]
    inexact = [abs(float(mrp[g][i]) - d) for (g, i), (d, ok) in zip(units, naive) if not ok]
    return {"units": len(units), "exact_units": len(exact),
            "max_abs_diff": max(exact) if exact else None,
            "inexact_units": len(inexact),
            "max_abs_diff_inexact": max(inexact) if inexact else None,
            "exact_groups": sorted({g for (g, _), (_, ok) in zip(units, naive) if ok})}


def mrp_vs_naive(model, data, units: Sequence[tuple[str, int]] | None = None,
                 loss_fn: Callable = F.cross_entropy) -> dict:
    """:func:`mrp_loss_changes` and :func:`naive_loss_changes` (on ``units``, default every
    unit) of ``model`` on ``data``, and their :func:`agreement`.

    Returns ``{"units": [(group, unit), ...], "mrp": [...], "naive": [...], "exact": [...],
    "agreement": {...}}``, the lists aligned with ``units``.
    """
    if units is None:
        units = unit_subset(trace(model, next(iter(iter_batches(data)))[0][:1]), 1)
    units = list(units)
    mrp = mrp_loss_changes(model, data, loss_fn)
    naive = naive_loss_changes(model, data, units, loss_fn)
    return {"units": units, "mrp": [float(mrp[g][i]) for g, i in units],
            "naive": [d for d, _ in naive], "exact": [ok for _, ok in naive],
            "agreement": agreement(mrp, units, naive)}


def _rounds(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 0
            ) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Wall times of every function of ``fns``, run in turn ``repeats`` times (the order
    rotated by one each round, after ``warmup`` untimed rounds), and each one's last result."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    last: dict[str, object] = {}
    for r in range(warmup + repeats):
        for j in range(len(names)):
            n = names[(j + r) % len(names)]
            t = time.perf_counter()
            last[n] = fns[n]()
            if r >= warmup:
                times[n].append(time.perf_counter() - t)
    return times, last


def measure_resnet(repeats: int, quick: bool) -> tuple[list[dict], dict]:
    """The ResNet-20 rows, and the :func:`agreement` of ``mrp`` with the naive loop."""
    setting = RESNET_QUICK if quick else RESNET_FULL
    model, data = resnet_setup(setting["widths"], setting["samples"])
    x, y = data[0]
    name = "resnet20"

    fwd_bwd, t_fb = _reference_pass(model, x, y, repeats)
    graph = trace(model, x[:1])
    layers = graph.prunable
    n_units = sum(graph.groups[n].size for n in layers)
    coupled = [n for n in layers if not is_chain(graph.groups[n])]
    shape = (f"{n_units} units in {len(layers)} groups ({len(coupled)} coupled, "
             f"{sum(graph.groups[n].size for n in coupled)} units)")
    rows = [{"model": name, "case": "forward+backward", "seconds": t_fb, "ratio": 1.0,
             "note": f"widths {tuple(setting['widths'])}, {x.shape[0]} synthetic 1x28x28"}]

    def stats_pass(stats):
        def run():
            with preserved(model):
                unit_statistics(model, graph, layers, data, F.cross_entropy, stats=stats)
        return run

    for case, stats, note in (
            ("mrs_pass_resnet20", ["mrs"], f"mrs of {shape}, one pass"),
            ("stats_pass_resnet20", ["mrs", "taylor", "dormancy", "apoz"],
             "with taylor, dormancy, apoz (read on the coupled groups' consumer inputs)")):
        t_ref, t = _paired(fwd_bwd, stats_pass(stats), repeats)
        model.zero_grad(set_to_none=True)
        rows.append({"model": name, "case": case, "seconds": t, "ratio": t / t_ref,
                     "note": note})

    units = unit_subset(graph, setting["stride"])
    n_coupled = sum(1 for g, _ in units if g in coupled)
    times, last = _rounds({"fwd_bwd": fwd_bwd,
                           "mrp": lambda: mrp_loss_changes(model, data),
                           "naive": lambda: naive_loss_changes(model, data, units)},
                          max(1, repeats // 2))
    model.zero_grad(set_to_none=True)
    t_ref, t_mrp, t_naive = (min(times[k]) for k in ("fwd_bwd", "mrp", "naive"))
    per_unit = t_naive / len(units)
    rows.append({"model": name, "case": "mrp_all_units_resnet20", "seconds": t_mrp,
                 "ratio": t_mrp / t_ref, "note": f"signed, {shape}"})
    rows.append({"model": name, "case": "naive_per_unit_resnet20", "seconds": per_unit,
                 "ratio": per_unit / t_ref,
                 "note": f"copy + remove_units + forward; timed on {len(units)} units "
                         f"(one in {setting['stride']} of every group, {n_coupled} coupled), "
                         "time per unit"})
    rows.append({"model": name, "case": "mrp_speedup_resnet20", "seconds": per_unit * n_units,
                 "ratio": per_unit * n_units / t_mrp,
                 "note": f"naive loop extrapolated to all {n_units} units / mrp"})
    agree = agreement(last["mrp"], units, last["naive"])
    agree["dtype"] = str(x.dtype).replace("torch.", "")
    return rows, agree


# -- ViT-tiny: attention heads and FFN neurons -----------------------------------------------


def vit_setup(vit: dict | None = None, samples: int = 256, dtype: torch.dtype = torch.float32,
              seed: int = 0):
    """ViT-tiny built with the keyword arguments ``vit`` (default: the zoo's; eval mode) and
    one fixed batch ``[(x, y)]`` of ``samples`` random images of its input shape with random
    labels of 10 classes."""
    vit = dict(vit or {})
    torch.manual_seed(seed)
    model = vit_tiny(**vit).to(dtype).eval()
    size, channels = vit.get("image_size", 28), vit.get("in_channels", 1)
    x = torch.randn(samples, channels, size, size, dtype=dtype)
    y = torch.randint(0, vit.get("num_classes", 10), (samples,))
    return model, [(x, y)]


def token_loss(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``(B, T, V)`` next-token logits and ``(B, T)`` targets, per token
    with ``reduction="none"`` (a window's loss is its tokens' mean:
    :func:`saliency.base.per_sample_loss`); ``"sum"`` sums the windows' mean losses, as the
    scorers' per-sample sum does."""
    per_token = F.cross_entropy(out.transpose(1, 2), y, reduction="none")
    if reduction == "none":
        return per_token
    per_window = per_token.mean(1)
    return per_window.sum() if reduction == "sum" else per_window.mean()


def llama_setup(llama: dict, samples: int, tokens: int, seed: int = 0):
    """``hf_llama`` built with the keyword arguments ``llama`` (eval mode, float32) and one
    fixed batch ``[(x, y)]`` of ``samples`` random windows of ``tokens`` token ids with random
    next tokens."""
    torch.manual_seed(seed)
    model = build_model("hf_llama", **llama).eval()
    x = torch.randint(0, llama["vocab_size"], (samples, tokens))
    y = torch.randint(0, llama["vocab_size"], (samples, tokens))
    return model, [(x, y)]


def _transformer(name: str, quick: bool):
    """``(model, data, loss_fn, stride, head_stride, note)`` of a transformer case."""
    if name == "vit_tiny":
        setting = VIT_QUICK if quick else VIT_FULL
        model, data = vit_setup(setting["vit"], setting["samples"])
        x = data[0][0]
        return (model, data, F.cross_entropy, setting["stride"], 1,
                f"{dict(setting['vit']) or 'zoo default'}, {x.shape[0]} random "
                f"{tuple(x.shape[1:])}")
    setting = LLAMA_QUICK if quick else LLAMA_FULL
    model, data = llama_setup(setting["llama"], setting["samples"], setting["tokens"])
    return (model, data, token_loss, setting["stride"], setting["head_stride"],
            f"{setting['llama']}, {setting['samples']} random windows of "
            f"{setting['tokens']} tokens")


def measure_transformer(name: str, repeats: int, quick: bool) -> tuple[list[dict], dict]:
    """The rows of a transformer (``vit_tiny`` or ``hf_llama``), and the :func:`agreement` of
    ``mrp`` with the naive loop (for all timed units, and for heads and FFN neurons apart
    under ``"by_kind"``)."""
    model, data, loss_fn, stride, head_stride, note = _transformer(name, quick)
    x, y = data[0]
    fwd_bwd, t_fb = _reference_pass(model, x, y, repeats, loss_fn)
    graph = trace(model, x[:1])
    ffns, attns = graph.prunable, graph.prunable_heads
    n_neurons = sum(graph.groups[n].size for n in ffns)
    n_heads = sum(graph.heads[n].num_heads for n in attns)
    shape = f"{n_heads} heads in {len(attns)} modules, {n_neurons} FFN neurons in {len(ffns)}"
    rows = [{"model": name, "case": "forward+backward", "seconds": t_fb, "ratio": 1.0,
             "note": note}]

    def ffn_pass():
        with preserved(model):
            unit_statistics(model, graph, ffns, data, loss_fn, stats=["mrs"])

    def head_pass():
        with preserved(model):
            head_statistics(model, graph.heads, attns, data, loss_fn)

    def both():
        with preserved(model):
            unit_statistics(model, graph, ffns, data, loss_fn, stats=["mrs"], heads=attns)

    for case, fn, what in (
            ("mrs_pass", both, f"mrs of {shape}: one forward+backward for both"),
            ("mrs_ffn_neurons", ffn_pass, "FFN neurons alone: one forward+backward"),
            ("mrs_heads", head_pass, "heads alone: one forward+backward")):
        t_ref, t = _paired(fwd_bwd, fn, repeats)
        model.zero_grad(set_to_none=True)
        rows.append({"model": name, "case": f"{case}_{name}", "seconds": t, "ratio": t / t_ref,
                     "note": what})
    rows_mrp, agree = _mrp_rows(name, model, data, loss_fn, graph, fwd_bwd, repeats, stride,
                                head_stride, shape)
    agree["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    return rows + rows_mrp, agree


def _mrp_rows(name, model, data, loss_fn, graph, fwd_bwd, repeats, stride, head_stride,
              shape) -> tuple[list[dict], dict]:
    """Exact MRP against the naive loop on a transformer: the rows and their agreement."""
    ffns, attns = graph.prunable, graph.prunable_heads
    n_neurons = sum(graph.groups[n].size for n in ffns)
    n_heads = sum(graph.heads[n].num_heads for n in attns)
    subset = unit_subset(graph, stride, head_stride)
    neurons = [(g, i) for g, i in subset if g in ffns]
    heads = [(g, h) for g, h in subset if g in attns]
    times, last = _rounds({
        "fwd_bwd": fwd_bwd,
        "mrp": lambda: mrp_loss_changes(model, data, loss_fn),
        "mrp_heads": lambda: head_mrp(model, graph.heads, attns, data, loss_fn,
                                      absolute=False),
        "naive_heads": lambda: naive_loss_changes(model, data, heads, loss_fn),
        "naive_neurons": lambda: naive_loss_changes(model, data, neurons, loss_fn)},
        max(1, repeats // 2))
    model.zero_grad(set_to_none=True)
    t_ref, t_mrp, t_mrp_heads, t_heads, t_neurons = (
        min(times[k]) for k in ("fwd_bwd", "mrp", "mrp_heads", "naive_heads", "naive_neurons"))
    per_head, per_neuron = t_heads / len(heads), t_neurons / len(neurons)
    t_naive = per_head * n_heads + per_neuron * n_neurons
    every = "all" if head_stride == 1 else f"one in {head_stride} of the"
    rows = [
        {"model": name, "case": f"mrp_all_units_{name}", "seconds": t_mrp,
         "ratio": t_mrp / t_ref, "note": f"signed, {shape}"},
        {"model": name, "case": f"mrp_heads_{name}", "seconds": t_mrp_heads,
         "ratio": t_mrp_heads / t_ref, "note": f"its {n_heads} heads alone: one forward each"},
        {"model": name, "case": f"naive_per_head_{name}", "seconds": per_head,
         "ratio": per_head / t_ref,
         "note": f"copy + remove_units + forward; timed on {every} {n_heads} heads "
                 f"({len(heads)}), time per head"},
        {"model": name, "case": f"naive_per_neuron_{name}", "seconds": per_neuron,
         "ratio": per_neuron / t_ref,
         "note": f"the same, timed on {len(neurons)} FFN neurons (one in {stride} "
                 "of every block), time per neuron"},
        {"model": name, "case": f"mrp_speedup_{name}", "seconds": t_naive,
         "ratio": t_naive / t_mrp,
         "note": f"naive loop over all {n_heads} heads and {n_neurons} neurons (extrapolated "
                 "from the timed ones) / mrp"},
        {"model": name, "case": f"mrp_speedup_heads_{name}",
         "seconds": per_head * n_heads, "ratio": per_head * n_heads / t_mrp_heads,
         "note": f"naive loop over the {n_heads} heads / mrp of the heads"},
    ]
    mrp = last["mrp"]
    agree = agreement(mrp, heads + neurons, last["naive_heads"] + last["naive_neurons"])
    agree["by_kind"] = {"heads": agreement(mrp, heads, last["naive_heads"]),
                        "ffn_neurons": agreement(mrp, neurons, last["naive_neurons"])}
    return rows, agree


def _target_models(case: str) -> tuple[str, ...]:
    """The models a target's case is measured on."""
    if case.endswith("_resnet20"):
        return ("resnet20",)
    for name in TRANSFORMERS:
        if case.endswith(f"_{name}"):
            return (name,)
    if case == "loss_change_conv1_speedup":
        return ("thesis_cnn",)
    return ("mlp", "thesis_cnn")


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2g}"


def main(argv: list[str] | None = None, file=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m experiments.bench.scorers")
    parser.add_argument("--quick", action="store_true",
                        help="smaller batches, a narrow ResNet-20 (widths 4, 8, 8), a tiny "
                             "ViT (12x12 inputs, 2 blocks of width 32), a tiny Llama (2 layers "
                             "of width 16), 2 repeats")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS),
                        help="the models to time (default: all)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads while timing (default: torch's setting); "
                             "on a busy machine, fewer threads than free cores avoids stalls")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    threads = torch.get_num_threads()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, file)
    finally:
        torch.set_num_threads(threads)


def _run(args, file) -> dict:
    out = file or sys.stdout
    repeats = 2 if args.quick else args.repeats
    models = [m for m in MODELS if m in args.models]
    rows, busy, agree, agree_tf = [], {}, None, {}
    start = cpu_mark()
    for name in models:
        mark = cpu_mark()
        if name == "resnet20":
            got, agree = measure_resnet(repeats, args.quick)
        elif name in TRANSFORMERS:
            got, agree_tf[name] = measure_transformer(name, repeats, args.quick)
        else:
            got = measure(name, repeats, args.quick)
        rows += got
        busy[name] = others_busy(mark)
    busy["all"] = others_busy(start)
    met = {}
    for case, (op, bound) in TARGETS.items():
        if not set(_target_models(case)) & set(models):
            continue
        vals = [r["ratio"] for r in rows if r["case"] == case]
        ok = all(v <= bound if op == "<=" else v >= bound for v in vals) and bool(vals)
        met[case] = {"values": vals, "target": f"{op} {bound}", "met": ok}
    for r in rows:
        if r["case"] in met:
            m = met[r["case"]]
            r["target"] = f"{m['target']} ({'met' if m['met'] else 'not met'})"
    print(f"scorer costs (torch {torch.__version__}, {torch.get_num_threads()} threads)", file=out)
    print(format_table(rows, {"model": "model", "case": "case", "seconds": "ms",
                              "ratio": "x fwd+bwd", "target": "target", "note": "note"},
                       formats={"seconds": lambda v: f"{v * 1e3:.2f}", "ratio": ".2f"},
                       missing=""), file=out)
    if agree is not None:
        print(f"resnet20: mrp against the naive loop ({agree['dtype']}) on {agree['units']} "
              f"units: {agree['exact_units']} with an exact removal, max |difference| "
              f"{_fmt(agree['max_abs_diff'])}; {agree['inexact_units']} whose removal differs "
              "at zero-padded borders (no agreement expected), max |difference| "
              f"{_fmt(agree['max_abs_diff_inexact'])}", file=out)
    for name, ag in agree_tf.items():
        kinds = ag["by_kind"]
        print(f"{name}: mrp against the naive loop ({ag['dtype']}) on "
              f"{kinds['heads']['units']} heads and {kinds['ffn_neurons']['units']} FFN neurons: "
              f"{ag['exact_units']} of {ag['units']} with an exact removal; max "
              f"|difference| {_fmt(kinds['heads']['max_abs_diff'])} (heads), "
              f"{_fmt(kinds['ffn_neurons']['max_abs_diff'])} (FFN neurons)", file=out)
    print("other processes kept "
          + ", ".join(f"{'-' if v is None else f'{v:.2f}'} CPUs busy ({k})"
                      for k, v in busy.items())
          + " while timing", file=out)
    if any(v is not None and v > BUSY_WARNING for v in busy.values()):
        print(f"warning: other processes used more than {BUSY_WARNING} CPUs; the timings are "
              "noisy", file=out)
    result = {"benchmark": "scorers", "rows": rows, "targets": met,
              "others_busy": busy, "agreement": agree,
              **{f"agreement_{n}": agree_tf.get(n) for n in TRANSFORMERS if n in models},
              "targets_met": all(m["met"] for m in met.values())}
    print(json.dumps(result), file=out)
    return result


if __name__ == "__main__":
    main()
