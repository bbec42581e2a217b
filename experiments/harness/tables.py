"""Printed tables of result rows: aligned plain text for a terminal, or Markdown.

:func:`format_table` takes the records a benchmark collects anyway (one mapping per row), picks
and orders the columns, formats every cell with a format spec or a function per column, and
aligns them (numbers right, text left, unless told otherwise). The records go through a pandas
``DataFrame`` of Python objects, so an integer column stays integer even where a cell is missing.

Example:
    >>> rows = [{"model": "mlp", "params": 20535, "acc": 0.832},
    ...         {"model": "cnn", "params": 2559, "acc": None}]
    >>> print(format_table(rows, {"model": "model", "params": "params", "acc": "accuracy"},
    ...                    formats={"params": ",", "acc": ".4f"}))
    model  params  accuracy
    -----------------------
    mlp    20,535    0.8320
    cnn     2,559         -
    >>> print(format_table(rows, ["model", "acc"], markdown=True))
    | model | acc |
    | --- | ---: |
    | mlp | 0.832 |
    | cnn | - |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

__all__ = ["format_table"]

#: a column's format: a format spec for :func:`format` (``".4f"``, ``","``, ``">8"``) or a
#: function of the cell's value returning its text
Format = str | Callable[[Any], str]

_NUMERIC = {"integer", "floating", "mixed-integer-float", "decimal"}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _cell(value: Any, fmt: Format | None, floatfmt: str, missing: str) -> str:
    if _is_missing(value):
        return missing
    if callable(fmt):
        return fmt(value)
    if fmt is not None:
        return format(value, fmt)
    if isinstance(value, float):
        return format(value, floatfmt)
    return str(value)


def format_table(rows: Iterable[Mapping[str, Any]],
                 columns: Sequence[str] | Mapping[str, str] | None = None, *,
                 floatfmt: str = ".4g", formats: Mapping[str, Format] | None = None,
                 align: Mapping[str, str] | None = None, missing: str = "-",
                 group: str | Sequence[str] | None = None, markdown: bool = False,
                 sep: str = "  ") -> str:
    """The table of ``rows`` as text: a header, a rule, a line per row.

    Args:
        rows: the records, one mapping per table row; a key a row lacks is a missing cell.
        columns: the keys shown, in order: a sequence of keys (the headers are the keys) or a
            mapping key -> header. Default: every key, in the order the rows first use them.
        floatfmt: format spec of the float cells of columns without an entry in ``formats``.
        formats: per column, a format spec or a function of the value (see :data:`Format`).
        align: per column, ``"<"`` (left) or ``">"`` (right). Default: columns whose values are
            all numbers go right, the others left.
        missing: the text of a missing cell (absent key, ``None`` or NaN).
        group: a key or keys; a blank line separates rows where their values change (plain
            text only).
        markdown: a Markdown table instead (``| a | b |`` lines, the separator row carrying the
            alignment, ``|`` escaped inside cells, no padding).
        sep: the space between two columns of the plain-text table.

    Raises:
        ValueError: an ``align`` entry other than ``"<"`` or ``">"``.
    """
    records = [dict(r) for r in rows]
    if columns is None:
        columns = list(dict.fromkeys(k for r in records for k in r))
    headers = dict(columns) if isinstance(columns, Mapping) else {k: str(k) for k in columns}
    keys = list(headers)
    frame = pd.DataFrame([[r.get(k) for k in keys] for r in records], columns=keys,
                         dtype=object)
    formats, align = dict(formats or {}), dict(align or {})
    for key, side in align.items():
        if side not in ("<", ">"):
            raise ValueError(f"format_table: align of {key!r} must be '<' or '>', got {side!r}")
    right = {k: align.get(k, ">" if pd.api.types.infer_dtype(frame[k], skipna=True) in _NUMERIC
                          else "<") == ">" for k in keys}
    cells = pd.DataFrame({k: frame[k].map(lambda v, k=k: _cell(v, formats.get(k), floatfmt,
                                                                   missing))
                          for k in keys}, index=frame.index, columns=keys, dtype=object)
    if markdown:
        return _markdown(cells, headers, right)
    width = {k: max([len(headers[k])] + cells[k].str.len().tolist()) for k in keys}

    def line(texts: Mapping[str, str]) -> str:
        return sep.join(texts[k].rjust(width[k]) if right[k] else texts[k].ljust(width[k])
                        for k in keys).rstrip()

    head = line(headers)
    out = [head, "-" * len(head)]
    group_keys = [group] if isinstance(group, str) else list(group or [])
    last = None
    for i in range(len(frame)):
        here = tuple(frame.at[i, k] for k in group_keys) if group_keys else None
        if group_keys and last is not None and here != last:
            out.append("")
        last = here
        out.append(line(cells.iloc[i]))
    return "\n".join(out)


def _markdown(cells: pd.DataFrame, headers: Mapping[str, str], right: Mapping[str, bool]) -> str:
    def line(texts: Iterable[str]) -> str:
        return "| " + " | ".join(t.replace("|", "\\|") for t in texts) + " |"

    keys = list(headers)
    out = [line(headers[k] for k in keys),
           "| " + " | ".join("---:" if right[k] else "---" for k in keys) + " |"]
    out += [line(cells.iloc[i]) for i in range(len(cells))]
    return "\n".join(out)
