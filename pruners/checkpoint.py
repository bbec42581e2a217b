"""Saving and reloading pruned models, and reading the checkpoints people have.

A model whose units were physically removed keeps its layer structure with smaller widths. To
reload its weights, build the architecture as it was built before pruning and let
:func:`fit_to_state_dict` resize it to the saved shapes (smaller Linear/Conv/BatchNorm layers,
biases created by bias propagation, ``torch.nn.utils.prune`` masks, fewer attention heads),
then ``load_state_dict``; :func:`load_pruned` does both. Nothing runs code from the file:
state dicts load with ``torch.load(path, weights_only=True)``.

:func:`read_state_dict` reads the files people actually have, without running code from them:

* a bare state dict, or this toolkit's checkpoints (``{"format":
  "saliency-pruning-checkpoint/1", "state_dict": ...}``);
* a dict holding the state dict under a common key (``state_dict``, ``model``,
  ``model_state_dict``, ``net``, tried in that order) or a key you name;
* keys prefixed by ``module.`` (``nn.DataParallel``, ``DistributedDataParallel``) or
  ``_orig_mod.`` (``torch.compile``), which are removed;
* safetensors files (``.safetensors``; needs the ``safetensors`` package, which the ``hf``
  extra installs).

A whole pickled model (``torch.save(model, path)``) is refused, with the steps to save its state
dict instead; ``allow_pickle=True`` loads it anyway, running the code the file names: only for
files you trust.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils import prune

from saliency.attention import fit_attention
from saliency.layers import CHANNEL_MODULES

__all__ = ["StateDictError", "fit_to_state_dict", "load_pruned", "read_state_dict",
           "STATE_DICT_KEYS", "FORMAT"]

#: the format tag of this toolkit's checkpoints (the experiment harness writes them)
FORMAT = "saliency-pruning-checkpoint/1"
#: keys under which a checkpoint dict commonly holds the model's state dict, in the order tried
STATE_DICT_KEYS = ("state_dict", "model", "model_state_dict", "net")
#: key prefixes added by wrappers: nn.DataParallel / DistributedDataParallel, torch.compile
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")

#: module attributes that record a size, set from the weight shape on resize
_SIZE_ATTRS = {
    nn.Linear: (("out_features", "weight", 0), ("in_features", "weight", 1)),
    nn.Conv1d: (("out_channels", "weight", 0), ("in_channels", "weight", 1)),
    nn.Conv2d: (("out_channels", "weight", 0), ("in_channels", "weight", 1)),
    nn.BatchNorm1d: (("num_features", "running_mean", 0), ("num_features", "weight", 0)),
    nn.BatchNorm2d: (("num_features", "running_mean", 0), ("num_features", "weight", 0)),
    nn.PReLU: (("num_parameters", "weight", 0),),
}


class StateDictError(ValueError):
    """A file or state dict that cannot be read or does not fit the model, with what to do."""


# --------------------------------------------------------------------------- reading files


def read_state_dict(path: str | os.PathLike, *, key: str | None = None,
                    allow_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The model state dict a file holds, safely (see the module docstring for the layouts).

    Args:
        path: a ``torch.save`` file or a ``.safetensors`` file.
        key: the key of a checkpoint dict that holds the state dict (default: the first of
            :data:`STATE_DICT_KEYS` present, or the dict itself when its values are tensors).
        allow_pickle: load a file ``weights_only=True`` refuses (a whole pickled model) with
            ``weights_only=False``, which runs the code it names: only for files you trust.

    Returns:
        ``(state_dict, info)``: the state dict with wrapper prefixes removed, and ``info`` with
        ``"layout"`` (``"toolkit"``, ``"state_dict"``, ``"dict[KEY]"``, ``"safetensors"`` or
        ``"pickled model"``), ``"stripped"`` (the prefixes removed), the toolkit checkpoint's
        ``"arch"`` and, for a pickled model, ``"model"`` (the ``nn.Module`` itself).

    Raises:
        StateDictError: the file is missing, unreadable, refused or holds no state dict; the
            message says what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise StateDictError(f"{str(path)!r} does not exist or is not a file")
    if path.suffix == ".safetensors":
        return _strip(_read_safetensors(path), {"layout": "safetensors"})
    obj = _torch_load(path, allow_pickle)
    if isinstance(obj, nn.Module):
        return _strip(obj.state_dict(), {"layout": "pickled model", "model": obj})
    if not isinstance(obj, Mapping):
        raise StateDictError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict or "
                             "a checkpoint dict")
    if obj.get("format") == FORMAT:
        info = {"layout": "toolkit", "arch": dict(obj.get("arch") or {})}
        return _strip(_tensors(obj.get("state_dict"), path, "state_dict"), info)
    if key is not None:
        if key not in obj:
            raise StateDictError(f"{str(path)!r} has no key {key!r}; its keys are "
                                 f"{_keys(obj)}")
        return _strip(_tensors(obj[key], path, key), {"layout": f"dict[{key!r}]"})
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _strip(dict(obj), {"layout": "state_dict"})
    for k in STATE_DICT_KEYS:
        if isinstance(obj.get(k), Mapping) and obj[k] and \
                all(isinstance(v, torch.Tensor) for v in obj[k].values()):
            return _strip(dict(obj[k]), {"layout": f"dict[{k!r}]"})
    raise StateDictError(
        f"{str(path)!r} is a dict with keys {_keys(obj)} but none holds a state dict (names "
        f"to tensors) under {list(STATE_DICT_KEYS)}: name the key that holds it")


def _keys(obj: Mapping) -> list[str]:
    keys = [str(k) for k in obj]
    return keys[:8] + (["..."] if len(keys) > 8 else [])


def _tensors(obj: Any, path: Path, key: str) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not obj or \
            not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise StateDictError(f"{str(path)!r}: {key!r} is not a state dict (a mapping of names to "
                             "tensors)")
    return dict(obj)


def _strip(state: dict[str, torch.Tensor], info: dict[str, Any]
           ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``state`` without the wrapper prefixes every key carries."""
    stripped: list[str] = []
    while state:
        prefix = next((p for p in _WRAPPER_PREFIXES if all(k.startswith(p) for k in state)),
                      None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
        stripped.append(prefix)
    info["stripped"] = stripped
    return state, info


def _torch_load(path: Path, allow_pickle: bool) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if "Weights only load failed" not in text:
            raise StateDictError(f"cannot read {str(path)!r}: {_first_line(exc)}") from None
        if allow_pickle:
            try:
                return torch.load(path, map_location="cpu", weights_only=False)
            except (ImportError, AttributeError) as exc:
                raise StateDictError(
                    f"cannot unpickle {str(path)!r}: {_first_line(exc)}. A pickled model needs "
                    "its class importable under the name it was saved with: run from the folder "
                    "that holds its module, or add that folder to PYTHONPATH") from None
        glob = re.search(r"GLOBAL ([\w.]+)", text)
        what = f"a reference to {glob.group(1)}" if glob else "objects other than tensors"
        raise StateDictError(
            f"refused to load {str(path)!r}: it contains {what}, which would run code when "
            "unpickled (a whole pickled model, for example). Only tensors and plain containers "
            "are loaded. To fix it, where the model's class can be imported, save its state "
            "dict instead:\n"
            "    model = torch.load(path, weights_only=False)   # only if you trust the file\n"
            "    torch.save(model.state_dict(), 'model_state.pt')\n"
            "and load that file, building the model yourself. Or, for a file you trust, allow "
            "the pickle explicitly (allow_pickle=True; on the command line --allow-pickle).") \
            from None
    except Exception as exc:  # noqa: BLE001 - zip errors, EOF, bad magic: one message
        why = "empty file" if path.stat().st_size == 0 else _first_line(exc)
        raise StateDictError(f"cannot read {str(path)!r}: the file is truncated, corrupt or not "
                             f"written by torch.save ({why})") from None


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise StateDictError(f"{str(path)!r} is a safetensors file: install the safetensors "
                             'package (pip install safetensors, or "saliency-pruning[hf]")') \
            from None
    try:
        return dict(load_file(str(path), device="cpu"))
    except Exception as exc:  # noqa: BLE001
        raise StateDictError(f"cannot read {str(path)!r}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


# --------------------------------------------------------------------------- resizing


def _resize_param(module: nn.Module, name: str, shape: torch.Size) -> None:
    if name in module._parameters:
        old = module._parameters[name]
        if old is None:  # a bias created by bias propagation: the dtype of the weight
            weight = module._parameters.get("weight_orig", module._parameters.get("weight"))
            dtype = weight.dtype if weight is not None else torch.float32
        else:
            dtype = old.dtype
        new = torch.empty(shape, dtype=dtype)
        module._parameters[name] = nn.Parameter(new, requires_grad=True if old is None
                                                else old.requires_grad)
    elif name in module._buffers:
        old = module._buffers[name]
        module._buffers[name] = torch.empty(shape, dtype=old.dtype if old is not None
                                            else torch.float32)


def _fit_conv_groups(name: str, mod: nn.Module, groups: int, old_in: int, old_out: int) -> None:
    """Set a grouped convolution's ``groups`` and ``in_channels`` from its resized weight.

    The weight is ``(out_channels, in_channels / groups, *kernel)``. A depthwise
    convolution (one input channel per group in the freshly built model) stays
    depthwise with the same depth multiplier ``out_channels / groups``: ``groups
    = in_channels = out_channels / multiplier``. Any other grouped convolution
    keeps its number of groups: ``in_channels = groups * weight.shape[1]``.
    """
    w = mod._parameters.get("weight_orig", mod._parameters.get("weight"))
    if w is None:
        return
    out, per_group = int(w.shape[0]), int(w.shape[1])
    if old_in == groups:  # depthwise
        multiplier = max(1, old_out // groups)
        if per_group != 1 or out % multiplier:
            raise StateDictError(
                f"module {name!r} is a depthwise convolution ({groups} groups, {multiplier} "
                f"output(s) per group) but its saved weight has shape {tuple(w.shape)}")
        groups = out // multiplier
    elif out % groups:
        raise StateDictError(f"module {name!r} has {groups} groups, which do not divide its "
                             f"{out} saved output channels")
    mod.groups = groups
    mod.in_channels = groups * per_group


def fit_to_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                      resized: list[str] | None = None) -> nn.Module:
    """Resize ``model``'s parameters and buffers to the shapes in ``state_dict``, in place.

    Handles physically removed units (smaller Linear/Conv/BatchNorm), biases created by bias
    propagation, and ``torch.nn.utils.prune`` reparametrized tensors
    (``weight_orig``/``weight_mask``). A depthwise convolution's ``groups`` follows its channel
    count (it stays depthwise); other grouped convolutions keep their groups, with
    ``in_channels = groups * weight.shape[1]``. Attention modules get the head counts of the
    saved shapes (:func:`saliency.attention.fit_attention`: an ``nn.MultiheadAttention`` with
    heads removed becomes a :class:`saliency.attention.PrunedMultiheadAttention`). Layer types
    and names must match; values are not loaded (``load_state_dict`` next, or use
    :func:`load_pruned`).

    Args:
        model: the architecture as built before pruning.
        state_dict: the pruned model's state dict.
        resized: when given, the names of the modules whose tensors changed shape are appended
            to it.

    Returns:
        ``model``.

    Raises:
        StateDictError: a key names no module or tensor of ``model``, or a grouped
            convolution's saved weight does not fit its groups.
    """
    fit_attention(model, state_dict)  # head counts (fewer heads after head removal)
    modules = dict(model.named_modules())
    changed: list[str] = []
    for key, value in state_dict.items():
        mod_name, _, tname = key.rpartition(".")
        mod = modules.get(mod_name)
        if mod is None:
            raise StateDictError(f"state dict entry {key!r}: the model has no module "
                                 f"{mod_name!r}")
        if _fit_pruned(mod_name, mod, tname, value, state_dict, changed):
            continue
        current = mod._parameters.get(tname, mod._buffers.get(tname))
        if tname not in mod._parameters and tname not in mod._buffers:
            if tname == "bias" and isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                mod._parameters["bias"] = None  # created by bias propagation
            else:
                raise StateDictError(f"state dict entry {key!r}: module {mod_name!r} "
                                     f"({type(mod).__name__}) has no tensor {tname!r}")
        if current is None or current.shape != value.shape:
            _resize_param(mod, tname, value.shape)
            changed.append(mod_name)
    _fit_sizes(model)
    if resized is not None:
        resized.extend(dict.fromkeys(changed))
    return model


def _fit_pruned(mod_name: str, mod: nn.Module, tname: str, value: torch.Tensor,
                state_dict: Mapping[str, torch.Tensor], changed: list[str]) -> bool:
    """Resize a ``torch.nn.utils.prune`` pair (``*_orig``, ``*_mask``); whether ``tname`` was
    one of the pair."""
    if tname.endswith("_orig") and (mod_name + "." + tname[:-5] + "_mask") in state_dict:
        base = tname[:-5]
        if base + "_orig" not in mod._parameters:
            if getattr(mod, base, None) is None:
                raise StateDictError(f"state dict entry {mod_name}.{tname!r}: module "
                                     f"{mod_name!r} has no tensor {base!r}")
            prune.identity(mod, base)
        if mod._parameters[tname].shape != value.shape:
            _resize_param(mod, tname, value.shape)
            _resize_param(mod, base + "_mask", value.shape)
            changed.append(mod_name)
        return True
    return tname.endswith("_mask") and (mod_name + "." + tname[:-5] + "_orig") in state_dict


def _fit_sizes(model: nn.Module) -> None:
    """Every module's size attributes from its (resized) tensors."""
    for mod_name, mod in model.named_modules():
        groups = getattr(mod, "groups", 1) if isinstance(mod, (nn.Conv1d, nn.Conv2d)) else 1
        old = (getattr(mod, "in_channels", 0), getattr(mod, "out_channels", 0))
        for attr, tname, dim in _SIZE_ATTRS.get(type(mod), ()):
            t = mod._parameters.get(tname + "_orig", mod._parameters.get(
                tname, mod._buffers.get(tname)))
            if t is not None:
                setattr(mod, attr, int(t.shape[dim]))
        if groups != 1:
            _fit_conv_groups(mod_name, mod, groups, *old)
        spec = CHANNEL_MODULES.get(type(mod))  # registered per-channel layers (switches, ...)
        if type(mod) not in _SIZE_ATTRS and spec is not None and spec.count_attr:
            for tname in spec.tensors(mod):
                t = mod._parameters.get(tname + "_orig", mod._parameters.get(
                    tname, mod._buffers.get(tname)))
                if t is not None:
                    setattr(mod, spec.count_attr, int(t.shape[0]))
                    break


def load_pruned(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> nn.Module:
    """Resize ``model`` to ``state_dict`` (:func:`fit_to_state_dict`) and load it (strict), so
    a pruned model reloads into its architecture as built before pruning.

    Examples:
        >>> import torch.nn as nn
        >>> from pruners import remove_units
        >>> net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
        >>> _ = remove_units(net, {"0": [1, 4]})
        >>> fresh = load_pruned(nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2)),
        ...                     net.state_dict())
        >>> fresh[0].out_features, fresh[2].in_features
        (4, 4)

    Raises:
        StateDictError: the state dict does not fit the architecture (missing or unexpected
            keys, a tensor of another layer type).
    """
    fit_to_state_dict(model, state_dict)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise StateDictError(f"the state dict does not match the model: {detail}") from None
    with torch.no_grad():  # refresh the pruned tensors' plain attributes
        for mod in model.modules():
            for pname in list(mod._parameters):
                if pname.endswith("_orig") and pname[:-5] + "_mask" in mod._buffers:
                    setattr(mod, pname[:-5],
                            mod._parameters[pname] * mod._buffers[pname[:-5] + "_mask"])
    return model
