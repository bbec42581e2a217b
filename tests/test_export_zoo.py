"""The graph of units from torch.export against torch.fx's on every network of the harness's
model zoo: the same units, groups, consumers and heads (the library's own test architectures
are compared in test_export.py)."""

from __future__ import annotations

import pytest
import torch
from test_export import signature

from experiments.harness.models import MODELS, build_model
from pruners import UnsupportedArchitecture, trace

#: (keyword arguments, example input) per zoo network; small widths keep it quick
CASES = {
    "mlp": (dict(widths=[784, 32, 16, 10]), lambda: torch.randn(2, 784)),
    "small_cnn": ({}, lambda: torch.randn(2, 1, 28, 28)),
    "thesis_cnn": ({}, lambda: torch.randn(2, 1, 28, 28)),
    "thesis_cifar_cnn": ({}, lambda: torch.randn(2, 3, 32, 32)),
    "lenet_300_100": ({}, lambda: torch.randn(2, 784)),
    "lenet5": ({}, lambda: torch.randn(2, 1, 28, 28)),
    "vgg": (dict(width=0.125), lambda: torch.randn(2, 3, 32, 32)),
    "covertype_net": ({}, lambda: torch.randn(2, 54)),
    "resnet_cifar": (dict(widths=(4, 8, 8)), lambda: torch.randn(2, 1, 28, 28)),
    "resnet20": (dict(widths=(4, 8, 8)), lambda: torch.randn(2, 1, 28, 28)),
    "resnet56": (dict(widths=(4, 8, 8)), lambda: torch.randn(2, 1, 28, 28)),
    "resnet": ({}, lambda: torch.randn(2, 1, 28, 28)),
    "resnet18": ({}, lambda: torch.randn(2, 1, 28, 28)),
    "mobilenet_v2": ({}, lambda: torch.randn(2, 1, 28, 28)),
    "densenet": ({}, lambda: torch.randn(2, 1, 28, 28)),
    "vit_tiny": (dict(width=32, depth=2), lambda: torch.randn(2, 1, 28, 28)),
    "decoder_lm": (dict(width=32, depth=2, ffn=48, context=16),
                   lambda: torch.randint(0, 128, (2, 16))),
    "hf_llama": (dict(width=16, depth=2, heads=4, ffn=24, context=16),
                 lambda: torch.randint(0, 128, (2, 16))),
}
#: networks torch.fx cannot trace: only the export route builds their graph
EXPORT_ONLY = {"hf_llama"}


def test_every_zoo_network_has_a_case():
    assert set(CASES) == set(MODELS)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_both_routes_give_the_same_graph_on_the_model_zoo(name):
    kwargs, example = CASES[name]
    if name == "hf_llama":
        pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = build_model(name, **kwargs).eval()
    x = example()
    if name in EXPORT_ONLY:
        with pytest.raises(UnsupportedArchitecture, match="torch.fx cannot trace"):
            trace(model, x, route="fx")
        graph = trace(model, x)
        assert graph.prunable and graph.prunable_heads
        return
    fx_graph = trace(model, x, route="fx", on_unsupported="exclude")
    export_graph = trace(model, x, route="export", on_unsupported="exclude")
    assert signature(export_graph) == signature(fx_graph)
    assert fx_graph.prunable, name  # the comparison is about units, not an empty graph
