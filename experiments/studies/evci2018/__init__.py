"""Reproductions of U. Evci, *Detecting Dead Weights and Units in Neural Networks*, MS thesis,
New York University, 2018 (https://arxiv.org/abs/1806.06068).

* :mod:`~experiments.studies.evci2018.baselines` -- the unpruned Fashion-MNIST networks;
* :mod:`~experiments.studies.evci2018.saliency` -- parameter and unit saliencies while training
  (Sec. 2.1, 4.1) and the scorers' run times (Table 2.1);
* :mod:`~experiments.studies.evci2018.pruning` -- scheduled magnitude and unit pruning (Sec. 2.2,
  4.2);
* :mod:`~experiments.studies.evci2018.attacks` -- learning-rate attacks that create dead units
  (Ch. 3).
"""
