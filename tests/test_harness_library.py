"""The library inside the harness: its pieces as callbacks of the training loop
(:mod:`experiments.harness.callbacks`) and on the zoo's models.

These are harness tests (they import ``experiments``); the library's own tests use only the
small models of ``tests/zoo.py``. Each checks the callback against the library driven by hand:
a training loop written out step by step, the same attack applied around a plain optimizer
step, the trainer killed and resumed against one that ran through.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from helpers_snapshot import same_bits
from test_shrinknets import (TOL, anchors, hand_input_neurons, hand_mlp_macs, hand_penalty,
                             outputs)
from test_tracking import Net
from torch.utils.data import TensorDataset
from zoo import build, randomize_bn

from experiments.harness.callbacks import (AttackCallback, GroupSparsityCallback,
                                           ShrinkNetsCallback, TrackingCallback)
from experiments.harness.datasets import get_dataset
from experiments.harness.models import build_model
from experiments.harness.training import Callback, TrainConfig, Trainer, _seeded, batches
from pruners import LRAttack, ProximalGroupSparsity, count_params
from pruners.shrinknets import GarbageCollector, Threshold, insert_switches, switches
from saliency import UnitTracker


# --------------------------------------------------------------------------- learning-rate attacks


def _train(callbacks, steps=12, seed=0):
    torch.manual_seed(seed)
    model = build_model("mlp", widths=[5, 8, 6, 3])
    g = torch.Generator().manual_seed(3)
    train = TensorDataset(torch.randn(96, 5, generator=g), torch.randint(0, 3, (96,), generator=g))
    cfg = TrainConfig(epochs=2, batch_size=16, lr=0.1, momentum=0.9, seed=2)
    cbs = callbacks(model)
    trainer = Trainer(model, train, config=cfg, callbacks=cbs)
    trainer.fit()
    return model, trainer


def test_multiplier_one_is_bit_identical_to_no_attack():
    plain, _ = _train(lambda m: [])
    attacked, trainer = _train(lambda m: [AttackCallback(LRAttack(
        m, {"fc1": [0, 3, 5], "fc2": [1]}, 1.0, start=0, repeats=12, interval=1,
        outgoing=True))])
    assert trainer.callbacks[0].attack.applied == list(range(12))
    for (k, a), (_, b) in zip(plain.state_dict().items(), attacked.state_dict().items()):
        assert same_bits(a, b), k
    # and a real multiplier does change training
    other, _ = _train(lambda m: [AttackCallback(LRAttack(m, {"fc1": [0]}, 10.0, start=0))])
    assert not torch.equal(other.fc1.weight, plain.fc1.weight)


class _Seen(Callback):
    """Records fc1's weights when the loss is computed and after each step."""

    def __init__(self):
        self.before, self.after = {}, {}

    def loss(self, trainer, loss):
        self.before[trainer.step] = trainer.model.fc1.weight.detach().clone()
        return loss

    def on_step_end(self, trainer, loss):
        self.after[trainer.step - 1] = trainer.model.fc1.weight.detach().clone()


def test_harness_callback_scales_the_trainers_update():
    first, last = _Seen(), _Seen()
    m = 25.0
    _, trainer = _train(lambda model: [first, AttackCallback(LRAttack(
        model, {"fc1": [2]}, m, start=4, steps=2, repeats=2, interval=5, bias=False)), last])
    attack = trainer.callbacks[1].attack
    assert attack.applied == [4, 5, 9, 10]
    for t in range(12):
        old, new, seen = first.before[t], first.after[t], last.after[t]
        if t in attack.applied:
            assert torch.allclose(seen[2], old[2] + m * (new[2] - old[2]), rtol=1e-5, atol=1e-7)
            assert torch.equal(seen[[0, 1, 3, 4, 5, 6, 7]], new[[0, 1, 3, 4, 5, 6, 7]])
        else:
            assert torch.equal(seen, new)


# --------------------------------------------------------------------------- unit tracking


def _fit(with_tracking: bool, with_attack: bool = False):
    torch.manual_seed(0)
    model = Net(dropout=0.3)  # dropout draws from the global RNG while training
    g = torch.Generator().manual_seed(1)
    train = TensorDataset(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 3, (64,),
                                                                               generator=g))
    probe = [(train.tensors[0][:20], train.tensors[1][:20])]
    callbacks = []
    if with_attack:
        callbacks.append(AttackCallback(LRAttack(model, {"conv1": [1]}, 1.0, start=2,
                                                 repeats=3, interval=2, outgoing=True,
                                                 example_input=probe[0][0][:1])))
    if with_tracking:
        callbacks.append(TrackingCallback(UnitTracker(
            model, {"conv1": None, "fc1": [0, 5]}, probe, every=1,
            histograms=("activation", "output"))))
    trainer = Trainer(model, train, config=TrainConfig(epochs=2, batch_size=16, lr=0.05,
                                                       momentum=0.9, seed=4),
                      callbacks=callbacks)
    trainer.fit()
    return model, trainer, torch.get_rng_state()


def test_training_with_tracking_is_bit_identical_to_training_without():
    plain, _, rng_plain = _fit(False)
    tracked, trainer, rng_tracked = _fit(True, with_attack=True)
    tracker = trainer.callbacks[-1].tracker
    assert [r["step"] for r in tracker.records] == list(range(9))  # step 0 and every step
    assert trainer.history[-1]["probes"] == 9
    for (k, a), (_, b) in zip(plain.state_dict().items(), tracked.state_dict().items()):
        assert same_bits(a, b), k  # BatchNorm running statistics included
    assert torch.equal(rng_plain, rng_tracked)
    assert plain.training and tracked.training


# --------------------------------------------------------------------------- group sparsity


def test_callback_in_the_trainer_is_prox_sgd_step_for_step():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(96, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (96,), generator=g)
    cfg = TrainConfig(epochs=3, batch_size=16, optimizer="sgd", lr=0.2, seed=4)

    model, _ = build("mlp")
    reference = copy.deepcopy(model)
    prox = ProximalGroupSparsity(model, 0.04, alpha=0.3)
    cb = GroupSparsityCallback(prox, log_every=1)
    trainer = Trainer(model, TensorDataset(x, y), config=cfg, callbacks=[cb], progress=False)
    history = trainer.fit()

    opt = torch.optim.SGD(reference.parameters(), lr=0.2)
    ref_prox = ProximalGroupSparsity(reference, 0.04, alpha=0.3)
    penalties = []
    for epoch in range(3):
        reference.train()
        for xb, yb in batches(TensorDataset(x, y), 16, shuffle=True, generator=_seeded(4, epoch)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(reference(xb), yb).backward()
            opt.step()
            ref_prox.step(opt)
            penalties.append(float(ref_prox.penalty().detach()))
    for (n, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert torch.equal(p, q), n
    assert [r[0] for r in cb.steps] == list(range(1, 19))
    assert [r[2] for r in cb.steps] == penalties
    assert history[-1]["group_penalty"] == penalties[-1]
    zeros = ref_prox.zero_groups()
    assert history[-1]["zero_groups/fc1"] == zeros["fc1"].numel()
    assert history[-1]["groups/fc2"] == 5
    assert cb.steps[-1][3] == sum(z.numel() for z in zeros.values())


def _prox_sgd_then_refit(model, x, y, strength, epochs, release, seed, momentum=0.0):
    """The reference of ``release_after``: prox-SGD for ``release`` epochs, remove, plain SGD.

    Returns the units removed at the release and the penalty just before it."""

    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=momentum)
    prox = ProximalGroupSparsity(model, strength)
    removed = penalty = None
    for epoch in range(epochs):
        model.train()
        for xb, yb in batches(TensorDataset(x, y), 16, shuffle=True,
                              generator=_seeded(seed, epoch)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
            if epoch < release:
                prox.step(opt)
        if epoch + 1 == release:
            penalty = float(prox.penalty().detach())
            report = prox.remove_zero_groups(opt)  # the momentum buffers sliced with the rows
            removed = {} if report is None else dict(report.removed)
    return removed, penalty


@pytest.mark.parametrize("kill_after,momentum", [(None, 0.0), (1, 0.0), (2, 0.0), (3, 0.0),
                                                (None, 0.9), (3, 0.9)])
def test_callback_release_removes_then_refits_without_the_penalty(tmp_path, kill_after,
                                                                   momentum):

    model, shape = build("mlp")
    g = torch.Generator().manual_seed(1)
    x = torch.randn((96,) + shape, generator=g, dtype=torch.float64)
    with torch.no_grad():
        y = model.eval()(x).argmax(1)
    strength = {"fc1": 0.1, "fc2": 0.1}
    reference = copy.deepcopy(model)
    removed, penalty = _prox_sgd_then_refit(reference, x, y, strength, epochs=4, release=2,
                                            seed=3, momentum=momentum)
    # some groups, not all, are zero at the release, or the test cannot bite
    assert 0 < sum(removed.values()) and reference.fc1.out_features > 1

    arch = {"model": "test", "kwargs": {}}
    ckpt = tmp_path / "ckpt.pt"

    class Kill(Callback):  # dies in the epoch after ``kill_after``, before its checkpoint
        def on_epoch_end(self, trainer, metrics):
            if trainer.epoch == kill_after + 1:
                raise KeyboardInterrupt

    def trainer_for(net, extra=()):
        cb = GroupSparsityCallback(ProximalGroupSparsity(net, strength), release_after=2)
        return cb, Trainer(net, TensorDataset(x, y), config=TrainConfig(
            epochs=4, batch_size=16, optimizer="sgd", lr=0.2, momentum=momentum, seed=3),
            arch=arch, callbacks=[cb, *extra], checkpoint=ckpt, progress=False)

    if kill_after is not None:   # a run killed after that epoch, resumed on a fresh model
        with pytest.raises(KeyboardInterrupt):
            trainer_for(model, [Kill()])[1].fit()
        model, _ = build("mlp")
    cb, trainer = trainer_for(model)
    assert trainer.epoch == (kill_after or 0)
    history = trainer.fit()

    for (n, p), (_, q) in zip(model.named_parameters(), reference.named_parameters()):
        assert p.shape == q.shape, n
        torch.testing.assert_close(p, q, rtol=0, atol=1e-13, msg=n)
    assert cb.removals == [[2 * 6, n, k] for n, k in removed.items() if k]
    assert [r["params"] for r in history][1:] == [count_params(reference)] * 3
    assert history[0]["params"] > history[1]["params"]
    # after the release the objective is the data loss alone
    assert history[1]["objective"] == history[1]["train_loss"] + history[1]["group_penalty"]
    assert [r["objective"] for r in history[2:]] == [r["train_loss"] for r in history[2:]]
    assert len(cb.steps) == 12       # logged while the prox ran: the first 2 epochs' 12 steps
    # the release row's penalty is that of the weights epoch 2 trained, before the cut
    assert history[1]["group_penalty"] == pytest.approx(penalty, rel=1e-12)
    if momentum:
        buf = trainer.optimizer.state[model.fc1.weight]["momentum_buffer"]
        assert buf.shape == model.fc1.weight.shape
    with pytest.raises(ValueError, match="release_after"):
        GroupSparsityCallback(cb.prox, release_after=0)
    late = GroupSparsityCallback(ProximalGroupSparsity(model, strength), release_after=5)
    with pytest.raises(ValueError, match="release_after=5 is past the last epoch"):
        Trainer(model, TensorDataset(x, y), config=TrainConfig(epochs=4), callbacks=[late],
                progress=False).fit()


def test_callback_removes_zero_groups_on_a_schedule():
    model, shape = build("mlp")
    g = torch.Generator().manual_seed(0)
    x = torch.randn((96,) + shape, generator=g, dtype=torch.float64)
    model.eval()
    with torch.no_grad():
        y = model(x).argmax(1)
    prox = ProximalGroupSparsity(model, {"fc1": 0.6, "fc2": 0.6})
    cb = GroupSparsityCallback(prox, remove_every=6, remove_at_end=True)
    trainer = Trainer(model, TensorDataset(x, y), config=TrainConfig(
        epochs=8, batch_size=16, optimizer="adam", lr=0.05), callbacks=[cb], progress=False)
    history = trainer.fit()
    removed = {}
    for _, layer, n in cb.removals:
        removed[layer] = removed.get(layer, 0) + n
    assert removed and all(s % 6 == 0 or s == trainer.step for s, _, _ in cb.removals)
    assert model.fc1.out_features == 7 - removed.get("fc1", 0)
    assert model.fc2.out_features == 5 - removed.get("fc2", 0)
    assert history[-1]["groups/fc1"] == model.fc1.out_features
    assert all(history[-1][f"zero_groups/{n}"] == 0 for n in ("fc1", "fc2"))
    exp_avg = trainer.optimizer.state[model.fc2.weight]["exp_avg"]
    assert exp_avg.shape == model.fc2.weight.shape
    with pytest.raises(ValueError, match="another model"):
        other, _ = build("mlp")
        Trainer(other, TensorDataset(x, y), config=TrainConfig(epochs=1), callbacks=[cb],
                progress=False).fit()


# --------------------------------------------------------------------------- ShrinkNets


def _synthetic():

    sp = get_dataset("synthetic-classification", n_samples=200, n_features=10, n_relevant=3,
                     n_classes=3, seed=0)
    return (TensorDataset(sp.train.tensors[0].double(), sp.train.tensors[1]),
            TensorDataset(sp.val.tensors[0].double(), sp.val.tensors[1]))


ARCH = {"model": "mlp", "kwargs": {"widths": [10, 16, 12, 3]}}


CFG = dict(epochs=3, batch_size=32, optimizer="adam", lr=0.05, seed=0)


LAM, LAM2 = 0.05, 1e-3


def _switched_mlp(example):
    torch.manual_seed(0)
    model = build_model(ARCH["model"], **ARCH["kwargs"]).double()
    return insert_switches(model, example, parametrization="relu", init="uniform")


def _shrinknets_callback(remove=True):
    return ShrinkNetsCallback(GarbageCollector(Threshold(0.0), remove=remove),
                              lam=LAM, lam2=LAM2, p=2)


def _recorder():
    class Recorder(Callback):
        """Placed after ShrinkNetsCallback: sees the penalized loss and the collected model."""

        def __init__(self):
            self.losses, self.steps, self.rows = [], [], []

        def loss(self, trainer, loss):
            self.losses.append(float(loss.detach()))
            m = trainer.model        # the size this step computes with, before its collection
            self.steps.append((trainer.epoch, hand_input_neurons(m), hand_mlp_macs(m)))
            return loss

        def on_epoch_end(self, trainer, metrics):
            m = trainer.model
            self.rows.append({
                "params": sum(q.numel() for q in m.parameters()),
                "units": {f"units/{k}": sw.weight.shape[0] for k, sw in switches(m).items()},
                "widths": [m.fc1.weight.shape[0], m.fc2.weight.shape[0]]})

    return Recorder()


def test_shrinknets_callback_in_the_trainer(tmp_path):
    train, val = _synthetic()
    gm = _switched_mlp(train.tensors[0][:1])
    start = copy.deepcopy(gm)
    first = []
    handle = gm.register_forward_pre_hook(
        lambda m, args: first.append(args[0].clone()) if not first else None)
    rec = _recorder()
    cb = _shrinknets_callback()
    trainer = Trainer(gm, train, val_set=val, config=CFG, arch=ARCH, callbacks=[cb, rec],
                      progress=False)
    history = trainer.fit()
    handle.remove()
    # the first step's loss: cross-entropy on the first batch + the penalty, by hand
    xb = first[0]  # its labels: the training rows it came from
    idx = [int((train.tensors[0] == row).all(dim=1).nonzero()[0]) for row in xb]
    yb = train.tensors[1][idx]
    hand = float(F.cross_entropy(outputs(start, xb), yb)) + hand_penalty(start, LAM, LAM2, 2)
    assert abs(rec.losses[0] - hand) <= TOL
    # units were removed, and the optimizer went on with the shrunk model
    assert trainer.model is gm and cb.collector.history
    assert sum(rec.rows[-1]["widths"]) < 16 + 12
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == \
        {id(p) for p in gm.parameters()}
    # each epoch's row against sizes recomputed from the model
    assert len(history) == 3 and len(rec.steps) == 3 * 4
    for e, (row, seen) in enumerate(zip(history, rec.rows)):
        assert row["params"] == seen["params"]
        for k, v in seen["units"].items():
            assert row[k] == v
        assert seen["units"]["units/switches.fc1"] == seen["widths"][0]
        steps = [s for s in rec.steps if s[0] == e]
        assert row["input_neurons_epoch"] == sum(s[1] for s in steps)
        assert row["macs_epoch"] == sum(s[2] for s in steps)
    assert history[-1]["params"] == count_params(gm)
    assert history[-1]["input_neurons_epoch"] < history[0]["input_neurons_epoch"]


@pytest.mark.parametrize("remove", [True, False])
def test_shrinknets_training_resumes_exactly(tmp_path, remove):
    """Killed after epoch 2 and rerun to 3 epochs: the same model, history and cost log."""
    train, val = _synthetic()
    ex = train.tensors[0][:1]
    full = Trainer(_switched_mlp(ex), train, val_set=val, config=CFG, arch=ARCH,
                   callbacks=[_shrinknets_callback(remove)],
                   checkpoint=tmp_path / "full" / "checkpoint.pt", progress=False)
    full.fit()
    part = Trainer(_switched_mlp(ex), train, val_set=val, config=dict(CFG, epochs=2), arch=ARCH,
                   callbacks=[_shrinknets_callback(remove)],
                   checkpoint=tmp_path / "part" / "checkpoint.pt", progress=False)
    part.fit()
    cb = _shrinknets_callback(remove)
    resumed = Trainer(_switched_mlp(ex), train, val_set=val, config=CFG, arch=ARCH,
                      callbacks=[cb], checkpoint=tmp_path / "part" / "checkpoint.pt",
                      progress=False)
    assert resumed.epoch == 2
    resumed.fit()
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].shape == b[k].shape and torch.equal(a[k], b[k]), k
    drop = ("epoch_time_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in full.history] == \
        [{k: v for k, v in r.items() if k not in drop} for r in resumed.history]
    assert full.callbacks[0].collector.cost == cb.collector.cost
    assert full.callbacks[0].collector.masked == cb.collector.masked
    x = val.tensors[0]
    assert torch.equal(outputs(full.model, x), outputs(resumed.model, x))
    if remove:
        assert count_params(full.model) < count_params(_switched_mlp(ex))


@pytest.mark.parametrize("name, kwargs, shape, expected", [
    ("mlp", {"widths": [6, 9, 8, 7, 3]}, (6,),
     {"switches.fc1": "fc1", "switches.fc2": "fc2", "switches.fc3": "fc3"}),
    ("vgg", {"config": [4, "M", 5, 6, "M"], "in_channels": 1, "image_size": 8, "hidden": 7,
             "num_classes": 3}, (1, 8, 8),
     {"switches.features_0": "features.1", "switches.features_4": "features.5",
      "switches.features_7": "features.8", "switches.classifier_1": "classifier.1"}),
])
def test_switches_on_the_zoos_models_follow_each_layer_or_its_batchnorm(name, kwargs, shape,
                                                                         expected):
    torch.manual_seed(0)
    model = randomize_bn(build_model(name, **kwargs).double())
    x = torch.randn((6,) + shape, dtype=torch.float64)
    gm = insert_switches(model, x, parametrization="relu", init="uniform")
    assert anchors(gm) == expected and sorted(switches(gm)) == sorted(expected)
    for sname, sw in switches(gm).items():  # one gate per unit of the layer it follows
        assert sw.num_channels == gm.get_submodule(expected[sname]).weight.shape[0]


def test_the_group_figure_draws_the_traced_groups(tmp_path):
    from experiments.tools.group_figure import draw

    drawn = draw(str(tmp_path / "groups.png"))
    assert drawn == {"conv1": ["conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2"],
                     "layer1.0.conv1": ["layer1.0.conv1"], "layer1.1.conv1": ["layer1.1.conv1"],
                     "layer1.2.conv1": ["layer1.2.conv1"]}
    assert (tmp_path / "groups.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


ZOO_COUPLED = [
    ("resnet20", {"widths": (4, 6, 8)}),
    ("resnet", {"blocks": (1, 1), "block": "bottleneck", "widths": (4, 8), "width": 1.0}),
    ("resnet18", {"width": 0.0625}),
    ("mobilenet_v2", {"width": 0.25, "stem": 8, "last_channels": 16}),
    ("densenet", {"growth_rate": 3, "blocks": (2, 2), "init_channels": 6}),
]


@pytest.mark.parametrize("name, kwargs", ZOO_COUPLED, ids=[n for n, _ in ZOO_COUPLED])
def test_the_zoos_coupled_models_mask_as_they_remove(name, kwargs):
    """Every prunable group of the zoo's residual, inverted-residual and dense networks loses
    a unit; the removed and the masked model agree (float64), and the groups are as built."""
    import warnings

    from pruners import InexactReplacementWarning, mask_units, remove_units, trace

    torch.manual_seed(0)
    model = randomize_bn(build_model(name, **kwargs).double()).eval()
    masked = copy.deepcopy(model)
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64)
    graph = trace(model, x[:1])
    joined = [g for g in graph.prunable if graph.groups[g].joined]
    assert bool(joined) == (name != "densenet")  # DenseNet concatenates, never adds
    units = {g: [graph.groups[g].size - 1] for g in graph.prunable}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InexactReplacementWarning)
        report = remove_units(model, units, replacement="mean", data=[(x, None)])
        mask_units(masked, units, replacement="mean", data=[(x, None)])
    with torch.no_grad():
        assert (model(x) - masked(x)).abs().max() <= 1e-10
    assert report.removed == {g: 1 for g in graph.prunable}
    assert report.params_after < report.params_before
