"""The setting of a peers run (sizes, budgets, targets) and the Torch-Pruning it runs against.

Torch-Pruning is an optional dependency: the ``peers`` extra of ``setup.cfg`` installs it
(``pip install -e ".[peers]"``). The benchmark never installs anything itself: without
``torch_pruning``, :func:`load_torch_pruning` either stops with the command that installs it or,
when asked to, lets the run skip the Torch-Pruning parts.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

__all__ = ["ModelSpec", "Setting", "DEFAULT", "QUICK", "setting_json", "network_setting",
           "select_networks", "CLASSIC_METHODS", "ONE_SHOT_METHODS", "RESIDUAL_OVERRIDES",
           "QUICK_RESIDUAL", "VIT_METHODS", "VIT_OVERRIDES", "QUICK_VIT", "TP_REQUIREMENT",
           "TP_TESTED", "TorchPruningMissing", "install_hint", "load_torch_pruning",
           "check_tp_version", "tp_version", "TARGETS", "CONSTANT_TOL", "INFORMATIONAL"]

#: the pip requirement of the ``peers`` extra (setup.cfg): the minor version this benchmark was
#: written and run against (it uses ``MetaPruner``'s dependency graph directly)
TP_REQUIREMENT = "torch-pruning>=1.6,<1.7"
TP_TESTED = (1, 6)

#: the targets of the benchmark, decided by
#: :func:`experiments.bench.peers.summary.ratios_and_targets`
TARGETS = {
    "accuracy_after_finetune": "ours (MRS, mean replacement) >= the best peer, at every model "
                               "and size",
    "accuracy_after_pruning": "ours (MRS, mean replacement) > the best peer, at every model "
                              "and size",
    "scoring_time": "ours <= Torch-Pruning's (median, its graph construction counted)",
    "removal_time": "ours <= Torch-Pruning's (median, its graph construction counted)",
    "constant_unit_change": "ours <= 1e-6 wherever the fold is exact (float64; max |logit "
                            "change| over test images, or, with zero-padded consumers, the "
                            "change of the unpadded consumers and of the padded ones' interior)",
}
CONSTANT_TOL = 1e-6
#: comparisons reported beside the targets, not counted in ``targets_met``
INFORMATIONAL = {
    "accuracy_after_finetune_best_of_ours": "the best of our three methods >= the best peer "
                                            "after fine-tuning, at every model and size",
    "constant_unit_change_float32": "ours <= 1e-6 in float32 as trained, where no consumer is "
                                    "zero-padded (float32 evaluation alone differs from float64 "
                                    "by the rounding floor shown)",
}

#: the methods of the MLP and the CNN (:data:`experiments.bench.peers.accuracy.METHODS`)
CLASSIC_METHODS = ("ours_mrs", "ours_shrinknets", "ours_group_sparsity", "tp_magnitude",
                   "tp_taylor", "tp_bn_scale", "ln_structured")
#: the ViT's methods: ours (MRS, mean replacement) and Torch-Pruning's head and neuron pruning
#: with its magnitude and Taylor importances (``ln_structured`` masks rows of one tensor at a
#: time: a head spans rows of three projections and columns of a fourth, so it is left out)
VIT_METHODS = ("ours_mrs", "tp_magnitude", "tp_taylor")
#: the one-shot methods (those of ResNet-20 and MobileNetV2)
ONE_SHOT_METHODS = ("ours_mrs", "ours_mrp_drop", "tp_magnitude", "tp_taylor", "tp_bn_scale",
                    "ln_structured")


@dataclass(frozen=True)
class ModelSpec:
    """A network of the benchmark: its name in the tables, its model-zoo factory and arguments.

    ``overrides``: fields of :class:`Setting` that differ for this network (its training,
    sizes, methods), applied by :func:`network_setting`.
    """

    name: str
    factory: str
    kwargs: Mapping[str, Any]
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Setting:
    """Every size and hyperparameter of a run (see :mod:`experiments.bench.peers`)."""

    models: tuple[ModelSpec, ...]
    reductions: tuple[float, ...] = (2.0, 5.0, 10.0)
    train_epochs: int = 5
    train_lr: float = 1e-3
    train_batch: int = 128
    finetune_samples: int = 10_000
    finetune_epochs: int = 3
    finetune_batch: int = 128
    finetune_lr: float = 0.01
    momentum: float = 0.9
    penalty_epochs: int = 2
    shrinknets_lam: Mapping[str, float] = field(default_factory=dict)
    group_strength: Mapping[str, float] = field(default_factory=dict)
    scoring_samples: int = 2048
    scoring_batch: int = 256
    timing_reduction: float = 5.0
    repeats: int = 7
    inference_repeats: int = 30
    inference_batches: tuple[int, ...] = (1, 256)
    inference_block_seconds: float = 0.025
    inference_warmup_seconds: float = 0.1
    constant_fraction: float = 0.25
    constant_images: int = 2000
    test_images: int | None = None
    eval_batch: int = 1000
    rounds: int = 1
    methods: tuple[str, ...] = CLASSIC_METHODS
    reduce_by: str = "params"


#: what ResNet-20 and MobileNetV2 change: 3 epochs of training, sizes by MACs (2x and 5x
#: fewer), the one-shot methods (the same fine-tuning budget as the others), 500 test images
#: for the constant units (their float64 convolutions are slow on a CPU)
RESIDUAL_OVERRIDES: dict[str, Any] = {
    "train_epochs": 3, "reductions": (2.0, 5.0), "reduce_by": "macs",
    "methods": ONE_SHOT_METHODS, "constant_images": 500}

#: ``--quick``'s ResNet-20 and MobileNetV2 (tiny widths) also see few images and steps: half
#: the scoring data, 200 test images, 200 images for the constant units, one fine-tuning epoch
QUICK_RESIDUAL: dict[str, Any] = {**RESIDUAL_OVERRIDES, "scoring_samples": 128,
                                  "test_images": 200, "constant_images": 200,
                                  "finetune_epochs": 1, "penalty_epochs": 0}

#: what the ViT changes: sizes by MACs (heads and FFN neurons: every attention module keeps the
#: same number of heads, every FFN the same number of neurons), its methods, 500 test images for
#: the constant units
VIT_OVERRIDES: dict[str, Any] = {
    "reductions": (2.0, 5.0), "reduce_by": "macs", "methods": VIT_METHODS,
    "constant_images": 500}

#: ``--quick``'s ViT (depth 2, width 32, 4 heads, FFN 48): 5x fewer MACs is out of reach
#: (one head and one neuron per block leave 3.86x: the patch embedding, the residual stream and
#: the classifier are not pruned), so it is pruned to 2x only, and timed at 2x; it is trained
#: 15 epochs at 3e-3 (in 3 at 1e-3 it stays near chance on the generated images)
QUICK_VIT: dict[str, Any] = {**VIT_OVERRIDES, "reductions": (2.0,), "timing_reduction": 2.0,
                             "train_epochs": 15, "train_lr": 3e-3,
                             "scoring_samples": 128, "test_images": 200,
                             "constant_images": 200, "finetune_epochs": 1}

DEFAULT = Setting(
    models=(ModelSpec("mlp", "mlp", {"widths": [784, 512, 512, 10]}),
            ModelSpec("cnn", "thesis_cnn", {"widths": [16, 32], "hidden": 128,
                                            "batchnorm": True}),
            ModelSpec("resnet20", "resnet20", {}, RESIDUAL_OVERRIDES),
            ModelSpec("mobilenet_v2", "mobilenet_v2", {}, RESIDUAL_OVERRIDES),
            ModelSpec("vit", "vit_tiny", {}, VIT_OVERRIDES)),
    shrinknets_lam={"mlp": 2e-3, "cnn": 2e-3},
    group_strength={"mlp": 2e-3, "cnn": 2e-3},
)

QUICK = replace(
    DEFAULT,
    models=(ModelSpec("mlp", "mlp", {"widths": [784, 48, 48, 10]}),
            ModelSpec("cnn", "thesis_cnn", {"widths": [6, 8], "hidden": 24,
                                            "batchnorm": True}),
            ModelSpec("resnet20", "resnet20", {"widths": [4, 8, 16]}, QUICK_RESIDUAL),
            ModelSpec("mobilenet_v2", "mobilenet_v2", {"width": 0.25}, QUICK_RESIDUAL),
            ModelSpec("vit", "vit_tiny", {"depth": 2, "width": 32, "heads": 4, "ffn": 48},
                      QUICK_VIT)),
    train_epochs=3, train_batch=32, finetune_samples=512, finetune_epochs=2, finetune_batch=64,
    penalty_epochs=1, scoring_samples=256, scoring_batch=128, repeats=2,
    inference_repeats=2, inference_batches=(1, 32), inference_block_seconds=0.002,
    inference_warmup_seconds=0.01, eval_batch=500,
)


def network_setting(s: Setting, spec: ModelSpec) -> Setting:
    """The setting of one network: ``s`` with the network's :attr:`ModelSpec.overrides`.

    ValueError for an override that is not a field of :class:`Setting` (or is ``models``).
    """
    fields = set(Setting.__dataclass_fields__) - {"models"}
    bad = sorted(set(spec.overrides) - fields)
    if bad:
        raise ValueError(f"network {spec.name!r} overrides unknown setting fields {bad}")
    return replace(s, **spec.overrides) if spec.overrides else s


def select_networks(s: Setting, names) -> Setting:
    """``s`` with only the networks ``names`` (in ``s``'s order); ValueError naming the
    unknown ones and the choices."""
    names = list(dict.fromkeys(names))
    have = [m.name for m in s.models]
    unknown = [n for n in names if n not in have]
    if unknown or not names:
        raise ValueError(f"unknown network(s) {unknown or names}: choose from "
                         f"{', '.join(have)}")
    return replace(s, models=tuple(m for m in s.models if m.name in names))


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def setting_json(s: Setting) -> dict[str, Any]:
    """``s`` as JSON-ready data (dicts and lists), as the result line records it."""
    return _jsonable(asdict(s))


# ---------------------------------------------------------------------------
# Torch-Pruning, from the ``peers`` extra


class TorchPruningMissing(RuntimeError):
    """``torch_pruning`` is not importable and the run was not told to go without it."""


def install_hint() -> str:
    """How to install Torch-Pruning: the ``peers`` extra, or the pinned package alone."""
    python = sys.executable or "python"
    root = Path(__file__).resolve().parents[3]
    where = f" (in {root})" if (root / "setup.cfg").is_file() else " (in the repository root)"
    return (f"install it with the 'peers' extra of setup.cfg{where}:\n"
            f"    {python} -m pip install -e \".[peers]\"\n"
            f"or by itself:\n"
            f"    {python} -m pip install \"{TP_REQUIREMENT}\"")


def load_torch_pruning(*, skip_missing: bool, log: Callable[[str], None]):
    """``torch_pruning``, checked to be the tested minor version (:func:`check_tp_version`).

    When it is not importable: ``None`` if ``skip_missing`` (the run skips the Torch-Pruning
    parts, and ``log`` says so and how to install it), else :class:`TorchPruningMissing` with the
    install command. Nothing is ever installed here.
    """
    try:
        tp = importlib.import_module("torch_pruning")
    except ImportError:
        if not skip_missing:
            raise TorchPruningMissing(
                f"torch_pruning is not importable; {install_hint()}\n"
                f"or pass --without-torch-pruning to skip the Torch-Pruning parts") from None
        log(f"torch_pruning is not importable and --without-torch-pruning was given: the "
            f"Torch-Pruning parts are skipped. To run them, {install_hint()}")
        return None
    check_tp_version(tp_version(tp))
    return tp


def check_tp_version(version: str) -> None:
    """Raise RuntimeError unless ``version`` is in :data:`TP_REQUIREMENT`'s range."""
    try:
        major_minor = tuple(int(v) for v in str(version).split(".")[:2])
    except ValueError:
        major_minor = None
    if major_minor != TP_TESTED:
        raise RuntimeError(f"torch-pruning {version} is installed; this benchmark drives its "
                           f"dependency graph directly and needs {TP_REQUIREMENT!r}: "
                           f"python -m pip install '{TP_REQUIREMENT}'")


def tp_version(tp) -> str | None:
    """The installed torch-pruning's version (its package metadata; 1.6.1's ``__version__``
    still says 1.6.0), else the module's ``__version__``; ``None`` without Torch-Pruning."""
    if tp is None:
        return None
    try:
        from importlib.metadata import version as dist_version
        return dist_version("torch-pruning")
    except Exception:  # pragma: no cover - metadata missing
        return str(getattr(tp, "__version__", "?"))
