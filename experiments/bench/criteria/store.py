"""Where the benchmark keeps its cells: one JSON file per (phase, network, seed, method, point),
written atomically, so a killed run loses at most the cell it was computing.

``ROOT/setting.json`` records the setting the folder was started with; opening the folder with
another setting is refused (:class:`SettingMismatch`), naming what differs, so cells of two
settings never mix. Every cell also carries the setting's digest, and a cell whose digest is not
the folder's is refused when read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

from experiments.bench.criteria.setting import Setting, setting_json
from experiments.harness import atomic

__all__ = ["Store", "SettingMismatch", "PHASES", "digest", "differences"]

#: the phases, in the order they run: the one-shot screen and the screen of the other modes on
#: the development seeds, then the held-out seeds, then the width-learning comparison (held-out)
PHASES = ("screen-oneshot", "screen-modes", "heldout", "width")


class SettingMismatch(ValueError):
    """A benchmark folder holds cells of another setting."""


def digest(s: Setting) -> str:
    """A short hash of everything in ``s``."""
    text = json.dumps(setting_json(s), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def differences(recorded: Any, current: Any, prefix: str = "") -> list[str]:
    """The paths at which two JSON values differ, each with both values."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        out = []
        for k in sorted(set(recorded) | set(current)):
            out += differences(recorded.get(k), current.get(k), f"{prefix}{k}.")
        return out
    if isinstance(recorded, list) and isinstance(current, list) \
            and len(recorded) == len(current):
        out = []
        for i, (a, b) in enumerate(zip(recorded, current)):
            name = a.get("name", i) if isinstance(a, dict) else i
            out += differences(a, b, f"{prefix.rstrip('.')}[{name}].")
        return out
    if recorded != current:
        return [f"{prefix.rstrip('.') or 'setting'}: {recorded!r} in the folder, {current!r} now"]
    return []


def _point_name(point: float) -> str:
    return f"{float(point):g}x"


class Store:
    """The cells of one benchmark folder (``root``) for the setting ``s``.

    Raises:
        SettingMismatch: ``root`` was started with another setting.
    """

    def __init__(self, root: str | Path, s: Setting):
        self.root = Path(root)
        self.setting = s
        self.digest = digest(s)
        path = self.root / "setting.json"
        mine = setting_json(s)
        if path.exists():
            recorded = atomic.read_json(path)
            diff = differences(recorded, mine)
            if diff:
                raise SettingMismatch(
                    f"{self.root} holds a benchmark run with another setting; use another "
                    f"--root, or delete the folder to start over. Differences: "
                    + "; ".join(diff[:8]) + (f" (and {len(diff) - 8} more)"
                                             if len(diff) > 8 else ""))
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            atomic.write_json(path, mine)

    def path(self, phase: str, network: str, seed: int, method: str, point: float) -> Path:
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}: choose from {', '.join(PHASES)}")
        return (self.root / "cells" / phase / network / f"seed{seed}"
                / f"{method}@{_point_name(point)}.json")

    def has(self, phase: str, network: str, seed: int, method: str, point: float) -> bool:
        return self.path(phase, network, seed, method, point).exists()

    def put(self, phase: str, seed: int, row: dict[str, Any]) -> Path:
        """Write one cell (``row`` holds ``network``, ``method``, ``point``) atomically."""
        path = self.path(phase, row["network"], seed, row["method"], row["point"])
        atomic.write_json(path, {**row, "phase": phase, "seed": int(seed),
                                 "setting": self.digest})
        return path

    def _read(self, path: Path) -> dict[str, Any]:
        row = atomic.read_json(path)
        if row.get("setting") != self.digest:
            raise SettingMismatch(f"{path} was computed with setting {row.get('setting')}, "
                                  f"not this folder's {self.digest}")
        return row

    def rows(self, phase: str, seeds: Iterable[int], network: str | None = None
             ) -> list[dict[str, Any]]:
        """The cells of ``phase`` for ``seeds`` (of ``network``, or of every network). Only the
        folders of those seeds are read."""
        out = []
        for path in self._paths(phase, seeds, network):
            out.append(self._read(path))
        return out

    def _paths(self, phase: str, seeds: Iterable[int], network: str | None) -> Iterator[Path]:
        base = self.root / "cells" / phase
        nets = [network] if network is not None else [n.name for n in self.setting.networks]
        for net in nets:
            for seed in seeds:
                folder = base / net / f"seed{int(seed)}"
                if folder.is_dir():
                    yield from sorted(folder.glob("*.json"))
