"""Pruning schedules: pure functions from a step (or epoch) to a cumulative target.

A schedule ``s`` is called as ``s(t)`` with a non-negative integer ``t`` (a
step or an epoch: whatever the caller of ``pruner.step(t, ...)`` counts) and
returns the cumulative amount pruned once ``t`` is reached. Amounts follow
:mod:`torch.nn.utils.prune`: a float is a fraction in ``[0, 1]`` and an int is
a count; a schedule never decreases. Schedules are small frozen objects (so
they print, compare and pickle) with no state: calling one twice with the
same ``t`` gives the same answer.

* :func:`table` -- an explicit ``{t: amount}`` table, held between entries
  (the thesis's Table 2.2 ``{2: 0.2, 3: 0.5, 4: 0.8, 5: 0.9}`` and Table 4.2
  ``{2: 0.1, 3: 0.2, 4: 0.4, 5: 0.6}`` of U. Evci, *Detecting Dead Weights and
  Units in Neural Networks*, MS thesis, NYU 2018,
  https://arxiv.org/abs/1806.06068 -- Evci 2018 -- Sec. 2.2 and 4.2, are
  :data:`THESIS_PARAMETERS` and :data:`THESIS_UNITS`);
* :func:`linear` -- from ``initial`` at ``begin`` to ``final`` at ``end``;
* :func:`cubic` -- Zhu & Gupta 2017 ("To prune, or not to prune", eq. 1):
  ``s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (n dt))^3`` for
  ``t_0 <= t <= t_0 + n dt``, updated every ``dt`` steps: fast pruning early,
  slow near the end.

:func:`check_amount` is the one validator of amounts, shared with the pruners.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Mapping, Union

__all__ = ["Schedule", "Amount", "table", "linear", "cubic", "constant", "check_amount",
           "amount_to_count", "THESIS_PARAMETERS", "THESIS_UNITS"]

Amount = Union[int, float]


def check_amount(amount, what: str = "amount") -> Amount:
    """Validate an amount as :mod:`torch.nn.utils.prune` does; return it unchanged.

    An int (not a bool) is a count >= 0; a float is a fraction in ``[0, 1]``.

    Raises:
        TypeError: anything else (a bool, a string, None, a tensor, ...).
        ValueError: a negative count, a fraction outside ``[0, 1]``, NaN.
    """
    if isinstance(amount, bool) or not isinstance(amount, (numbers.Integral, numbers.Real)):
        raise TypeError(f"{what} must be an int (a count) or a float (a fraction in [0, 1]), "
                        f"got {type(amount).__name__} {amount!r}")
    if isinstance(amount, numbers.Integral):
        if amount < 0:
            raise ValueError(f"{what} as a count must be >= 0, got {amount}")
        return int(amount)
    amount = float(amount)
    if not 0.0 <= amount <= 1.0:  # also rejects NaN
        raise ValueError(f"{what} as a fraction must be in [0, 1], got {amount}")
    return amount


def amount_to_count(amount: Amount, total: int, rounding: str = "round") -> int:
    """How many of ``total`` items ``amount`` means.

    A count must not exceed ``total``. A fraction is ``round(f * total)``
    (``rounding="round"``, as :mod:`torch.nn.utils.prune`) or
    ``floor(f * total)`` (``"floor"``: never more than the fraction, as the
    thesis's unit pruning, which leaves 4,019 of 20,522 parameters).
    """
    amount = check_amount(amount)
    if isinstance(amount, int):
        if amount > total:
            raise ValueError(f"amount {amount} is more than the {total} items there are")
        return amount
    if rounding == "round":
        return int(round(amount * total))
    if rounding == "floor":
        return int(math.floor(amount * total + 1e-9))
    raise ValueError(f"rounding must be 'round' or 'floor', got {rounding!r}")


def _check_t(t) -> int:
    if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
        raise ValueError(f"a schedule is called with a step or epoch number >= 0, got {t!r}")
    return int(t)


def _same_kind(values, what: str) -> None:
    kinds = {isinstance(v, int) for v in values}
    if len(kinds) > 1:
        raise TypeError(f"{what}: mix of counts (int) and fractions (float): {list(values)}")


class Schedule:
    """Base class: ``schedule(t) -> cumulative amount`` (see the module docstring)."""

    def __call__(self, t: int) -> Amount:  # pragma: no cover - abstract
        raise NotImplementedError

    #: the amount the schedule ends at (a field or property of each schedule)
    final: Amount

    def milestones(self, horizon: int) -> list[int]:
        """The ``t <= horizon`` at which the amount changes (for plots and logs)."""
        out, prev = [], self(0)
        for t in range(1, horizon + 1):
            cur = self(t)
            if cur != prev:
                out.append(t)
            prev = cur
        return out


@dataclass(frozen=True)
class table(Schedule):
    """An explicit table ``{t: amount}``; before the first entry the amount is 0.

    Examples:
        >>> s = table({2: 0.2, 3: 0.5, 4: 0.8, 5: 0.9})
        >>> [s(t) for t in range(7)]
        [0.0, 0.0, 0.2, 0.5, 0.8, 0.9, 0.9]
    """

    points: tuple

    def __init__(self, points: Mapping[int, Amount]):
        if not isinstance(points, Mapping) or not points:
            raise ValueError(f"table needs a non-empty {{step: amount}} mapping, got {points!r}")
        items = []
        for t, a in points.items():
            items.append((_check_t(t), check_amount(a, f"table entry {t}")))
        items.sort()
        _same_kind([a for _, a in items], "table")
        for (t0, a0), (t1, a1) in zip(items, items[1:]):
            if a1 < a0:
                raise ValueError(f"a schedule never decreases: {a0} at {t0} then {a1} at {t1}")
        object.__setattr__(self, "points", tuple(items))

    def __call__(self, t: int) -> Amount:
        t = _check_t(t)
        zero = 0 if isinstance(self.points[0][1], int) else 0.0
        cur = zero
        for t0, a in self.points:
            if t0 <= t:
                cur = a
            else:
                break
        return cur

    @property
    def final(self) -> Amount:
        return self.points[-1][1]


@dataclass(frozen=True)
class linear(Schedule):
    """``initial`` until ``begin``, linear to ``final`` at ``end``, then ``final``.

    Fractions only. Example:
        >>> s = linear(final=0.5, begin=10, end=20)
        >>> s(0), s(15), s(20), s(99)
        (0.0, 0.25, 0.5, 0.5)
    """

    final: float
    begin: int
    end: int
    initial: float = 0.0

    def __init__(self, final: float, begin: int, end: int, initial: float = 0.0):
        _fraction_args(final, initial, begin, end)
        for k, v in (("final", float(final)), ("begin", int(begin)), ("end", int(end)),
                     ("initial", float(initial))):
            object.__setattr__(self, k, v)

    def __call__(self, t: int) -> float:
        t = _check_t(t)
        if t <= self.begin:
            return self.initial
        if t >= self.end:
            return self.final
        return self.initial + (self.final - self.initial) * (t - self.begin) / (self.end - self.begin)


@dataclass(frozen=True)
class cubic(Schedule):
    """Zhu & Gupta (2017) gradual pruning, eq. 1 of "To prune, or not to prune".

    ``s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (n dt))^3`` at ``t = t_0, t_0 +
    dt, ..., t_0 + n dt`` (held in between), with ``t_0 = begin``, ``t_0 + n
    dt = end`` and ``dt = frequency``.

    Examples:
        >>> s = cubic(final=0.8, begin=0, end=10)
        >>> round(s(5), 4), s(10)
        (0.7, 0.8)
    """

    final: float
    begin: int
    end: int
    initial: float = 0.0
    frequency: int = 1

    def __init__(self, final: float, begin: int, end: int, initial: float = 0.0,
                 frequency: int = 1):
        _fraction_args(final, initial, begin, end)
        if isinstance(frequency, bool) or not isinstance(frequency, numbers.Integral) \
                or frequency < 1:
            raise ValueError(f"frequency must be an int >= 1, got {frequency!r}")
        for k, v in (("final", float(final)), ("begin", int(begin)), ("end", int(end)),
                     ("initial", float(initial)), ("frequency", int(frequency))):
            object.__setattr__(self, k, v)

    def __call__(self, t: int) -> float:
        t = _check_t(t)
        if t < self.begin:
            return self.initial
        if t >= self.end:
            return self.final
        t = self.begin + (t - self.begin) // self.frequency * self.frequency
        if t == self.begin:  # exactly s_i: s_f + (s_i - s_f) * 1 can round below s_i
            return self.initial
        frac = 1.0 - (t - self.begin) / (self.end - self.begin)
        return self.final + (self.initial - self.final) * frac ** 3


@dataclass(frozen=True)
class constant(Schedule):
    """The same amount from ``begin`` on (one-shot pruning); 0 before."""

    amount: Amount
    begin: int = 0

    def __init__(self, amount: Amount, begin: int = 0):
        object.__setattr__(self, "amount", check_amount(amount))
        object.__setattr__(self, "begin", _check_t(begin))

    def __call__(self, t: int) -> Amount:
        t = _check_t(t)
        if t >= self.begin:
            return self.amount
        return 0 if isinstance(self.amount, int) else 0.0

    @property
    def final(self) -> Amount:
        return self.amount


def _fraction_args(final, initial, begin, end) -> None:
    for name, v in (("final", final), ("initial", initial)):
        if isinstance(v, numbers.Integral) and not isinstance(v, bool):
            raise TypeError(f"{name} must be a fraction (float) for this schedule, got {v!r}")
        check_amount(v, name)
    if float(final) < float(initial):
        raise ValueError(f"a schedule never decreases: initial {initial} > final {final}")
    for name, v in (("begin", begin), ("end", end)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
            raise ValueError(f"{name} must be an int >= 0, got {v!r}")
    if end <= begin:
        raise ValueError(f"end ({end}) must come after begin ({begin})")


#: Evci 2018, Table 2.2: magnitude pruning of parameters after epochs 2-5
THESIS_PARAMETERS = table({2: 0.2, 3: 0.5, 4: 0.8, 5: 0.9})
#: Evci 2018, Table 4.2: MRS unit pruning after epochs 2-5
THESIS_UNITS = table({2: 0.1, 3: 0.2, 4: 0.4, 5: 0.6})
