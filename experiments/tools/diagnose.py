"""Diagnose a trained checkpoint: ``python -m experiments diagnose CHECKPOINT --data DATA``.

A thin command line over the library's :func:`pruners.diagnose` (the dead, dormant and frozen
units of a model on data, by the criteria of U. Evci, *Detecting Dead Weights and Units in
Neural Networks*, MS thesis, NYU, 2018, https://arxiv.org/abs/1806.06068, ReDo and APoZ, and
what removing them saves). It prints a per-layer summary and writes into ``--out DIR`` (default
``runs/diagnose/<checkpoint name>``): ``report.json`` (everything), ``units.csv`` (one row per
unit) and ``layers.csv``, and the figures ``statistics.png`` (per layer, histograms of the unit
statistics the criteria read) and ``criteria.png`` (units by criteria, one panel per layer).

**Checkpoints** (:func:`pruners.read_state_dict`, never running code from the file): the
toolkit's own (which record the architecture), a bare state dict, a dict holding one under
``model``, ``state_dict``, ``model_state_dict`` or ``net`` (or ``--key KEY``), keys prefixed by
``module.`` or ``_orig_mod.``, and ``.safetensors`` files. A whole pickled model is refused with
the steps to save its state dict; ``--allow-pickle`` loads it (it runs the code it names: only
for files you trust).

**Models** for a state dict: ``--model NAME`` (a model of the zoo), ``--model
package.module:Class`` (or a factory function) or ``--model path/to/file.py:Class``, with
``--model-kwargs JSON``. The state dict must fit the model as built; ``--resize`` resizes the
model to the state dict's shapes (a checkpoint whose units were removed) and says which layers
it resized.

**Data**: a built-in data set by name (``fashion-mnist``, ``mnist``, ``cifar10``, ...), a tensor
file (``.pt``, read with ``weights_only=True``, or ``.npz``) holding the inputs and optionally
the targets under the keys of :data:`pruners.diagnosis.INPUT_KEYS` and
:data:`pruners.diagnosis.TARGET_KEYS` (``inputs``/``x``, ``targets``/``y``, ...), or
``module:function`` (or ``path/to/file.py:function``) returning a ``Dataset``, a ``DataLoader``,
tensors or batches (dict batches too). Without targets, the criteria that need the loss's
gradient are skipped and named.

Every bad input is an error message on stderr (all of it) and an exit code
(:data:`EXIT_CODES`), never a traceback (``--debug`` shows it). Long steps show progress on a
terminal (``--progress`` / ``--no-progress``).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import io
import json
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from experiments.harness import atomic
from experiments.harness.checkpoint import FORMAT, CheckpointError, model_from_checkpoint
from experiments.harness.models import MODELS
from pruners import Diagnosis, StateDictError, batches_of, diagnose, read_state_dict
from pruners.checkpoint import fit_to_state_dict
from pruners.diagnosis import INPUT_KEYS, TARGET_KEYS
from saliency import EXACT_CRITERIA
from saliency.progress import show_progress

__all__ = ["DiagnoseError", "EXIT_CODES", "load_model", "load_data", "add_arguments",
           "run_from_args", "main"]

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


# --------------------------------------------------------------------------- models


def _message(exc: BaseException) -> str:
    """An exception's whole message (every line), or its type's name."""
    text = str(exc).strip()
    return text or type(exc).__name__


def _import_object(spec: str, what: str) -> Any:
    """The object ``spec`` names: ``package.module:name`` (imported from ``sys.path``, the
    current folder included) or ``path/to/file.py:name`` (loaded from the file). ``what``
    names the option in errors."""
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise DiagnoseError(f"{what} {spec!r}: expected package.module:name or "
                            "path/to/file.py:name")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise DiagnoseError(f"{what} {spec!r}: no file {str(path)!r} (from the current "
                                f"folder {str(Path.cwd())!r})")
        name = f"_diagnose_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.resolve().parent))  # its own imports of sibling files
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # noqa: BLE001
            del sys.modules[name]
            raise DiagnoseError(f"{what} {spec!r}: running {str(path)!r} failed: "
                                f"{_message(exc)}") from None
        finally:
            sys.path.remove(str(path.resolve().parent))
    else:
        cwd = str(Path.cwd())
        added = "" not in sys.path and cwd not in sys.path
        if added:  # the current folder, as `python -m` has it
            sys.path.insert(0, cwd)
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as exc:
            searched = "\n".join(f"  {p or '.'}" for p in sys.path)
            raise DiagnoseError(
                f"{what} {spec!r}: cannot import module {target!r} ({_message(exc)}). "
                f"Searched:\n{searched}\nRun from the folder that holds it, add its folder to "
                "PYTHONPATH (PYTHONPATH=path/to/folder python -m experiments diagnose ...), or "
                "name the file: path/to/file.py:" + attr) from None
        except Exception as exc:  # noqa: BLE001
            raise DiagnoseError(f"{what} {spec!r}: importing {target!r} failed: "
                                f"{_message(exc)}") from None
        finally:
            if added:
                sys.path.remove(cwd)
    if not hasattr(module, attr):
        public = sorted(n for n in vars(module) if not n.startswith("_"))[:12]
        raise DiagnoseError(f"{what} {spec!r}: {target!r} has no {attr!r}; it has {public}")
    return getattr(module, attr)


def _factory(spec: str) -> Callable[..., nn.Module]:
    if ":" not in spec:
        if spec in MODELS:
            return MODELS[spec]
        raise DiagnoseError(f"--model {spec!r}: expected package.module:Class, "
                            f"path/to/file.py:Class or one of {sorted(MODELS)}")
    fn = _import_object(spec, "--model")
    if not callable(fn):
        raise DiagnoseError(f"--model {spec!r}: {type(fn).__name__} is not a class or function")
    return fn


def _build(spec: str, kwargs: Mapping[str, Any]) -> nn.Module:
    fn = _factory(spec)
    try:
        net = fn(**kwargs)
    except TypeError as exc:
        raise DiagnoseError(f"--model {spec!r} does not accept --model-kwargs {dict(kwargs)}: "
                            f"{_message(exc)}") from None
    except Exception as exc:  # noqa: BLE001
        raise DiagnoseError(f"--model {spec!r} with --model-kwargs {dict(kwargs)} failed: "
                            f"{_message(exc)}", "mismatch") from None
    if not isinstance(net, nn.Module):
        raise DiagnoseError(f"--model {spec!r} returned a {type(net).__name__}, not an "
                            "nn.Module", "mismatch")
    return net


def _base(key: str) -> str:
    for suffix in ("_orig", "_mask"):
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return key


def _apply_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], what: str,
                      resize: bool) -> list[str]:
    """Load ``state`` into ``model`` (resized first with ``resize``); the resized layers.
    Mismatched keys or shapes are one error listing them all."""
    own = model.state_dict()
    missing = sorted({_base(k) for k in own} - {_base(k) for k in state})
    unexpected = sorted({_base(k) for k in state} - {_base(k) for k in own})
    if missing or unexpected:
        parts = [f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}" if missing else "",
                 f"unexpected {unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}"
                 if unexpected else ""]
        raise DiagnoseError(f"the state dict does not match {what}: "
                            + "; ".join(p for p in parts if p), "mismatch")
    shapes = [f"{_base(k)}: {tuple(v.shape)} saved, {tuple(own[_base(k)].shape)} built"
              for k, v in state.items() if not k.endswith("_mask") and _base(k) in own
              and tuple(own[_base(k)].shape) != tuple(v.shape)]
    if shapes and not resize:
        raise DiagnoseError(
            f"the state dict does not match {what}: {len(shapes)} tensor(s) differ in shape:\n  "
            + "\n  ".join(shapes) + "\nIf units were removed from the checkpoint's model, pass "
            "--resize to resize the model to the saved shapes; otherwise check --model and "
            "--model-kwargs", "mismatch")
    resized: list[str] = []
    try:
        fit_to_state_dict(model, state, resized)
        model.load_state_dict(state, strict=True)
    except (StateDictError, RuntimeError) as exc:
        raise DiagnoseError(f"the state dict does not match {what}: {_message(exc)}",
                            "mismatch") from None
    return resized


def load_model(path: str | Path, model: str | None = None,
               model_kwargs: Mapping[str, Any] | None = None, resize: bool = False, *,
               key: str | None = None, allow_pickle: bool = False
               ) -> tuple[nn.Module, dict[str, Any]]:
    """The model of checkpoint ``path`` (see the module docstring), safely.

    Returns ``(model, info)``: ``info["kind"]`` is ``"harness"`` (a toolkit checkpoint, with
    its ``arch``), ``"state_dict"`` or ``"pickled model"``, ``info["layout"]`` how the file
    held it, ``info["resized"]`` the layers ``resize`` resized. Raises
    :class:`DiagnoseError`.
    """
    path = Path(path)
    if not path.exists():
        raise DiagnoseError(f"checkpoint {str(path)!r} does not exist", "missing")
    try:
        state, read = read_state_dict(path, key=key, allow_pickle=allow_pickle)
    except StateDictError as exc:
        text = str(exc)
        kind = "refused" if text.startswith("refused") else \
            "missing" if "does not exist" in text else "unreadable"
        raise DiagnoseError(text, kind) from None
    info: dict[str, Any] = {"layout": read["layout"], "stripped": read["stripped"],
                            "resized": []}
    if read["layout"] == "pickled model" and model is None:
        return read["model"], {**info, "kind": "pickled model"}
    if read["layout"] == "toolkit":
        info.update({"kind": "harness", "arch": read["arch"]})
        if model is None:
            try:
                net = model_from_checkpoint({"format": FORMAT, "arch": read["arch"],
                                             "state_dict": state})
            except CheckpointError as exc:
                raise DiagnoseError(f"{str(path)!r}: {_message(exc)}", "mismatch") from None
            return net, info
    else:
        info["kind"] = "state_dict"
        if model is None:
            raise DiagnoseError(
                f"{str(path)!r} holds a state dict ({read['layout']}) but not the "
                "architecture: pass --model (a zoo name, package.module:Class or "
                "path/to/file.py:Class) and --model-kwargs to build its model")
    kwargs = dict(model_kwargs or {})
    net = _build(model, kwargs)
    info.update({"model": model, "model_kwargs": kwargs})
    info["resized"] = _apply_state_dict(net, state, f"--model {model!r}", resize)
    return net, info


# --------------------------------------------------------------------------- data


def _tensor_file(path: Path) -> dict[str, Any]:
    if path.suffix == ".npz":
        import numpy as np
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: torch.from_numpy(z[k]) for k in z.files}
        except Exception as exc:  # noqa: BLE001
            raise DiagnoseError(f"--data {str(path)!r}: cannot read the .npz file: "
                                f"{_message(exc)}") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise DiagnoseError(f"--data {str(path)!r}: cannot read it with weights_only=True: "
                            f"{_message(exc)}") from None
    if isinstance(obj, torch.Tensor):
        return {"inputs": obj}
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return {"inputs": obj[0], "targets": obj[1]}
    if not isinstance(obj, Mapping):
        raise DiagnoseError(f"--data {str(path)!r} holds a {type(obj).__name__}; expected a "
                            f"dict of tensors with inputs under one of {list(INPUT_KEYS)} and "
                            f"targets (optional) under one of {list(TARGET_KEYS)}")
    return dict(obj)


def load_data(name: str, *, data_dir: str | None = None, split: str = "val",
              samples: int = 1000, batch_size: int = 500, seed: int = 0,
              val_size: int = 5000):
    """The first ``samples`` samples of data ``name``, in batches: ``(batches, num_outputs)``.

    ``name`` is a built-in data set (its ``split``; the validation split is the harness's,
    ``val_size`` samples carved from the training set with ``seed``), a tensor file (``.pt``,
    ``.npz``) or ``module:function`` / ``path/to/file.py:function`` (see the module
    docstring). ``num_outputs`` is the data set's number of classes or targets when known.
    """
    if split not in ("train", "val", "test"):
        raise DiagnoseError(f"--split must be train, val or test, got {split!r}")
    if samples < 1 or batch_size < 1:
        raise DiagnoseError("--samples and --batch-size must be >= 1")
    path = Path(name)
    if path.suffix in (".pt", ".pth", ".npz") or (path.is_file() and ":" not in name):
        if not path.is_file():
            raise DiagnoseError(f"--data {name!r}: no such file (from the current folder "
                                f"{str(Path.cwd())!r})")
        return _batches(_tensor_file(path), name, samples, batch_size), None
    if ":" in name:
        fn = _import_object(name, "--data")
        try:
            obj = fn() if callable(fn) and not isinstance(fn, (torch.Tensor, Mapping)) else fn
        except Exception as exc:  # noqa: BLE001
            raise DiagnoseError(f"--data {name!r}: calling it failed: {_message(exc)}") from None
        return _batches(obj, name, samples, batch_size), None
    from experiments.harness.datasets import get_dataset
    try:
        splits = get_dataset(name, data_dir=data_dir or None, seed=seed, val_size=val_size)
    except (ValueError, FileNotFoundError) as exc:
        raise DiagnoseError(f"--data {name!r}: {_message(exc)}") from None
    ds = getattr(splits, split)
    x, y = ds.tensors[0][:samples], ds.tensors[1][:samples]
    if not len(x):
        raise DiagnoseError(f"--data {name!r}: the {split} split is empty")
    return _batches((x, y), name, samples, batch_size), getattr(splits, "num_outputs", None)


def _batches(obj: Any, name: str, samples: int, batch_size: int):
    try:
        return batches_of(obj, batch_size=batch_size, samples=samples)
    except (TypeError, ValueError) as exc:
        raise DiagnoseError(f"--data {name!r}: {_message(exc)}") from None


def _model_dtype(model: nn.Module, data):
    """Floating inputs of another dtype than the model's parameters (float64 arrays of an
    .npz file, say) converted to the parameters' dtype, with a note."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    x = data[0][0]
    if len(dtypes) != 1 or not x.is_floating_point() or x.dtype in dtypes:
        return data
    dtype = dtypes.pop()
    print(f"note: the data's inputs are {str(x.dtype).replace('torch.', '')}, the model's "
          f"parameters {str(dtype).replace('torch.', '')}: inputs converted")
    return [(bx.to(dtype), by) for bx, by in data]


def _check_runs(model: nn.Module, data, what: str, num_outputs: int | None) -> None:
    x = data[0][0]
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as exc:  # noqa: BLE001
        raise DiagnoseError(f"the model does not run on {what} inputs of shape "
                            f"{tuple(x.shape[1:])} ({x.dtype}): {_message(exc)}",
                            "mismatch") from None
    finally:
        for m, flag in flags:
            m.training = flag
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        raise DiagnoseError(f"the model's output on {what} is not a (batch, ...) tensor",
                            "mismatch")
    if num_outputs and out.dim() == 2 and out.shape[1] != num_outputs:
        raise DiagnoseError(f"the model outputs {out.shape[1]} values per sample but {what} has "
                            f"{num_outputs} classes/targets", "mismatch")


# --------------------------------------------------------------------------- outputs


def _figures(result: Diagnosis, out: Path, title: str) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    files = []
    for name, fig in result.figures(title=title).items():
        atomic.save_figure(fig, out / f"{name}.png")  # saves and closes it
        files.append(f"{name}.png")
    return files


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
    parser.add_argument("checkpoint", help="a toolkit checkpoint, a state dict, a dict holding "
                                           "one, or a .safetensors file")
    parser.add_argument("--data", required=True, metavar="DATA",
                        help="a data set name (fashion-mnist, mnist, cifar10, ...), a tensor "
                             "file (.pt, .npz: inputs/x and optional targets/y), or "
                             "module:function / file.py:function returning a Dataset, a "
                             "DataLoader, tensors or batches")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="the folder of a built-in data set's files (default: where the "
                             "data set looks: its environment variable, then the usual places)")
    parser.add_argument("--split", default="val", choices=("train", "val", "test"),
                        help="which split to diagnose on (default val, the harness's)")
    parser.add_argument("--samples", type=int, default=1000,
                        help="first N samples of the data (of the split of a built-in data "
                             "set, of a file, of a function's data; default 1000, the thesis's "
                             "validation set size)")
    parser.add_argument("--batch-size", type=int, default=500,
                        help="samples per forward pass (default 500)")
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
    parser.add_argument("--model", default=None, metavar="MODEL",
                        help="the model of a state dict: a zoo name, package.module:Class or "
                             "path/to/file.py:Class (a class or a function building it)")
    parser.add_argument("--model-kwargs", default="{}", metavar="JSON",
                        help="keyword arguments of the model's class or function")
    parser.add_argument("--resize", action="store_true",
                        help="resize the model to the state dict's shapes (a checkpoint whose "
                             "units were removed); the resized layers are printed")
    parser.add_argument("--key", default=None, metavar="KEY",
                        help="the key of the checkpoint dict that holds the state dict "
                             "(default: state_dict, model, model_state_dict or net)")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="load a whole pickled model (runs the code the file names: only "
                             "for files you trust)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: on a terminal only)")
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
        raise DiagnoseError(f"--threshold: {_message(exc)}") from None
    criteria = [c.strip() for c in args.remove_by.split(",") if c.strip()]
    out_ckpt = Path(args.remove_dead) if args.remove_dead else None
    if out_ckpt is not None and path.exists() and out_ckpt.exists() \
            and out_ckpt.resolve() == path.resolve():
        raise DiagnoseError("--remove-dead must not overwrite the checkpoint being diagnosed")
    return kwargs, th, criteria, out_ckpt


def _print_removal(rem: Mapping[str, Any], criteria: list[str],
                   kept: Mapping[str, list[int]]) -> None:
    """What removing the flagged units did (or that there was nothing to remove)."""
    if rem["removed"]:
        n = rem["removed"]
        loss = ("" if rem["loss_before"] != rem["loss_before"]  # NaN: no targets
                else f", loss {rem['loss_before']:.6f} -> {rem['loss_after']:.6f} "
                     f"({rem['loss_change']:+.3g})")
        print(f"removing the {n} unit{'s' if n > 1 else ''} flagged by {', '.join(criteria)} "
              f"(mean replacement, bias propagation): parameters {rem['params_before']:,} -> "
              f"{rem['params_after']:,}, MACs/sample {rem['macs_before']:,} -> "
              f"{rem['macs_after']:,}; max output deviation {rem['max_output_deviation']:.3g} "
              f"({rem['max_output_deviation_relative']:.2g} of the largest output){loss}")
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
    model, info = load_model(path, args.model, kwargs, args.resize, key=args.key,
                             allow_pickle=args.allow_pickle)
    if info["stripped"]:
        print(f"note: removed the key prefixes {info['stripped']} (a wrapped model's state dict)")
    if info["resized"]:
        print(f"--resize: resized {len(info['resized'])} layer(s) to the saved shapes: "
              f"{', '.join(info['resized'])}")
    data, num_outputs = load_data(args.data, data_dir=args.data_dir, split=args.split,
                                  samples=args.samples, batch_size=args.batch_size,
                                  seed=args.data_seed, val_size=args.val_size)
    what = f"{args.data} ({args.split})" if ":" not in args.data and \
        not Path(args.data).suffix else args.data
    data = _model_dtype(model, data)
    _check_runs(model, data, what, num_outputs)
    try:
        result = diagnose(model, data, thresholds=th, exact_mrp=args.exact_mrp,
                          criteria=criteria)
    except ValueError as exc:
        kind = "usage" if str(exc).startswith(("unknown criteria", "exact MRP")) else "mismatch"
        raise DiagnoseError(f"the model cannot be diagnosed: {_message(exc)}", kind) from None
    except RuntimeError as exc:
        raise DiagnoseError(f"the model cannot be diagnosed: {_message(exc)}",
                            "mismatch") from None
    out = Path(args.out) if args.out else Path("runs") / "diagnose" / path.stem
    report = result.report
    arch = (info.get("arch") or {}).get("model") or info.get("model") or info["kind"]
    loss = "" if report.skipped else f"; mean loss {report.loss:.4f}"
    print(f"diagnosis of {path} ({arch}, {result.params:,} parameters) on {what}, "
          f"{report.samples:,} samples{loss}")
    print(result.table())
    _print_removal(result.removal, criteria, result.kept)
    dumped = result.to_dict()
    meta = {"checkpoint": str(path), "checkpoint_kind": info["kind"],
            "checkpoint_layout": info["layout"], "arch": info.get("arch"),
            "model": info.get("model"), "model_kwargs": info.get("model_kwargs"),
            "resized": info["resized"],
            "data": {"name": args.data, "split": args.split, "samples": report.samples,
                     "batch_size": args.batch_size, "data_seed": args.data_seed,
                     "val_size": args.val_size}}
    files = ["report.json", "units.csv", "layers.csv"]
    atomic.write_csv(out / "units.csv", [{**r, "dead_by": ";".join(r["dead_by"])}
                                         for r in dumped["units"]])
    atomic.write_csv(out / "layers.csv", [{k: v for k, v in r.items() if k != "members"}
                                          | {"members": ";".join(r.get("members", []))}
                                          for r in dumped["layers"]])
    if args.plots:
        files += _figures(result, out, f"{arch} on {what}")
    if out_ckpt is not None:
        if result.smaller is None:
            print(f"--remove-dead: no unit to remove; {out_ckpt} not written")
        else:
            _save_smaller(out_ckpt, result.smaller, info, path, result.removal)
            meta["removed_checkpoint"] = str(out_ckpt)
            print(f"smaller checkpoint written to {out_ckpt}")
    atomic.write_json(out / "report.json", {**meta, **dumped, "files": files})
    print(f"written to {out}/: {', '.join(files)}")
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    """Run ``diagnose``; a bad input is its whole message on stderr and its exit code."""
    try:
        with show_progress(args.progress):
            return _run(args)
    except DiagnoseError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except Exception as exc:  # noqa: BLE001 - never a traceback unless --debug
        if args.debug:
            raise
        print(f"error: diagnose failed ({type(exc).__name__}): {_message(exc)}\n"
              "(--debug shows the traceback)", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    """``python -m experiments.tools.diagnose ...`` (the same as ``python -m experiments diagnose``)."""
    parser = add_arguments(argparse.ArgumentParser(prog="python -m experiments diagnose",
                                                   description=__doc__.splitlines()[0]))
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
