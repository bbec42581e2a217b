"""Property tests: masking equals removal, removal is exact, sizes add up.

Random float64 MLP and CNN stacks with random unit subsets and random
replacements. For every example:

* ``mask_units`` and ``remove_units`` on deep copies of the same model give the
  same outputs on fresh random inputs (max abs diff <= 1e-10);
* ``count_params`` of both equals a count computed by hand from the
  architecture description and the numbers of removed units;
* the removed model equals an independent reference built from the original
  with plain hooks: units held at their constants (forward hooks on the
  producers) or, without replacement, zeroed where the consumers read them
  (forward pre-hooks on the consumers). Where the fold is inexact (zero-padded
  conv consumer) the reported ``max_deviation`` must equal the measured one.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pruners import (InexactReplacementWarning, count_params, mask_units, remove_units,
                     trace)


SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
TOL = 1e-10
ACTS = {
    "relu": lambda slope: nn.ReLU(),
    "tanh": lambda slope: nn.Tanh(),
    "sigmoid": lambda slope: nn.Sigmoid(),
    "leaky_relu": lambda slope: nn.LeakyReLU(slope),
}


# ---------------------------------------------------------------------------
# architecture descriptions


@dataclass
class MLPSpec:
    widths: list[int]  # input, hidden..., output
    bias: list[bool]  # one per Linear
    act: str
    slope: float
    dropout: bool
    bn: str  # "none", "before" (Linear-BN-act) or "after" (Linear-act-BN)


@dataclass
class ConvSpec:
    out: int
    k: int
    pad: int
    bias: bool
    bn: bool
    pool: bool


@dataclass
class CNNSpec:
    in_ch: int
    size: int
    convs: list[ConvSpec]
    act: str
    fc: list[int]  # widths of the Linear layers after Flatten (the last is the output)
    fc_bias: list[bool]

    def spatial(self) -> list[int]:
        """Side of the feature map after each conv block (after pooling)."""
        h, out = self.size, []
        for c in self.convs:
            h = h + 2 * c.pad - c.k + 1
            if c.pool:
                h //= 2
            out.append(h)
        return out


@dataclass
class Case:
    spec: MLPSpec | CNNSpec
    seed: int
    batch: int
    subsets: dict[str, list[int]]  # producer name -> removed indices, in the order given
    container: dict[str, str]  # how the indices are passed: list, tuple, tensor
    empty: str  # how an empty selection is passed: omitted or an empty long tensor
    replacement: tuple
    producers: list[str] = field(default_factory=list)


def build_mlp(spec: MLPSpec) -> tuple[nn.Sequential, list[str]]:
    layers: list[nn.Module] = []
    producers = []
    w = spec.widths
    for i in range(1, len(w) - 1):
        producers.append(str(len(layers)))
        layers.append(nn.Linear(w[i - 1], w[i], bias=spec.bias[i - 1]))
        if spec.bn == "before":
            layers.append(nn.BatchNorm1d(w[i]))
        layers.append(ACTS[spec.act](spec.slope))
        if spec.bn == "after":
            layers.append(nn.BatchNorm1d(w[i]))
        if spec.dropout:
            layers.append(nn.Dropout(0.3))
    producers.append(str(len(layers)))
    layers.append(nn.Linear(w[-2], w[-1], bias=spec.bias[-1]))
    return nn.Sequential(*layers), producers


def build_cnn(spec: CNNSpec) -> tuple[nn.Sequential, list[str]]:
    layers: list[nn.Module] = []
    producers = []
    cin = spec.in_ch
    for c in spec.convs:
        producers.append(str(len(layers)))
        layers.append(nn.Conv2d(cin, c.out, c.k, padding=c.pad, bias=c.bias))
        if c.bn:
            layers.append(nn.BatchNorm2d(c.out))
        layers.append(ACTS[spec.act](0.0))
        if c.pool:
            layers.append(nn.MaxPool2d(2))
        cin = c.out
    layers.append(nn.Flatten())
    fin = cin * spec.spatial()[-1] ** 2
    for j, (f, b) in enumerate(zip(spec.fc, spec.fc_bias)):
        if j:
            layers.append(ACTS[spec.act](0.0))
        producers.append(str(len(layers)))
        layers.append(nn.Linear(fin, f, bias=b))
        fin = f
    return nn.Sequential(*layers), producers


def build(case: Case) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """The float64 model in eval mode, a data batch and fresh test inputs."""
    torch.manual_seed(case.seed)
    if isinstance(case.spec, MLPSpec):
        model, _ = build_mlp(case.spec)
        shape: tuple[int, ...] = (case.spec.widths[0],)
    else:
        model, _ = build_cnn(case.spec)
        shape = (case.spec.in_ch, case.spec.size, case.spec.size)
    model = model.double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, dtype=torch.float64))
                m.running_var.copy_(torch.rand(n, dtype=torch.float64) + 0.5)
                m.weight.copy_(torch.randn(n, dtype=torch.float64))
                m.bias.copy_(torch.randn(n, dtype=torch.float64))
            elif isinstance(m, (nn.Linear, nn.Conv2d)) and m.bias is not None:
                m.bias.copy_(0.5 * torch.randn_like(m.bias))
    model.eval()
    x = torch.randn((case.batch,) + shape, dtype=torch.float64)
    x_test = torch.randn((7,) + shape, dtype=torch.float64)
    return model, x, x_test


# ---------------------------------------------------------------------------
# strategies


@st.composite
def mlp_specs(draw) -> MLPSpec:
    depth = draw(st.integers(1, 4))
    widths = draw(st.lists(st.integers(2, 12), min_size=depth + 2, max_size=depth + 2))
    return MLPSpec(
        widths=widths,
        bias=draw(st.lists(st.booleans(), min_size=depth + 1, max_size=depth + 1)),
        act=draw(st.sampled_from(sorted(ACTS))),
        slope=draw(st.sampled_from([0.01, 0.1, 0.3])),
        dropout=draw(st.booleans()),
        bn=draw(st.sampled_from(["none", "before", "after"])),
    )


@st.composite
def cnn_specs(draw) -> CNNSpec:
    size = draw(st.integers(4, 8))
    convs, h = [], size
    for _ in range(draw(st.integers(1, 3))):
        pad = draw(st.integers(0, 1))
        k = draw(st.integers(1, min(3, h + 2 * pad)))
        h = h + 2 * pad - k + 1
        pool = h >= 2 and draw(st.booleans())
        if pool:
            h //= 2
        convs.append(ConvSpec(out=draw(st.integers(2, 6)), k=k, pad=pad,
                              bias=draw(st.booleans()), bn=draw(st.booleans()), pool=pool))
    n_fc = draw(st.integers(1, 2))
    fc = draw(st.lists(st.integers(2, 8), min_size=n_fc, max_size=n_fc))
    return CNNSpec(in_ch=draw(st.integers(1, 3)), size=size, convs=convs,
                   act=draw(st.sampled_from(["relu", "tanh"])), fc=fc,
                   fc_bias=draw(st.lists(st.booleans(), min_size=n_fc, max_size=n_fc)))


def producer_widths(spec) -> list[int]:
    if isinstance(spec, MLPSpec):
        return spec.widths[1:]
    return [c.out for c in spec.convs] + spec.fc


# Explicit constants are drawn exactly representable in float32: the library
# turns Python floats into float32 tensors before folding them into float64
# models (see test_python_float_constant_keeps_float64_precision below).
finite = st.floats(-3.0, 3.0, allow_nan=False, allow_infinity=False, width=32)


REPLACEMENT_KINDS = ["none", "zero", "mean", "explicit"]


@st.composite
def cases(draw, spec_strategy, kind: str) -> Case:
    """A model description, unit subsets and a replacement of the given kind.

    ``kind="explicit"`` draws a scalar, a ``{layer: float or values}`` dict, or
    (with one layer) a tensor, with values aligned with the indices as given.
    """
    spec = draw(spec_strategy)
    builder = build_mlp if isinstance(spec, MLPSpec) else build_cnn
    _, producers = builder(spec)  # names only (cheap: tiny modules)
    widths = producer_widths(spec)
    subsets, container = {}, {}
    for name, w in zip(producers[:-1], widths[:-1]):  # the last one is the output layer
        k = draw(st.integers(0, w - 1), label=f"number removed from {name}")
        subsets[name] = draw(st.permutations(range(w)))[:k]
        container[name] = draw(st.sampled_from(["list", "tuple", "tensor"]))
    nonempty = [n for n, s in subsets.items() if s]
    if kind == "explicit":
        kind = draw(st.sampled_from(["scalar", "dict"] + (["tensor"] if len(nonempty) == 1
                                                          else [])))
    if kind == "scalar":
        replacement: tuple = ("scalar", draw(finite))
    elif kind == "dict":
        vals = {}
        for n in nonempty:
            if draw(st.booleans()):
                vals[n] = draw(finite)
            else:
                vals[n] = draw(st.lists(finite, min_size=len(subsets[n]),
                                        max_size=len(subsets[n])))
        replacement = ("dict", vals)
    elif kind == "tensor":
        n = nonempty[0]
        replacement = ("tensor", draw(st.lists(finite, min_size=len(subsets[n]),
                                               max_size=len(subsets[n]))))
    else:
        replacement = (kind,)
    return Case(spec=spec, seed=draw(st.integers(0, 2**16)), batch=draw(st.integers(2, 6)),
                subsets=subsets, container=container,
                empty=draw(st.sampled_from(["omit", "long_tensor"])),
                replacement=replacement, producers=producers)


# ---------------------------------------------------------------------------
# turning a case into arguments and expectations


def units_arg(case: Case) -> dict:
    units = {}
    for name, idx in case.subsets.items():
        if not idx:
            # An empty selection is omitted or passed as an empty long tensor
            # (empty lists: test_errors.py, test_empty_index_list_is_not_an_error).
            # A tensor replacement needs exactly one layer in units.
            if case.empty == "long_tensor" and case.replacement[0] != "tensor":
                units[name] = torch.tensor([], dtype=torch.long)
            continue
        how = case.container[name]
        units[name] = (list(idx) if how == "list" else tuple(idx) if how == "tuple"
                       else torch.tensor(idx))
    return units


def replacement_arg(case: Case):
    kind = case.replacement[0]
    if kind == "none":
        return None
    if kind in ("zero", "mean"):
        return kind
    if kind == "scalar":
        return case.replacement[1]
    if kind == "tensor":
        return torch.tensor(case.replacement[1], dtype=torch.float64)
    return {n: (v if isinstance(v, float) else torch.tensor(v, dtype=torch.float64))
            for n, v in case.replacement[1].items()}


def expected_constants(case: Case, model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per layer, the constant of each removed unit in sorted index order.

    Computed here without the library: explicit values re-ordered by hand,
    means from plain forward hooks on the original model.
    """
    nonempty = {n: s for n, s in case.subsets.items() if s}
    kind = case.replacement[0]
    out = {}
    if kind == "mean":
        acts = {}
        handles = [model.get_submodule(n).register_forward_hook(
            lambda m, i, o, n=n: acts.__setitem__(n, o.detach())) for n in nonempty]
        try:
            with torch.no_grad():
                model(x)
        finally:
            for h in handles:
                h.remove()
    for n, idx in nonempty.items():
        order = sorted(range(len(idx)), key=lambda j: idx[j])
        if kind == "zero":
            vals = [0.0] * len(idx)
        elif kind == "scalar":
            vals = [case.replacement[1]] * len(idx)
        elif kind == "tensor":
            vals = case.replacement[1]
        elif kind == "dict":
            v = case.replacement[1][n]
            vals = [v] * len(idx) if isinstance(v, float) else v
        else:  # mean over the batch and positions
            o = acts[n]
            dims = [0] + list(range(2, o.dim()))
            means = o.mean(dim=dims)
            vals = [float(means[i]) for i in idx]
        out[n] = torch.tensor([vals[j] for j in order], dtype=torch.float64)
    return out


def removed_counts(case: Case) -> list[int]:
    """Units removed per producer, in forward order (0 for the output layer)."""
    return [len(case.subsets.get(n, [])) for n in case.producers]


def folded_consumers(case: Case, model: nn.Module, x: torch.Tensor) -> set[str]:
    """Consumers that receive a non-zero constant from a removed unit.

    Found without the library: the producers' removed outputs are held at
    their constants by forward hooks, and the tensor entering each consumer
    (before any flatten) is inspected at the removed channels. Only these
    consumers get a bias folded into them (a bias-free one gets created).
    """
    if case.replacement[0] == "none":
        return set()
    consts = expected_constants(case, model, x)
    mods = list(model)
    names = [str(i) for i in range(len(mods))]
    seen: dict[str, torch.Tensor] = {}
    handles = []
    for n, idx in case.subsets.items():
        if not idx:
            continue
        sorted_idx = torch.tensor(sorted(idx))

        def hold(m, i, o, idx=sorted_idx, v=consts[n]):
            o = o.clone()
            o[:, idx] = v.reshape((1, -1) + (1,) * (o.dim() - 2))
            return o
        handles.append(model.get_submodule(n).register_forward_hook(hold))
    out = set()
    pairs = list(zip(case.producers[:-1], case.producers[1:]))
    for prod, cons in pairs:
        j = names.index(cons) - 1
        while isinstance(mods[j], nn.Flatten):
            j -= 1
        handles.append(mods[j].register_forward_hook(
            lambda m, i, o, cons=cons: seen.__setitem__(cons, o.detach())))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    for prod, cons in pairs:
        idx = case.subsets.get(prod, [])
        if idx and bool((seen[cons][:, sorted(idx)] != 0).any()):
            out.add(cons)
    return out


def expected_params(case: Case, folded: set[str] = frozenset()) -> int:
    """Parameter count after removal, from the description alone.

    A consumer without bias gets one when a non-zero constant is folded into
    it (``folded``, from :func:`folded_consumers`).
    """
    spec, r = case.spec, removed_counts(case)
    names = iter(case.producers)

    def has_bias(own: bool, r_in: int) -> int:
        return int(own or next_name in folded)

    total = 0
    if isinstance(spec, MLPSpec):
        w = spec.widths
        r_in = 0
        for l in range(1, len(w)):
            next_name = next(names)
            n_in, n_out = w[l - 1] - r_in, w[l] - r[l - 1]
            total += n_in * n_out + has_bias(spec.bias[l - 1], r_in) * n_out
            if spec.bn != "none" and l < len(w) - 1:
                total += 2 * n_out
            r_in = r[l - 1]
        return total
    cin, r_in = spec.in_ch, 0
    for l, c in enumerate(spec.convs):
        next_name = next(names)
        n_in, n_out = cin - r_in, c.out - r[l]
        total += n_in * n_out * c.k * c.k + has_bias(c.bias, r_in) * n_out
        if c.bn:
            total += 2 * n_out
        cin, r_in = c.out, r[l]
    k = len(spec.convs)
    fin, r_in = (cin - r_in) * spec.spatial()[-1] ** 2, r_in
    for j, (f, b) in enumerate(zip(spec.fc, spec.fc_bias)):
        next_name = next(names)
        n_out = f - r[k + j]
        total += fin * n_out + has_bias(b, r_in) * n_out
        fin, r_in = n_out, r[k + j]
    return total


def padded_conv_consumers(case: Case) -> set[str]:
    """Consumers whose constant fold may be inexact: convs with zero padding."""
    if isinstance(case.spec, MLPSpec):
        return set()
    names = case.producers[: len(case.spec.convs)]
    return {n for n, c in zip(names, case.spec.convs) if c.pad > 0}


def run_both(case: Case, model: nn.Module, x: torch.Tensor):
    """mask_units and remove_units on deep copies; inexact warnings only where allowed."""
    units, rep = units_arg(case), replacement_arg(case)
    data = [(x, torch.zeros(len(x), dtype=torch.long))]
    masked, removed = copy.deepcopy(model), copy.deepcopy(model)
    with warnings.catch_warnings():
        if padded_conv_consumers(case) and rep is not None:
            warnings.simplefilter("ignore", InexactReplacementWarning)
        else:
            warnings.simplefilter("error", InexactReplacementWarning)
        rm = mask_units(masked, units, replacement=rep, data=data)
        rr = remove_units(removed, units, replacement=rep, data=data)
    return masked, removed, rm, rr


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ---------------------------------------------------------------------------
# the properties


def check_masked_equals_removed(case: Case) -> None:
    model, x, x_test = build(case)
    graph = trace(model, x[:1])
    assert graph.prunable == case.producers[:-1]
    masked, removed, rm, rr = run_both(case, model, x)
    event(f"replacement={case.replacement[0]}, layers with removed units={len(rr.removed)}")
    assert not masked.training and not removed.training
    with torch.no_grad():
        for inp in (x, x_test):
            out_m, out_r = masked(inp), removed(inp)
            assert out_m.shape == out_r.shape == model(inp).shape
            assert max_diff(out_m, out_r) <= TOL

    expected = expected_params(case, folded_consumers(case, model, x))
    assert count_params(removed) == expected
    assert count_params(masked) == expected  # masked entries are not counted
    assert rr.params_after == rm.params_after == expected
    assert rr.params_before == rm.params_before == count_params(model)

    # the layers really shrank, and the report says by how much
    r = removed_counts(case)
    for name, width, k in zip(case.producers, producer_widths(case.spec), r):
        mod = removed.get_submodule(name)
        n_out = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
        assert n_out == mod.weight.shape[0] == width - k
        assert masked.get_submodule(name).weight.shape == model.get_submodule(name).weight.shape
    assert rr.removed == rm.removed == {n: len(s) for n, s in case.subsets.items() if s}


def check_removed_equals_reference(case: Case) -> None:
    """Removed model == original with units held constant (or zeroed at the consumers)."""
    model, x, x_test = build(case)
    _, removed, _, rr = run_both(case, model, x)
    graph = trace(model, x[:1])
    nonempty = {n: torch.tensor(sorted(s)) for n, s in case.subsets.items() if s}
    handles = []
    if case.replacement[0] == "none":
        # consumers read 0 wherever a removed unit was
        for n, idx in nonempty.items():
            for edge in graph.consumers_of(n):
                cols = edge.columns(idx)

                def pre(m, args, cols=cols):
                    inp = args[0].clone()
                    inp[:, cols] = 0
                    return (inp,)
                handles.append(model.get_submodule(edge.consumer).register_forward_pre_hook(pre))
        assert rr.constants == {} and rr.inexact == []
    else:
        consts = expected_constants(case, model, x)
        assert set(rr.constants) == set(consts)
        for n, c in consts.items():
            torch.testing.assert_close(rr.constants[n].double(), c, rtol=0, atol=1e-12)
            assert torch.equal(rr.indices[n], nonempty[n])

            def hook(m, args, out, idx=nonempty[n], c=c):
                out = out.clone()
                out[:, idx] = c.reshape((1, -1) + (1,) * (out.dim() - 2))
                return out
            handles.append(model.get_submodule(n).register_forward_hook(hook))
    try:
        with torch.no_grad():
            ref_data, ref_test = model(x), model(x_test)
            out_data, out_test = removed(x), removed(x_test)
    finally:
        for h in handles:
            h.remove()
    assert set(rr.inexact) <= padded_conv_consumers(case)
    event(f"replacement={case.replacement[0]}, inexact fold={bool(rr.inexact)}")
    if rr.inexact:
        # inexact only at the borders: the report measured the deviation on data
        assert rr.max_deviation == pytest.approx(max_diff(out_data, ref_data),
                                                 rel=1e-9, abs=1e-12)
    else:
        assert rr.max_deviation is None
        assert max_diff(out_data, ref_data) <= TOL
        assert max_diff(out_test, ref_test) <= TOL


@pytest.mark.parametrize("kind", REPLACEMENT_KINDS)
@SETTINGS
@given(data=st.data())
def test_mlp_masked_equals_removed(kind, data):
    check_masked_equals_removed(data.draw(cases(mlp_specs(), kind), label="case"))


@pytest.mark.parametrize("kind", REPLACEMENT_KINDS)
@SETTINGS
@given(data=st.data())
def test_cnn_masked_equals_removed(kind, data):
    check_masked_equals_removed(data.draw(cases(cnn_specs(), kind), label="case"))


@pytest.mark.parametrize("kind", REPLACEMENT_KINDS)
@SETTINGS
@given(data=st.data())
def test_mlp_removed_equals_hooked_reference(kind, data):
    check_removed_equals_reference(data.draw(cases(mlp_specs(), kind), label="case"))


@pytest.mark.parametrize("kind", REPLACEMENT_KINDS)
@SETTINGS
@given(data=st.data())
def test_cnn_removed_equals_hooked_reference(kind, data):
    check_removed_equals_reference(data.draw(cases(cnn_specs(), kind), label="case"))


def test_expected_params_matches_an_unpruned_model():
    """The hand count itself: with nothing removed it is the model's count."""
    mlp = MLPSpec([5, 7, 3, 2], [True, False, True], "relu", 0.1, True, "before")
    cnn = CNNSpec(2, 8, [ConvSpec(3, 3, 1, True, True, True),
                         ConvSpec(4, 2, 0, False, False, False)], "tanh", [5, 3], [False, True])
    for spec in (mlp, cnn):
        model, producers = (build_mlp if isinstance(spec, MLPSpec) else build_cnn)(spec)
        case = Case(spec, 0, 2, {}, {}, "omit", ("none",), producers)
        assert expected_params(case) == sum(p.numel() for p in model.parameters())
    # 8 -> conv k3 p1 -> 8 -> pool -> 4 -> conv k2 p0 -> 3: 4*3*3 = 36 features
    assert cnn.spatial() == [4, 3]
    assert math.prod(build_cnn(cnn)[0][-3].weight.shape) == 36 * 5


def test_python_float_constant_keeps_float64_precision():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double().eval()
    x = torch.randn(5, 3, dtype=torch.float64)
    c = 0.1  # not representable in float32
    ref = copy.deepcopy(net)
    ref[0].register_forward_hook(lambda m, i, o: o.index_fill(1, torch.tensor([1]), c))
    report = remove_units(net, {"0": [1]}, replacement=c)
    with torch.no_grad():
        assert max_diff(net(x), ref(x)) <= TOL  # fails: off by ~1e-9 (0.1 rounded to float32)
    assert report.constants["0"].dtype == torch.float64
