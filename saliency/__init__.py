"""Saliency scorers: what is each weight or unit worth?

This is the lower layer of the toolkit: it imports nothing from :mod:`pruners`.
It holds what scorers and pruners share -- the graph of units
(:func:`trace`) and the replacement arithmetic of bias propagation
(:mod:`saliency.replacement`) -- so a score such as MRP and the removal it
predicts are one computation.

Every scorer follows one contract (:mod:`saliency.base`)::

    scorer.score(model, data=None, loss_fn=F.cross_entropy) -> dict[str, Tensor]

and :data:`SCORERS` maps registry names to scorer classes; the shared tests
and the CLI iterate over it. Lower score = less important.

Sources: the parameter-wise scorers, MRP, MRS, the unit norms and the
dead-unit criteria follow U. Evci, *Detecting Dead Weights and Units in
Neural Networks*, MS thesis, NYU 2018, https://arxiv.org/abs/1806.06068
(Evci 2018). Three unit scorers read the trained quantities of methods that
learn a network's width: the switches of *ShrinkNets: Learning Network Size
while Training* (2018 draft; public as G. Leclerc, M. Vartak, R. Castro
Fernandez, T. Kraska, S. Madden, *Smallify: Learning Network Size while
Training*, https://arxiv.org/abs/1806.03723; "the ShrinkNets paper"), the
parameter groups of J. M. Alvarez and M. Salzmann, *Learning the Number of
Neurons in Deep Networks*, NeurIPS 2016,
https://papers.nips.cc/paper/6372-learning-the-number-of-neurons-in-deep-networks
(Alvarez & Salzmann 2016), and the width gates of S. Srinivas and R. V. Babu,
*Learning Neural Network Architectures using Backpropagation*, BMVC 2016,
https://arxiv.org/abs/1511.05497 (Srinivas & Babu 2016).

Dead units (Evci 2018, Sec. 3.2, Def. 3.2.1-3.2.2; docs/dead_units.md):

* :func:`find_dead_units` -- flags units by each criterion (low MRP / MRS,
  constant output ``Var(h_i) ~ 0``, constant activation, never active
  ``APoZ_i = 1``, ReDo-dormant ``E|a_i| / mean_j E|a_j| <= tau``, zero
  outgoing weights, frozen ``||dL/dh_i|| ~ 0``) from one forward and backward
  pass; returns a :class:`DeadUnitReport` (per layer, per unit), thresholds
  in :class:`DeadUnitThresholds`.
* :class:`UnitTracker` -- MRP, MRS, output-gradient norm, ``||W_i||_1``,
  activation moments and histograms of chosen units, every N steps on a
  fixed probe batch, without changing training (Fig. 3.1-3.10).
"""

from .attention import PrunedMultiheadAttention, describe_attention, fit_attention
from .base import LayerRequirement, ParameterScorer, Scorer, UnitScorer
from .graph import UnitGraph, UnsupportedArchitecture, as_index_tensor
from .tracing import trace
from .group_norm import GroupNormScorer
from .loss_change import LossChange
from .magnitude import Magnitude
from .mrp import MRP
from .random_scores import RandomParameter, RandomUnit
from .taylor import Hessian, Taylor1, Taylor2
from .replacement import unit_means
from .switch import HeadSwitch, Switch, SwitchScorer
from .tristate import GateScorer, TriStateReLU
from .unit_scorers import MRS, Dormancy, Norm, UnitTaylor
from .unit_stats import unit_statistics
from .dead_units import EXACT_CRITERIA, DeadUnitReport, DeadUnitThresholds, find_dead_units
from .dead_unit_plots import plot_criteria, plot_unit_statistics
from .tracking import UnitTracker

#: name -> scorer class. Parameter-wise and unit-wise scorers of the thesis
#: (Table 2.1, Table 4.1, Def. 3.1.1-3.1.2) and of the literature.
SCORERS: dict[str, type[Scorer]] = {
    # parameter-wise (thesis Table 2.1 and Sec. 2.1)
    "magnitude": Magnitude,
    "taylor1": Taylor1,
    "taylor2": Taylor2,
    "hessian": Hessian,
    "loss_change": LossChange,
    "random": RandomParameter,
    # unit-wise (thesis Table 4.1, Def. 3.1.1-3.1.2; Molchanov 2017; ReDo 2023)
    "mrp": MRP,
    "mrs": MRS,
    "taylor": UnitTaylor,
    "dormancy": Dormancy,
    "norm": Norm,
    "random_unit": RandomUnit,
    # the ShrinkNets paper, eq. 1: |beta| of each unit's switch
    "switch": SwitchScorer,
    # group sparsity (Alvarez & Salzmann 2016): ||[w_n, b_n]||_2
    "group_norm": GroupNormScorer,
    # tri-state ReLU (Srinivas & Babu 2016): the width gate w_i
    "gate": GateScorer,
}

__all__ = [
    "SCORERS",
    "PrunedMultiheadAttention",
    "describe_attention",
    "fit_attention",
    "HeadSwitch",
    "Switch",
    "SwitchScorer",
    "TriStateReLU",
    "GateScorer",
    "GroupNormScorer",
    "Scorer",
    "LayerRequirement",
    "Magnitude",
    "Taylor1",
    "Taylor2",
    "Hessian",
    "LossChange",
    "RandomParameter",
    "RandomUnit",
    "ParameterScorer",
    "UnitScorer",
    "MRP",
    "MRS",
    "UnitTaylor",
    "Dormancy",
    "Norm",
    "trace",
    "UnitGraph",
    "UnsupportedArchitecture",
    "as_index_tensor",
    "unit_means",
    "unit_statistics",
    "find_dead_units",
    "plot_unit_statistics",
    "plot_criteria",
    "DeadUnitReport",
    "DeadUnitThresholds",
    "EXACT_CRITERIA",
    "UnitTracker",
]
