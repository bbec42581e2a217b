"""One-shot pruning of attention heads and FFN neurons in small transformers.

Heads and FFN neurons as units of the graph, removed with the mean replacement of U. Evci,
*Detecting Dead Weights and Units in Neural Networks*, MS thesis, NYU 2018
(https://arxiv.org/abs/1806.06068), ranked by five scorers of the toolkit, beside P. Michel,
O. Levy, G. Neubig, *Are Sixteen Heads Really Better than One?*, NeurIPS 2019
(https://arxiv.org/abs/1905.10650):

* :mod:`~experiments.studies.transformers.oneshot` -- the machinery both experiments share:
  scoring every head and neuron once, the per-layer selection, the grid of one-shot prunings
  with a short recovery each (resumable), Spearman's correlation of every ranking with
  exact MRP per layer, the figure;
* :mod:`~experiments.studies.transformers.vit` -- ``vit-head-ffn-pruning``: a ViT-tiny
  (Dosovitskiy et al. 2021) on Fashion-MNIST, test accuracy after pruning and after recovery;
* :mod:`~experiments.studies.transformers.decoder` -- ``decoder-lm-pruning``: a small
  decoder-only language model (RMSNorm, SwiGLU, grouped-query attention) on Debian's
  ``fortunes``, character level, validation loss per character.
"""
