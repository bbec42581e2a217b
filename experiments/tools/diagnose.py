"""Diagnose a trained checkpoint: ``python -m experiments diagnose CHECKPOINT --data NAME``.

Finds the dead, dormant and frozen units of a checkpoint on a data set with
:func:`saliency.find_dead_units` (Sec. 3.2, Def. 3.2.1-3.2.2 of U. Evci,
*Detecting Dead Weights and Units in Neural Networks*, MS thesis, NYU, 2018,
https://arxiv.org/abs/1806.06068, below: the thesis; ReDo; APoZ), prints a
per-layer summary -- units, units flagged by each criterion, and the
parameters and MACs that removing the dead units would save -- and writes into ``--out DIR`` (default
``runs/diagnose/<checkpoint name>``):

* ``report.json``: everything (the library's :meth:`DeadUnitReport.to_dict`
  plus the savings, the removal's deviation and loss change, the settings);
* ``units.csv`` (one row per unit: statistics and flags) and ``layers.csv``;
* ``statistics.png``: per layer, histograms of the unit statistics the
  criteria read;
* ``criteria.png``: a units-by-criteria heatmap (seaborn).

Models whose channels are coupled (ResNets, MobileNetV2, DenseNets: residual adds,
depthwise and grouped convolutions, concatenations) are diagnosed per group of
:func:`saliency.trace`: the layers whose channels a residual add sums are one group, named
after the first, with one row per group channel; the summary names the members, and a
removal removes the channel from every member at once.

The dead units removed are those flagged by ``--remove-by`` (default: the
criteria whose units are exactly replaceable on the data, constant output,
never active, zero outgoing weights). They are removed from a copy with the
foundation's exact removal (:func:`pruners.remove_units`, mean replacement
with bias propagation); the maximum output deviation and the loss change on
the data are reported, and ``--remove-dead OUT.pt`` writes that smaller model
as a checkpoint of the same kind (a harness checkpoint reloads with
:func:`experiments.harness.checkpoint.model_from_checkpoint`; a plain state dict with
``--model ... --resize``). The written checkpoint holds the model only, not
the optimizer.

Checkpoints: the harness's (``experiments.harness.checkpoint``, which records the
architecture), or a plain state dict with ``--model module:factory`` (or a
name of :data:`experiments.harness.models.MODELS`) and ``--model-kwargs JSON``. Files
are read with ``torch.load(weights_only=True)``: a pickle that would run code
when loaded is refused. Every bad input is one line on stderr and an exit code
(:data:`EXIT_CODES`), never a traceback (``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import copy
import importlib
import io
import json
import math
import pickle
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from experiments.harness import atomic
from experiments.harness.checkpoint import (FORMAT, CheckpointError, fit_to_state_dict,
                                            model_from_checkpoint)
from experiments.harness.models import MODELS
from pruners import count_macs, count_params, remove_units
from saliency import EXACT_CRITERIA, DeadUnitReport, UnitGraph, find_dead_units, trace

__all__ = ["DiagnoseError", "EXIT_CODES", "load_model", "load_data", "diagnose",
           "removal_plan", "add_arguments", "run_from_args", "main"]

#: exit codes of ``python -m experiments diagnose``
EXIT_CODES: dict[str, int] = {
    "usage": 2,        # bad arguments, data set not found, unknown criteria
    "missing": 3,      # the checkpoint file does not exist
    "unreadable": 4,   # truncated, corrupt, or not a torch.save file / checkpoint
    "refused": 5,      # the pickle holds objects that would run code when loaded
    "mismatch": 6,     # state dict vs model / factory / data set
}


class DiagnoseError(ValueError):
    """A bad input of the diagnostics tool; ``kind`` is a key of :data:`EXIT_CODES`."""

    def __init__(self, message: str, kind: str = "usage"):
        super().__init__(message)
        self.kind = kind

    @property
    def code(self) -> int:
        return EXIT_CODES[self.kind]


# --------------------------------------------------------------------------- loading


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _read(path: Path) -> Any:
    """``torch.load(path, weights_only=True)`` with one clear error per failure."""
    if not path.exists():
        raise DiagnoseError(f"checkpoint {str(path)!r} does not exist", "missing")
    if not path.is_file():
        raise DiagnoseError(f"checkpoint {str(path)!r} is not a file", "missing")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" in text:
            glob = re.search(r"GLOBAL ([\w.]+)", text)
            op = re.search(r"Unsupported operand (\d+)", text)
            what = (f"a reference to {glob.group(1)}" if glob else
                    f"pickle operation {op.group(1)}" if op else "a disallowed object")
            raise DiagnoseError(
                f"refused to load {str(path)!r}: it contains {what}, which could run code when "
                "unpickled; only tensors and plain containers are loaded (weights_only=True)",
                "refused") from None
        raise DiagnoseError(f"cannot read checkpoint {str(path)!r}: {_first_line(exc)}",
                            "unreadable") from None
    except Exception as exc:  # noqa: BLE001 - zip errors, EOF, bad magic: one message
        why = _first_line(exc)
        why = "empty file" if isinstance(exc, EOFError) and path.stat().st_size == 0 else why
        raise DiagnoseError(f"cannot read checkpoint {str(path)!r}: the file is truncated, "
                            f"corrupt or not written by torch.save ({why})",
                            "unreadable") from None


def _factory(spec: str) -> Callable[..., nn.Module]:
    if ":" not in spec:
        if spec in MODELS:
            return MODELS[spec]
        raise DiagnoseError(f"--model {spec!r}: expected module:factory or one of "
                            f"{sorted(MODELS)}")
    mod_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(mod_name)
    except Exception as exc:  # noqa: BLE001
        raise DiagnoseError(f"--model {spec!r}: cannot import module {mod_name!r}: "
                            f"{_first_line(exc)}") from None
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise DiagnoseError(f"--model {spec!r}: module {mod_name!r} has no callable {attr!r}")
    return fn


def _base(key: str) -> str:
    for suffix in ("_orig", "_mask"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def _apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str,
                      resize: bool) -> nn.Module:
    """Load ``state`` into ``model``, refusing mismatched keys or shapes with one line."""
    own = model.state_dict()
    theirs = {_base(k) for k in state}
    mine = {_base(k) for k in own}
    missing, unexpected = sorted(mine - theirs), sorted(theirs - mine)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
        raise DiagnoseError(f"the state dict does not match {what}: " + "; ".join(parts),
                            "mismatch")
    if not resize:
        for key, value in state.items():
            if key.endswith("_mask"):
                continue
            ref = own.get(_base(key))
            if ref is not None and tuple(ref.shape) != tuple(value.shape):
                raise DiagnoseError(
                    f"the state dict does not match {what}: {_base(key)} is "
                    f"{tuple(value.shape)} in the checkpoint but {tuple(ref.shape)} in the model "
                    "(pass --resize if units were removed from the checkpoint's model)",
                    "mismatch")
    try:
        fit_to_state_dict(model, state)
        model.load_state_dict(state, strict=True)
    except (CheckpointError, RuntimeError) as exc:
        raise DiagnoseError(f"the state dict does not match {what}: {_first_line(exc)}",
                            "mismatch") from None
    return model


def load_model(path: str | Path, model: str | None = None,
               model_kwargs: Mapping[str, Any] | None = None, resize: bool = False
               ) -> tuple[nn.Module, dict[str, Any]]:
    """Load a harness checkpoint or a plain state dict (with a factory) safely.

    Returns ``(model, info)`` with ``info["kind"]`` ``"harness"`` or
    ``"state_dict"`` (and the harness's ``arch``). Raises :class:`DiagnoseError`.
    """
    path = Path(path)
    obj = _read(path)
    if not isinstance(obj, Mapping):
        raise DiagnoseError(f"{str(path)!r} holds a {type(obj).__name__}, not a checkpoint "
                            "or a state dict", "unreadable")
    kwargs = dict(model_kwargs or {})
    if obj.get("format") == FORMAT:
        info = {"kind": "harness", "arch": dict(obj.get("arch", {})),
                "epoch": obj.get("epoch"), "step": obj.get("step")}
        state = obj.get("state_dict")
        if not isinstance(state, Mapping):
            raise DiagnoseError(f"{str(path)!r}: the checkpoint has no state dict", "unreadable")
        if model is None:
            try:
                net = model_from_checkpoint(obj)
            except CheckpointError as exc:
                raise DiagnoseError(f"{str(path)!r}: {_first_line(exc)}", "mismatch") from None
            return net, info
        state_dict = state
    else:
        state_dict = obj.get("state_dict") if isinstance(obj.get("state_dict"), Mapping) else obj
        if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
            raise DiagnoseError(f"{str(path)!r} is neither a {FORMAT} checkpoint nor a state "
                                "dict (a mapping of names to tensors)", "unreadable")
        info = {"kind": "state_dict"}
        if model is None:
            raise DiagnoseError(f"{str(path)!r} is a plain state dict: pass --model "
                                "module:factory (and --model-kwargs) to build its model")
    fn = _factory(model)
    try:
        net = fn(**kwargs)
    except Exception as exc:  # noqa: BLE001
        raise DiagnoseError(f"--model {model!r} with kwargs {kwargs} failed: {_first_line(exc)}",
                            "mismatch") from None
    if not isinstance(net, nn.Module):
        raise DiagnoseError(f"--model {model!r} returned a {type(net).__name__}, not an nn.Module",
                            "mismatch")
    info.update({"model": model, "model_kwargs": kwargs})
    return _apply_state_dict(net, state_dict, f"--model {model!r}", resize), info


def load_data(name: str, *, data_dir: str | None = None, split: str = "val",
              samples: int = 1000, batch_size: int = 500, seed: int = 0,
              val_size: int = 5000):
    """The first ``samples`` samples of a split of data set ``name``, in batches.

    Returns ``(batches, splits)``. The validation split is the harness's
    (``val_size`` samples carved from the training set with ``seed``; the
    defaults 5000 and 0 are the harness's).
    """
    from experiments.harness.datasets import get_dataset

    if split not in ("train", "val", "test"):
        raise DiagnoseError(f"--split must be train, val or test, got {split!r}")
    if samples < 1 or batch_size < 1:
        raise DiagnoseError("--samples and --batch-size must be >= 1")
    try:
        splits = get_dataset(name, data_dir=data_dir or None, seed=seed, val_size=val_size)
    except (ValueError, FileNotFoundError) as exc:
        raise DiagnoseError(f"--data {name!r}: {_first_line(exc)}") from None
    ds = getattr(splits, split)
    x, y = ds.tensors[0][:samples], ds.tensors[1][:samples]
    if not len(x):
        raise DiagnoseError(f"--data {name!r}: the {split} split is empty")
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)], \
        splits


def _loss_fn(data) -> Callable:
    return F.mse_loss if data[0][1].is_floating_point() else F.cross_entropy


def _check_runs(model: nn.Module, data, what: str, num_outputs: int | None) -> None:
    x = data[0][0]
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as exc:  # noqa: BLE001
        raise DiagnoseError(f"the model does not run on {what} inputs of shape "
                            f"{tuple(x.shape[1:])}: {_first_line(exc)}", "mismatch") from None
    finally:
        for m, flag in flags:
            m.training = flag
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise DiagnoseError(f"the model's output on {what} is not a (batch, outputs) tensor",
                            "mismatch")
    if num_outputs and out.shape[1] != num_outputs:
        raise DiagnoseError(f"the model outputs {out.shape[1]} values per sample but {what} has "
                            f"{num_outputs} classes/targets", "mismatch")


# --------------------------------------------------------------------------- removal


def _outputs(model: nn.Module, data) -> list[torch.Tensor]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return [model(x) for x, _ in data]
    finally:
        for m, flag in flags:
            m.training = flag


def _mean_loss(outs, data, loss_fn) -> float:
    total = sum(float(loss_fn(o, y, reduction="sum")) for o, (_, y) in zip(outs, data))
    return total / sum(int(x.shape[0]) for x, _ in data)


def removal_plan(report: DeadUnitReport, criteria=EXACT_CRITERIA, graph: UnitGraph | None = None
                 ) -> tuple[dict, dict]:
    """``({group: indices to remove}, {group: flagged indices kept})``: the units flagged by
    ``criteria``. A group (a layer on a chain) whose units are all flagged keeps its first;
    with the model's ``graph`` (:func:`saliency.trace`), every member of a group keeps a
    channel and a grouped convolution loses the same number of channels from each of its
    groups (the lowest flagged indices are removed, the others kept)."""
    dead = report.dead(criteria)
    plan, kept = {}, {}
    for layer, idx in dead.items():
        keep: list[int] = []
        if idx.numel() >= report.num_units[layer]:
            keep.append(int(idx[0]))
        group = graph.groups.get(layer) if graph is not None else None
        if group is not None:
            keep = _group_keeps(group, idx.tolist(), keep)
        if keep:
            kept[layer] = sorted(keep)
        rest = idx[~torch.isin(idx, torch.tensor(keep, dtype=idx.dtype))]
        if rest.numel():
            plan[layer] = rest
    return plan, kept


def _group_keeps(group, flagged: list[int], keep: list[int]) -> list[int]:
    """``keep`` grown until removing the rest of ``flagged`` leaves every member of ``group`` a
    channel and takes the same count from every conv group of its grouped convolutions."""
    keep = list(keep)
    while True:
        removed = set(flagged) - set(keep)
        grown = False
        for m in group.members:
            own = set(group.channels[m].tolist())
            if own <= removed:
                keep.append(min(own))
                grown = True
                break
        for parts in group.partitions.values():
            if grown:
                break
            sets = [set(p.tolist()) for p in parts]
            target = min(min(len(p & removed) for p in sets), min(len(p) for p in sets) - 1)
            for p in sets:
                extra = sorted(p & removed)[target:]
                if extra:
                    keep += extra
                    grown = True
        if not grown:
            return keep


def _remove(model, plan, data, example):
    """Remove ``plan`` from a copy; (copy, RemovalReport, warnings)."""
    net = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = remove_units(net, plan, replacement="mean", data=data, example_input=example)
    return net, rep, [str(w.message) for w in caught]


def diagnose(model: nn.Module, data, *, thresholds: Mapping[str, Any] | None = None,
             exact_mrp: bool = False, criteria=EXACT_CRITERIA) -> tuple[DeadUnitReport, dict,
                                                                         nn.Module | None]:
    """Report, savings and the model with the dead units removed.

    Returns ``(report, extra, smaller_model)``: ``extra`` holds per-layer
    ``params_saved`` / ``macs_saved`` (removing that layer's dead units
    alone), the total (removing them all at once), the removal's maximum
    output deviation and loss change on ``data``; ``smaller_model`` is None
    when no unit is removed. A "layer" is a group of :func:`saliency.trace`:
    a producer on a chain, or the layers whose channels a residual add sums
    (named after the first, its ``members`` listed), whose units are removed
    from every member at once.
    """
    loss_fn = _loss_fn(data)
    example = data[0][0][:1]
    report = find_dead_units(model, data, loss_fn=loss_fn, thresholds=thresholds,
                             exact_mrp=exact_mrp, example_input=example)
    criteria = list(criteria)
    plan, kept = removal_plan(report, criteria, trace(model, example))
    params, macs = count_params(model), count_macs(model, example)
    per_layer = {}
    for layer in report.layers:
        if layer in plan:
            _, rep, _ = _remove(model, {layer: plan[layer]}, data, example)
            per_layer[layer] = {"removed": int(plan[layer].numel()),
                                "params_saved": rep.params_before - rep.params_after,
                                "macs_saved": rep.macs_before - rep.macs_after}
        else:
            per_layer[layer] = {"removed": 0, "params_saved": 0, "macs_saved": 0}
        per_layer[layer]["members"] = list(report.members.get(layer, [layer]))
        if layer in kept:
            per_layer[layer]["kept_flagged"] = kept[layer]
    extra: dict[str, Any] = {"removal_criteria": criteria, "per_layer": per_layer,
                             "params": params, "macs": macs, "kept": kept}
    smaller = None
    before = _outputs(model, data)
    loss_before = _mean_loss(before, data, loss_fn)
    if plan:
        smaller, rep, warned = _remove(model, plan, data, example)
        after = _outputs(smaller, data)
        dev = max(float((a - b).abs().max()) for a, b in zip(after, before))
        scale = max(float(b.abs().max()) for b in before)
        loss_after = _mean_loss(after, data, loss_fn)
        extra["removal"] = {
            "units": {k: v.tolist() for k, v in plan.items()},
            "removed": int(sum(v.numel() for v in plan.values())),
            "params_before": rep.params_before, "params_after": rep.params_after,
            "macs_before": rep.macs_before, "macs_after": rep.macs_after,
            "max_output_deviation": dev, "max_abs_output": scale,
            "max_output_deviation_relative": dev / scale if scale > 0 else 0.0,
            "loss_before": loss_before, "loss_after": loss_after,
            "loss_change": loss_after - loss_before, "warnings": warned}
    else:
        extra["removal"] = {"units": {}, "removed": 0, "params_before": params,
                            "params_after": params, "macs_before": macs, "macs_after": macs,
                            "max_output_deviation": 0.0, "max_abs_output": None,
                            "max_output_deviation_relative": 0.0, "loss_before": loss_before,
                            "loss_after": loss_before, "loss_change": 0.0, "warnings": []}
    return report, extra, smaller


# --------------------------------------------------------------------------- outputs


def _table(report: DeadUnitReport, extra: dict) -> str:
    crit = report.criteria
    short = {c: c.replace("constant_activation", "const_act").replace("zero_outgoing",
                                                                       "zero_out")
             for c in crit}
    cols = ["units", *crit, "removed", "params saved", "MACs saved"]
    names = {**short, "units": "units", "removed": "removed", "params saved": "params saved",
             "MACs saved": "MACs saved"}
    width = max(len(n) for n in report.layers + ["layer", "total"]) + 2
    widths = {c: max(len(names[c]), 6) + 2 for c in cols}
    lines = [f"{'layer':<{width}}" + "".join(f"{names[c]:>{widths[c]}}" for c in cols)]
    counts = report.counts()
    for layer in report.layers:
        pl = extra["per_layer"][layer]
        vals = {"units": report.num_units[layer], **counts[layer], "removed": pl["removed"],
                "params saved": f"{pl['params_saved']:,}", "MACs saved": f"{pl['macs_saved']:,}"}
        lines.append(f"{layer:<{width}}" + "".join(f"{vals[c]:>{widths[c]}}" for c in cols))
    rem = extra["removal"]
    tot = {"units": sum(report.num_units.values()),
           **{c: sum(counts[layer][c] for layer in report.layers) for c in crit},
           "removed": rem["removed"],
           "params saved": f"{rem['params_before'] - rem['params_after']:,}",
           "MACs saved": f"{rem['macs_before'] - rem['macs_after']:,}"}
    lines.append(f"{'total':<{width}}" + "".join(f"{tot[c]:>{widths[c]}}" for c in cols))
    for layer in report.layers:
        members = report.members.get(layer, [layer])
        if len(members) > 1:
            lines.append(f"group {layer}: {len(members)} layers whose channels are removed "
                         f"together ({', '.join(members)})")
    return "\n".join(lines)


def _plots(report: DeadUnitReport, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    stats = [("mrs_rel", "MRS / layer mean (log10)", True),
             ("redo", "ReDo score E|a| / layer mean", False),
             ("apoz", "APoZ (fraction of zero activations)", False),
             ("grad_rel", "output-gradient norm / layer mean (log10)", True),
             ("out_var_rel", "Var(h) / layer mean (log10)", True),
             ("w_out_l1", "outgoing weights L1", False)]
    if report.exact_mrp:
        stats.insert(0, ("mrp_rel", "MRP / layer mean (log10)", True))
    floor = 1e-12
    fig, axes = plt.subplots(len(report.layers), len(stats),
                             figsize=(3.0 * len(stats), 2.3 * len(report.layers)), squeeze=False)
    for r, layer in enumerate(report.layers):
        for c, (key, label, log) in enumerate(stats):
            ax = axes[r][c]
            v = report.stats[key][layer].numpy()
            if log:
                v = np.log10(np.maximum(v, floor))
            ax.hist(v, bins=30, color="C2" if log else "C0", edgecolor="none")  # 10x faster than histplot
            if log:
                ax.axvline(math.log10(floor), color="0.5", lw=0.8, ls=":")
            if r == 0:
                ax.set_title(label, fontsize=8)
            ax.set_ylabel(f"{layer}\nunits" if c == 0 else "")
            ax.tick_params(labelsize=7)
    fig.suptitle(f"unit statistics on {report.samples} samples (log10 values at "
                 f"{int(math.log10(floor))} are exactly 0)", fontsize=9)
    fig.tight_layout()
    atomic.save_figure(fig, out / "statistics.png")

    rows = [(layer, i) for layer in report.layers for i in range(report.num_units[layer])]
    note = "every unit"
    if len(rows) > 256:
        rows = [(layer, i) for layer, i in rows
                if any(bool(report.flags[c][layer][i]) for c in report.criteria)][:256]
        note = f"the {len(rows)} flagged units (of {sum(report.num_units.values())})"
    if not rows:
        rows = [(report.layers[0], 0)]
        note = "no unit is flagged"
    mat = np.array([[float(report.flags[c][layer][i]) for c in report.criteria]
                    for layer, i in rows])
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(report.criteria),
                                    1.5 + min(0.16 * len(rows), 40)))
    sns.heatmap(mat, ax=ax, cmap=sns.color_palette(["#f0f0f0", "#c0392b"], as_cmap=True),
                vmin=0, vmax=1, cbar=False, linewidths=0.3 if len(rows) <= 64 else 0,
                linecolor="white", xticklabels=report.criteria,
                yticklabels=[f"{layer}:{i}" for layer, i in rows] if len(rows) <= 96 else False)
    for r in range(1, len(rows)):  # a line between layers
        if rows[r][0] != rows[r - 1][0]:
            ax.axhline(r, color="0.2", lw=1.0)
    ax.set_title(f"units by criteria: {note} (red = flagged)", fontsize=9)
    ax.tick_params(labelsize=7)
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.tight_layout()
    atomic.save_figure(fig, out / "criteria.png")
    return ["statistics.png", "criteria.png"]


def _save_smaller(path: Path, smaller: nn.Module, info: dict, source: Path,
                  removal: dict) -> None:
    if info["kind"] == "harness" and "model" not in info:
        payload = {"format": FORMAT, "arch": info["arch"], "state_dict": smaller.state_dict(),
                   "diagnosis": {"source": str(source), **atomic.to_jsonable(removal)}}
    else:
        payload = smaller.state_dict()
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic.write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``diagnose`` subcommand's arguments."""
    parser.add_argument("checkpoint", help="a harness checkpoint or a plain state dict (.pt)")
    parser.add_argument("--data", required=True, metavar="NAME",
                        help="data set (fashion-mnist, mnist, cifar10, ...)")
    parser.add_argument("--data-dir", default=None, metavar="DIR", help="folder of its files")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"),
                        help="which split to diagnose on (default val, the harness's)")
    parser.add_argument("--samples", type=int, default=1000,
                        help="first N samples of the split (default 1000, the thesis's "
                             "validation set size)")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--data-seed", type=int, default=0,
                        help="seed of the validation split (default 0, the harness's)")
    parser.add_argument("--val-size", type=int, default=5000,
                        help="validation samples carved from the training set (default 5000, "
                             "the harness's)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="output folder (default runs/diagnose/<checkpoint name>)")
    parser.add_argument("--remove-dead", default=None, metavar="OUT.pt",
                        help="write a smaller checkpoint with the dead units removed")
    parser.add_argument("--remove-by", default=",".join(EXACT_CRITERIA), metavar="CRITERIA",
                        help="comma-separated criteria whose units are removed (default: "
                             f"{','.join(EXACT_CRITERIA)}, exactly replaceable)")
    parser.add_argument("--model", default=None, metavar="MODULE:FACTORY",
                        help="factory of a plain state dict's model (or a name of "
                             "experiments.harness.models.MODELS)")
    parser.add_argument("--model-kwargs", default="{}", metavar="JSON",
                        help="keyword arguments of the factory")
    parser.add_argument("--resize", action="store_true",
                        help="resize the factory's model to the state dict's shapes (a "
                             "checkpoint with removed units)")
    parser.add_argument("--threshold", action="append", default=[], metavar="KEY=VALUE",
                        help="a threshold of saliency.DeadUnitThresholds (JSON value), "
                             "repeatable, e.g. --threshold taus=[0,0.05]")
    parser.add_argument("--exact-mrp", action="store_true",
                        help="also compute exact MRP (an extra pass) and the low_mrp criterion")
    parser.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                        help="write statistics.png and criteria.png (default; a few seconds)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    return parser


def _parse_thresholds(pairs) -> dict[str, Any]:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise DiagnoseError(f"--threshold expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        try:
            v = json.loads(value)
        except json.JSONDecodeError:
            raise DiagnoseError(f"--threshold {key}: {value!r} is not a JSON value") from None
        out[key.strip()] = tuple(v) if isinstance(v, list) else v
    return out


def _checked_arguments(args, path: Path) -> tuple[dict, Any, list[str], Path | None]:
    """The arguments that need checking before anything is loaded: ``(model kwargs,
    DeadUnitThresholds, removal criteria, the checkpoint --remove-dead writes)``."""
    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError:
        raise DiagnoseError(f"--model-kwargs is not JSON: {args.model_kwargs!r}") from None
    if not isinstance(kwargs, dict):
        raise DiagnoseError("--model-kwargs must be a JSON object")
    try:
        thresholds = _parse_thresholds(args.threshold)
        from saliency import DeadUnitThresholds
        th = DeadUnitThresholds.from_mapping(thresholds)
    except (ValueError, TypeError) as exc:
        raise DiagnoseError(f"--threshold: {_first_line(exc)}") from None
    criteria = [c.strip() for c in args.remove_by.split(",") if c.strip()]
    out_ckpt = Path(args.remove_dead) if args.remove_dead else None
    if out_ckpt is not None and path.exists() and out_ckpt.exists() \
            and out_ckpt.resolve() == path.resolve():
        raise DiagnoseError("--remove-dead must not overwrite the checkpoint being diagnosed")
    return kwargs, th, criteria, out_ckpt


def _print_removal(rem: Mapping[str, Any], criteria: list[str], kept: Mapping[str, int]) -> None:
    """What removing the flagged units did (or that there was nothing to remove)."""
    if rem["removed"]:
        n = rem["removed"]
        print(f"removing the {n} unit{'s' if n > 1 else ''} flagged by {', '.join(criteria)} "
              f"(mean replacement, bias propagation): parameters {rem['params_before']:,} -> "
              f"{rem['params_after']:,}, MACs/sample {rem['macs_before']:,} -> "
              f"{rem['macs_after']:,}; max output deviation {rem['max_output_deviation']:.3g} "
              f"({rem['max_output_deviation_relative']:.2g} of the largest output), "
              f"loss {rem['loss_before']:.6f} -> {rem['loss_after']:.6f} "
              f"({rem['loss_change']:+.3g})")
        for w in rem["warnings"]:
            print(f"  warning: {w}")
    else:
        print(f"no unit is flagged by {', '.join(criteria)}: nothing to remove")
    for layer, idx in kept.items():
        print(f"  units {idx} of {layer} are flagged but kept (a layer keeps a unit, every "
              "member of a group keeps a channel, a grouped convolution loses as many "
              "channels from each of its groups)")


def _run(args) -> int:
    if args.threads is not None:
        torch.set_num_threads(max(1, int(args.threads)))
    path = Path(args.checkpoint)
    kwargs, th, criteria, out_ckpt = _checked_arguments(args, path)
    model, info = load_model(path, args.model, kwargs, args.resize)
    data, splits = load_data(args.data, data_dir=args.data_dir, split=args.split,
                             samples=args.samples, batch_size=args.batch_size,
                             seed=args.data_seed, val_size=args.val_size)
    what = f"{args.data} ({args.split})"
    _check_runs(model, data, what, getattr(splits, "num_outputs", None))
    from saliency.dead_units import criterion_names
    known = criterion_names(th, args.exact_mrp)
    bad = [c for c in criteria if c not in known]
    if bad or not criteria:
        raise DiagnoseError(f"--remove-by: unknown criteria {bad}; known: {known}")
    try:
        report, extra, smaller = diagnose(model, data, thresholds=th, exact_mrp=args.exact_mrp,
                                          criteria=criteria)
    except (ValueError, RuntimeError) as exc:
        raise DiagnoseError(f"the model cannot be diagnosed: {_first_line(exc)}",
                            "mismatch") from None
    out = Path(args.out) if args.out else Path("runs") / "diagnose" / path.stem
    samples = report.samples
    arch = info.get("arch", {}).get("model") or info.get("model")
    print(f"diagnosis of {path} ({arch}, {extra['params']:,} parameters) on {what}, "
          f"{samples:,} samples; mean loss {report.loss:.4f}")
    print(_table(report, extra))
    rem = extra["removal"]
    _print_removal(rem, criteria, extra["kept"])
    result = {"checkpoint": str(path), "checkpoint_kind": info["kind"],
              "arch": info.get("arch"), "model": info.get("model"),
              "model_kwargs": info.get("model_kwargs"),
              "data": {"name": args.data, "split": args.split, "samples": samples,
                       "batch_size": args.batch_size, "data_seed": args.data_seed,
                       "val_size": args.val_size},
              **report.to_dict(), "savings": extra["per_layer"], "removal_criteria": criteria,
              "params": extra["params"], "macs": extra["macs"], "removal": rem}
    for row in result["layers"]:
        row.update({k: v for k, v in extra["per_layer"][row["layer"]].items()})
    files = ["report.json", "units.csv", "layers.csv"]
    atomic.write_csv(out / "units.csv", [{**r, "dead_by": ";".join(r["dead_by"])}
                                      for r in result["units"]])
    atomic.write_csv(out / "layers.csv", result["layers"])
    if args.plots:
        files += _plots(report, out)
    if out_ckpt is not None:
        if smaller is None:
            print(f"--remove-dead: no unit to remove; {out_ckpt} not written")
        else:
            _save_smaller(out_ckpt, smaller, info, path, rem)
            result["removed_checkpoint"] = str(out_ckpt)
            print(f"smaller checkpoint written to {out_ckpt}")
    result["files"] = files
    atomic.write_json(out / "report.json", result)
    print(f"written to {out}/: {', '.join(files)}")
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``diagnose``; a bad input is one line on stderr and its exit code."""
    try:
        return _run(args)
    except DiagnoseError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:  # noqa: BLE001 - never a traceback unless --debug
        if args.debug:
            raise
        print(f"error: diagnose failed ({type(exc).__name__}): {_first_line(exc)} "
              "(--debug shows the traceback)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.tools.diagnose ...`` (the same as ``python -m experiments diagnose``)."""
    parser = add_arguments(argparse.ArgumentParser(prog="python -m experiments diagnose",
                                                   description=__doc__.splitlines()[0]))
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
