"""Unit pruning of a residual network: ResNet-20 on Fashion-MNIST.

K. He, X. Zhang, S. Ren, J. Sun, *Deep Residual Learning for Image Recognition*, CVPR 2016
(https://arxiv.org/abs/1512.03385), pruned with the unit pruning of U. Evci, *Detecting Dead
Weights and Units in Neural Networks*, MS thesis, NYU 2018 (https://arxiv.org/abs/1806.06068):

* :mod:`~experiments.studies.resnet.pruning` -- ``resnet20-unit-pruning``: MRS unit pruning
  with mean replacement and physical removal during training, by groups of coupled channels,
  to 2x and 5x fewer multiply-accumulates; accuracy, size and inference time before and after;
  MRS against exact MRP per group on the trained network.
"""
