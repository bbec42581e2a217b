"""Acting on scores: unit removal with bias propagation, masks, optimizer surgery.

Public names:

* :func:`trace` -- the graph of units of a model (re-exported from
  :mod:`saliency.graph`, the lower layer that scorers share).
* :func:`remove_units` / :func:`mask_units` -- exact unit removal or masking
  with bias propagation and optimizer-state surgery.
* :func:`count_params`, :func:`count_macs` -- model size.
"""

from saliency.graph import UnitGraph, UnsupportedArchitecture, trace

from .metrics import count_macs, count_params
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
]
