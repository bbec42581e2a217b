"""Saliency scorers: what is each weight or unit worth?

This is the lower layer of the toolkit: it imports nothing from :mod:`pruners`.
It holds what scorers and pruners share: the graph of units
(:func:`trace`) and the replacement arithmetic of bias propagation
(:mod:`saliency.replacement`), so a score such as MRP and the removal it
predicts are one computation. Scorers of Evci's thesis (Table 2.1,
Def. 3.1.1) arrive behind the contract
``scorer.score(model, data=None, loss_fn=F.cross_entropy)``.
"""

from .graph import UnitGraph, UnsupportedArchitecture, trace
from .replacement import unit_means

__all__ = ["trace", "UnitGraph", "UnsupportedArchitecture", "unit_means"]
