"""Error messages that say what is wrong and what to do.

Each case checks the exception type and the key words of its message (what went wrong and
the call that fixes it), that the fix the message suggests works, and that nothing was
changed by the failed call (:mod:`helpers_snapshot`).
"""

from __future__ import annotations

import re
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from helpers_snapshot import assert_unchanged, take

from pruners import ParameterPruner, UnitPruner
from saliency import SCORERS, MRS, Magnitude, Norm, trace
from saliency.graph import UnsupportedArchitecture


def mlp(dtype=torch.float32) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(4, 6), act=nn.ReLU(),
                                     fc2=nn.Linear(6, 3))).to(dtype)


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(5 * 4 * 4, 3))


def data(dtype=torch.float32, n=8, shape=(4,)):
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn((n,) + shape, generator=gen).to(dtype),
             torch.randint(0, 3, (n,), generator=gen))]


# --------------------------------------------------------------------------- example_input


@pytest.mark.parametrize("name", ["norm", "group_norm", "random_unit"])
def test_cnn_without_input_says_the_constructor_takes_example_input(name):
    model = cnn()
    before = take(model)
    call = re.escape(f'SCORERS["{name}"](example_input=x).score(model)')
    with pytest.raises(ValueError, match=rf"cannot infer the input shape.*to the constructor, "
                                         rf"e\.g\. {call}, or pass data= to score\(\)"):
        SCORERS[name]().score(model)
    assert_unchanged(before, model)
    x = torch.randn(1, 1, 8, 8)
    scores = SCORERS[name](example_input=x).score(model)  # what the message says works
    assert scores["0"].shape == (4,) and scores["2"].shape == (5,)


@pytest.mark.parametrize("name", ["norm", "group_norm", "mrs", "dormancy", "mrp"])
def test_constructor_keyword_given_to_score_is_a_clear_type_error(name):
    model, x = cnn(), torch.randn(1, 1, 8, 8)
    call = re.escape(f'SCORERS["{name}"](example_input=x).score(model')
    with pytest.raises(TypeError, match=rf"score\(\) takes no 'example_input': example_input is "
                                        rf"an option of the constructor, e\.g\. {call}"):
        SCORERS[name]().score(model, example_input=x)
    layers = re.escape(f'SCORERS["{name}"](layers=...)')
    with pytest.raises(TypeError, match=r"takes no 'layers': layers is an option of the "
                                        rf"constructor.*{layers}"):
        SCORERS[name]().score(model, layers=["0"])


def test_unknown_keyword_to_score_is_the_usual_type_error():
    with pytest.raises(TypeError, match=r"Norm\.score\(\) got an unexpected keyword argument "
                                        r"'foo'.*\['p', 'layers', 'exclude', 'example_input'\]"):
        Norm().score(mlp(), foo=1)
    # Magnitude's constructor has no example_input: to it that is just an unknown keyword
    with pytest.raises(TypeError, match=r"Magnitude\.score\(\) got an unexpected keyword "
                                        r"argument 'example_input'.*\['params'\]"):
        Magnitude().score(mlp(), example_input=torch.zeros(1, 4))
    with pytest.raises(TypeError, match=r"takes no 'params': params is an option of the "
                                        r"constructor, e\.g\. "
                                        + re.escape('SCORERS["magnitude"](params=...)')):
        Magnitude().score(mlp(), params=["fc1.weight"])


# --------------------------------------------------------------------------- parameter names


def test_parameter_pruner_given_a_module_name_suggests_its_weight():
    model = mlp()
    before = take(model)
    pruner = ParameterPruner("magnitude", 0.5, params=["fc1"])
    with pytest.raises(ValueError, match=r"unknown parameter 'fc1': 'fc1' is a module, not a "
                                         r"parameter; name its tensors, e\.g\. 'fc1\.weight' "
                                         r"\(its parameters: \['fc1\.weight', 'fc1\.bias'\]\)"):
        pruner.step(0, model)
    assert_unchanged(before, model)
    assert pruner.history == [] and pruner.reached is None
    report = ParameterPruner("magnitude", 0.5, params=["fc1.weight"]).step(0, model)
    assert report.pruned == {"fc1.weight": 12}


def test_unknown_parameter_names_a_few_valid_ones():
    model = mlp()
    with pytest.raises(ValueError, match=r"unknown parameter 'fc1\.wieght'; did you mean "
                                         r"'fc1\.weight'\? \(the model's parameters: "
                                         r"\['fc1\.weight', 'fc1\.bias', 'fc2\.weight', "
                                         r"'fc2\.bias'\]\)"):
        ParameterPruner("magnitude", 0.5, params=["fc1.wieght"]).step(0, model)
    with pytest.raises(ValueError, match=r"unknown parameter 'encoder' \(the model's "
                                         r"parameters: \['fc1\.weight'"):
        ParameterPruner("magnitude", 0.5, params=["encoder"]).step(0, model)
    # the scorers say the same
    with pytest.raises(ValueError, match=r"'fc2' is a module, not a parameter.*'fc2\.weight'"):
        Magnitude(params=["fc2"]).score(model)
    with pytest.raises(ValueError, match=r"'act' is a module with no parameters of its own"):
        Magnitude(params=["act"]).score(model)


# --------------------------------------------------------------------------- dtypes

DTYPE_MSG = (r"the model's parameters are float32 but the data is float64: convert one, "
             r"e\.g\. model\.double\(\) or x\.float\(\)")


@pytest.mark.parametrize("name", ["mrs", "mrp", "taylor", "dormancy", "taylor1", "taylor2",
                                  "hessian", "loss_change"])
def test_float32_model_float64_data_says_to_convert_one(name):
    model = mlp(torch.float32)
    before = take(model)
    with pytest.raises(TypeError, match=DTYPE_MSG):
        SCORERS[name]().score(model, data(torch.float64))
    assert_unchanged(before, model)
    SCORERS[name]().score(model.double(), data(torch.float64))  # the first fix works
    SCORERS[name]().score(mlp(torch.float32), data(torch.float32))  # and so does the second


def test_dtype_mismatch_the_other_way_and_through_the_pruners():
    with pytest.raises(TypeError, match=r"parameters are float64 but the data is float32: "
                                        r"convert one, e\.g\. model\.float\(\) or x\.double\(\)"):
        MRS().score(mlp(torch.float64), data(torch.float32))
    # a scorer that needs no data but traces with it
    with pytest.raises(TypeError, match=DTYPE_MSG):
        Norm().score(mlp(), data(torch.float64))
    with pytest.raises(TypeError, match=r"float32 but example_input is float64"):
        Norm(example_input=torch.zeros(1, 4, dtype=torch.float64)).score(mlp())
    # magnitude never runs the model: data of any dtype is ignored, as before
    assert Magnitude().score(mlp(), data(torch.float64))["fc1.weight"].shape == (6, 4)
    for pruner in (UnitPruner("mrs", 0.5), ParameterPruner("magnitude", 0.5),
                   ParameterPruner("taylor1", 0.5)):
        model = mlp()
        before = take(model)
        with pytest.raises(TypeError, match=DTYPE_MSG):
            pruner.step(0, model, data=data(torch.float64))
        assert_unchanged(before, model)
        assert pruner.history == []
    with pytest.raises(TypeError, match=r"float32 but example_input is float64"):
        UnitPruner("norm", 0.5, replacement=None,
                   example_input=torch.zeros(1, 4, dtype=torch.float64)).step(0, mlp())


class Bag(nn.Module):
    """Token ids in, classes out."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, tokens):
        return self.fc2(torch.relu(self.fc1(self.emb(tokens).mean(1))))


def test_token_inputs_are_not_checked_for_dtype():
    torch.manual_seed(0)
    tokens = torch.randint(0, 10, (4, 5))
    scores = MRS().score(Bag(), [(tokens, torch.randint(0, 3, (4,)))])
    assert scores["fc1"].shape == (8,)


# --------------------------------------------------------------------------- meta device

META_MSG = (r"is on the meta device \('fc1\.weight' has a shape but no values\).*load or "
            r"materialize its weights first, e\.g\. model\.to_empty\(device=\"cpu\"\) then "
            r"model\.load_state_dict\(state_dict\)")


@pytest.mark.parametrize("name", ["mrs", "mrp", "taylor1", "norm", "magnitude", "dormancy"])
def test_meta_model_says_to_materialize_it_first(name):
    meta = mlp().to("meta")
    with pytest.raises(ValueError, match=META_MSG):
        SCORERS[name]().score(meta, data())
    # the fix the message gives
    real = meta.to_empty(device="cpu")
    real.load_state_dict(mlp().state_dict())
    assert SCORERS[name]().score(real, data())


@pytest.mark.parametrize("pruner", [lambda: ParameterPruner("magnitude", 0.5),
                                    lambda: UnitPruner("mrs", 0.5)], ids=["param", "unit"])
def test_pruners_refuse_a_meta_model(pruner):
    p = pruner()
    with pytest.raises(ValueError, match=META_MSG):
        p.step(0, mlp().to("meta"), data=data())
    assert p.history == [] and p.reached is None


# --------------------------------------------------------------------------- trace messages


class TwoProducts(nn.Module):
    """Two elementwise products of two tensors: trace refuses with a multi-line message."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(4, 6)
        self.c = nn.Linear(4, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x):
        return self.out(self.a(x) * self.b(x) * self.c(x) * self.a(x).sigmoid())


def test_multi_line_trace_messages_reach_the_user_whole():
    model = TwoProducts()
    with pytest.raises(UnsupportedArchitecture) as direct:
        trace(model, torch.zeros(1, 4))
    text = str(direct.value)
    assert len(text.splitlines()) >= 3  # a head line, the nodes, the hint
    for call in (lambda: MRS().score(model, data()),
                 lambda: Norm().score(model),
                 lambda: UnitPruner("mrs", 0.5).step(0, model, data=data())):
        with pytest.raises(UnsupportedArchitecture) as via:
            call()
        assert str(via.value) == text
