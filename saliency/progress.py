"""Progress bars for long work: shown on a terminal, quiet otherwise, and switchable.

The exact oracles (``loss_change``, ``mrp``), the diagnosis and the pruning-penalty probes take
from seconds to minutes. They report progress through :func:`progress`, a ``tqdm`` bar with an
estimate of the time left, written to stderr when stderr is a terminal and nothing otherwise
(a log file, a notebook's captured output, a test). :func:`show_progress` switches it for a
block or for good, and the environment variable ``SALIENCY_PROGRESS`` (``1``/``0``) sets the
default.

Examples:
    >>> with show_progress(False):
    ...     sum(1 for _ in progress(range(3), "units"))
    3
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

__all__ = ["progress", "show_progress", "progress_enabled"]

T = TypeVar("T")

_STATE: dict[str, bool | None] = {"on": None}


def progress_enabled() -> bool:
    """Whether :func:`progress` shows a bar now: as set by :func:`show_progress`, else by
    ``SALIENCY_PROGRESS`` (``1``/``0``), else when stderr is a terminal."""
    if _STATE["on"] is not None:
        return bool(_STATE["on"])
    env = os.environ.get("SALIENCY_PROGRESS")
    if env is not None and env.strip() in ("0", "1"):
        return env.strip() == "1"
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


@contextlib.contextmanager
def show_progress(on: bool | None = True):
    """Show (``True``), hide (``False``) or leave to the terminal test (``None``) the progress
    bars inside the block. Called without ``with``, it does nothing; use
    ``show_progress(on).__enter__()`` to switch for the rest of the session."""
    old = _STATE["on"]
    _STATE["on"] = on
    try:
        yield
    finally:
        _STATE["on"] = old


def progress(items: Iterable[T], what: str, total: int | None = None,
             unit: str = "it") -> Iterator[T]:
    """``items``, with a bar labelled ``what`` counting ``unit`` s when
    :func:`progress_enabled`; ``total`` when ``items`` has no length."""
    if not progress_enabled():
        yield from items
        return
    from tqdm.auto import tqdm
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    # the size of the terminal the bar is written to (stderr); one that reports no size
    # (0 x 0, a fresh pseudo-terminal) would get no bar: 100 x 20 then
    try:
        cols, lines = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        cols, lines = 0, 0
    sized = cols > 0 and lines > 0
    with tqdm(items, total=total, unit=unit, desc=what, file=sys.stderr, leave=False,
              dynamic_ncols=sized, ncols=None if sized else 100,
              nrows=None if sized else 20) as bar:
        yield from bar
