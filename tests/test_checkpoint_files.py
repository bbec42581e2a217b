"""Reading the checkpoint files people have (pruners.read_state_dict) and reloading a pruned
model into its architecture (pruners.load_pruned), without running code from the file."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pruners import StateDictError, load_pruned, read_state_dict, remove_units
from pruners.checkpoint import FORMAT


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))


class Wrapped(nn.Module):
    """What nn.DataParallel and torch.compile do to state-dict keys: a ``module`` or
    ``_orig_mod`` attribute holding the model."""

    def __init__(self, inner, attr):
        super().__init__()
        setattr(self, attr, inner)


@pytest.mark.parametrize("layout,payload", [
    ("state_dict", lambda sd: sd),
    ("toolkit", lambda sd: {"format": FORMAT, "arch": {"model": "mlp"}, "state_dict": sd}),
    ("dict['model']", lambda sd: {"model": sd, "optimizer": {"state": {}}, "epoch": 3}),
    ("dict['state_dict']", lambda sd: {"state_dict": sd, "epoch": 3}),
    ("dict['model_state_dict']", lambda sd: {"model_state_dict": sd, "best_acc": 0.9}),
    ("dict['net']", lambda sd: {"net": sd}),
])
def test_every_common_layout_gives_the_same_state_dict(tmp_path, layout, payload):
    sd = net().state_dict()
    torch.save(payload(sd), tmp_path / "ckpt.pt")
    got, info = read_state_dict(tmp_path / "ckpt.pt")
    assert info["layout"] == layout and info["stripped"] == []
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_a_named_key_and_its_errors(tmp_path):
    sd = net().state_dict()
    torch.save({"ema": sd, "weights": sd}, tmp_path / "ckpt.pt")
    got, info = read_state_dict(tmp_path / "ckpt.pt", key="ema")
    assert info["layout"] == "dict['ema']" and torch.equal(got["0.weight"], sd["0.weight"])
    with pytest.raises(StateDictError, match=r"has no key 'model'; its keys are \['ema', "
                                             r"'weights'\]"):
        read_state_dict(tmp_path / "ckpt.pt", key="model")
    with pytest.raises(StateDictError, match=r"none holds a state dict .* name the key"):
        read_state_dict(tmp_path / "ckpt.pt")


@pytest.mark.parametrize("attrs", [["module"], ["_orig_mod"], ["_orig_mod", "module"],
                                   ["module", "_orig_mod"]])
def test_wrapper_prefixes_are_removed(tmp_path, attrs):
    model = net()
    wrapped = model
    for attr in attrs:
        wrapped = Wrapped(wrapped, attr)
    torch.save(wrapped.state_dict(), tmp_path / "ckpt.pt")
    got, info = read_state_dict(tmp_path / "ckpt.pt")
    assert set(got) == set(model.state_dict())
    assert info["stripped"] == [a + "." for a in reversed(attrs)]  # outermost first


def test_safetensors(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    sd = net().state_dict()
    safetensors.save_file({k: v.contiguous() for k, v in sd.items()}, tmp_path / "m.safetensors")
    got, info = read_state_dict(tmp_path / "m.safetensors")
    assert info["layout"] == "safetensors" and all(torch.equal(got[k], sd[k]) for k in sd)


def test_a_whole_pickled_model_is_refused_with_the_steps_and_loads_when_allowed(tmp_path):
    model = net()
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(StateDictError) as err:
        read_state_dict(tmp_path / "whole.pt")
    msg = str(err.value)
    assert "refused to load" in msg and "torch.nn.modules.container.Sequential" in msg
    assert "torch.save(model.state_dict(), 'model_state.pt')" in msg
    assert "allow_pickle=True" in msg and "--allow-pickle" in msg
    got, info = read_state_dict(tmp_path / "whole.pt", allow_pickle=True)
    assert info["layout"] == "pickled model" and isinstance(info["model"], nn.Sequential)
    assert torch.equal(got["2.weight"], model.state_dict()["2.weight"])


def test_bad_files_say_what_they_are(tmp_path):
    with pytest.raises(StateDictError, match="does not exist"):
        read_state_dict(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(StateDictError, match=r"truncated, corrupt or not written by "
                                             r"torch.save \(empty file\)"):
        read_state_dict(tmp_path / "empty.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(StateDictError, match="holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pt")


def test_a_pruned_model_reloads_into_its_architecture(tmp_path):
    model = net()
    x = torch.randn(5, 4)
    remove_units(model, {"0": [1, 4]}, replacement="mean", data=[(x, torch.zeros(5).long())])
    torch.save({"model": model.state_dict(), "epoch": 1}, tmp_path / "pruned.pt")
    sd, _ = read_state_dict(tmp_path / "pruned.pt")
    fresh = load_pruned(net(), sd)
    assert (fresh[0].out_features, fresh[2].in_features) == (4, 4)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    with pytest.raises(StateDictError, match="does not match the model"):
        load_pruned(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3), nn.ReLU(),
                                  nn.Linear(3, 2)), sd)
