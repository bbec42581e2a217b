"""The setting of the criteria benchmark: networks, operating points, seeds, budgets, methods.

Everything that decides a number lives in :class:`Setting`; a run records it, and a folder
holding cells of another setting is refused (:class:`~experiments.bench.criteria.store.
SettingMismatch`). :data:`DEFAULT` is the full run, :data:`QUICK` the test suite's seconds-long
version on generated images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Mapping

from experiments.harness.atomic import to_jsonable

__all__ = ["Network", "Setting", "DEFAULT", "QUICK", "SCORERS_OF_OURS", "REPLACEMENTS",
           "MODES", "PEERS", "WIDTH_LEARNING", "setting_json", "network", "ours_name",
           "parse_ours"]

#: the unit scorers of ours that the screen compares (``saliency.SCORERS`` names)
SCORERS_OF_OURS = ("norm", "taylor", "mrs", "mrp", "dormancy", "random_unit")
#: how removed units are replaced: by their mean output folded into the consumers' biases, or
#: dropped (the consumers see zero)
REPLACEMENTS = ("mean", "drop")
#: how a ranking is applied: one shot; in rounds, rescoring between them, without or with
#: fine-tuning between rounds; during training, by :class:`pruners.UnitPruner`
MODES = ("oneshot", "rounds", "rounds_ft", "during")
#: the peers: Torch-Pruning's importances with its own pruner, and ``torch.nn.utils.prune``
PEERS = ("tp_l2", "tp_l1", "tp_bn_scale", "tp_taylor", "tp_hessian", "ln_structured")
#: the width-learning methods of ours (they choose their own widths)
WIDTH_LEARNING = ("shrinknets", "group_lasso")


def ours_name(scorer: str, replacement: str, mode: str) -> str:
    """The name of one method of ours, e.g. ``"mrs-mean-oneshot"``."""
    return f"{scorer}-{replacement}-{mode}"


def parse_ours(name: str) -> tuple[str, str, str] | None:
    """``(scorer, replacement, mode)`` of a method of ours, None for a peer's name."""
    parts = name.rsplit("-", 2)
    if len(parts) == 3 and parts[0] in SCORERS_OF_OURS and parts[1] in REPLACEMENTS \
            and parts[2] in MODES:
        return parts[0], parts[1], parts[2]
    return None


@dataclass(frozen=True)
class Network:
    """One network of the benchmark and what is spent on it.

    ``factory``/``kwargs``: the model zoo's builder (:func:`experiments.harness.models.
    build_model`). Baseline training: Adam ``train_lr``, batch ``train_batch``,
    ``train_epochs`` over ``train_images`` training images (None: all). Every method then
    gets ``finetune_steps`` SGD steps of batch ``finetune_batch`` on a fixed subset of
    ``finetune_images`` training images; data-driven criteria and mean replacement see the
    first ``scoring_images`` of it; accuracies are on ``eval_images`` images (validation in the
    screen, test on the held-out seeds). ``points``: the operating points, in times fewer MACs;
    the screen runs at ``screen_points`` (in :data:`DEFAULT`, the second, fourth and fifth of
    the five, to spare compute).
    """

    name: str
    factory: str
    kwargs: Mapping[str, Any]
    points: tuple[float, ...]
    train_epochs: int
    train_images: int | None
    finetune_steps: int
    scoring_images: int
    eval_images: int | None
    train_lr: float = 1e-3
    train_batch: int = 128
    finetune_batch: int = 128
    finetune_images: int = 10_000
    eval_batch: int = 1000
    #: the operating points of the screen (None: every point)
    screen_points: tuple[float, ...] | None = None
    #: penalty strengths of the width-learning methods (None: not run on this network)
    shrinknets_lam: float | None = None
    group_strength: float | None = None

    def screened(self) -> tuple[float, ...]:
        """The operating points of the screen."""
        return self.points if self.screen_points is None else self.screen_points


@dataclass(frozen=True)
class Setting:
    """The whole benchmark: networks, seeds, the shared optimizer settings and the rule's
    parameters (see :mod:`experiments.bench.criteria`)."""

    networks: tuple[Network, ...]
    data: str = "fashion-mnist"
    dev_seeds: tuple[int, ...] = (10, 11)
    heldout_seeds: tuple[int, ...] = (20, 21, 22, 23, 24)
    finetune_lr: float = 0.01
    momentum: float = 0.9
    scoring_batch: int = 128
    rounds: int = 3
    #: fraction of the fine-tuning budget spent between the rounds (``rounds_ft``, ``during``)
    between_fraction: float = 0.3
    #: fraction of the budget the width-learning methods train with their penalty
    penalty_fraction: float = 2 / 3
    #: how many (scorer, replacement) pairs of the one-shot screen go on to the other modes
    pairs_to_modes: int = 2
    #: inference timing: batch, repeats
    timing_batch: int = 256
    timing_repeats: int = 15
    peers: tuple[str, ...] = PEERS


DEFAULT = Setting(networks=(
    Network("mlp", "mlp", {"widths": [784, 512, 512, 10]}, (1.5, 2.0, 3.0, 5.0, 10.0),
            screen_points=(2.0, 5.0, 10.0), train_epochs=5, train_images=None,
            finetune_steps=300, scoring_images=256, eval_images=None, shrinknets_lam=0.06,
            group_strength=0.025),
    Network("cnn", "thesis_cnn", {"widths": [16, 32], "hidden": 128, "batchnorm": True},
            (1.5, 2.0, 3.0, 5.0, 10.0), screen_points=(2.0, 5.0, 10.0), train_epochs=3,
            train_images=None, finetune_steps=300, scoring_images=256, eval_images=None,
            shrinknets_lam=0.1, group_strength=0.03),
    Network("resnet20", "resnet20", {}, (1.5, 2.0, 3.0, 5.0, 10.0),
            screen_points=(2.0, 5.0, 10.0), train_epochs=2, train_images=20_000,
            finetune_steps=50, finetune_batch=64, scoring_images=128, eval_images=2000),
    # ViT-tiny: 9.03x fewer MACs is its limit (one head and one FFN neuron per block)
    Network("vit", "vit_tiny", {}, (1.5, 2.0, 3.0, 5.0, 8.0),
            screen_points=(2.0, 5.0, 8.0), train_epochs=5,
            train_images=None, finetune_steps=300, scoring_images=256, eval_images=None),
))

QUICK = replace(
    DEFAULT,
    networks=(
        Network("mlp", "mlp", {"widths": [784, 32, 32, 10]}, (2.0, 4.0), train_epochs=3,
                train_images=None, finetune_steps=8, scoring_images=64, eval_images=None,
                train_batch=32, finetune_batch=32, finetune_images=256, eval_batch=500,
                shrinknets_lam=0.5, group_strength=0.5),
        Network("cnn", "thesis_cnn", {"widths": [6, 8], "hidden": 24, "batchnorm": True},
                (2.0, 4.0), train_epochs=2, train_images=None, finetune_steps=4,
                scoring_images=32, eval_images=None, train_batch=32, finetune_batch=32,
                finetune_images=128, eval_batch=500),
        Network("resnet20", "resnet20", {"widths": [4, 8, 16]}, (2.0, 3.0), train_epochs=1,
                train_images=200, finetune_steps=2, scoring_images=16, eval_images=64,
                train_batch=32, finetune_batch=16, finetune_images=64, eval_batch=64),
        Network("vit", "vit_tiny", {"depth": 2, "width": 32, "heads": 4, "ffn": 48},
                (2.0, 3.0), train_epochs=2, train_images=None, finetune_steps=4,
                scoring_images=32, eval_images=None, train_batch=32, finetune_batch=32,
                finetune_images=128, eval_batch=500),
    ),
    data="synthetic", dev_seeds=(0, 1), heldout_seeds=(2, 3), scoring_batch=32,
    rounds=2, pairs_to_modes=1, timing_batch=16, timing_repeats=2,
)


def network(s: Setting, name: str) -> Network:
    """The network ``name`` of ``s``; ValueError naming the choices."""
    for net in s.networks:
        if net.name == name:
            return net
    raise ValueError(f"unknown network {name!r}: choose from "
                     f"{', '.join(n.name for n in s.networks)}")


def setting_json(s: Setting) -> dict[str, Any]:
    """``s`` as JSON-ready data, as every cell records it."""
    return to_jsonable(asdict(s))
