"""Scheduled pruning: schedules, ParameterPruner, UnitPruner, unit cleanup (f_nz).

Every test checks numbers against an independent reference: closed forms of
the schedules (hand-computed Zhu & Gupta values, brute-force tables), torch's
own pruning functions (``prune._compute_nparams_toprune``,
``prune.global_unstructured``, ``prune.l1_unstructured``, the
``weight_orig``/``weight_mask`` state-dict layout), brute-force selections of
the lowest scores, losses computed by hand with ``F.cross_entropy``, the
signed MRP of the removed unit, masked twins of physically shrunk models, and
zoo architectures rebuilt at the shrunk widths. Models are tiny and float64
where exactness is tested (tolerance 1e-10).
"""

from __future__ import annotations

import copy
import io
import math
import pickle
import warnings
from fractions import Fraction

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.nn.utils.prune as prune
from helpers_snapshot import assert_unchanged, take
from hypothesis import given
from hypothesis import strategies as st
from zoo import build, thesis_cnn

from pruners import (ParameterPruner, RoundReport, UnitPruner, UnsupportedArchitecture,
                     count_macs, count_params, mean_loss, nonzero_fractions,
                     remove_sparse_units, schedules, sparse_units)
from pruners.pruning import EmptiedTensorWarning, OutputLayerWarning, output_layers
from pruners.schedules import (THESIS_PARAMETERS, THESIS_UNITS, amount_to_count, check_amount,
                               constant, cubic, linear, table)
from saliency import MRP, Norm, RandomParameter
from saliency.base import ParameterScorer, UnitScorer

TOL = 1e-10
N_OUT = {"mlp": 3, "mlp_bn": 3, "mlp_dropout": 3, "cnn": 4}


# ---------------------------------------------------------------------------
# helpers


def batches(arch_shape, n_out, sizes=(10, 14), seed=0, dtype=torch.float64):
    """Random ``(x, y)`` batches of the given sizes (unequal, so per-sample means matter)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = torch.randn((n,) + tuple(arch_shape), generator=gen).to(dtype)
        y = torch.randint(0, n_out, (n,), generator=gen)
        out.append((x, y))
    return out


def hand_loss(model, data) -> float:
    """Mean cross-entropy per sample, in eval mode, by hand (the reference of mean_loss)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            total = sum(float(F.cross_entropy(model(x), y, reduction="sum")) for x, y in data)
    finally:
        model.train(was)
    return total / sum(int(y.shape[0]) for _, y in data)


def outputs(model, x):
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x).clone()
    finally:
        model.train(was)


def eff(model, key):
    """The tensor ``key`` ("fc1.weight") as the forward pass uses it (orig * mask)."""
    mname, _, pname = key.rpartition(".")
    mod = model.get_submodule(mname)
    if hasattr(mod, pname + "_orig"):
        return (getattr(mod, pname + "_orig") * getattr(mod, pname + "_mask")).detach()
    return getattr(mod, pname).detach()


def raw(model, key):
    """The parameter behind ``key`` (``weight_orig`` when pruned)."""
    mname, _, pname = key.rpartition(".")
    mod = model.get_submodule(mname)
    orig = getattr(mod, pname + "_orig", None)
    return orig if orig is not None else getattr(mod, pname)


def mask_of(model, key):
    mname, _, pname = key.rpartition(".")
    mod = model.get_submodule(mname)
    m = getattr(mod, pname + "_mask", None)
    return torch.ones_like(getattr(mod, pname)) if m is None else m.detach()


def pruned_set(model, keys):
    """``{(key, flat index)}`` of the entries whose mask is 0."""
    out = set()
    for k in keys:
        for i in torch.nonzero(mask_of(model, k).reshape(-1) == 0).flatten().tolist():
            out.add((k, i))
    return out


def weight_keys(model):
    return [f"{n}.weight" for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def brute_lowest(model, keys, score_of, count):
    """The ``count`` alive entries with the lowest score over ``keys``, by brute force.

    Asserts there is no tie at the selection boundary (the reference is then unique).
    """
    entries = []
    for k in keys:
        s = score_of(k).reshape(-1).tolist()
        m = mask_of(model, k).reshape(-1).tolist()
        entries += [(s[i], k, i) for i in range(len(s)) if m[i] != 0]
    entries.sort()
    if 0 < count < len(entries):
        assert entries[count - 1][0] < entries[count][0], "tie at the boundary: change the seed"
    return {(k, i) for _, k, i in entries[:count]}


def train_steps(model, opt, data, steps):
    model.train()
    for i in range(steps):
        x, y = data[i % len(data)]
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def frac_floor(f, n):
    """floor(f * n) in exact rational arithmetic (f as written in decimal)."""
    return math.floor(Fraction(repr(f)) * n)


def make_opt(name, params):
    if name == "sgd":
        return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-2)
    if name == "adam":
        return torch.optim.Adam(params, lr=0.01, weight_decay=1e-3)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=0.01, weight_decay=0.05)
    raise AssertionError(name)


class FixedUnitScores(UnitScorer):
    """A unit scorer returning given scores (to choose which units a pruner removes)."""

    needs_data = False

    def __init__(self, scores, **kwargs):
        super().__init__(**kwargs)
        self.fixed = scores

    def _score(self, model, data, loss_fn):
        return {k: v.clone() for k, v in self.fixed.items()}


class FixedParamScores(ParameterScorer):
    needs_data = False

    def __init__(self, scores, params=None):
        super().__init__(params)
        self.fixed = scores

    def _score(self, model, data, loss_fn):
        return {k: v.clone() for k, v in self.fixed.items()}


# ---------------------------------------------------------------------------
# 1. schedules


def test_thesis_tables():
    assert [THESIS_PARAMETERS(t) for t in range(8)] == [0.0, 0.0, 0.2, 0.5, 0.8, 0.9, 0.9, 0.9]
    assert [THESIS_UNITS(t) for t in range(8)] == [0.0, 0.0, 0.1, 0.2, 0.4, 0.6, 0.6, 0.6]
    assert THESIS_PARAMETERS.final == 0.9 and THESIS_UNITS.final == 0.6
    assert THESIS_PARAMETERS.milestones(10) == [2, 3, 4, 5] == THESIS_UNITS.milestones(10)
    assert schedules.THESIS_PARAMETERS is THESIS_PARAMETERS


# amounts as multiples of 1/1000 (exact decimals, so floors and rounds have a unique answer)
_milli = st.integers(0, 1000)


@given(st.dictionaries(st.integers(0, 40), _milli, min_size=1, max_size=6), st.booleans())
def test_table_matches_brute_force(raw, counts):
    ts = sorted(raw)
    vals, cur = [], 0
    for t in ts:  # make it non-decreasing
        cur = max(cur, raw[t])
        vals.append(cur if counts else cur / 1000)
    # given in reverse order: the table sorts by step
    s = table({t: v for t, v in reversed(list(zip(ts, vals)))})
    prev = None
    for t in range(ts[-1] + 4):
        expected = 0 if counts else 0.0
        for t0, v in zip(ts, vals):
            if t0 <= t:
                expected = v
        got = s(t)
        assert got == expected and type(got) is type(expected)
        assert prev is None or got >= prev
        prev = got
    assert s.final == vals[-1] == s(ts[-1])
    assert s.milestones(ts[-1] + 3) == [t for i, t in enumerate(ts)
                                        if vals[i] != (vals[i - 1] if i else s(0)) and t > 0]


@given(_milli, _milli, st.integers(0, 30), st.integers(1, 30))
def test_linear_endpoints_closed_form_monotone(a, b, begin, length):
    initial, final = min(a, b) / 1000, max(a, b) / 1000
    end = begin + length
    s = linear(final=final, begin=begin, end=end, initial=initial)
    assert s(begin) == initial and s(end) == final and s(end + 7) == final
    assert all(s(t) == initial for t in range(begin + 1))
    prev = initial
    for t in range(end + 3):
        v = s(t)
        ref = initial + (final - initial) * min(max(t - begin, 0), length) / length
        assert abs(v - ref) <= 1e-15 and v >= prev and initial <= v <= final
        prev = v
    if length % 2 == 0:
        assert abs(s(begin + length // 2) - (initial + final) / 2) <= 1e-15


def test_cubic_hand_values():
    # Zhu & Gupta eq. 1 by hand: s_i=0.1, s_f=0.9, t0=2, n*dt=8, dt=2
    s = cubic(final=0.9, begin=2, end=10, initial=0.1, frequency=2)
    expected = {0: 0.1, 1: 0.1, 2: 0.1, 3: 0.1,
                4: 0.9 - 0.8 * 0.75 ** 3,  # 0.5625
                5: 0.5625,
                6: 0.9 - 0.8 * 0.5 ** 3,  # 0.8
                7: 0.8,
                8: 0.9 - 0.8 * 0.25 ** 3,  # 0.8875
                9: 0.8875, 10: 0.9, 11: 0.9, 100: 0.9}
    for t, v in expected.items():
        assert abs(s(t) - v) <= 1e-15, t
    assert abs(cubic(final=0.8, begin=0, end=10)(5) - 0.7) <= 1e-15
    assert s.milestones(12) == [4, 6, 8, 10]


@given(_milli, _milli, st.integers(0, 20), st.integers(1, 6), st.integers(1, 5))
def test_cubic_is_zhu_gupta_at_update_steps(a, b, begin, n, dt):
    s_i, s_f = min(a, b) / 1000, max(a, b) / 1000
    end = begin + n * dt
    s = cubic(final=s_f, begin=begin, end=end, initial=s_i, frequency=dt)
    assert s(begin) == s_i and s(end) == s_f
    prev = s(0)
    for t in range(end + 3):
        v = s(t)
        if t < begin:
            ref = s_i
        elif t >= end:
            ref = s_f
        else:
            tu = begin + (t - begin) // dt * dt  # the last update step
            ref = s_f + (s_i - s_f) * (1 - (tu - begin) / (n * dt)) ** 3
        assert abs(v - ref) <= 1e-12
        assert v >= prev and s_i - 1e-15 <= v <= s_f + 1e-15
        prev = v


@given(st.one_of(_milli.map(lambda k: k / 1000), st.integers(0, 500)), st.integers(0, 10))
def test_constant(amount, begin):
    s = constant(amount, begin)
    zero = 0 if isinstance(amount, int) else 0.0
    for t in range(begin + 3):
        got = s(t)
        ref = amount if t >= begin else zero
        assert got == ref and type(got) is type(ref)
    assert s.final == amount


def test_schedules_are_values():
    for s in (THESIS_UNITS, linear(0.5, 1, 9, 0.1), cubic(0.8, 0, 10, frequency=3), constant(7, 2)):
        again = pickle.loads(pickle.dumps(s))
        assert again == s and hash(again) == hash(s)
        assert [again(t) for t in range(12)] == [s(t) for t in range(12)]
    assert table({1: 0.5}) != table({1: 0.6})
    with pytest.raises(Exception):
        THESIS_UNITS.points = ()  # frozen


NAN = float("nan")
SCHEDULE_ERRORS = {
    "table_bool": (lambda: table({1: True}), TypeError, "got bool"),
    "table_str": (lambda: table({1: "0.5"}), TypeError, "got str"),
    "table_none": (lambda: table({1: None}), TypeError, "got NoneType"),
    "table_negative_count": (lambda: table({1: -3}), ValueError, "count must be >= 0"),
    "table_fraction_above_1": (lambda: table({1: 1.5}), ValueError, r"in \[0, 1\], got 1.5"),
    "table_nan": (lambda: table({1: NAN}), ValueError, r"in \[0, 1\], got nan"),
    "table_decreasing": (lambda: table({1: 0.5, 2: 0.3}), ValueError, "never decreases"),
    "table_decreasing_unsorted": (lambda: table({5: 0.2, 2: 0.4}), ValueError, "never decreases"),
    "table_mixed": (lambda: table({1: 0.5, 2: 3}), TypeError, "mix of counts"),
    "table_empty": (lambda: table({}), ValueError, "non-empty"),
    "table_not_mapping": (lambda: table([(1, 0.5)]), ValueError, "mapping"),
    "table_negative_step": (lambda: table({-1: 0.5}), ValueError, "step or epoch number >= 0"),
    "linear_end_eq_begin": (lambda: linear(0.5, begin=4, end=4), ValueError, "must come after"),
    "linear_end_lt_begin": (lambda: linear(0.5, begin=4, end=2), ValueError, "must come after"),
    "linear_negative_begin": (lambda: linear(0.5, begin=-1, end=2), ValueError, "begin must"),
    "linear_int_final": (lambda: linear(1, begin=0, end=2), TypeError, "must be a fraction"),
    "linear_decreasing": (lambda: linear(0.2, 0, 5, initial=0.5), ValueError, "never decreases"),
    "linear_nan": (lambda: linear(NAN, 0, 5), ValueError, r"in \[0, 1\]"),
    "linear_str": (lambda: linear("0.5", 0, 5), TypeError, "got str"),
    "cubic_end_eq_begin": (lambda: cubic(0.5, begin=3, end=3), ValueError, "must come after"),
    "cubic_frequency_0": (lambda: cubic(0.5, 0, 5, frequency=0), ValueError, "frequency"),
    "cubic_frequency_bool": (lambda: cubic(0.5, 0, 5, frequency=True), ValueError, "frequency"),
    "cubic_above_1": (lambda: cubic(1.2, 0, 5), ValueError, r"in \[0, 1\]"),
    "constant_bool": (lambda: constant(True), TypeError, "got bool"),
    "constant_none": (lambda: constant(None), TypeError, "got NoneType"),
    "constant_negative": (lambda: constant(-1), ValueError, "count must be >= 0"),
    "constant_negative_fraction": (lambda: constant(-0.1), ValueError, r"in \[0, 1\]"),
    "constant_negative_begin": (lambda: constant(0.5, begin=-2), ValueError, ">= 0"),
    "call_negative_step": (lambda: THESIS_UNITS(-1), ValueError, ">= 0, got -1"),
    "call_float_step": (lambda: THESIS_UNITS(2.0), ValueError, "got 2.0"),
    "call_bool_step": (lambda: linear(0.5, 0, 4)(True), ValueError, "got True"),
}


@pytest.mark.parametrize("case", list(SCHEDULE_ERRORS))
def test_schedule_errors(case):
    fn, exc, match = SCHEDULE_ERRORS[case]
    with pytest.raises(exc, match=match):
        fn()


def test_check_amount():
    assert check_amount(3) == 3 and type(check_amount(3)) is int
    assert check_amount(0) == 0 and type(check_amount(0)) is int
    assert check_amount(1) == 1 and type(check_amount(1)) is int  # one item, not 100%
    assert check_amount(1.0) == 1.0 and type(check_amount(1.0)) is float
    assert check_amount(0.25) == 0.25
    bad = [(True, TypeError), (False, TypeError), ("0.5", TypeError), (None, TypeError),
           (torch.tensor(0.5), TypeError), ([0.5], TypeError), (-1, ValueError),
           (-0.01, ValueError), (1.0000001, ValueError), (NAN, ValueError),
           (float("inf"), ValueError)]
    for value, exc in bad:
        with pytest.raises(exc, match="my amount"):
            check_amount(value, "my amount")


def test_amount_to_count_cases():
    assert amount_to_count(4, 10) == 4 and amount_to_count(10, 10) == 10
    assert amount_to_count(0, 0) == 0 and amount_to_count(0.5, 0) == 0
    with pytest.raises(ValueError, match="more than the 10"):
        amount_to_count(11, 10)
    # round (as torch.nn.utils.prune, half to even) vs floor (the thesis's unit pruning)
    assert amount_to_count(0.5, 5) == 2 == amount_to_count(0.5, 5, "floor")  # round(2.5) = 2
    assert amount_to_count(0.7, 5) == 4 and amount_to_count(0.7, 5, "floor") == 3  # 3.5
    assert amount_to_count(0.99, 10) == 10 and amount_to_count(0.99, 10, "floor") == 9
    # 0.29 * 100 = 28.999999999999996 in floating point; the fraction means 29
    assert amount_to_count(0.29, 100, "floor") == 29
    assert [amount_to_count(0.6, n, "floor") for n in (8, 16, 64)] == [4, 9, 38]
    assert amount_to_count(3, 10, "floor") == 3
    with pytest.raises(ValueError, match="rounding must be"):
        amount_to_count(0.5, 10, "ceil")
    with pytest.raises(TypeError):
        amount_to_count(True, 10)


@given(_milli, st.integers(0, 5000))
def test_amount_to_count_matches_torch_and_exact_floor(k, total):
    f = k / 1000
    assert amount_to_count(f, total) == prune._compute_nparams_toprune(f, total)
    assert amount_to_count(f, total, "floor") == frac_floor(f, total)
    c = min(k, total)
    assert amount_to_count(c, total) == prune._compute_nparams_toprune(c, total) == c


# ---------------------------------------------------------------------------
# 2. ParameterPruner


def test_mean_loss_by_hand():
    model, shape = build("mlp_dropout")
    model.train()
    data = batches(shape, 3, sizes=(3, 8, 5))
    ref = hand_loss(model, data)
    assert abs(mean_loss(model, data) - ref) <= 1e-12
    assert abs(mean_loss(model, iter(list(data))) - ref) <= 1e-12  # a one-pass iterator
    assert model.training and model.drop.training  # mode restored
    # an unweighted mean of the batch means would differ (unequal batch sizes)
    per_batch = sum(float(F.cross_entropy(outputs(model, x), y)) for x, y in data) / 3
    assert abs(per_batch - ref) > 1e-6
    nll = mean_loss(model, data, loss_fn=lambda o, y, reduction: F.nll_loss(
        F.log_softmax(o, 1), y, reduction=reduction))
    assert abs(nll - ref) <= 1e-12


@pytest.mark.parametrize("opt_name", ["sgd", "adam", "adamw"])
def test_pruned_weights_stay_zero_through_training(opt_name):
    model, shape = build("cnn", seed=1)
    data = batches(shape, 4, sizes=(8, 8, 8), seed=1)
    opt = make_opt(opt_name, model.parameters())
    train_steps(model, opt, data, 5)  # the optimizer has momentum / moments for every entry
    keys = weight_keys(model) + ["conv1.bias", "fc1.bias"]
    pruner = ParameterPruner("magnitude", 0.6, params=keys)
    report = pruner.step(0, model, opt)
    masks = {k: mask_of(model, k).clone() for k in keys}
    for k in keys:  # the optimizer still holds the very same parameter objects
        mname, _, pname = k.rpartition(".")
        orig = getattr(model.get_submodule(mname), pname + "_orig")
        assert any(orig is p for g in opt.param_groups for p in g["params"])
    orig0 = {k: eff(model, k) + 0 for k in keys}
    raw0 = {k: raw(model, k).detach().clone() for k in keys}
    train_steps(model, opt, data, 50)
    y = model(data[0][0])  # a forward refreshes module.weight
    assert torch.isfinite(y).all()
    moved_dead = moved_live = False
    for k in keys:
        mname, _, pname = k.rpartition(".")
        mod = model.get_submodule(mname)
        m = masks[k]
        assert torch.equal(getattr(mod, pname + "_mask"), m)  # masks do not change
        assert (getattr(mod, pname)[m == 0] == 0).all()  # exactly zero
        assert (eff(model, k)[m == 0] == 0).all()
        now = raw(model, k).detach()
        # the optimizer does move the pruned entries of weight_orig (momentum, decay):
        # only the mask keeps them out of the function
        moved_dead |= bool((now[m == 0] != raw0[k][m == 0]).any())
        moved_live |= bool((eff(model, k)[m == 1] != orig0[k][m == 1]).any())
    assert moved_dead and moved_live
    assert count_params(model) == report.params_after


@pytest.mark.parametrize("how", ["identity", "custom_from_mask"])
def test_pruned_state_dict_round_trips_through_torch_prune(how):
    model, shape = build("cnn", seed=2)
    x = batches(shape, 4, sizes=(6,), seed=2)[0][0]
    pruner = ParameterPruner("magnitude", table({1: 0.4, 2: 0.7}), include_bias=True,
                             prune_output=True)
    pruner.step(1, model)
    pruner.step(2, model)
    sd = model.state_dict()
    # tensors with pruned entries carry the standard layout; the others stay plain
    keys = [k for k in pruner.targets(model) if f"{k}_mask" in sd]
    assert all(f"{k}_orig" in sd and k not in sd for k in keys)
    assert all(bool((sd[f"{k}_mask"] == 0).any()) for k in keys)
    assert [k for k in pruner.targets(model) if k not in keys] == [
        k for k in pruner.targets(model) if k in sd]
    assert len(keys) >= 4
    fresh, _ = build("cnn", seed=99)  # other weights
    for k in keys:
        mname, _, pname = k.rpartition(".")
        if how == "identity":
            prune.identity(fresh.get_submodule(mname), pname)
        else:
            mod = fresh.get_submodule(mname)
            prune.custom_from_mask(mod, pname, torch.ones_like(getattr(mod, pname)))
    fresh.load_state_dict(sd, strict=True)
    assert torch.equal(outputs(fresh, x), outputs(model, x))
    # prune.remove makes it permanent, with identical outputs and the same zeros
    for m in (fresh, model):
        for k in keys:
            mname, _, pname = k.rpartition(".")
            prune.remove(m.get_submodule(mname), pname)
    assert torch.equal(outputs(fresh, x), outputs(model, x))
    plain, _ = build("cnn", seed=7)
    plain.load_state_dict(fresh.state_dict(), strict=True)
    every = list(pruner.targets(plain))
    zeros = sum(int((plain.get_parameter(k) == 0).sum()) for k in every)
    total = sum(plain.get_parameter(k).numel() for k in every)
    assert zeros == round(0.7 * total)
    assert torch.equal(outputs(plain, x), outputs(model, x))


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_global_magnitude_equals_brute_force_and_masks_compose(arch):
    model, shape = build(arch, seed=3)
    keys = weight_keys(model)
    total = sum(eff(model, k).numel() for k in keys)
    sched = table({1: 0.3, 2: 0.6, 3: 0.85})
    pruner = ParameterPruner("magnitude", sched, prune_output=True)
    # torch's own global L1 pruning is a reference for the first round
    ref = copy.deepcopy(model)
    prune.global_unstructured([(ref.get_submodule(k.rpartition(".")[0]), "weight") for k in keys],
                              pruning_method=prune.L1Unstructured, amount=0.3)
    gen = torch.Generator().manual_seed(4)
    previous = set()
    for t in (1, 2, 3):
        want = round(sched(t) * total)
        new = brute_lowest(model, keys, lambda k: eff(model, k).abs(), want - len(previous))
        report = pruner.step(t, model)
        got = pruned_set(model, keys)
        assert got == previous | new  # earlier entries stay pruned; new ones are the lowest
        assert len(got) == want == prune._compute_nparams_toprune(sched(t), total)
        assert sum(report.pruned.values()) == want - len(previous)
        if t == 1:
            assert got == pruned_set(ref, keys)
        previous = got
        # train-like perturbation, and give the pruned entries of weight_orig huge values:
        # a pruner that re-scored weight_orig would bring them back
        with torch.no_grad():
            for k in keys:
                mod = model.get_submodule(k.rpartition(".")[0])
                mod.weight_orig.add_(0.05 * torch.randn(mod.weight_orig.shape, generator=gen,
                                                        dtype=torch.float64))
                mod.weight_orig[mod.weight_mask == 0] = 100.0
    assert pruner.step(3, model) is None and pruner.step(4, model) is None


def test_layer_scope_per_tensor_counts_and_selection():
    model, shape = build("cnn", seed=5)
    keys = weight_keys(model)
    sched = table({1: 0.25, 2: 0.5})
    pruner = ParameterPruner("magnitude", sched, scope="layer", prune_output=True)
    ref = copy.deepcopy(model)
    for k in keys:
        prune.l1_unstructured(ref.get_submodule(k.rpartition(".")[0]), "weight", amount=0.25)
    previous = {k: set() for k in keys}
    for t in (1, 2):
        expected = {}
        for k in keys:
            n = eff(model, k).numel()
            want = round(sched(t) * n)
            expected[k] = previous[k] | brute_lowest(model, [k], lambda kk: eff(model, kk).abs(),
                                                     want - len(previous[k]))
        report = pruner.step(t, model)
        for k in keys:
            got = pruned_set(model, [k])
            n = eff(model, k).numel()
            assert got == expected[k] and len(got) == round(sched(t) * n)
            assert report.fraction[k] == len(got) / n
            if t == 1:
                assert got == pruned_set(ref, [k])
            previous[k] = got
        with torch.no_grad():
            for k in keys:
                mod = model.get_submodule(k.rpartition(".")[0])
                mod.weight_orig.mul_(1 + 0.3 * torch.rand(mod.weight_orig.shape,
                                                          dtype=torch.float64))


def test_count_schedule_prunes_exact_counts():
    model, _ = build("mlp")
    keys = weight_keys(model)
    pruner = ParameterPruner("magnitude", table({1: 10, 2: 25}), prune_output=True)
    pruner.step(1, model)
    assert len(pruned_set(model, keys)) == 10
    pruner.step(2, model)
    assert len(pruned_set(model, keys)) == 25
    layer = ParameterPruner("magnitude", 3, scope="layer", prune_output=True)
    m2, _ = build("mlp")
    layer.step(0, m2)
    assert [len(pruned_set(m2, [k])) for k in keys] == [3, 3, 3]


def test_any_parameter_scorer_drives_selection():
    """The random scorer's own scores (computed independently) decide, not the magnitudes."""
    model, _ = build("mlp", seed=6)
    keys = weight_keys(model)
    scores = RandomParameter(seed=3, params=keys).score(model)
    expected = brute_lowest(model, keys, lambda k: scores[k], round(0.5 * 92))
    ParameterPruner(RandomParameter(seed=3), 0.5, prune_output=True).step(0, model)
    assert pruned_set(model, keys) == expected
    assert expected != brute_lowest(model, keys, lambda k: eff(model, k).abs(), 46)
    # a scorer that gives new scores every round (and high ones to pruned entries):
    # masks still compose, and each round adds the lowest-scoring live entries
    m1, _ = build("mlp", seed=6)
    pruner = ParameterPruner(RandomParameter(seed=None), table({1: 0.3, 2: 0.6}),
                             prune_output=True)
    torch.manual_seed(0)
    pruner.step(1, m1)
    first = pruned_set(m1, keys)
    torch.manual_seed(1)
    scores = RandomParameter(seed=None, params=keys).score(m1)
    expected = first | brute_lowest(m1, keys, lambda k: scores[k], round(0.6 * 92) - len(first))
    assert max(float(scores[k].reshape(-1)[i]) for k, i in first) > sorted(
        float(v) for k in keys for v in scores[k].reshape(-1))[round(0.6 * 92)]
    torch.manual_seed(1)
    pruner.step(2, m1)
    assert pruned_set(m1, keys) == expected and len(expected) == round(0.6 * 92)
    # ties keep the order of the tensors and entries (a stable sort)
    m2, _ = build("mlp")
    fixed = {k: torch.zeros_like(eff(m2, k)) for k in keys}
    ParameterPruner(FixedParamScores(fixed), 10, prune_output=True).step(0, m2)
    assert pruned_set(m2, keys) == {("fc1.weight", i) for i in range(10)}


def test_biases_and_params_selection():
    model, _ = build("mlp", seed=8)
    default = ParameterPruner("magnitude", 0.5)  # the output layer fc3 is left alone
    assert list(default.targets(model)) == ["fc1.weight", "fc2.weight"]
    assert default.left_out == ["fc3"]
    assert list(ParameterPruner("magnitude", 0.5, include_bias=True).targets(model)) == [
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    pruner = ParameterPruner("magnitude", 0.5, prune_output=True)
    assert list(pruner.targets(model)) == ["fc1.weight", "fc2.weight", "fc3.weight"]
    assert pruner.left_out == []
    with_bias = ParameterPruner("magnitude", 0.5, include_bias=True, prune_output=True)
    assert list(with_bias.targets(model)) == ["fc1.weight", "fc1.bias", "fc2.weight",
                                              "fc2.bias", "fc3.weight", "fc3.bias"]
    nobias, _ = build("mlp_nobias")
    assert list(with_bias.targets(nobias)) == ["fc1.weight", "fc2.weight", "fc3.weight"]

    m1 = copy.deepcopy(model)
    pruner.step(0, m1)
    for n in ("fc1", "fc2", "fc3"):
        assert not hasattr(m1.get_submodule(n), "bias_orig")
        assert torch.equal(m1.get_submodule(n).bias, model.get_submodule(n).bias)

    m2 = copy.deepcopy(model)
    keys = list(with_bias.targets(m2))
    total = sum(eff(m2, k).numel() for k in keys)  # 92 weights + 15 biases
    expected = brute_lowest(m2, keys, lambda k: eff(m2, k).abs(), round(0.5 * total))
    with_bias.step(0, m2)
    assert pruned_set(m2, keys) == expected
    assert any(k.endswith(".bias") for k, _ in expected)

    m3 = copy.deepcopy(model)
    chosen = ["fc2.weight", "fc1.bias"]
    sel = ParameterPruner("magnitude", 0.5, params=chosen)
    assert list(sel.targets(m3)) == chosen
    expected = brute_lowest(m3, chosen, lambda k: eff(m3, k).abs(), round(0.5 * (35 + 7)))
    sel.step(0, m3)
    assert pruned_set(m3, chosen) == expected
    untouched = {k: v for k, v in model.state_dict().items()
                 if k not in ("fc2.weight", "fc1.bias")}
    sd3 = m3.state_dict()
    assert all(torch.equal(sd3[k], v) for k, v in untouched.items())
    assert sorted(k for k in sd3 if k.endswith(("_orig", "_mask"))) == [
        "fc1.bias_mask", "fc1.bias_orig", "fc2.weight_mask", "fc2.weight_orig"]


def test_parameter_pruner_round_reports():
    model, shape = build("mlp_dropout", seed=9)
    model.train()
    data = batches(shape, 3, sizes=(7, 12), seed=9)
    x_ex = data[0][0][:1]
    pruner = ParameterPruner("magnitude", THESIS_PARAMETERS, prune_output=True)
    assert pruner.due(0) and pruner.reached is None
    assert pruner.step(0, model, data=data) is None
    assert not pruner.due(1) and pruner.due(2)  # the schedule rises at t = 2
    assert pruner.step(1, model, data=data) is None
    assert pruner.history == []
    n_weights, n_all = 6 * 7 + 7 * 5 + 5 * 3, 6 * 7 + 7 + 7 * 5 + 5 + 5 * 3 + 3
    assert count_params(model) == n_all
    for t in (2, 3, 4, 5):
        before_loss, before_params = hand_loss(model, data), count_params(model)
        report = pruner.step(t, model, data=data)
        assert isinstance(report, RoundReport) and report.kind == "parameter"
        assert report.step == t and report.target == THESIS_PARAMETERS(t)
        assert report.params_before == before_params
        assert report.params_after == count_params(model) == n_all - round(
            THESIS_PARAMETERS(t) * n_weights)
        assert abs(report.loss_before - before_loss) <= 1e-12
        assert abs(report.loss_after - hand_loss(model, data)) <= 1e-12
        assert report.penalty == report.loss_after - report.loss_before
        assert report.macs_before == report.macs_after == n_weights == count_macs(model, x_ex)
        dead = {k: int((mask_of(model, k) == 0).sum()) for k in weight_keys(model)}
        assert report.fraction == {k: dead[k] / eff(model, k).numel() for k in dead}
        assert sum(report.pruned.values()) == before_params - report.params_after
        row = report.as_row()
        assert row["pruned_total"] == sum(report.pruned.values())
        assert row["fraction/fc1.weight"] == report.fraction["fc1.weight"]
        assert f"{report.params_before:,} -> {report.params_after:,}" in str(report)
        assert pruner.reached == THESIS_PARAMETERS(t) and not pruner.due(t)
        assert pruner.due(t + 1) == (t < 5)
        assert pruner.step(t, model, data=data) is None  # target met: nothing to do
        assert model.training and model.drop.training
    assert pruner.step(6, model, data=data) is None
    assert [r.step for r in pruner.history] == [2, 3, 4, 5]
    nodata = ParameterPruner("magnitude", 0.5, prune_output=True).step(0, build("mlp")[0])
    assert nodata.loss_before is None and nodata.penalty is None and nodata.macs_before is None


def test_parameter_pruner_resumes_from_state():
    def pruned_model():  # built twice: a pruned module cannot be deep-copied
        model, _ = build("mlp", seed=10)
        p = ParameterPruner("magnitude", THESIS_PARAMETERS, prune_output=True)
        p.step(2, model)
        p.step(3, model)
        return model, p

    m_a, a = pruned_model()
    m_b, _ = pruned_model()
    state = a.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    b = ParameterPruner("magnitude", THESIS_PARAMETERS, prune_output=True)
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.state_dict() == state
    assert [r.params_after for r in b.history] == [r.params_after for r in a.history]
    a.step(4, m_a)
    b.step(4, m_b)
    assert pruned_set(m_a, weight_keys(m_a)) == pruned_set(m_b, weight_keys(m_b))
    assert b.state_dict() == a.state_dict()


# the output layer: left alone by default, pruned when asked, and said


def _rounds(pruner, model, ts, **kw):
    """Run ``pruner.step`` for each ``t``; return the reports and the warnings raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reports = [pruner.step(t, model, **kw) for t in ts]
    return reports, [w for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_parameter_pruner_leaves_the_output_layer_alone_by_default(scope):
    model, shape = build("mlp", seed=30)
    data = batches(shape, 3, sizes=(6,), seed=30)
    before = {k: eff(model, k).clone() for k in weight_keys(model)}
    pruner = ParameterPruner("magnitude", table({1: 0.5, 2: 0.8}), scope=scope)
    (r1, r2), caught = _rounds(pruner, model, (1, 2), data=data)
    # fc3 (the output layer) is exactly as before: no mask, the very same values
    assert not hasattr(model.fc3, "weight_mask") and torch.equal(model.fc3.weight,
                                                                before["fc3.weight"])
    # fc1 (7x6) and fc2 (5x7) get exactly the schedule's count of zeros, 77 weights in all
    for report, f in ((r1, 0.5), (r2, 0.8)):
        assert set(report.fraction) == {"fc1.weight", "fc2.weight"}
        assert report.left_out == ["fc3"] and "left alone" in str(report) and "fc3" in str(report)
    dead = {k: int((mask_of(model, k) == 0).sum()) for k in ("fc1.weight", "fc2.weight")}
    if scope == "global":
        assert sum(dead.values()) == round(0.8 * (42 + 35)) == 62
    else:
        assert dead == {"fc1.weight": round(0.8 * 42), "fc2.weight": round(0.8 * 35)}
    # said once, naming the layer and the option
    said = [w for w in caught if issubclass(w.category, OutputLayerWarning)]
    assert len(said) == 1
    assert "'fc3'" in str(said[0].message) and "prune_output=True" in str(said[0].message)
    assert str(r2).splitlines()[-1] == "  left alone (the model's output layer): fc3"
    assert pruner.state_dict()["history"][0]["left_out"] == ["fc3"]


def test_parameter_pruner_prunes_the_output_layer_when_asked():
    model, _ = build("mlp", seed=31)
    w3 = model.fc3.weight.detach().clone()
    pruner = ParameterPruner("magnitude", 0.5, scope="layer", prune_output=True)
    (report,), caught = _rounds(pruner, model, (0,))
    assert not [w for w in caught if issubclass(w.category, OutputLayerWarning)]
    assert report.left_out == [] and "left alone" not in str(report)
    n = w3.numel()  # 15
    assert int((model.fc3.weight_mask == 0).sum()) == round(0.5 * n) == 8
    assert int((eff(model, "fc3.weight") == 0).sum()) == 8
    lowest = set(torch.argsort(w3.abs().reshape(-1), stable=True)[:8].tolist())
    assert set(torch.nonzero(model.fc3.weight_mask.reshape(-1) == 0).flatten().tolist()) == lowest
    # explicit params prune the output layer as named, without a warning
    m2, _ = build("mlp", seed=31)
    (rep2,), caught = _rounds(ParameterPruner("magnitude", 0.5, params=["fc3.weight"]), m2, (0,))
    assert not caught and rep2.pruned == {"fc3.weight": 8} and rep2.left_out == []


def test_parameter_pruner_output_layer_of_a_cnn_and_a_single_layer():
    model, shape = build("cnn", seed=32)
    assert output_layers(model) == ["fc2"]
    pruner = ParameterPruner("magnitude", 0.5)
    assert list(pruner.targets(model)) == ["conv1.weight", "conv2.weight", "fc1.weight"]
    w = model.fc2.weight.detach().clone()
    (report,), _ = _rounds(pruner, model, (0,))
    assert torch.equal(model.fc2.weight, w) and report.left_out == ["fc2"]
    total = sum(eff(model, k).numel() for k in ("conv1.weight", "conv2.weight", "fc1.weight"))
    assert len(pruned_set(model, ["conv1.weight", "conv2.weight", "fc1.weight"])) == round(
        0.5 * total)
    # a model that is only its output layer: nothing to prune unless asked
    single = nn.Linear(4, 3).double()
    with pytest.raises(ValueError, match=r"only Linear/Conv weights are those of its output "
                                         r"layer ''.*pass prune_output=True"):
        ParameterPruner("magnitude", 0.5).step(0, single)
    (rep,), _ = _rounds(ParameterPruner("magnitude", 0.5, prune_output=True), single, (0,))
    assert rep.pruned == {"weight": 6}


class _Residual(nn.Module):
    """The output is a sum of two layers' outputs."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, 3)
        self.skip = nn.Linear(5, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) + self.skip(h)


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.head = nn.Linear(5, 3)
        self.aux = nn.Linear(4, 4)  # registered last, called first

    def forward(self, x):
        x = self.aux(x)
        if x.sum() > 1e9:
            x = -x
        return self.head(torch.relu(self.a(x)))


def test_output_layers_of_several_structures():
    softmax = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.LogSoftmax(1))
    assert output_layers(softmax) == ["2"]
    assert output_layers(_Residual()) == ["b", "skip"]
    assert output_layers(build("vgg")[0]) == ["classifier.4"]
    assert output_layers(build("conv1d")[0]) == ["fc"]
    # torch.fx fails: the last layer called on an input (inferred from the first Linear)
    assert output_layers(_Branchy()) == ["head"]
    assert output_layers(nn.Sequential(nn.ReLU())) == []
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3))
    assert output_layers(conv) == ["2"]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_amount_one_empties_every_tensor_with_a_warning(scope):
    model, _ = build("mlp", seed=33)
    w3 = model.fc3.weight.detach().clone()
    (report,), caught = _rounds(ParameterPruner("magnitude", 1.0, scope=scope), model, (0,))
    emptied = [w for w in caught if issubclass(w.category, EmptiedTensorWarning)]
    assert len(emptied) == 1
    assert "['fc1.weight', 'fc2.weight']" in str(emptied[0].message)
    assert report.fraction == {"fc1.weight": 1.0, "fc2.weight": 1.0}
    assert (eff(model, "fc1.weight") == 0).all() and (eff(model, "fc2.weight") == 0).all()
    assert torch.equal(model.fc3.weight, w3)  # still left alone
    m2, _ = build("mlp", seed=33)
    (rep2,), caught = _rounds(ParameterPruner("magnitude", 1.0, scope=scope, prune_output=True),
                              m2, (0,))
    assert rep2.fraction == {k: 1.0 for k in weight_keys(m2)}
    assert any("fc3.weight" in str(w.message) for w in caught
               if issubclass(w.category, EmptiedTensorWarning))
    # a round that does not empty a tensor says nothing of the sort
    m3, _ = build("mlp", seed=33)
    _, caught = _rounds(ParameterPruner("magnitude", 0.9, scope=scope), m3, (0,))
    assert not [w for w in caught if issubclass(w.category, EmptiedTensorWarning)]


def test_unit_pruner_never_prunes_the_output_layer_and_says_so():
    model, shape = build("mlp", seed=34)
    data = batches(shape, 3, sizes=(8,), seed=34)
    w3 = model.fc3.weight.detach().clone()
    (report,), caught = _rounds(UnitPruner("mrs", 0.5), model, (0,), data=data)
    assert set(report.pruned) == {"fc1", "fc2"} and report.left_out == ["fc3"]
    assert model.fc3.out_features == 3 and "fc3" in str(report)
    assert model.fc3.weight.shape == (3, 5 - 2)  # its inputs go with fc2's units, not its rows
    kept = sorted(set(range(5)) - {int(i) for i in report.removal.indices["fc2"]})
    assert torch.equal(model.fc3.weight, w3[:, kept])  # its rows all there, as they were
    assert not [w for w in caught if issubclass(w.category, OutputLayerWarning)]
    with pytest.raises(ValueError, match=r"'fc3' is not prunable: its output is the model's "
                                         r"output"):
        UnitPruner("norm", 0.5, layers=["fc3"], replacement=None).step(0, build("mlp")[0],
                                                                        data=data)


# ---------------------------------------------------------------------------
# 3. UnitPruner

TWIN_CASES = {
    "mlp": {"fc1": 10, "fc2": 8},
    "mlp_bn": {"fc1": 10, "fc2": 8},  # BN1d + PReLU, fc2 without bias: the fold creates one
    "cnn": {"conv1": 6, "conv2": 7, "fc1": 8},  # BN2d, max-pool, flatten
}


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("arch", list(TWIN_CASES))
def test_removed_equals_masked_through_training(arch, scope, opt_name):
    widths = TWIN_CASES[arch]
    model, shape = build(arch, widths, seed=11)
    n_out = N_OUT[arch]
    train = batches(shape, n_out, sizes=(8, 8, 8), seed=12)
    score = batches(shape, n_out, sizes=(9, 15), seed=13)
    x_test = batches(shape, n_out, sizes=(16,), seed=14)[0][0]
    sched = table({1: 0.2, 2: 0.4, 3: 0.6})
    twins = {mode: copy.deepcopy(model) for mode in (True, False)}
    opts = {mode: make_opt(opt_name, m.parameters()) for mode, m in twins.items()}
    pruners = {mode: UnitPruner("mrs", sched, remove=mode, scope=scope, replacement="mean")
               for mode in twins}
    alive = {n: list(range(w)) for n, w in widths.items()}  # original index of each kept unit
    for epoch in (1, 2, 3):
        for mode in twins:
            train_steps(twins[mode], opts[mode], train, 3)
        assert (outputs(twins[True], x_test) - outputs(twins[False], x_test)).abs().max() <= TOL
        reps = {mode: pruners[mode].step(epoch, twins[mode], opts[mode], data=score)
                for mode in twins}
        r, m = reps[True], reps[False]
        assert r is not None and m is not None
        assert abs(r.loss_before - m.loss_before) <= TOL and abs(r.loss_after - m.loss_after) <= TOL
        assert abs(r.loss_after - hand_loss(twins[True], score)) <= TOL
        assert r.pruned == m.pruned and r.remaining == m.remaining and r.fraction == m.fraction
        assert r.params_before == m.params_before and r.params_after == m.params_after
        assert r.params_after == count_params(twins[True]) == count_params(twins[False])
        # the same units: removed indices (current numbering) map to the masked originals
        for n, idx in r.removal.indices.items():
            orig = [alive[n][i] for i in idx.tolist()]
            assert m.removal.indices[n].tolist() == orig
            alive[n] = [a for a in alive[n] if a not in orig]
        assert set(m.removal.indices) == set(r.removal.indices)
        assert (outputs(twins[True], x_test) - outputs(twins[False], x_test)).abs().max() <= TOL
        # the optimizer state follows the shrunk parameters
        opt = opts[True]
        for group in opt.param_groups:
            for p in group["params"]:
                for v in opt.state.get(p, {}).values():
                    if isinstance(v, torch.Tensor) and v.dim() > 0:
                        assert v.shape == p.shape
        if scope == "layer":
            for n, w in widths.items():
                assert w - r.remaining[n] == frac_floor(sched(epoch), w)
        else:
            assert sum(widths.values()) - sum(r.remaining.values()) == frac_floor(
                sched(epoch), sum(widths.values()))
    # training goes on with the same optimizers after the last round
    for mode in twins:
        train_steps(twins[mode], opts[mode], train, 3)
    final = outputs(twins[True], x_test)
    assert (final - outputs(twins[False], x_test)).abs().max() <= TOL
    assert (final - outputs(model, x_test)).abs().max() > 1e-3  # it did train and prune
    # the physically shrunk model is the zoo architecture at the smaller widths
    small = {n: len(a) for n, a in alive.items()}
    ref, _ = build(arch, small)
    sd = twins[True].state_dict()
    created = [k for k in sd if k not in ref.state_dict()]
    assert created == (["fc2.bias"] if arch == "mlp_bn" else [])
    result = ref.load_state_dict(sd, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == created
    if not created:
        assert torch.equal(outputs(ref, x_test), outputs(twins[True], x_test))
    if arch == "mlp_bn":  # the created bias joined the optimizer and trains
        bias = twins[True].fc2.bias
        assert any(bias is p for p in opts[True].param_groups[0]["params"])
        assert bias in opts[True].state


@pytest.mark.parametrize("remove", [True, False])
@pytest.mark.parametrize("scorer", ["random_unit", "mrs"])
def test_thesis_cnn_ends_at_4019_parameters(scorer, remove):
    model = thesis_cnn()
    assert count_params(model) == 20_522
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(16, 1, 28, 28, generator=gen), torch.randint(0, 10, (16,), generator=gen))
            for _ in range(2)]
    pruner = UnitPruner(scorer, THESIS_UNITS, remove=remove, replacement="mean")
    initial = {"conv1": 8, "conv2": 16, "fc1": 64}

    def n_params(c1, c2, h):  # conv 1->c1 5x5, conv c1->c2 5x5, FC c2*4*4 -> h -> 10
        return (25 * c1 + c1) + (25 * c1 * c2 + c2) + (16 * c2 * h + h) + (10 * h + 10)

    for t in range(8):
        report = pruner.step(t, model, data=data)
        f = THESIS_UNITS(t)
        if t not in (2, 3, 4, 5):
            assert report is None
            continue
        left = {n: w - frac_floor(f, w) for n, w in initial.items()}
        assert report.remaining == left
        assert report.params_after == count_params(model) == n_params(*left.values())
        prev = THESIS_UNITS(t - 1)
        assert report.pruned == {n: frac_floor(f, w) - frac_floor(prev, w)
                                 for n, w in initial.items()}
    assert count_params(model) == 4_019
    if remove:
        assert (model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features) == (
            4, 7, 26)


@pytest.mark.parametrize("scope", ["layer", "global"])
@pytest.mark.parametrize("min_units", [1, 2, 4])
def test_min_units_is_honored(min_units, scope):
    widths = {"fc1": 9, "fc2": 6}
    model, shape = build("mlp", widths, seed=15)
    x = torch.randn((4,) + shape, dtype=torch.float64)
    pruner = UnitPruner("norm", table({1: 0.5, 2: 1.0}), min_units=min_units, scope=scope,
                        replacement="zero", example_input=x)
    r1 = pruner.step(1, model)
    assert all(v >= min_units for v in r1.remaining.values())
    if scope == "layer":
        assert r1.remaining == {n: max(min_units, w - frac_floor(0.5, w))
                                for n, w in widths.items()}
    else:  # floor(0.5 * 15) = 7 units go, unless min_units binds first
        assert sum(r1.remaining.values()) == max(15 - 7, 2 * min_units)
    r2 = pruner.step(2, model) or r1  # min_units=4 (global) already binds in round 1
    assert r2.remaining == {"fc1": min_units, "fc2": min_units}
    assert (model.fc1.out_features, model.fc2.out_features) == (min_units, min_units)
    assert pruner.step(3, model) is None  # nothing more may go
    assert outputs(model, x).shape == (4, 3)
    # a layer narrower than min_units keeps all its units; the others still shrink to it
    m2, _ = build("mlp", {"fc1": 9, "fc2": 3}, seed=15)
    p2 = UnitPruner("norm", 1.0, min_units=4, scope=scope, replacement=None, example_input=x)
    rep = p2.step(0, m2)
    assert rep.remaining == {"fc1": 4, "fc2": 3} and rep.pruned == {"fc1": 5, "fc2": 0}


@pytest.mark.parametrize("normalize", [None, "l2", "max", "l1", "mean"])
def test_global_selection_equals_brute_force(normalize):
    widths = {"fc1": 10, "fc2": 8}
    model, shape = build("mlp", widths, seed=16)
    with torch.no_grad():
        model.fc2.weight.mul_(3.0)  # raw scores of the layers on different scales
    x = torch.randn((4,) + shape, dtype=torch.float64)
    sched = table({1: 0.25, 2: 0.5})
    pruner = UnitPruner("norm", sched, scope="global", normalize=normalize, remove=False,
                        replacement=None, example_input=x)
    masked = {n: set() for n in widths}
    norms = {None: lambda s: 1.0, "l2": lambda s: math.sqrt(sum(v * v for v in s)),
             "max": lambda s: max(abs(v) for v in s), "l1": lambda s: sum(abs(v) for v in s),
             "mean": lambda s: sum(abs(v) for v in s) / len(s)}
    gen = torch.Generator().manual_seed(17)
    for t in (1, 2):
        entries = []
        for n in widths:
            w = eff(model, f"{n}.weight")
            s = {i: sum(abs(v) for v in w[i].tolist()) for i in range(w.shape[0])
                 if i not in masked[n]}
            z = norms[normalize](list(s.values()))
            entries += [(v / z, n, i) for i, v in s.items()]
        entries.sort()
        k = frac_floor(sched(t), 18) - sum(len(v) for v in masked.values())
        assert entries[k - 1][0] < entries[k][0]
        expected = {(n, i) for _, n, i in entries[:k]}
        report = pruner.step(t, model)
        got = {(n, i) for n, idx in report.removal.indices.items() for i in idx.tolist()}
        assert got == expected
        for n, i in got:
            masked[n].add(i)
        assert pruner.masked == {n: sorted(v) for n, v in masked.items() if v}
        with torch.no_grad():  # new weights for the next round's scores
            for n in widths:
                w = raw(model, f"{n}.weight")
                w.mul_(1 + 0.5 * torch.rand(w.shape, generator=gen, dtype=torch.float64))


def test_normalization_matters_and_is_scale_invariant():
    """Scaling one layer's weights leaves normalized global selections unchanged; raw ones move."""
    x = torch.randn(4, 6, dtype=torch.float64)

    def select(normalize, scale):
        model, _ = build("mlp", {"fc1": 10, "fc2": 8}, seed=16)
        with torch.no_grad():
            model.fc2.weight.mul_(scale)
        rep = UnitPruner("norm", 0.4, scope="global", normalize=normalize, replacement=None,
                         example_input=x).step(0, model)
        return {n: idx.tolist() for n, idx in rep.removal.indices.items()}

    for normalize in ("l2", "max", "l1", "mean"):
        assert select(normalize, 1.0) == select(normalize, 20.0) == select(normalize, 0.05)
    raw = [select(None, s) for s in (1.0, 20.0, 0.05)]
    assert raw[0] != raw[1] and raw[0] != raw[2]
    assert set(raw[1]) == {"fc1"} and set(raw[2]) == {"fc2"}  # raw scores: one layer takes all


@pytest.mark.parametrize("arch,layer", [("mlp", "fc1"), ("mlp", "fc2"), ("cnn", "conv1"),
                                        ("cnn", "conv2"), ("mlp_bn", "fc1")])
def test_mean_replacement_penalty_equals_signed_mrp(arch, layer):
    model, shape = build(arch, seed=18)
    data = batches(shape, N_OUT[arch], sizes=(11, 13), seed=18)
    mrp = MRP(absolute=False, reduction="mean").score(model, data)[layer]
    width = mrp.numel()
    for i in range(width):
        scores = {layer: torch.ones(width, dtype=torch.float64)}
        scores[layer][i] = 0.0  # this unit goes
        removed = copy.deepcopy(model)
        rep = UnitPruner(FixedUnitScores(scores), 1, layers=[layer], replacement="mean").step(
            0, removed, data=data)
        assert rep.removal.indices[layer].tolist() == [i] and rep.pruned == {layer: 1}
        assert abs(rep.penalty - float(mrp[i])) <= TOL
        assert abs(rep.loss_before - hand_loss(model, data)) <= TOL
        assert abs(rep.loss_after - hand_loss(removed, data)) <= TOL
        masked = copy.deepcopy(model)
        rm = UnitPruner(FixedUnitScores(scores), 1, layers=[layer], replacement="mean",
                        remove=False).step(0, masked, data=data)
        assert abs(rm.loss_after - rep.loss_after) <= TOL
        assert abs(hand_loss(masked, data) - hand_loss(removed, data)) <= TOL
    assert float(mrp.abs().max()) > 1e-4  # the penalties are not all trivially zero


def test_mean_replacement_several_units_equals_masked_twin_and_hooked_reference():
    model, shape = build("cnn", seed=19)
    data = batches(shape, 4, sizes=(12, 12), seed=19)
    removed, masked = copy.deepcopy(model), copy.deepcopy(model)
    sched = 0.5
    r = UnitPruner("mrs", sched, replacement="mean").step(0, removed, data=data)
    m = UnitPruner("mrs", sched, replacement="mean", remove=False).step(0, masked, data=data)
    assert {n: v.tolist() for n, v in r.removal.indices.items()} == {
        n: v.tolist() for n, v in m.removal.indices.items()}
    # reference: the original model with the chosen units' outputs held at their mean
    means, acts = {}, {}
    model.eval()
    hs = [model.get_submodule(n).register_forward_hook(
        lambda mod, i, o, n=n: acts.setdefault(n, []).append(o.detach()))
        for n in r.removal.indices]
    with torch.no_grad():
        for x, _ in data:
            model(x)
    for h in hs:
        h.remove()
    for n, outs in acts.items():
        o = torch.cat(outs)
        dims = [0] + list(range(2, o.dim()))
        means[n] = o.mean(dim=dims)

    def hold(n):
        idx = r.removal.indices[n]

        def hook(mod, i, o):
            o = o.clone()
            o[:, idx] = means[n][idx].reshape((1, -1) + (1,) * (o.dim() - 2))
            return o
        return hook

    handles = [model.get_submodule(n).register_forward_hook(hold(n)) for n in r.removal.indices]
    try:
        expected = hand_loss(model, data)
    finally:
        for h in handles:
            h.remove()
    assert abs(r.loss_after - expected) <= TOL and abs(m.loss_after - expected) <= TOL
    assert abs(r.loss_after - r.loss_before) > 1e-6


def test_optimizer_keeps_working_after_physical_removal():
    model, shape = build("mlp_bn", {"fc1": 9, "fc2": 7}, seed=20)
    data = batches(shape, 3, sizes=(8, 8), seed=20)
    twins = {mode: copy.deepcopy(model) for mode in (True, False)}
    opts = {mode: torch.optim.Adam(m.parameters(), lr=0.02) for mode, m in twins.items()}
    for mode in twins:
        train_steps(twins[mode], opts[mode], data, 2)
        UnitPruner("norm", 0.4, remove=mode, replacement="mean").step(0, twins[mode], opts[mode],
                                                                      data=data)
    opt = opts[True]
    w = twins[True].fc1.weight
    assert w.shape == (9 - 3, 6) and opt.state[w]["exp_avg"].shape == w.shape
    assert opt.state[twins[True].fc2.weight]["exp_avg_sq"].shape == (7 - 2, 9 - 3)
    before = w.detach().clone()
    for mode in twins:
        train_steps(twins[mode], opts[mode], data, 4)
    assert not torch.equal(before, w.detach())
    x = data[0][0]
    assert (outputs(twins[True], x) - outputs(twins[False], x)).abs().max() <= TOL


@pytest.mark.parametrize("remove", [True, False])
def test_unit_pruner_state_dict_resumes(remove):
    widths = {"fc1": 10, "fc2": 8}
    model, shape = build("mlp", widths, seed=21)
    x = torch.randn((4,) + shape, dtype=torch.float64)
    sched = table({1: 0.2, 2: 0.4, 3: 0.7})

    def new():
        return UnitPruner("norm", sched, remove=remove, replacement="zero", example_input=x)

    a = new()
    a.step(1, model)
    a.step(2, model)
    state = a.state_dict()
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    b = new()
    b.load_state_dict(torch.load(buf, weights_only=True))
    assert b.state_dict() == state  # a lossless round trip
    assert [(r.step, r.pruned, r.remaining, r.fraction) for r in b.history] == [
        (r.step, r.pruned, r.remaining, r.fraction) for r in a.history]
    m_a, m_b, m_c = (copy.deepcopy(model) for _ in range(3))
    ra, rb = a.step(3, m_a), b.step(3, m_b)
    assert {n: v.tolist() for n, v in ra.removal.indices.items()} == {
        n: v.tolist() for n, v in rb.removal.indices.items()}
    assert ra.remaining == rb.remaining == {n: w - frac_floor(0.7, w) for n, w in widths.items()}
    sa, sb = m_a.state_dict(), m_b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.state_dict() == a.state_dict()
    # without the state a new pruner would not continue the run
    rc = new().step(3, m_c)
    assert rc.remaining != ra.remaining or {n: v.tolist() for n, v in rc.removal.indices.items()} \
        != {n: v.tolist() for n, v in ra.removal.indices.items()}


def test_unit_pruner_counts_and_reports():
    widths = {"conv1": 6, "conv2": 7, "fc1": 8}
    model, shape = build("cnn", widths, seed=22)
    data = batches(shape, 4, sizes=(6, 10), seed=22)
    x1 = data[0][0][:1]
    pruner = UnitPruner("random_unit", table({1: 2, 3: 5}), replacement="zero")
    assert pruner.step(0, model, data=data) is None
    before = (count_params(model), count_macs(model, x1), hand_loss(model, data))
    r = pruner.step(1, model, data=data)
    assert r.kind == "unit" and r.target == 2
    assert r.pruned == {"conv1": 2, "conv2": 2, "fc1": 2}
    assert r.remaining == {"conv1": 4, "conv2": 5, "fc1": 6}
    assert r.fraction == {"conv1": 2 / 6, "conv2": 2 / 7, "fc1": 2 / 8}
    assert (r.params_before, r.macs_before) == before[:2]
    assert abs(r.loss_before - before[2]) <= TOL
    assert abs(r.loss_after - hand_loss(model, data)) <= TOL
    # conv1 1->4 3x3 on 12x12, conv2 4->5 3x3 on 5x5, fc1 45->6, fc2 6->4, by hand
    assert r.macs_after == 4 * 100 * 9 + 5 * 9 * 4 * 9 + 45 * 6 + 6 * 4 == count_macs(model, x1)
    assert r.params_after == (4 * 9 + 4) + 8 + (5 * 4 * 9 + 5) + (45 * 6 + 6) + (6 * 4 + 4)
    assert r.params_after == count_params(model)
    assert pruner.step(2, model, data=data) is None
    r3 = pruner.step(3, model, data=data)
    assert r3.pruned == {"conv1": 3, "conv2": 3, "fc1": 3} and r3.remaining == {
        "conv1": 1, "conv2": 2, "fc1": 3}
    assert "units pruned" in str(r3) and r3.as_row()["remaining/fc1"] == 3
    assert [h.step for h in pruner.history] == [1, 3]
    # floor: THESIS_UNITS removes nothing from 6, 7, 8 wide layers at 0.1: no round
    m2, _ = build("cnn", widths, seed=22)
    p2 = UnitPruner("norm", THESIS_UNITS, replacement=None, example_input=x1)
    assert p2.step(2, m2) is None
    assert p2.step(3, m2).pruned == {"conv1": 1, "conv2": 1, "fc1": 1}


# ---------------------------------------------------------------------------
# 4. cleanup (f_nz)

CONSUMERS = {  # producer -> (consumer, columns per unit) of the zoo architectures
    "mlp": {"fc1": [("fc2", 1)], "fc2": [("fc3", 1)]},
    "cnn": {"conv1": [("conv2", 1)], "conv2": [("fc1", 9)], "fc1": [("fc2", 1)]},
}
CLEANUP_WIDTHS = {"mlp": {"fc1": 16, "fc2": 16}, "cnn": {"conv1": 6, "conv2": 8, "fc1": 12}}


def brute_fractions(model, arch):
    out = {}
    for name, consumers in CONSUMERS[arch].items():
        w = eff(model, f"{name}.weight")
        n = w.shape[0]
        inc = [int((w[i] != 0).sum()) / w[i].numel() for i in range(n)]
        outg = []
        for i in range(n):
            nz = tot = 0
            for cname, block in consumers:
                wc = eff(model, f"{cname}.weight")
                col = wc[:, i] if block == 1 else wc.reshape(wc.shape[0], n, block)[:, i]
                nz += int((col != 0).sum())
                tot += col.numel()
            outg.append(nz / tot)
        out[name] = (inc, outg)
    return out


def sparse_model(arch, sparsity=0.9, seed=23):
    model, shape = build(arch, CLEANUP_WIDTHS[arch], seed=seed)
    model.eval()
    with torch.no_grad():  # dead units on purpose
        if arch == "mlp":
            model.fc1.weight[2] = 0  # no incoming weight: outputs relu(b)
            model.fc2.weight[:, 4] = 0  # fc1 unit 4 has no outgoing weight
            model.fc1.bias[2] = 0.7
        else:
            model.conv1.weight[1] = 0  # constant through BN, ReLU and max-pool
            model.conv1.bias[1] = 0.4
            model.conv2.weight[:, 3] = 0  # conv1 unit 3 feeds nothing
            model.conv2.weight[0] = 0  # conv2 unit 0 is constant, through flatten
            model.conv2.bias[0] = 0.9
            model.fc1.weight.view(12, 8, 9)[:, 2] = 0  # conv2 unit 2 feeds nothing
    with warnings.catch_warnings():  # a high sparsity may take all of fc1: on purpose
        warnings.simplefilter("ignore", EmptiedTensorWarning)
        ParameterPruner("magnitude", sparsity, prune_output=True).step(0, model)
    return model, shape


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_nonzero_fractions_equal_brute_force(arch):
    model, shape = sparse_model(arch)
    x = torch.randn((2,) + shape, dtype=torch.float64)
    got = nonzero_fractions(model, example_input=x)
    ref = brute_fractions(model, arch)
    assert list(got) == list(ref)
    for n, (inc, outg) in ref.items():
        assert got[n][0].tolist() == pytest.approx(inc, abs=1e-15)
        assert got[n][1].tolist() == pytest.approx(outg, abs=1e-15)
    dense, _ = build(arch, CLEANUP_WIDTHS[arch])
    assert all(bool((a == 1).all() and (b == 1).all())
               for a, b in nonzero_fractions(dense, example_input=x).values())


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_remove_sparse_units_at_zero_keeps_the_function(arch):
    model, shape = sparse_model(arch)
    gen = torch.Generator().manual_seed(24)
    x = torch.randn((20,) + shape, generator=gen, dtype=torch.float64)
    ref = brute_fractions(model, arch)
    expected = {n: [i for i in range(len(inc)) if inc[i] == 0 or outg[i] == 0]
                for n, (inc, outg) in ref.items()}
    for n, idx in expected.items():  # min_units does not bind here
        assert len(idx) < len(ref[n][0])
    assert sum(len(v) for v in expected.values()) >= 4  # the hand-made dead units and more
    assert sparse_units(model, 0.0, example_input=x) == {n: v for n, v in expected.items() if v}
    before = outputs(model, x)
    report = remove_sparse_units(model, 0.0, example_input=x)
    assert {n: v.tolist() for n, v in report.indices.items()} == {
        n: v for n, v in expected.items() if v}
    assert (outputs(model, x) - before).abs().max() <= TOL
    # the shrunk model is the architecture at the smaller widths (masks sliced along)
    small = {n: w - len(expected[n]) for n, w in CLEANUP_WIDTHS[arch].items()}
    plain, _ = build(arch, small)
    assert count_params(model, count_masked=True) == count_params(plain)
    # removing constant units can leave new dead units behind: found again by brute force
    again = brute_fractions(model, arch)
    assert sparse_units(model, 0.0, example_input=x) == {
        n: [i for i in range(len(inc)) if inc[i] == 0 or outg[i] == 0]
        for n, (inc, outg) in again.items() if any(a == 0 or b == 0 for a, b in zip(inc, outg))}


@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_f_nz_removes_more_and_parameters_are_monotone(arch):
    model, shape = sparse_model(arch, sparsity=0.8)
    x = torch.randn((2,) + shape, dtype=torch.float64)
    ref = brute_fractions(model, arch)
    counts, removed_sets = [], []
    for f in (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.8, 1.0):
        m, _ = sparse_model(arch, sparsity=0.8)  # (a pruned module cannot be deep-copied)
        rep = remove_sparse_units(m, f, example_input=x)
        got = {(n, i) for n, v in rep.indices.items() for i in v.tolist()}
        for n, (inc, outg) in ref.items():
            qual = [i for i in range(len(inc)) if min(inc[i], outg[i]) <= f]
            mine = {i for nn, i in got if nn == n}
            if len(qual) <= len(inc) - 1:
                assert mine == set(qual)
            else:  # min_units=1 binds: all but one go, chosen among the qualifying units
                assert len(mine) == len(inc) - 1 and mine <= set(qual)
        assert rep.params_after == count_params(m)
        counts.append(count_params(m))
        removed_sets.append(got)
    assert all(a >= b for a, b in zip(counts, counts[1:]))
    assert all(len(a) <= len(b) for a, b in zip(removed_sets, removed_sets[1:]))
    assert len(removed_sets[3]) > len(removed_sets[0]) and counts[3] < counts[0]


@pytest.mark.parametrize("min_units", [1, 3])
def test_cleanup_min_units(min_units):
    model, shape = sparse_model("cnn", sparsity=0.95)
    x = torch.randn((3,) + shape, dtype=torch.float64)
    ref = brute_fractions(model, "cnn")
    m, _ = sparse_model("cnn", sparsity=0.95)
    rep = remove_sparse_units(m, 1.0, example_input=x, min_units=min_units, replacement="zero")
    assert (m.conv1.out_channels, m.conv2.out_channels, m.fc1.out_features) == (min_units,) * 3
    # the densest units are the ones kept
    for n, (inc, outg) in ref.items():
        live = [min(a, b) for a, b in zip(inc, outg)]
        kept = sorted(set(range(len(live))) - set(rep.indices[n].tolist()))
        others = [live[i] for i in range(len(live)) if i not in kept]
        assert min(live[i] for i in kept) >= max(others)
    m0, _ = sparse_model("cnn", sparsity=0.95)
    rep0 = remove_sparse_units(m0, 0.0, example_input=x, min_units=min_units)
    for n, (inc, outg) in ref.items():
        dead = sum(1 for a, b in zip(inc, outg) if min(a, b) == 0)
        assert rep0.removed.get(n, 0) == min(dead, len(inc) - min_units)
    with pytest.raises(ValueError, match="min_units must be an int >= 1"):
        sparse_units(model, 0.0, example_input=x, min_units=0)
    with pytest.raises(ValueError, match="f_nz must be a fraction"):
        sparse_units(model, 1.5, example_input=x)


# ---------------------------------------------------------------------------
# 5. errors change nothing


def _mlp_setup(opt_cls=torch.optim.SGD, **kw):
    model, shape = build("mlp", seed=25)
    data = batches(shape, 3, sizes=(6,), seed=25)
    opt = opt_cls(model.parameters(), **(kw or {"lr": 0.1, "momentum": 0.9}))

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(data[0][0]), data[0][1])
        loss.backward()
        return loss
    opt.step(closure)
    model.eval()
    return model, opt, data


CONSTRUCTOR_ERRORS = {
    "unknown_scorer_p": (lambda: ParameterPruner("magnitud", 0.5), ValueError, "unknown scorer"),
    "unknown_scorer_u": (lambda: UnitPruner("mrss", 0.5), ValueError, "unknown scorer"),
    "unit_scorer_to_parameter_pruner": (lambda: ParameterPruner("mrs", 0.5), TypeError,
                                        "a parameter-wise scorer is needed"),
    "unit_instance_to_parameter_pruner": (lambda: ParameterPruner(Norm(), 0.5), TypeError,
                                          "a parameter-wise scorer is needed"),
    "parameter_scorer_to_unit_pruner": (lambda: UnitPruner("magnitude", 0.5), TypeError,
                                        "a unit-wise scorer is needed"),
    "not_a_scorer": (lambda: UnitPruner(object(), 0.5), TypeError, "a unit-wise scorer"),
    "scope_typo_p": (lambda: ParameterPruner("magnitude", 0.5, scope="globl"), ValueError,
                     "scope must be"),
    "scope_typo_u": (lambda: UnitPruner("norm", 0.5, scope="layers"), ValueError, "scope must"),
    "min_units_0": (lambda: UnitPruner("norm", 0.5, min_units=0), ValueError, "min_units"),
    "min_units_bool": (lambda: UnitPruner("norm", 0.5, min_units=True), ValueError, "min_units"),
    "min_units_float": (lambda: UnitPruner("norm", 0.5, min_units=2.0), ValueError, "min_units"),
    "replacement_typo": (lambda: UnitPruner("norm", 0.5, replacement="means"), ValueError,
                         "replacement must be"),
    "normalize_typo": (lambda: UnitPruner("norm", 0.5, normalize="l3"), ValueError,
                       "normalize must be"),
    "no_schedule_p": (lambda: ParameterPruner("magnitude"), ValueError, "a schedule is needed"),
    "no_schedule_u": (lambda: UnitPruner("norm"), ValueError, "a schedule is needed"),
    "schedule_str": (lambda: ParameterPruner("magnitude", "0.5"), TypeError, "schedule must"),
    "schedule_bool": (lambda: UnitPruner("norm", True), TypeError, "schedule must"),
    "schedule_1.5": (lambda: ParameterPruner("magnitude", 1.5), ValueError, r"in \[0, 1\]"),
    "schedule_decreasing": (lambda: UnitPruner("norm", {1: 0.5, 2: 0.2}), ValueError,
                            "never decreases"),
}


@pytest.mark.parametrize("case", list(CONSTRUCTOR_ERRORS))
def test_constructor_errors(case):
    fn, exc, match = CONSTRUCTOR_ERRORS[case]
    model, opt, _ = _mlp_setup()
    before = take(model, opt)
    with pytest.raises(exc, match=match):
        fn()
    assert_unchanged(before, model, opt)


X_EX = torch.randn(2, 6, dtype=torch.float64)

STEP_ERRORS = {  # (pruner factory, pass data?, exception, message)
    "unknown_param": (lambda: ParameterPruner("magnitude", 0.5, params=["fc9.weight"]), True,
                      ValueError, "unknown parameter 'fc9.weight'"),
    "param_typo": (lambda: ParameterPruner("magnitude", 0.5, params=["fc1.weigth"]), True,
                   ValueError, "unknown parameter 'fc1.weigth'"),
    "param_module_name": (lambda: ParameterPruner("magnitude", 0.5, params=["fc1"]), True,
                          ValueError, r"'fc1' is a module, not a parameter; name its tensors, "
                                      r"e\.g\. 'fc1\.weight'"),
    "param_scorer_needs_data": (lambda: ParameterPruner("taylor1", 0.5), False, ValueError,
                                "Taylor1 needs data"),
    "param_schedule_1.5": (lambda: ParameterPruner("magnitude", lambda t: 1.5), True, ValueError,
                           r"invalid amount at t=1: .*in \[0, 1\], got 1.5"),
    "param_schedule_str": (lambda: ParameterPruner("magnitude", lambda t: "half"), True, TypeError,
                           "invalid amount at t=1"),
    "param_count_too_large": (lambda: ParameterPruner("magnitude", 93, prune_output=True), True,
                              ValueError, "more than the 92"),
    "param_count_too_large_default": (lambda: ParameterPruner("magnitude", 78), True, ValueError,
                                      "more than the 77"),  # the output layer's 15 left out
    "param_nan_scores": (lambda: ParameterPruner(FixedParamScores(
        {k: torch.full(s, NAN, dtype=torch.float64) for k, s in
         (("fc1.weight", (7, 6)), ("fc2.weight", (5, 7)), ("fc3.weight", (3, 5)))}), 0.5),
        True, ValueError, "NaN scores"),
    "param_empty_data": (lambda: ParameterPruner("taylor1", 0.5), "empty", ValueError, "empty"),
    "unknown_layer": (lambda: UnitPruner("norm", 0.5, layers=["fc9"], replacement=None), True,
                      ValueError, r"unknown or non-prunable layers \['fc9'\]"),
    "output_layer": (lambda: UnitPruner("norm", 0.5, layers=["fc3"], replacement=None), True,
                     ValueError, "non-prunable"),
    "param_float64_data_float32_model": (lambda: ParameterPruner("magnitude", 0.5), "float32",
                                         TypeError, r"parameters are float64 but the data is "
                                                    r"float32: convert one, e\.g\. "
                                                    r"model\.float\(\) or x\.double\(\)"),
    "unit_float64_data_float32_model": (lambda: UnitPruner("mrs", 0.5), "float32", TypeError,
                                        r"parameters are float64 but the data is float32"),
    "unit_nothing_to_trace": (lambda: UnitPruner("mrs", 0.5), False, ValueError,
                              r"needs data= .*or an input batch given to the constructor: "
                              r"UnitPruner\(\.\.\., example_input=x\)"),
    "unit_scorer_needs_data": (lambda: UnitPruner("mrs", 0.5, example_input=X_EX), False,
                               ValueError, "MRS needs data"),
    "mean_needs_data": (lambda: UnitPruner("norm", 0.5, example_input=X_EX), False, ValueError,
                        "replacement='mean' needs data"),
    "unit_schedule_1.5": (lambda: UnitPruner("norm", lambda t: 1.5), True, ValueError,
                          r"invalid amount at t=1"),
    "unit_count_too_large": (lambda: UnitPruner("norm", 6), True, ValueError, "more than the 5"),
    "unit_nan_scores": (lambda: UnitPruner(FixedUnitScores(
        {"fc1": torch.full((7,), NAN), "fc2": torch.zeros(5)}), 0.5), True, ValueError,
        "NaN scores for layer 'fc1'"),
    "unit_bad_score_shape": (lambda: UnitPruner(FixedUnitScores(
        {"fc1": torch.zeros(6), "fc2": torch.zeros(5)}), 0.5), True, ValueError,
        r"no scores of shape \(7,\) for layer 'fc1'"),
}


@pytest.mark.parametrize("case", list(STEP_ERRORS))
def test_step_errors_change_nothing(case):
    factory, with_data, exc, match = STEP_ERRORS[case]
    model, opt, data = _mlp_setup()
    pruner = factory()
    state = copy.deepcopy(pruner.state_dict())
    before = take(model, opt)
    args = {"data": data} if with_data is True else {"data": []} if with_data == "empty" else {}
    if with_data == "float32":
        args = {"data": [(x.float(), y) for x, y in data]}
    with pytest.raises(exc, match=match):
        pruner.step(1, model, opt, **args)
    assert_unchanged(before, model, opt)
    assert pruner.history == [] and pruner.reached is None
    assert pruner.state_dict()["history"] == state["history"]


@pytest.mark.parametrize("remove", [True, False])
def test_unit_pruner_errors_before_and_after_a_round_change_nothing(remove):
    """LBFGS state cannot be sliced; NaN scores in a later round: model, optimizer, state kept."""
    model, opt, data = _mlp_setup(torch.optim.LBFGS, max_iter=3)
    pruner = UnitPruner("norm", table({1: 0.2, 2: 0.5}), remove=remove)
    before = take(model, opt)
    with pytest.raises(ValueError, match="LBFGS state cannot be sliced"):
        pruner.step(1, model, opt, data=data)
    assert_unchanged(before, model, opt)
    assert pruner.history == []
    rep = pruner.step(1, model, None, data=data)  # without the optimizer it works
    assert rep.remaining == {"fc1": 7 - 1, "fc2": 5 - 1}
    state = copy.deepcopy(pruner.state_dict())
    widths = {"fc1": model.fc1.out_features, "fc2": model.fc2.out_features}  # masks keep 7, 5
    assert widths == ({"fc1": 6, "fc2": 4} if remove else {"fc1": 7, "fc2": 5})
    nan = {"fc1": torch.zeros(widths["fc1"]), "fc2": torch.full((widths["fc2"],), NAN)}
    bad = UnitPruner(FixedUnitScores(nan), table({1: 0.2, 2: 0.5}), remove=remove)
    bad.load_state_dict(state)
    snapshot = take(model)
    with pytest.raises(ValueError, match="NaN scores for layer 'fc2'"):
        bad.step(2, model, None, data=data)
    assert_unchanged(snapshot, model)
    assert bad.state_dict() == state


class _Sandwich(nn.Module):
    """fc1 feeds a squaring (not per channel: the graph refuses it); fc2 and fc3 are a chain."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 8)
        self.fc3 = nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc1(x)
        h = h * h.flip(1)                      # mixes channels i and 5 - i
        return self.fc3(torch.relu(self.fc2(h)))


def test_unit_pruner_leaves_out_unsupported_layers_when_asked_and_says_why():
    torch.manual_seed(0)
    net = _Sandwich()
    data = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
    strict = UnitPruner("mrs", {1: 0.5})
    with pytest.raises(UnsupportedArchitecture, match=r"reached from producer 'fc1'"):
        strict.step(1, copy.deepcopy(net), data=data)
    lenient = UnitPruner("mrs", {1: 0.5}, on_unsupported="exclude")
    with pytest.warns(UserWarning, match=r"leaves out the layers the graph of units cannot "
                                         r"represent: fc1: node 'mul'"):
        report = lenient.step(1, net, data=data)
    assert set(lenient.unsupported) == {"fc1"} and "fc1" in report.left_out
    assert report.pruned == {"fc2": 4} and net.fc1.out_features == 6 and net.fc2.out_features == 4
    with pytest.raises(ValueError, match="on_unsupported must be 'raise' or 'exclude'"):
        UnitPruner("mrs", {1: 0.5}, on_unsupported="skip")


class _TiedHead(nn.Module):
    """An output layer that is F.linear with the embedding's weight (a tied head)."""

    def __init__(self):
        super().__init__()
        self.emb, self.fc = nn.Embedding(10, 6), nn.Linear(6, 6)

    def forward(self, ids):
        return F.linear(torch.relu(self.fc(self.emb(ids))), self.emb.weight)


def test_a_functional_output_layer_is_not_mistaken_for_the_module_before_it():
    assert output_layers(_TiedHead()) == []
    assert output_layers(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))) == ["2"]
