"""The experiments the CLI knows: one :class:`Experiment` per reproduction.

An experiment is a function ``fn(cfg, ctx) -> dict`` plus its default
configuration, the overrides of its seconds-long ``--quick`` version, and the
search space its sweeps sample. :func:`run_experiment` gives every run the
same output folder layout: ``config.json``, ``results.json`` (written last,
so its presence means the run finished), CSV tables and PNG plots written by
the experiment through :class:`RunContext`, all atomically.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from . import io

__all__ = [
    "Experiment",
    "RunContext",
    "EXPERIMENTS",
    "register",
    "get_experiment",
    "parse_overrides",
    "resolve_config",
    "run_experiment",
    "load_plugins",
]


@dataclass(frozen=True)
class Experiment:
    """A registered experiment.

    Attributes:
        name: CLI name (``python -m experiments run NAME``). Names starting
            with ``_`` are test fixtures, hidden from ``list``.
        summary: one line for ``python -m experiments list``.
        fn: ``fn(cfg: dict, ctx: RunContext) -> dict`` of final results.
        defaults: the full configuration; ``--set key=value`` may change
            only these keys.
        quick: overrides for the seconds-long ``--quick`` version.
        space: sweep search space, ``{key: distribution}`` where a
            distribution is ``("loguniform", lo, hi)``, ``("uniform", lo, hi)``,
            ``("int", lo, hi)``, ``("logint", lo, hi)`` or ``("choice", [...])``.
        source: the source document and section it reproduces.
        validate: ``validate(cfg)`` raising ValueError for a configuration the
            experiment cannot run; :func:`run_experiment` calls it before it
            creates or writes anything in the output folder.
    """

    name: str
    summary: str
    fn: Callable[[dict, "RunContext"], dict]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    quick: Mapping[str, Any] = field(default_factory=dict)
    space: Mapping[str, tuple] = field(default_factory=dict)
    source: str = ""
    validate: Callable[[dict], None] | None = None


#: name -> Experiment. Filled by :func:`register` when the experiment modules
#: are imported (``experiments.catalog``).
EXPERIMENTS: dict[str, Experiment] = {}


def register(name: str, summary: str, *, defaults: Mapping[str, Any] | None = None,
             quick: Mapping[str, Any] | None = None, space: Mapping[str, tuple] | None = None,
             source: str = "", validate: Callable[[dict], None] | None = None) -> Callable:
    """Decorator registering ``fn(cfg, ctx)`` as experiment ``name`` (see :class:`Experiment`)."""

    def deco(fn: Callable) -> Callable:
        if name in EXPERIMENTS and EXPERIMENTS[name].fn is not fn:
            raise ValueError(f"experiment {name!r} is registered twice")
        defaults_ = dict(defaults or {})
        for where, keys in (("quick", quick or {}), ("space", space or {})):
            unknown = set(keys) - set(defaults_)
            if unknown:
                raise ValueError(f"experiment {name!r}: {where} names unknown keys "
                                 f"{sorted(unknown)}")
        EXPERIMENTS[name] = Experiment(name, summary, fn, defaults_, dict(quick or {}),
                                       dict(space or {}), source, validate)
        return fn

    return deco


def load_plugins(modules: list[str] | None = None) -> None:
    """Import the built-in catalog and extra modules that register experiments.

    Extra modules come from ``modules`` and the ``EXPERIMENTS_PLUGINS``
    environment variable (comma-separated module names).
    """
    importlib.import_module("experiments.catalog")
    extra = list(modules or [])
    extra += [m for m in os.environ.get("EXPERIMENTS_PLUGINS", "").split(",") if m]
    for mod in extra:
        importlib.import_module(mod)


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; a ValueError lists the known names."""
    load_plugins()
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {', '.join(sorted(EXPERIMENTS))}")
    return EXPERIMENTS[name]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """Parse ``["key=value", ...]``; values are JSON when they parse, else strings."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = _parse_value(value)
    return out


def resolve_config(exp: Experiment, overrides: Mapping[str, Any] | None = None,
                   quick: bool = False) -> dict[str, Any]:
    """Defaults, then the quick overrides, then the user's; unknown keys are errors."""
    cfg = dict(exp.defaults)
    if quick:
        cfg.update(exp.quick)
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"experiment {exp.name!r} has no setting {sorted(unknown)}; "
                         f"settings: {', '.join(sorted(cfg))}")
    cfg.update(overrides)
    cfg["quick"] = bool(quick)
    return cfg


class RunContext:
    """What an experiment gets besides its config: its output folder and writers.

    All writers are atomic. ``ctx.path(name)`` gives a path inside the folder.
    """

    def __init__(self, out_dir: str | os.PathLike, progress: bool | None = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.progress = progress

    def path(self, name: str) -> Path:
        return self.out_dir / name

    def write_json(self, name: str, obj: Any) -> Path:
        io.write_json(self.path(name), obj)
        return self.path(name)

    def write_csv(self, name: str, rows, columns=None) -> Path:
        io.write_csv(self.path(name), rows, columns)
        return self.path(name)

    def save_figure(self, fig, name: str) -> Path:
        io.save_figure(fig, self.path(name))
        return self.path(name)

    def log(self, msg: str) -> None:
        """Print ``msg`` and append it to ``log.txt`` in the output folder."""
        print(msg, flush=True)
        with open(self.path("log.txt"), "a", encoding="utf-8") as fh:
            fh.write(msg + "\n")


def run_experiment(name: str, overrides: Mapping[str, Any] | None = None, *,
                   quick: bool = False, out_dir: str | os.PathLike | None = None,
                   progress: bool | None = None) -> dict[str, Any]:
    """Run one experiment into ``out_dir`` (default ``runs/NAME``).

    Writes ``config.json`` first and ``results.json`` last; returns the
    results. An experiment that checkpoints (through the training loop)
    resumes where a killed run stopped. A configuration the experiment's
    ``validate`` refuses raises before the output folder is touched.
    """
    exp = get_experiment(name)
    cfg = resolve_config(exp, overrides, quick)
    if exp.validate is not None:
        exp.validate(cfg)
    out = Path(out_dir) if out_dir is not None else Path("runs") / name
    ctx = RunContext(out, progress)
    ctx.write_json("config.json", {"experiment": name, "config": cfg})
    start = time.perf_counter()
    results = exp.fn(cfg, ctx)
    results = dict(results or {})
    results.setdefault("experiment", name)
    results["wall_time_s"] = time.perf_counter() - start
    ctx.write_json("results.json", results)
    return results
