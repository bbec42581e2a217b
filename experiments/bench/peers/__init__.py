"""Head-to-head against Torch-Pruning and ``torch.nn.utils.prune``.

``python -m experiments.bench.peers [--quick] [--without-torch-pruning] [--data NAME]
[--cache DIR] [--repeats N] [--seed S] [--rounds R] [--networks NAMES]``

Torch-Pruning (G. Fang, X. Ma, M. Song, M. B. Mi, X. Wang, "DepGraph: Towards Any Structural
Pruning", CVPR 2023, https://arxiv.org/abs/2301.12900; https://github.com/VainF/Torch-Pruning)
comes from the ``peers`` extra of ``setup.cfg``: ``pip install -e ".[peers]"``, which pins
``torch-pruning>=1.6,<1.7`` (written and run against 1.6.1). The benchmark installs nothing
itself: when ``torch_pruning`` is not importable it stops with that command, unless
``--without-torch-pruning`` (or its older name ``--no-install``) is given, which skips the
Torch-Pruning parts instead. An installed torch-pruning outside that range is an error (the
benchmark drives its dependency graph directly).

``--quick`` (the test suite's mode, about a minute on one core) uses tiny networks
on a generated image-shaped 10-class problem
(:func:`~experiments.bench.peers.data.synthetic_images`), and few images for ResNet-20 and
MobileNetV2 (half the scoring data, 200 test images); its numbers check the machinery, not the
methods. ``--networks`` runs some of the four networks (comma-separated names: ``mlp``,
``cnn``, ``resnet20``, ``mobilenet_v2``, ``vit``; default: all), e.g.
``--networks resnet20,mobilenet_v2``.

Setting (the defaults; ``--quick`` shrinks every size for the test suite):

* **Networks**, trained once on Fashion-MNIST (55,000 training images; the
  5,000-image validation split is held out) with Adam 1e-3, batch 128, 5
  epochs, and cached in ``--cache`` (default ``runs/bench-peers``) as the
  harness's resumable checkpoints, written atomically after every epoch: an
  MLP 784-512-512-10 (669,706 parameters) and the CNN of U. Evci, "Detecting Dead Weights and
  Units in Neural Networks", MS thesis, NYU 2018, https://arxiv.org/abs/1806.06068, with
  BatchNorm, widened to conv 1->16 5x5, conv 16->32 5x5, FC 512->128->10 (80,298
  parameters; :func:`experiments.harness.models.thesis_cnn`, ``batchnorm=True``).
* **Residual networks**, trained the same way but for 3 epochs: ResNet-20 (K. He, X. Zhang,
  S. Ren, J. Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
  https://arxiv.org/abs/1512.03385; :func:`experiments.harness.models.resnet20`, 272,186
  parameters, 31.0M multiply-accumulates per image) and the small MobileNetV2 of the zoo
  (M. Sandler, A. Howard, M. Zhu, A. Zhmoginov, L.-C. Chen, "MobileNetV2: Inverted Residuals
  and Linear Bottlenecks", CVPR 2018, https://arxiv.org/abs/1801.04381;
  :func:`experiments.harness.models.mobilenet_v2`, 134,858 parameters, 7.6M MACs). Their
  setting (:data:`~experiments.bench.peers.setting.RESIDUAL_OVERRIDES`, applied by
  :func:`~experiments.bench.peers.setting.network_setting`): sizes for 2x and 5x fewer MACs
  (:func:`pruners.count_macs`) and the one-shot methods only (MRS with mean replacement, the
  exact MRP ranking with the units dropped, Torch-Pruning's three importances,
  ``ln_structured``), with the same fine-tuning budget; ShrinkNets and group sparsity, whose
  penalty strengths were set for the MLP and the CNN, do not run on them. A setting with
  ``finetune_epochs = 0`` compares right after pruning only.
* **ViT** (``vit``): the zoo's :func:`experiments.harness.models.vit_tiny` (patch 7, depth 4,
  width 64, 4 heads, FFN 256; ``--quick``: depth 2, width 32, FFN 48), trained as the others.
  Its units are attention heads (addressed by the attention module's name) and FFN neurons
  (``blocks.i.fc1``); the residual stream is not pruned (LayerNorm mixes its channels). Its
  setting (:data:`~experiments.bench.peers.setting.VIT_OVERRIDES`): 2x and 5x fewer MACs (every
  attention module keeps the same number of heads, every FFN the same number of neurons;
  ``--quick``'s tiny ViT reaches at most 3.86x, so 2x only), and three methods: ours (MRS,
  mean replacement) and Torch-Pruning's ``MetaPruner`` with its own head pruning
  (``num_heads``, ``prune_num_heads=True``, ``prune_head_dims=False``, a head ratio per
  attention module; :func:`~experiments.bench.peers.methods.tp_head_options`) under its
  magnitude and Taylor importances, checked to remove whole heads and to end at our shapes.
  ``ln_structured`` is left out: it masks rows of one weight at a time, and a head spans rows
  of three projections and columns of a fourth. (d) plants constant FFN neurons (zero incoming
  weights, constant bias) and a constant head (zero value rows, constant value bias).
* **Sizes.** For 2x, 5x and 10x fewer parameters (the residual networks: 2x and 5x fewer
  MACs) every prunable group keeps the same number of units for every method: ``round(k n_l)``
  of its ``n_l``, with ``k`` the uniform fraction whose parameter count (MAC count) is nearest
  to the target (log scale). A group is a layer on a chain, or the layers whose outputs a
  residual add sums: one width, the stream's channels, removed from every member at once.
  Equal widths give equal layer shapes; the benchmark checks every method's shapes and
  parameter count after pruning and after fine-tuning and stops if one differs. Each method
  only chooses *which* units go, in each group, one shot (``--rounds R``: in ``R`` rounds,
  see below).
* **Methods.** Ours: MRS with mean replacement (Evci 2018, Def. 3.1.2;
  ``SCORERS["mrs"]`` on the scoring data, :func:`pruners.remove_units` with
  ``replacement="mean"``); ShrinkNets (signed switches initialized at 1, so the trained function is
  unchanged, penalty ``lam ||g||_1`` during the first ``penalty_epochs`` of
  the fine-tuning budget, then a cut to the target widths by ``|g|`` with
  mean replacement and the optimizer state kept, the rest of the budget
  without penalty, switches folded at the end); group sparsity (proximal
  group lasso on the units, ``pruners.ProximalGroupSparsity``, after every
  optimizer step during the same first epochs, then the same cut by group
  norm, ``SCORERS["group_norm"]``); on the residual networks, the exact MRP ranking with the
  units dropped (``SCORERS["mrp"]``, Evci 2018 Def. 3.1.1, then ``remove_units`` without
  replacement). Mean replacement gives a consumer without a bias (the residual networks'
  convolutions) a bias; the benchmark moves it into the running mean of the BatchNorm that
  reads that consumer (:func:`~experiments.bench.peers.methods.fold_created_biases`: the same
  function), so ours ends at Torch-Pruning's very shapes. Torch-Pruning: ``MetaPruner`` with
  ``MagnitudeImportance`` (L2), ``TaylorImportance`` (gradients of the scoring
  data) and ``BNScaleImportance`` (networks with BatchNorm: it scores BatchNorm'd channels;
  the CNN's ``fc1``, which has no BatchNorm, is pruned by its magnitude importance),
  local (per-layer) ratios set so its kept counts equal ours (every member of a residual group
  gets the group's ratio: its dependency graph couples the same channels), output layer
  ignored. ``torch.nn.utils.prune.ln_structured`` (L2 over output channels,
  masks; shapes stay dense); the members of a residual group are all masked by the group's
  joint L2 norm (given as ``importance_scores``), so they lose the same channels.
* **Rounds** (``--rounds R``, default 1). The one-shot methods prune in
  ``R`` rounds without training between them, rescoring the shrunk network
  each round. Ours: MRS scores recomputed and mean replacement at every
  round, layer ``l`` keeping about ``n_l (k_l / n_l)^(r / R)`` units after
  round ``r`` (:func:`mrs_rounds`). Torch-Pruning: ``MetaPruner`` with
  ``iterative_steps=R`` on the same schedule (:func:`geometric_ratios`
  replaces its linear default, so both sides pass through the same widths,
  :func:`round_widths`), Taylor gradients recomputed before every step.
  ``ln_structured`` runs once: the L2 norm of one weight row does not
  change when other rows are masked, so ``R`` rounds select the same units
  as one. ShrinkNets and group sparsity cut once, after their penalty
  epochs.
* **Budget**, the same for everyone: SGD lr 0.01, momentum 0.9, batch 128,
  3 epochs over a fixed random subset of 10,000 training images, the same
  batches in the same order (one seeded generator per epoch). One-shot
  methods prune, then use the whole budget to fine-tune with a new
  optimizer. ``ln_structured`` keeps dense, masked shapes; its parameter
  count is that of its physical twin (:func:`physical_twin`: the masked
  units removed with their constant output, the bias, folded into the next
  layer), checked to compute the same outputs where that fold is exact (not the residual
  networks: their masked channels reach zero-padded convolutions). ShrinkNets and group
  sparsity spend ``penalty_epochs`` (2) of the 3 epochs with their penalty,
  are cut, and fine-tune for the last one with the same optimizer. Test
  accuracy is on the 10,000 test images, in eval mode, right after pruning
  (for the penalty methods: right after their cut, so after two thirds of
  their budget) and after the budget.
* **Scoring data**: the first 2,048 images of the fine-tuning subset, in
  batches of 256, for every data-driven criterion and the mean replacement.

(b) Time to score every prunable unit with the Taylor criterion (and with MRS, against the
same Torch-Pruning Taylor scoring) and to
remove the 5x selection physically: ours (``SCORERS["taylor"]``, Molchanov
et al. 2017 on unit outputs; :func:`pruners.remove_units`, which traces the
model itself on every call) against Torch-Pruning's (building its
``MetaPruner`` and dependency graph, one forward and backward pass over the
same data for the gradients, ``TaylorImportance`` of every group, Molchanov
et al. 2019 on weights; then ``group.prune()`` for the same number of units
per layer), and one whole pruning step of each (score + select + remove: our
scorer and ``remove_units``, against its pruner's ``step()``); the two papers are cited in
:mod:`experiments.bench.peers.timing`. Cases are
alternated within every repeat, each on a fresh copy of the trained model;
medians and bests of ``--repeats`` are reported. Ratios are ours / theirs
(below 1: ours is faster), with Torch-Pruning's graph construction counted,
since both start from a plain model; the ratios with its graph built
beforehand are reported too.

Timing, (b) and (c), uses the process's torch thread count
(``OMP_NUM_THREADS``) and records it, with the CPUs other processes kept busy
meanwhile (``/proc/stat``). On a shared machine, intra-op threads that wait
for a core another process holds dominate these small operations (measured
here: a fine-tuning step of the MLP took 8 ms on one thread and 240 ms on two
beside a two-thread background job), so run with ``OMP_NUM_THREADS=1``
there; the recorded run did.

(c) CPU inference time of the pruned models (unpruned, ours, Torch-Pruning
magnitude, ``ln_structured``) at batch 1 and 256 with
:func:`experiments.harness.timing.time_models` (interleaved blocks, median
per-call time).

(d) Planted constant units: in a copy of each trained network, a quarter of
the units of the first layer are made constant (MLP: zero incoming weights,
bias drawn from U[0.5, 1.5]; CNN: BatchNorm scale 0 and shift from
U[0.5, 1.5], so the channel is constant after its BatchNorm), then removed:
ours with mean replacement (bias propagation), ours without replacement,
and Torch-Pruning by its dependency graph (it drops them). On the residual networks, two
groups: the first residual stream (every member's channel made constant, so the summed stream
is) and an inner group of a block (MobileNetV2: constant after its depthwise convolution's
BatchNorm). Reported: the
largest absolute change of the logits over (up to 2,000; 500 on the residual networks) test
images, in float64 and in float32 as trained; beside float32, its rounding floor (the
planted network in float32 against float64, unpruned); and, for ours in float64, each
consumer's output change on the planted input (:func:`consumer_changes`). A constant folded
into a bias is exact where the consumer reads no zero padding; ResNet-20's 3x3 convolutions
read the padding's zeros at the border pixels, where no bias can stand for the constant. The
1e-6 target is judged in float64, where the function itself is compared, where the fold is
exact: the logits when no consumer is zero-padded, else the unpadded consumers and the padded
ones' interior pixels (``judged_change``); in float32 the change of an exact rewrite is of the
order of that floor, reported as a comparison but not as the target.

Output: tables, then, last, one JSON line ``{"benchmark": "peers",
"accuracy": [...], "timing": [...], "inference": [...], "constant_units":
[...], "ratios": [...], "targets": {...}, "targets_met": bool,
"informational": {...}, "config": {...}}``; every entry of ``ratios`` is
``ours / peer`` for one comparison. ``targets`` compares MRS with mean
replacement (our one-shot counterpart of the peers) with the best peer (after fine-tuning: on
the fine-tuned networks only); ``informational`` adds the best of our methods after fine-tuning
and the float32 constant-unit change, which ``targets_met`` does not count.

The package, one module per part (every name below is also importable from here):

* :mod:`~experiments.bench.peers.setting` -- :class:`Setting`, :data:`DEFAULT`,
  :data:`QUICK`, the targets, and the Torch-Pruning checks (:func:`load_torch_pruning`,
  :func:`check_tp_version`, :func:`tp_version`);
* :mod:`~experiments.bench.peers.data` -- the data (:func:`prepare_data`, per network
  :func:`network_data`) and the trained, cached networks (:func:`trained_model`);
* :mod:`~experiments.bench.peers.widths` -- the common widths (:func:`widths_for_reduction`,
  :func:`round_widths`, :func:`common_model`, :func:`shapes`) and which units a score drops
  (:func:`lowest_units`);
* :mod:`~experiments.bench.peers.methods` -- the pruning methods (:func:`mrs_prune`,
  :func:`mrp_drop_prune`, :func:`tp_prune`, :func:`ln_structured_prune`,
  :func:`physical_twin`) on a :class:`Context`;
* :mod:`~experiments.bench.peers.accuracy` -- (a), fine-tuning with the same budget
  (:data:`METHODS`, :func:`run_accuracy`, :func:`accuracy_of`);
* :mod:`~experiments.bench.peers.timing`, :mod:`~experiments.bench.peers.inference`,
  :mod:`~experiments.bench.peers.constant` -- (b), (c), (d);
* :mod:`~experiments.bench.peers.summary` -- the ratios and the targets' status;
* :mod:`~experiments.bench.peers.report` and :mod:`~experiments.bench.peers.cli` -- the
  printed tables, the command line and :func:`main`.
"""

from experiments.bench.peers.accuracy import METHODS, OURS, PENALTY, accuracy_of, methods_of, \
    run_accuracy
from experiments.bench.peers.cli import main, parse_args, run
from experiments.bench.peers.constant import constant_cases, consumer_changes, plant_constant, \
    run_constant
from experiments.bench.peers.data import SYNTHETIC_NAME, network_data, prepare_data, \
    synthetic_images, trained_model
from experiments.bench.peers.inference import run_inference
from experiments.bench.peers.methods import Context, batchnorm_of, bias_free, common_widths, \
    fold_created_biases, group_batchnorms, ln_structured_prune, make_context, mrp_drop_prune, \
    mrp_drop_rounds, mrs_prune, mrs_rounds, physical_params, physical_twin, tp_gradients, \
    tp_prune, is_attention_layer, tp_head_ratio, tp_head_options, head_rows, removed_heads
from experiments.bench.peers.setting import CLASSIC_METHODS, CONSTANT_TOL, DEFAULT, \
    INFORMATIONAL, ONE_SHOT_METHODS, QUICK, QUICK_VIT, TARGETS, VIT_METHODS, VIT_OVERRIDES, TP_REQUIREMENT, TP_TESTED, ModelSpec, \
    Setting, TorchPruningMissing, check_tp_version, install_hint, load_torch_pruning, \
    network_setting, select_networks, setting_json, tp_version
from experiments.bench.peers.summary import ratios_and_targets, targets_met
from experiments.bench.peers.timing import run_timing
from experiments.bench.peers.widths import common_model, geometric_ratios, layer_widths, \
    lowest_units, prunable_units, round_widths, shapes, tp_ratio, widths_for_reduction

__all__ = [
    # the command line
    "main", "parse_args", "run",
    # setting, targets, Torch-Pruning
    "ModelSpec", "Setting", "DEFAULT", "QUICK", "setting_json", "network_setting",
    "select_networks", "CLASSIC_METHODS", "ONE_SHOT_METHODS", "VIT_METHODS", "VIT_OVERRIDES",
    "QUICK_VIT", "TARGETS", "INFORMATIONAL",
    "CONSTANT_TOL", "TP_REQUIREMENT", "TP_TESTED", "TorchPruningMissing", "install_hint",
    "load_torch_pruning", "check_tp_version", "tp_version",
    # data and networks
    "SYNTHETIC_NAME", "synthetic_images", "prepare_data", "network_data", "trained_model",
    # widths
    "widths_for_reduction", "common_model", "shapes", "lowest_units", "layer_widths",
    "tp_ratio", "geometric_ratios", "round_widths", "prunable_units",
    # methods
    "Context", "make_context", "common_widths", "mrs_prune", "mrs_rounds", "mrp_drop_prune",
    "mrp_drop_rounds",
    "ln_structured_prune", "physical_twin", "physical_params", "tp_gradients", "tp_prune",
    "batchnorm_of", "group_batchnorms", "bias_free", "fold_created_biases",
    "is_attention_layer", "tp_head_ratio", "tp_head_options", "head_rows", "removed_heads",
    # the parts of a run and their summary
    "METHODS", "OURS", "PENALTY", "methods_of", "accuracy_of", "run_accuracy", "run_timing",
    "run_inference", "constant_cases", "consumer_changes", "plant_constant", "run_constant",
    "ratios_and_targets", "targets_met",
]
