"""pruners.diagnose and pruners.batches_of: the library side of the diagnosis, on data of every
common form, with and without targets, and with layers the graph cannot represent."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pruners import batches_of, count_params, diagnose
from saliency import find_dead_units


def planted():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 8), nn.ReLU(),
                        nn.Linear(8, 3))
    with torch.no_grad():
        net[0].bias[3] = -50.0          # never fires
        net[2].weight[:, 9] = 0.0       # unit 9 of layer 0: no outgoing weight
    g = torch.Generator().manual_seed(1)
    return net, torch.randn(90, 6, generator=g), torch.randint(0, 3, (90,), generator=g)


def test_every_form_of_data_gives_the_same_batches():
    _, x, y = planted()
    want = [(x[i:i + 40], y[i:i + 40]) for i in range(0, 90, 40)]
    forms = [(x, y), {"inputs": x, "labels": y}, TensorDataset(x, y),
             DataLoader(TensorDataset(x, y), batch_size=40),
             [{"x": x[i:i + 40], "y": y[i:i + 40]} for i in range(0, 90, 40)]]
    for form in forms:
        got = batches_of(form, batch_size=40)
        assert len(got) == len(want), type(form).__name__
        for (a, b), (c, d) in zip(got, want):
            assert torch.equal(a, c) and torch.equal(b, d), type(form).__name__
    only = batches_of(x, batch_size=50, samples=70)
    assert [len(b[0]) for b in only] == [50, 20] and only[0][1] is None
    with pytest.raises(ValueError, match=r"no inputs under \['inputs', 'input', 'x'"):
        batches_of({"features": x})
    with pytest.raises(ValueError, match="90 inputs but 80 targets"):
        batches_of((x, y[:80]))
    with pytest.raises(TypeError, match="expected a tensor of inputs, a pair"):
        batches_of(3.0)


def test_diagnose_finds_removes_and_reports_like_the_library_detector():
    net, x, y = planted()
    result = diagnose(net, (x, y), batch_size=45)
    ref = find_dead_units(net, [(x[:45], y[:45]), (x[45:], y[45:])])
    assert result.report.to_dict()["units"] == ref.to_dict()["units"]
    assert result.plan["0"] == [3, 9]                  # the planted ones (and any other)
    assert result.plan == {k: v.tolist() for k, v in ref.dead().items()}
    assert result.per_layer["0"]["params_saved"] == 2 * (6 + 1) + 2 * 8   # rows and columns
    assert result.removal["params_after"] == count_params(result.smaller)
    assert result.removal["max_output_deviation"] <= 1e-5
    with torch.no_grad():
        assert torch.allclose(result.smaller(x), net(x), atol=1e-5)
    table = result.table()
    assert table.splitlines()[0].split()[:3] == ["layer", "units", "low_mrs"]
    assert "total" in table
    assert result.to_dict()["removal"]["removed"] == sum(map(len, result.plan.values()))
    # without targets: the gradient criteria are skipped and said so; the plan is the same
    blind = diagnose(net, x)
    assert blind.report.skipped == ["low_mrs", "frozen"] and blind.plan == result.plan
    assert "not computed (the data has no targets): low_mrs, frozen" in blind.table()
    with pytest.raises(ValueError, match=r"unknown criteria \['frozen'\] \(frozen need "
                                         r"targets"):
        diagnose(net, x, criteria=["frozen"])


class Squared(nn.Module):
    """fc1's channels go through a product with their own reverse (not per channel)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 6), nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.fc1(x)
        return self.fc3(torch.relu(self.fc2(h * h.flip(1))))


def test_layers_the_graph_cannot_represent_are_left_out_and_named():
    torch.manual_seed(0)
    result = diagnose(Squared(), (torch.randn(20, 6), torch.randint(0, 3, (20,))))
    assert list(result.left_out) == ["fc1"] and "node 'mul'" in result.left_out["fc1"]
    assert result.report.layers == ["fc2"]
    assert "left out: fc1: node 'mul'" in result.table()


def test_bad_forms_and_criteria_are_refused_before_any_work():
    net, x, y = planted()
    assert [len(b[0]) for b in batches_of([x, y], batch_size=50)] == [50, 40]   # a list pair
    assert len(batches_of([x[:10], x[10:20]])) == 2                            # two batches
    with pytest.raises(ValueError, match="the Dataset has no sample"):
        batches_of(TensorDataset(x[:0], y[:0]))
    with pytest.raises(ValueError, match=r"unknown criteria \['low_mrp'\] \(low_mrp needs exact "
                                         r"MRP"):
        diagnose(net, (x, y), criteria=["low_mrp"])
    with pytest.raises(ValueError, match="no criteria given"):
        diagnose(net, (x, y), criteria=[])
    assert diagnose(net, (x, y), criteria="never_active").plan["0"] == [3]
    with pytest.raises(TypeError, match="parameters are float32 but the data is float64"):
        diagnose(net, (x.double(), y))


def test_the_statistics_figure_drops_what_data_without_targets_cannot_give():
    import matplotlib
    matplotlib.use("Agg")
    net, x, _ = planted()
    fig = diagnose(net, x).figures()["statistics"]
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert not any("MRS" in t or "gradient" in t for t in titles) and titles
    assert "not computed (the data has no targets)" in fig._suptitle.get_text()
