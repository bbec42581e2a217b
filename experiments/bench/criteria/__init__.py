"""Which saliency prunes best: every unit criterion of ours, each way of applying it, against
Torch-Pruning and ``torch.nn.utils.prune``, on four networks, by the protocol of D. Blalock,
J. J. Gonzalez Ortiz, J. Frankle, J. Guttag, "What is the State of Neural Network Pruning?",
MLSys 2020, https://arxiv.org/abs/2003.03033 (ShrinkBench).

``python -m experiments.bench.criteria [--quick] [--root DIR] [--step STEP] [--networks NAMES]
[--workers N] [--docs DIR]``

**Protocol.** Four networks trained on Fashion-MNIST (the MLP 784-512-512-10 and the BatchNorm
CNN of the head-to-head benchmark, ResNet-20, the ViT-tiny of the zoo), each baseline trained
once per seed and cached. Five operating points per network, in times fewer MACs (1.5x, 2x, 3x,
5x, 10x; the ViT 8x instead of 10x, its limit being 9.03x); every method that prunes to given
widths prunes every prunable group (a layer, the channels of a residual stream, an attention
module's heads) to the same kept count (the uniform fraction nearest to the point,
:func:`experiments.bench.peers.widths.widths_for_reduction`), checked after pruning and after
fine-tuning. Every method then gets the same budget: ``finetune_steps`` SGD steps (lr 0.01,
momentum 0.9) on the same batches in the same order; steps spent between pruning rounds count
against it. Three figures per point: accuracy right after the last pruning round, after the
budget, and CPU inference time (:mod:`~experiments.bench.criteria.timing`) beside the MAC and
parameter ratios.

**Methods.** Ours: each unit scorer (``norm``, ``taylor``, ``mrs``, exact ``mrp``,
``dormancy``, ``random_unit``) x replacement (``mean``: the removed units' mean output folded
into the consumers' biases; ``drop``) x mode (``oneshot``; ``rounds``: 3 rounds rescoring in
between; ``rounds_ft``: the same with fine-tuning between rounds, 30% of the budget; ``during``:
:class:`pruners.UnitPruner` stepped inside the training loop, scoring on the training batches,
the optimizer kept). Width learning (ShrinkNets switches, proximal group lasso), which choose
their own widths, are compared at their widths, after fine-tuning (:mod:`~experiments.bench.
criteria.width`). Peers: Torch-Pruning's ``MetaPruner`` with its L2 and L1 magnitude, BatchNorm
scale, Taylor and Hessian importances, and ``torch.nn.utils.prune.ln_structured``
(:mod:`~experiments.bench.criteria.methods`).

**Selection before testing.** The screen runs on the development seeds with validation data:
first every scorer x replacement in one shot, then the other modes of the best pairs; the rule
of :mod:`~experiments.bench.criteria.rule`, committed before any held-out seed ran, picks one
method per network and one overall; only those and the peers run on the five held-out seeds,
evaluated on test data, which decide the verdict (:mod:`~experiments.bench.criteria.summary`).

**Steps** (``--step``, default all in order): ``screen-oneshot``, ``screen-modes``, ``select``
(writes ``selection.json``), ``heldout``, ``width``, ``timing``, ``report``. Every cell (phase,
network, seed, method, point) is one JSON file written atomically
(:mod:`~experiments.bench.criteria.store`): killed and rerun, a step runs only the missing
cells; a folder started with another setting is refused. ``--workers N`` runs the (network,
seed) trials in N processes of one thread each; on a cluster the same trials are those of the
registered experiment ``pruning-benchmark`` (:mod:`~experiments.bench.criteria.experiment`),
which ``python -m experiments sweep`` runs through SLURM unchanged.

**Cost.** The default setting (:data:`~experiments.bench.criteria.setting.DEFAULT`) is sized for
this 2-core machine: fine-tuning budgets of 300 steps of 128 images (ResNet-20: 50 steps of 64),
the screen at three of the five points, ResNet-20's baseline trained 2 epochs on 20,000
images and evaluated on 2,000 images; the same for every method. ``--quick`` runs tiny networks
on generated images in seconds (the test suite's mode); its numbers check the machinery only.

The report (``ROOT/report/``): accuracy-versus-MACs curves per network with 95% intervals, the
differences to the best peer with their intervals, every held-out method's means, the screen's
ranking (exploratory), the width-learning table, the verdict, and a final JSON line.
"""
