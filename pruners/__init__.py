"""Acting on scores: unit removal with bias propagation, masks, optimizer surgery.

Sources: removal with bias propagation, scheduled pruning, unit cleanup and
learning-rate attacks follow U. Evci, *Detecting Dead Weights and Units in
Neural Networks*, MS thesis, NYU 2018, https://arxiv.org/abs/1806.06068
(Evci 2018); the methods that learn a network's width while it trains are
those of *ShrinkNets: Learning Network Size while Training* (2018 draft;
public as G. Leclerc, M. Vartak, R. Castro Fernandez, T. Kraska, S. Madden,
*Smallify: Learning Network Size while Training*,
https://arxiv.org/abs/1806.03723; "the ShrinkNets paper"), J. M. Alvarez and
M. Salzmann, *Learning the Number of Neurons in Deep Networks*, NeurIPS 2016,
https://papers.nips.cc/paper/6372-learning-the-number-of-neurons-in-deep-networks
(Alvarez & Salzmann 2016), and S. Srinivas and R. V. Babu, *Learning Neural
Network Architectures using Backpropagation*, BMVC 2016,
https://arxiv.org/abs/1511.05497 (Srinivas & Babu 2016).

Public names:

* :func:`trace` -- the graph of units of a model (re-exported from
  :mod:`saliency.graph`, the lower layer that scorers share).
* :func:`remove_units` / :func:`mask_units` -- exact unit removal or masking
  with bias propagation and optimizer-state surgery.
* :func:`count_params`, :func:`count_macs` -- model size.
* :mod:`schedules` -- pruning schedules (step -> cumulative amount).
* :class:`ParameterPruner`, :class:`UnitPruner` -- scheduled pruning inside
  any training loop; :class:`RoundReport` -- what a round did;
  :func:`unit_costs` -- the parameters or MACs that removing each unit frees.
* :func:`remove_sparse_units`, :func:`sparse_units`, :func:`nonzero_fractions`
  -- unit cleanup after parameter pruning (the thesis's f_nz).
* :class:`ProximalGroupSparsity`, :func:`prox_sparse_group_lasso`,
  :func:`group_sparsity_penalty`, :func:`zero_groups`,
  :func:`remove_zero_groups` -- (sparse) group lasso by proximal gradient
  descent and removal of the neurons whose group is zero (Alvarez & Salzmann
  2016; :mod:`pruners.group_sparsity`).
* :mod:`pruners.tristate` -- tri-state ReLUs (Srinivas & Babu 2016):
  :func:`insert_tristate`, :func:`tristate_penalty`, :func:`clip_gates`,
  :func:`finalize_tristate` (exact removal of off units, merging of
  identity-gated Linear pairs).
* :mod:`pruners.shrinknets` -- the ShrinkNets paper's switch layers,
  penalty, removal strategies, garbage collection,
  :func:`~pruners.shrinknets.fold_switches`.
* :func:`prepare_for` -- insert the layers a scorer reads (switches,
  tri-state ReLUs).
* :func:`load_pruned`, :func:`fit_to_state_dict` -- reload a pruned model's state dict into
  its architecture as built before pruning; :func:`read_state_dict` -- the state dict of the
  checkpoint files people have, safely (:mod:`pruners.checkpoint`).
* :func:`diagnose`, :class:`Diagnosis` -- the dead units of a trained model on data and what
  removing them saves (:mod:`pruners.diagnosis`); :func:`batches_of` -- data of any common form
  as ``(inputs, targets)`` batches.
* :class:`LRAttack`, :func:`attack_steps` -- learning-rate attacks (Evci
  2018, Sec. 3.3): on steps ``start + r * interval + j`` the update of chosen
  units is scaled, ``p <- p_old + m (p_new - p_old)``, for any optimizer.
"""

from saliency.graph import UnitGraph, UnsupportedArchitecture
from saliency.tracing import trace

from . import schedules
from .attacks import LRAttack, attack_steps
from .checkpoint import StateDictError, fit_to_state_dict, load_pruned, read_state_dict
from .cleanup import nonzero_fractions, remove_sparse_units, sparse_units
from .diagnosis import Diagnosis, batches_of, diagnose
from .group_sparsity import (GROUPINGS, Grouping, LayerGroups, ProximalGroupSparsity,
                             group_layout, group_norms, group_sparsity_penalty,
                             prox_sparse_group_lasso, register_grouping, remove_zero_groups,
                             soft_threshold, zero_groups)
from .inserters import prepare_for
from .metrics import count_macs, count_params
from .tristate import (binarize_gates, binarizing_regularizer, clip_gates, complexity_term,
                       finalize_tristate, insert_tristate, tristate_penalty)
from .pruning import (EmptiedTensorWarning, OutputLayerWarning, ParameterPruner, RoundReport,
                      UnitPruner, mean_loss, output_layers, unit_costs)
from .optim_state import slice_param
from .surgery import InexactReplacementWarning, RemovalReport, mask_units, remove_units

__all__ = [
    "trace",
    "UnitGraph",
    "UnsupportedArchitecture",
    "remove_units",
    "mask_units",
    "RemovalReport",
    "InexactReplacementWarning",
    "count_params",
    "count_macs",
    "slice_param",
    "load_pruned",
    "fit_to_state_dict",
    "read_state_dict",
    "StateDictError",
    "diagnose",
    "Diagnosis",
    "batches_of",
    "schedules",
    "ParameterPruner",
    "UnitPruner",
    "RoundReport",
    "OutputLayerWarning",
    "EmptiedTensorWarning",
    "output_layers",
    "mean_loss",
    "unit_costs",
    "nonzero_fractions",
    "sparse_units",
    "remove_sparse_units",
    "ProximalGroupSparsity",
    "prox_sparse_group_lasso",
    "soft_threshold",
    "group_sparsity_penalty",
    "group_norms",
    "zero_groups",
    "remove_zero_groups",
    "group_layout",
    "LayerGroups",
    "Grouping",
    "GROUPINGS",
    "register_grouping",
    "prepare_for",
    "insert_tristate",
    "tristate_penalty",
    "binarizing_regularizer",
    "complexity_term",
    "clip_gates",
    "binarize_gates",
    "finalize_tristate",
    "LRAttack",
    "attack_steps",
]
