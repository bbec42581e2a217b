"""The registry of experiments: one :class:`Experiment` per reproduction or tool.

An experiment is a function ``fn(cfg, ctx) -> dict`` plus its default
configuration, the overrides of its seconds-long ``--quick`` version, and the
search space its sweeps sample. A module registers its experiments with the
:func:`register` decorator when it is imported; the registry itself imports
nothing that registers. :mod:`experiments.catalog` is the one list of the
built-in experiments (the command line imports it), and :func:`load_plugins`
imports extra modules (``--plugin``, ``$EXPERIMENTS_PLUGINS``).
:func:`experiments.harness.run.run_experiment` runs one into its folder.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

__all__ = ["Experiment", "EXPERIMENTS", "register", "get_experiment", "parse_overrides",
           "resolve_config", "load_plugins"]


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
    fn: Callable[[dict, Any], dict]  # fn(cfg, ctx: experiments.harness.run.RunContext)
    defaults: Mapping[str, Any] = field(default_factory=dict)
    quick: Mapping[str, Any] = field(default_factory=dict)
    space: Mapping[str, tuple] = field(default_factory=dict)
    source: str = ""
    validate: Callable[[dict], None] | None = None


#: name -> Experiment. Filled by :func:`register` when the modules that define
#: experiments are imported (the built-in ones: :mod:`experiments.catalog`).
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
    """Import modules that register experiments: ``modules`` and those named in the
    ``EXPERIMENTS_PLUGINS`` environment variable (comma-separated module names)."""
    extra = list(modules or [])
    extra += [m for m in os.environ.get("EXPERIMENTS_PLUGINS", "").split(",") if m]
    for mod in extra:
        importlib.import_module(mod)


def get_experiment(name: str) -> Experiment:
    """The registered experiment called ``name``; a ValueError lists the known names.

    Only experiments whose modules were imported are known: import
    :mod:`experiments.catalog` for the built-in ones.
    """
    load_plugins()
    if name not in EXPERIMENTS:
        known = ", ".join(sorted(n for n in EXPERIMENTS if not n.startswith("_")))
        raise ValueError(f"unknown experiment {name!r}; known: {known or 'none'} (the built-in "
                         "experiments register when experiments.catalog is imported; others "
                         "with --plugin MODULE)")
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
